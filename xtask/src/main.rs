//! Project tasks: `cargo xtask setup | demo | test | bench | fuzz`.
//!
//! Each task runs the set-up first (idempotent, quick when already done), so every task works
//! on a fresh machine as root.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

mod bench;
mod dist;
mod fuzz;
mod image;

const USAGE: &str = "usage: cargo xtask <setup|demo|test|bench [live]|dist|image|fuzz [SECONDS]>
  setup  install the toolchain, bpf-linker, cargo-fuzz and the Debian packages the tests use
  demo   trace the bundled demo target; writes leakhound-out/{report.txt,leaks.folded,flame.svg}
  test   the whole suite: fmt, clippy, unit tests and the integration tests (as root), then
         each fuzz target for 30 s
  bench  overhead on real servers (redis with jemalloc, memcached with glibc) and per
         malloc+free under each allocator, against the trap floor, bpftrace and heaptrack;
         leakhound's own costs with a million live blocks, glibc and static builds; the cost
         per allocation in a JVM and a Node.js target (as root; prints tables).
         `bench servers`, `bench live`, `bench runtimes`: only that part
  dist   build leakhound as one static executable (musl), BPF object embedded:
         target/dist/leakhound
  image  an OCI image holding only that binary (podman, FROM scratch), saved for
         `podman load`/`docker load`: target/image/leakhound-VERSION.tar
  fuzz   build the fuzz targets (fuzz/) and run each on its seed corpus for SECONDS
         (default 30)";

fn main() -> Result<()> {
    let task = env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    // setup.sh installs bpf-linker under CARGO_HOME/bin; the nested eBPF build must find it
    // even where that directory is not on the caller's PATH.
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    if let Some(bin) = cargo_home.map(|home| home.join("bin")) {
        let path = env::var_os("PATH").unwrap_or_default();
        let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))?;
        // SAFETY: single-threaded at this point; nothing else reads the environment yet.
        unsafe { env::set_var("PATH", joined) };
    }
    match task.as_str() {
        "setup" => setup(&root),
        "demo" => demo(&root),
        "test" => test(&root),
        "bench" => {
            setup(&root)?;
            let scope = match env::args().nth(2).as_deref() {
                None => bench::Scope::All,
                Some("servers") => bench::Scope::Servers,
                Some("live") => bench::Scope::Live,
                Some("runtimes") => bench::Scope::Runtimes,
                Some(other) => {
                    bail!("unknown bench scope '{other}' (servers, live, runtimes, or nothing)")
                }
            };
            let leakhound = build_leakhound(&root)?;
            let static_build = if matches!(scope, bench::Scope::All | bench::Scope::Live) {
                dist::dist(&root)?
            } else {
                leakhound.clone()
            };
            bench::run(&root, &leakhound, &static_build, scope)
        }
        "dist" => {
            setup(&root)?;
            dist::dist(&root).map(drop)
        }
        "image" => {
            setup(&root)?;
            image::image(&root).map(drop)
        }
        "fuzz" => {
            let seconds = match env::args().nth(2) {
                Some(text) => text
                    .parse()
                    .with_context(|| format!("'{text}' is not a number of seconds"))?,
                None => fuzz::DEFAULT_SECONDS,
            };
            setup(&root)?;
            fuzz::fuzz(&root, seconds)
        }
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown task '{task}'")
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    eprintln!("xtask: {command:?}");
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The pinned nightly that builds the eBPF crate (scripts/setup.sh installs it).
fn nightly() -> String {
    env::var("LEAKHOUND_NIGHTLY").unwrap_or_else(|_| "nightly-2026-05-20".to_owned())
}

fn setup(root: &Path) -> Result<()> {
    run(Command::new("bash").arg(root.join("scripts/setup.sh")))
}

fn build_leakhound(root: &Path) -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "--package", "tracer-user"]))?;
    Ok(root.join("target/release/leakhound"))
}

/// leakhound with the `fault-injection` feature, for the tests that make attaching fail on
/// purpose, copied to `target/release/leakhound-fault-injection`. Built in the same target
/// directory, so only tracer-user is compiled twice (cargo keeps both builds); the plain
/// binary is built after it, so `target/release/leakhound` stays the one without faults.
fn build_fault_injection_leakhound(root: &Path) -> Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "tracer-user",
        "--features",
        "fault-injection",
    ]))?;
    let faulty = root.join("target/release/leakhound-fault-injection");
    std::fs::copy(root.join("target/release/leakhound"), &faulty)
        .with_context(|| format!("copying to {}", faulty.display()))?;
    Ok(faulty)
}

fn demo(root: &Path) -> Result<()> {
    setup(root)?;
    let leakhound = build_leakhound(root)?;
    let out = root.join("leakhound-out");
    std::fs::create_dir_all(&out)?;
    let target = out.join("leaky_service");
    // Frame pointers in the demo's own code give whole application stacks; glibc keeps none,
    // so frames inside libc stop at the direct caller (see README, "Stacks").
    run(Command::new("cc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&target)
        .arg(root.join("demo/leaky_service.c")))?;
    run(Command::new(&leakhound)
        .args(["record", "--duration", "8s", "--interval", "2s"])
        .arg("-o")
        .arg(out.join("report.txt"))
        .arg("-o")
        .arg(out.join("leaks.folded"))
        .arg("-o")
        .arg(out.join("flame.svg"))
        .arg("--")
        .arg(&target))?;
    let report = std::fs::read_to_string(out.join("report.txt"))?;
    println!("{}", report.lines().take(40).collect::<Vec<_>>().join("\n"));
    println!(
        "\nwritten: {0}/report.txt {0}/leaks.folded {0}/flame.svg",
        out.display()
    );
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    setup(root)?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    let faulty = build_fault_injection_leakhound(root)?;
    let leakhound = build_leakhound(root)?;
    // The static build for the test that runs it alone in an empty root (tests/tests/
    // static_binary.rs); about a minute and a half of CI on a fresh target directory.
    let static_build = dist::dist(root)?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The code only the fault-injection build has.
    run(cargo().args([
        "clippy",
        "--package",
        "tracer-user",
        "--lib",
        "--release",
        "--features",
        "fault-injection",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate for its real target: on the host every module is compiled out.
    // Through the rustup proxy on PATH, which understands `+toolchain`.
    run(Command::new("cargo")
        .current_dir(root.join("tracer-ebpf"))
        .arg(format!("+{}", nightly()))
        .args([
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
        ])
        .arg(root.join("target/bpf-clippy"))
        .args(["--", "-D", "warnings"])
        // The rustup proxy picks the toolchain from `+nightly`; the outer cargo's own
        // variables would point the inner one at stable.
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    // The integration tests run the real binary against real processes; they serialize
    // themselves, since they check that no probe outlives a run. Those that need root are
    // ignored in a plain `cargo test`, so that one run without root says how many it skipped.
    let mut tests = cargo();
    tests
        .args(["test", "--workspace", "--release"])
        .env("LEAKHOUND_BIN", &leakhound)
        .env("LEAKHOUND_FAULT_BIN", &faulty)
        .env("LEAKHOUND_STATIC_BIN", &static_build);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        tests.args(["--", "--include-ignored"]);
    } else {
        eprintln!(
            "xtask: not root: the tests that attach real probes are reported as ignored, not run"
        );
    }
    run(&mut tests)?;
    // The parsers of what targets and users hand leakhound, on their seeds and beyond.
    fuzz::fuzz(root, fuzz::DEFAULT_SECONDS)
}
