//! `cargo xtask fuzz [SECONDS]`: builds the fuzz targets (fuzz/) with cargo-fuzz and the pinned
//! nightly, and runs each for a bounded time on its committed seed corpus.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::run;

/// Every fuzz target in fuzz/Cargo.toml.
pub const TARGETS: [&str; 6] = [
    "perf_map",
    "recording",
    "cfi_rules",
    "probe_points",
    "jvm_reply",
    "jvm_histogram",
];

/// Seconds per target when none are given, and in `cargo xtask test`.
pub const DEFAULT_SECONDS: u64 = 30;

/// The nightly that scripts/setup.sh installs; cargo-fuzz needs nightly's `-Z` flags.
fn nightly() -> String {
    std::env::var("LEAKHOUND_NIGHTLY").unwrap_or_else(|_| "nightly-2026-05-20".to_owned())
}

fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", &nightly(), "cargo", "fuzz"])
        .current_dir(fuzz_dir)
        // The targets use pure parsers only: no nested eBPF build under fuzzing flags
        // (tracer-user/build.rs).
        .env("LEAKHOUND_SKIP_EBPF", "1")
        // Set by the cargo that runs xtask, for the stable toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    command
}

pub fn fuzz(root: &Path, seconds: u64) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    // No sanitizer: the targets are safe Rust, where a panic or an abort is the finding, and
    // AddressSanitizer would double the build and halve the runs in the same time.
    let sanitizer = ["--sanitizer", "none"];
    run(cargo_fuzz(&fuzz_dir).arg("build").args(sanitizer))?;
    let mut crashed = Vec::new();
    for target in TARGETS {
        // New inputs go to a scratch corpus under fuzz/target; the committed seeds are only
        // read, so a run leaves the work tree clean.
        let scratch = fuzz_dir.join("target/corpus-run").join(target);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let result = run(cargo_fuzz(&fuzz_dir)
            .args(["run", target])
            .args(sanitizer)
            .arg(&scratch)
            .arg(Path::new("corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // One input may take at most 10 s and 2 GiB: more is a finding too.
            .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
            // No line per new input (hundreds of thousands in a CI log); a crash and the final
            // statistics are still printed.
            .arg("-verbosity=0"));
        if let Err(err) = result {
            eprintln!("xtask: fuzz target {target} failed: {err:#}");
            crashed.push(target);
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz targets {} found a crash; the input is under fuzz/artifacts/<target>/: fix the bug and add the input to fuzz/corpus/<target>/",
            crashed.join(", ")
        );
    }
    Ok(())
}
