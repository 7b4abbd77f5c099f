//! `cargo xtask bench`: leakhound's overhead against the kernel's trap floor, bpftrace and
//! heaptrack, and leakhound's own costs, measured in one run so that the ratios hold on a
//! noisy machine.
//!
//! Every traced run synchronises with a handshake, never a sleep: the benchmark prints
//! `ready PID` and waits on stdin; the tracer attaches; only once the tracer says it is
//! attached (leakhound's `attached` line, or a bpftrace `BEGIN` probe, which bpftrace fires
//! after attaching every other probe) does the benchmark get its `go`.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read, Write as _},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

mod allocators;
mod floor;
mod live;
mod micro;
mod processes;
mod runtimes;
mod servers;
mod stats;
mod table;
mod tracefs;

use allocators::*;
use floor::*;
use live::*;
use micro::*;
use processes::*;
use runtimes::*;
use servers::*;
use stats::*;
use table::*;
use tracefs::*;

/// Rounds per configuration; the table shows the median.
const ROUNDS: usize = 5;
/// Pairs per round, over all threads: enough for about half a second of traced work.
const PAIRS_UNTRACED: u64 = 8_000_000;
const PAIRS_HEAPTRACK: u64 = 1_000_000;
const PAIRS_TRAPPED: u64 = 100_000;
const THREAD_COUNTS: [u32; 2] = [1, 4];
/// The sampled configuration's mean bytes between samples (Go's heap profiler's default).
const SAMPLE_BYTES: &str = "512k";
/// How long a tracer may take to attach, or a round to finish, before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// What `cargo xtask bench` measures: everything; only the allocators and real servers
/// (`bench servers`), the part that depends on where probes go; only the million live blocks,
/// glibc and static builds (`bench live`); or only the JVM and Node.js rows (`bench runtimes`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Servers,
    Live,
    Runtimes,
}

/// Runs the benchmark with the glibc build `leakhound`, and the million-live-blocks part with
/// the static build too.
pub fn run(root: &Path, leakhound: &Path, static_build: &Path, scope: Scope) -> Result<()> {
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
    if scope == Scope::Runtimes {
        print_runtime_rows(&runtime_rows(root, leakhound, &out)?);
        check_no_probes_left();
        return Ok(());
    }
    ensure_packages(&["bpftrace", "heaptrack"])?;
    let alloc_bench = out.join("alloc_bench");
    let live_target = out.join("live_target");
    crate::run(
        Command::new("cc")
            .args([
                "-O2",
                "-pthread",
                "-fno-builtin-malloc",
                "-fno-builtin-free",
                "-o",
            ])
            .arg(&alloc_bench)
            .arg(root.join("bench/alloc_bench.c")),
    )?;
    // Frame pointers and no sibling calls: every recursion level is a frame on the stack.
    crate::run(
        Command::new("cc")
            .args([
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-fno-optimize-sibling-calls",
                "-o",
            ])
            .arg(&live_target)
            .arg(root.join("bench/live_target.c")),
    )?;
    let _tracefs = TracefsMount::ensure()?;

    let machine = machine_description();
    eprintln!("bench: {machine}");
    // Real servers first: the figures a user of a jemalloc service meets.
    let (servers, allocators) = if scope == Scope::Live {
        (Vec::new(), Vec::new())
    } else {
        (
            server_rows(leakhound)?,
            allocator_rows(&alloc_bench, leakhound)?,
        )
    };
    if scope == Scope::Servers {
        println!("\nleakhound bench on {machine}");
        print_server_table(&servers);
        print_allocator_table(&allocators);
        check_no_probes_left();
        return Ok(());
    }
    let mut attach_ms = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut libc = None;
    let thread_counts: &[u32] = if scope == Scope::Live {
        &[]
    } else {
        &THREAD_COUNTS
    };
    for &threads in thread_counts {
        let bench = Bench {
            binary: &alloc_bench,
            threads,
            preload: None,
        };
        let mut row = Row {
            threads,
            ..Row::default()
        };
        row.untraced = bench.measure(PAIRS_UNTRACED, Tracer::None)?.ns;
        let lh = bench.measure(PAIRS_TRAPPED, Tracer::Leakhound(leakhound, &[]))?;
        row.leakhound = lh.ns;
        // The frame-pointer walk, to show what CFI unwinding (the default) costs.
        row.leakhound_fp = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Leakhound(leakhound, &["--unwind", "fp"]),
            )?
            .ns;
        // Byte sampling at Go's default rate: most pairs skip the stack walk and the maps.
        row.leakhound_sampled = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Leakhound(leakhound, &["--sample-bytes", SAMPLE_BYTES]),
            )?
            .ns;
        let lh = lh.stats.context("leakhound's statistics")?;
        attach_ms.push(lh.attach_ms);
        let libc_info = match &libc {
            Some(info) => info,
            None => libc.insert(Libc::inspect(lh.libc.as_deref())?),
        };
        // How far past the symbols leakhound placed its probes (probe_offset.rs).
        let skips = lh.skips(libc_info);
        row.floor_entry = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Bpftrace(noop_script(&libc_info.path)),
            )?
            .ns;
        // The fair floor: an empty program at exactly leakhound's points, attached the way
        // leakhound attaches (multi-uprobe links); and the older way, one perf event each.
        row.floor_same_points = bench
            .measure(PAIRS_TRAPPED, Tracer::Noop(libc_info, skips, true))?
            .ns;
        row.floor_same_points_perf = bench
            .measure(PAIRS_TRAPPED, Tracer::Noop(libc_info, skips, false))?
            .ns;
        row.bpftrace_count = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Bpftrace(count_script(&libc_info.path)),
            )?
            .ns;
        row.heaptrack = bench.measure(PAIRS_HEAPTRACK, Tracer::Heaptrack(&out))?.ns;
        row.free_skip = skips.free;
        rows.push(row);
    }
    let live = live_report(leakhound, &live_target, &out)?;
    attach_ms.push(live.attach_ms);
    // The static build (musl, its allocator chosen in tracer-user's main.rs) on the same
    // target, right after: the report's time and peak RSS against the glibc build's.
    let live_static = live_report(static_build, &live_target, &out)?;
    let runtimes = if scope == Scope::Live {
        Vec::new()
    } else {
        runtime_rows(root, leakhound, &out)?
    };
    if scope == Scope::Live {
        print_live(&attach_ms, &live);
    } else {
        print_table(&machine, &rows, &attach_ms, &live);
    }
    print_static_comparison(&live, &live_static);
    print_server_table(&servers);
    print_allocator_table(&allocators);
    print_runtime_rows(&runtimes);
    check_no_probes_left();
    Ok(())
}

/// Installs the Debian packages the comparison needs, when missing.
pub(crate) fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    crate::run(Command::new("apt-get").args(["update", "-qq"]))?;
    crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn machine_description() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("model name"))
                .map(|name| name.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let glibc = command_line_output("ldd", &["--version"])
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().last())
        .unwrap_or("?")
        .to_owned();
    format!(
        "{cpu}, {cores} cores, kernel {}, glibc {glibc}",
        kernel.trim()
    )
}

fn command_line_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn scripts_name_the_three_probes() {
        let script = count_script(Path::new("/lib/libc.so.6"));
        assert_eq!(script.matches("count()").count(), 3);
        assert!(noop_script(Path::new("/l")).contains("uretprobe:/l:malloc {}"));
    }
}
