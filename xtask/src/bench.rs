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
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

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

pub fn run(root: &Path, leakhound: &Path) -> Result<()> {
    ensure_packages(&["bpftrace", "heaptrack"])?;
    let out = root.join("target/bench");
    fs::create_dir_all(&out)?;
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
    let mut attach_ms = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut libc = None;
    for threads in THREAD_COUNTS {
        let bench = Bench {
            binary: &alloc_bench,
            threads,
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
        attach_ms.extend(lh.attach_ms);
        let libc_info = match &libc {
            Some(info) => info,
            None => libc.insert(Libc::inspect(lh.libc.as_deref())?),
        };
        let free_skip = lh.free_skip.unwrap_or(0);
        row.floor_entry = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Bpftrace(noop_script(&libc_info.path)),
            )?
            .ns;
        // The fair floor: an empty program at exactly leakhound's points, attached the way
        // leakhound attaches (multi-uprobe links); and the older way, one perf event each.
        row.floor_same_points = bench
            .measure(PAIRS_TRAPPED, Tracer::Noop(libc_info, free_skip, true))?
            .ns;
        row.floor_same_points_perf = bench
            .measure(PAIRS_TRAPPED, Tracer::Noop(libc_info, free_skip, false))?
            .ns;
        row.bpftrace_count = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Bpftrace(count_script(&libc_info.path)),
            )?
            .ns;
        row.heaptrack = bench.measure(PAIRS_HEAPTRACK, Tracer::Heaptrack(&out))?.ns;
        row.free_skip = free_skip;
        rows.push(row);
    }
    let live = live_report(leakhound, &live_target, &out)?;
    attach_ms.push(live.attach_ms);
    print_table(&machine, &rows, &attach_ms, &live);
    check_no_probes_left();
    Ok(())
}

/// Installs the Debian packages the comparison needs, when missing.
fn ensure_packages(packages: &[&str]) -> Result<()> {
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

// ----- the microbenchmark --------------------------------------------------------------

#[derive(Default)]
struct Row {
    threads: u32,
    untraced: f64,
    leakhound: f64,
    leakhound_fp: f64,
    leakhound_sampled: f64,
    floor_entry: f64,
    floor_same_points: f64,
    floor_same_points_perf: f64,
    bpftrace_count: f64,
    heaptrack: f64,
    free_skip: u64,
}

enum Tracer<'a> {
    None,
    /// leakhound with extra options.
    Leakhound(&'a Path, &'a [&'a str]),
    /// A bpftrace script; `BEGIN` prints the handshake line.
    Bpftrace(String),
    /// Empty BPF programs on malloc's entry and return and on free, free moved by the given
    /// number of bytes as leakhound moves it: the floor at leakhound's own probe points.
    /// The libc, `free`'s probe offset, and whether to use multi-uprobe links.
    Noop(&'a Libc, u64, bool),
    Heaptrack(&'a Path),
}

struct Bench<'a> {
    binary: &'a Path,
    threads: u32,
}

#[derive(Default)]
struct Measured {
    ns: f64,
    attach_ms: Option<f64>,
    libc: Option<PathBuf>,
    free_skip: Option<u64>,
}

impl Bench<'_> {
    fn measure(&self, total_pairs: u64, tracer: Tracer<'_>) -> Result<Measured> {
        let per_thread = (total_pairs / u64::from(self.threads)).max(1);
        let args = [
            self.threads.to_string(),
            per_thread.to_string(),
            ROUNDS.to_string(),
        ];
        let mut command = match &tracer {
            Tracer::Heaptrack(out) => {
                let mut command = Command::new("heaptrack");
                command
                    .arg("-o")
                    .arg(out.join("heaptrack.alloc_bench"))
                    .arg(self.binary);
                command
            }
            _ => Command::new(self.binary),
        };
        let mut bench = Guard::spawn(
            command
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )?;
        let mut stdin = bench.child.stdin.take().context("bench stdin")?;
        let lines = lines_of(bench.child.stdout.take().context("bench stdout")?);
        let ready = wait_line(&lines, |line| line.starts_with("ready "), PATIENCE)?;
        let pid: u32 = ready["ready ".len()..].trim().parse()?;
        let mut measured = Measured::default();

        let mut tracer_process = None;
        let mut noop = None;
        match &tracer {
            Tracer::None | Tracer::Heaptrack(_) => {}
            Tracer::Leakhound(leakhound, extra) => {
                let mut child = Guard::spawn(
                    Command::new(leakhound)
                        .args(["record", "--pid", &pid.to_string(), "-f", "text"])
                        .args(*extra)
                        // Only the attach-time debug lines of the ELF module, which say where
                        // each probe goes; nothing is logged per event.
                        .env("RUST_LOG", "tracer_user::process::elf=debug")
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped()),
                )?;
                let stderr = lines_of(child.child.stderr.take().context("leakhound stderr")?);
                let attached = loop {
                    let line = wait_line(&stderr, |_| true, PATIENCE)?;
                    if let Some(rest) = line.strip_prefix("leakhound: attached to pid ") {
                        break rest.to_owned();
                    }
                    if let Some(skip) = line
                        .split("probe offset: free at +")
                        .nth(1)
                        .and_then(|rest| rest.split_whitespace().next())
                    {
                        measured.free_skip = skip.parse().ok();
                    }
                    if line.contains("error") {
                        bail!("leakhound: {line}");
                    }
                };
                measured.attach_ms = parse_attach_ms(&attached);
                measured.libc = attached
                    .split_once(" (")
                    .and_then(|(_, rest)| rest.split_once(',').map(|(path, _)| path.into()));
                // Drain the rest so that leakhound never blocks on a full pipe.
                thread::spawn(move || for _ in stderr {});
                tracer_process = Some(child);
            }
            Tracer::Bpftrace(script) => {
                let mut child = Guard::spawn(
                    Command::new("bpftrace")
                        .args(["-p", &pid.to_string(), "-e", script])
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null()),
                )?;
                let stdout = lines_of(child.child.stdout.take().context("bpftrace stdout")?);
                wait_line(&stdout, |line| line == "bench: attached", PATIENCE)
                    .context("bpftrace did not attach")?;
                thread::spawn(move || for _ in stdout {});
                tracer_process = Some(child);
            }
            Tracer::Noop(libc, free_skip, multi) => {
                noop = Some(if *multi {
                    NoopProbes::attach_multi(libc, *free_skip, pid)?
                } else {
                    NoopProbes::attach(libc, *free_skip, pid)?
                });
            }
        }

        writeln!(stdin, "go")?;
        let mut rounds = Vec::with_capacity(ROUNDS);
        while rounds.len() < ROUNDS {
            let line = wait_line(&lines, |line| line.starts_with("round "), PATIENCE)?;
            rounds.push(line["round ".len()..].trim().parse::<f64>()?);
        }
        drop(stdin);
        bench.wait(PATIENCE)?;
        drop(noop);
        // leakhound and bpftrace end when the traced process exits.
        if let Some(mut tracer) = tracer_process {
            tracer.wait(PATIENCE)?;
        }
        measured.ns = median(&mut rounds);
        eprintln!(
            "bench: {} thread(s), {}: {:.1} ns/pair (rounds {rounds:.1?})",
            self.threads,
            tracer.label(),
            measured.ns
        );
        Ok(measured)
    }
}

impl Tracer<'_> {
    fn label(&self) -> &'static str {
        match self {
            Tracer::None => "untraced",
            Tracer::Leakhound(_, []) => "leakhound",
            Tracer::Leakhound(..) => "leakhound (options)",
            Tracer::Bpftrace(script) if script.contains("count()") => "bpftrace count",
            Tracer::Bpftrace(_) => "bpftrace no-op",
            Tracer::Noop(..) => "no-op at leakhound's points",
            Tracer::Heaptrack(_) => "heaptrack",
        }
    }
}

fn noop_script(libc: &Path) -> String {
    let libc = libc.display();
    format!(
        "BEGIN {{ printf(\"bench: attached\\n\"); }} \
         uprobe:{libc}:malloc {{}} uretprobe:{libc}:malloc {{}} uprobe:{libc}:free {{}}"
    )
}

fn count_script(libc: &Path) -> String {
    let libc = libc.display();
    format!(
        "BEGIN {{ printf(\"bench: attached\\n\"); }} \
         uprobe:{libc}:malloc {{ @malloc = count(); }} \
         uretprobe:{libc}:malloc {{ @malloc_ret = count(); }} \
         uprobe:{libc}:free {{ @free = count(); }}"
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn parse_attach_ms(line: &str) -> Option<f64> {
    line.rsplit_once(" in ")?
        .1
        .trim()
        .strip_suffix("ms")?
        .trim()
        .parse()
        .ok()
}

// ----- the report cost with a million live blocks ----------------------------------------

struct LiveReport {
    attach_ms: f64,
    track_s: f64,
    /// From SIGINT to the report's files written.
    report_s: f64,
    /// What leakhound logged of the report's phases ("N addresses symbolized in X ms", ...).
    phases: Vec<String>,
    /// From SIGINT to exit: the probes' detach, which runs beside the report, is the rest.
    exit_s: f64,
    peak_rss_kib: i64,
    maps: Vec<(String, u64)>,
    summary: Vec<String>,
}

fn live_report(leakhound: &Path, target: &Path, out: &Path) -> Result<LiveReport> {
    let mut target = Guard::spawn(
        Command::new(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let mut stdin = target.child.stdin.take().context("target stdin")?;
    let lines = lines_of(target.child.stdout.take().context("target stdout")?);
    let ready = wait_line(&lines, |line| line.starts_with("ready "), PATIENCE)?;
    let pid = ready["ready ".len()..].trim().to_owned();
    let report = out.join("live-report.txt");
    let mut tracer = Guard::spawn(
        Command::new(leakhound)
            .args(["record", "--pid", &pid, "-o"])
            .arg(&report)
            .arg("-o")
            .arg(out.join("live-report.folded"))
            // For the phase timings of the report, symbolization among them.
            .env("RUST_LOG", "tracer_user::session=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let stderr = lines_of(tracer.child.stderr.take().context("leakhound stderr")?);
    let attached = wait_line(&stderr, |line| line.contains("attached to pid"), PATIENCE)?;
    let attach_ms = parse_attach_ms(&attached).unwrap_or(f64::NAN);

    let started = Instant::now();
    writeln!(stdin, "go")?;
    wait_line(
        &lines,
        |line| line.starts_with("done "),
        Duration::from_secs(180),
    )?;
    let track_s = started.elapsed().as_secs_f64();
    let maps = bpf_maps_of(tracer.child.id())?;

    // SAFETY: signalling a child that this process owns and has not yet reaped.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let mut phases = Vec::new();
    wait_line(
        &stderr,
        |line| {
            if let Some((_, phase)) = line.split_once("report: ") {
                phases.push(phase.to_owned());
            }
            line.starts_with("leakhound: wrote")
        },
        PATIENCE,
    )?;
    let report_s = signalled.elapsed().as_secs_f64();
    thread::spawn(move || for _ in stderr {});
    let (status, peak_rss_kib) = tracer.wait_rusage()?;
    let exit_s = signalled.elapsed().as_secs_f64();
    ensure!(status == 0, "leakhound exited with status {status:#x}");
    drop(stdin);
    target.wait(PATIENCE)?;

    let text = fs::read_to_string(&report).context("reading the live report")?;
    // The headline and every loss line (indented under `losses:`).
    let mut summary = Vec::new();
    let mut in_losses = false;
    for line in text.lines() {
        if line.starts_with("outstanding:") || line.starts_with("activity:") {
            summary.push(line.to_owned());
        }
        if line.starts_with("losses:") {
            in_losses = true;
            summary.push(line.to_owned());
        } else if in_losses && line.starts_with(' ') {
            summary.push(line.to_owned());
        } else {
            in_losses = false;
        }
    }
    Ok(LiveReport {
        attach_ms,
        track_s,
        report_s,
        phases,
        exit_s,
        peak_rss_kib,
        maps,
        summary,
    })
}

/// The BPF maps that process `pid` holds, with the kernel memory that bpftool reports. The
/// process's map descriptors give the ids (`map_id:` in their fdinfo): Debian's bpftool is
/// built without the `pids` field.
fn bpf_maps_of(pid: u32) -> Result<Vec<(String, u64)>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(entry?.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|line| line.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    let output = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool")?;
    let maps: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut held: Vec<(String, u64)> = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|map| map["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|map| {
            (
                map["name"].as_str().unwrap_or("?").to_owned(),
                map["bytes_memlock"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    held.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok(held)
}

// ----- output ---------------------------------------------------------------------------

fn print_table(machine: &str, rows: &[Row], attach_ms: &[f64], live: &LiveReport) {
    println!("\nleakhound bench on {machine}");
    println!(
        "malloc(64)+free, ns per pair (median of {ROUNDS} rounds; 4 threads: wall time over all pairs)\n"
    );
    println!(
        "| threads | configuration | ns/pair | × untraced | × floor (entry) | × floor (same points) |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    for row in rows {
        let skip = if row.free_skip > 0 {
            format!(" (free at +{})", row.free_skip)
        } else {
            String::new()
        };
        let entries = [
            ("untraced", row.untraced),
            (
                "no-op BPF at function entries (bpftrace), the trap floor",
                row.floor_entry,
            ),
            (
                &*format!("no-op BPF at leakhound's points{skip}, multi-uprobe links as leakhound"),
                row.floor_same_points,
            ),
            (
                "no-op BPF at leakhound's points, one perf event per probe",
                row.floor_same_points_perf,
            ),
            ("bpftrace, count() on the 3 probes", row.bpftrace_count),
            (
                "**leakhound**, default options (CFI unwinding)",
                row.leakhound,
            ),
            ("leakhound --unwind fp", row.leakhound_fp),
            (
                &*format!("leakhound --sample-bytes {SAMPLE_BYTES} (estimates)"),
                row.leakhound_sampled,
            ),
            ("heaptrack (LD_PRELOAD)", row.heaptrack),
        ];
        for (name, ns) in entries {
            println!(
                "| {} | {name} | {ns:.1} | {} | {} | {} |",
                row.threads,
                ratio(ns / row.untraced),
                ratio(ns / row.floor_entry),
                ratio(ns / row.floor_same_points)
            );
        }
    }
    println!("\ngoals, single thread / 4 threads:");
    let goal = |name: &str, value: &dyn Fn(&Row) -> f64, limit: f64| {
        let values: Vec<String> = rows
            .iter()
            .map(|row| format!("{:.2}", value(row)))
            .collect();
        let met = rows.iter().all(|row| value(row) <= limit);
        println!(
            "  {name}: {} (goal ≤ {limit}) {}",
            values.join(" / "),
            if met { "met" } else { "MISSED" }
        );
    };
    goal(
        "leakhound / trap floor at the entries",
        &|row| row.leakhound / row.floor_entry,
        1.15,
    );
    goal(
        "leakhound / no-op at leakhound's own points",
        &|row| row.leakhound / row.floor_same_points,
        1.15,
    );
    println!(
        "    (against the same points with one perf event per probe: {})",
        rows.iter()
            .map(|row| format!("{:.2}", row.leakhound / row.floor_same_points_perf))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    goal(
        "leakhound / bpftrace count-only",
        &|row| row.leakhound / row.bpftrace_count,
        0.70,
    );
    println!("  not full tracking, for comparison, single thread / 4 threads:");
    let sampled = |row: &Row| row.leakhound_sampled / row.floor_same_points;
    println!(
        "  leakhound --sample-bytes {SAMPLE_BYTES} / no-op at leakhound's points: {}",
        rows.iter()
            .map(|row| format!("{:.2}", sampled(row)))
            .collect::<Vec<_>>()
            .join(" / ")
    );

    let mut attach = attach_ms.to_vec();
    let attach_median = median(&mut attach);
    let map_bytes: u64 = live.maps.iter().map(|(_, bytes)| bytes).sum();
    println!("\nleakhound's own costs (1,000,000 live blocks across 10,000 stacks):");
    println!(
        "  attach (load, verify, attach all probes): median {attach_median:.0} ms over {} attaches",
        attach.len()
    );
    println!(
        "  tracking the 1M allocations: {:.2} s in the target",
        live.track_s
    );
    println!(
        "  report after SIGINT (read maps, symbolize, write .txt and .folded): {:.2} s (goal < 1 s) {}",
        live.report_s,
        if live.report_s < 1.0 { "met" } else { "MISSED" }
    );
    for phase in &live.phases {
        println!("    {phase}");
    }
    println!(
        "  exit after SIGINT (the kernel's detach of every probe, beside the report): {:.2} s",
        live.exit_s
    );
    println!(
        "  peak RSS: {:.1} MiB (goal < 200 MiB) {}",
        live.peak_rss_kib as f64 / 1024.0,
        if live.peak_rss_kib < 200 * 1024 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  BPF maps (bpftool memlock): {:.1} MiB in total",
        map_bytes as f64 / (1 << 20) as f64
    );
    for (name, bytes) in &live.maps {
        println!("    {name:<16} {:>10.1} KiB", *bytes as f64 / 1024.0);
    }
    println!("  the report said:");
    for line in &live.summary {
        println!("    {line}");
    }
}

/// Two decimals near 1, fewer far from it, where they mean nothing.
fn ratio(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}×")
    } else if value >= 0.01 {
        format!("{value:.2}×")
    } else {
        format!("{value:.4}×")
    }
}

fn check_no_probes_left() {
    let events = fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    if !events.trim().is_empty() {
        eprintln!("bench: warning: uprobe_events is not empty:\n{events}");
    }
}

// ----- processes ------------------------------------------------------------------------

/// A child that is killed if the bench fails before it is waited for, so that no tracer (and
/// no probe) outlives the run.
struct Guard {
    child: Child,
    reaped: bool,
}

impl Guard {
    fn spawn(command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Self {
            child,
            reaped: false,
        })
    }

    fn wait(&mut self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                ensure!(
                    status.success(),
                    "{:?} exited with {status}",
                    self.child.id()
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "child {} did not exit",
                self.child.id()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits with wait4, for the exit status and the peak resident set (KiB).
    fn wait_rusage(&mut self) -> Result<(i32, i64)> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; it is written by the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own unreaped child; both pointers are to live locals.
        let pid = unsafe { libc::wait4(self.child.id() as i32, &mut status, 0, &mut usage) };
        ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
        self.reaped = true;
        Ok((status, usage.ru_maxrss))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

fn wait_line(
    lines: &Receiver<String>,
    mut wanted: impl FnMut(&str) -> bool,
    patience: Duration,
) -> Result<String> {
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("timed out waiting for a line"),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the stream ended early"),
        }
    }
}

// ----- tracefs --------------------------------------------------------------------------

/// bpftrace's library removes its probes through tracefs; mount it for the run if needed.
struct TracefsMount {
    mounted: bool,
}

impl TracefsMount {
    fn ensure() -> Result<Self> {
        if Path::new("/sys/kernel/tracing/uprobe_events").exists() {
            return Ok(Self { mounted: false });
        }
        crate::run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
        Ok(Self { mounted: true })
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.mounted {
            check_no_probes_left();
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}

// ----- the no-op floor at any offset ------------------------------------------------------

/// libc as the benchmark maps it: its path and the file offsets of malloc and free.
struct Libc {
    path: PathBuf,
    malloc: u64,
    free: u64,
}

impl Libc {
    fn inspect(path: Option<&Path>) -> Result<Self> {
        use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
        let path = path.context("leakhound did not name the library it hooked")?;
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = object::File::parse(&*data)?;
        let offset_of = |name: &str| -> Result<u64> {
            let symbol = file
                .dynamic_symbols()
                .find(|symbol| symbol.name() == Ok(name))
                .with_context(|| format!("no {name} in {}", path.display()))?;
            let address = symbol.address();
            file.segments()
                .find(|segment| {
                    (segment.address()..segment.address() + segment.size()).contains(&address)
                })
                .map(|segment| address - segment.address() + segment.file_range().0)
                .with_context(|| format!("{name} is in no segment"))
        };
        Ok(Self {
            path: path.to_owned(),
            malloc: offset_of("malloc")?,
            free: offset_of("free")?,
        })
    }
}

/// Three empty BPF programs attached through perf_event_open's uprobe PMU, scoped to one
/// process as leakhound and bpftrace scope theirs. Dropping it closes the descriptors, which
/// detaches everything.
struct NoopProbes {
    _fds: Vec<OwnedFd>,
}

impl NoopProbes {
    fn attach(libc: &Libc, free_skip: u64, pid: u32) -> Result<Self> {
        let program = load_noop_program(false)?;
        let mut fds = Vec::new();
        for (offset, retprobe) in [
            (libc.malloc, false),
            (libc.malloc, true),
            (libc.free + free_skip, false),
        ] {
            let event = uprobe_event(&libc.path, offset, retprobe, pid)?;
            // PERF_EVENT_IOC_SET_BPF and PERF_EVENT_IOC_ENABLE (include/uapi/linux/perf_event.h).
            const SET_BPF: libc::c_ulong = 0x4004_2408;
            const ENABLE: libc::c_ulong = 0x2400;
            // SAFETY: both descriptors are open and owned here.
            let ok = unsafe {
                libc::ioctl(event.as_raw_fd(), SET_BPF, program.as_raw_fd()) == 0
                    && libc::ioctl(event.as_raw_fd(), ENABLE, 0) == 0
            };
            ensure!(
                ok,
                "attaching the no-op program: {}",
                std::io::Error::last_os_error()
            );
            fds.push(event);
        }
        fds.push(program);
        Ok(Self { _fds: fds })
    }
}

impl NoopProbes {
    /// The same three probes as two multi-uprobe links (entries, and malloc's return), as
    /// leakhound attaches its own.
    fn attach_multi(libc: &Libc, free_skip: u64, pid: u32) -> Result<Self> {
        let program = load_noop_program(true)?;
        let path = std::ffi::CString::new(libc.path.as_os_str().as_encoded_bytes())?;
        let mut fds = Vec::new();
        for (offsets, retprobe) in [
            (vec![libc.malloc, libc.free + free_skip], false),
            (vec![libc.malloc], true),
        ] {
            // union bpf_attr for BPF_LINK_CREATE: prog_fd, target_fd, attach_type, flags, then
            // uprobe_multi: path, offsets, ref_ctr_offsets, cookies, cnt, flags, pid.
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
            attr[8..12].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_ne_bytes());
            attr[16..24].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
            attr[24..32].copy_from_slice(&(offsets.as_ptr() as u64).to_ne_bytes());
            attr[48..52].copy_from_slice(&(offsets.len() as u32).to_ne_bytes());
            attr[52..56].copy_from_slice(&u32::from(retprobe).to_ne_bytes()); // BPF_F_UPROBE_MULTI_RETURN
            attr[56..60].copy_from_slice(&pid.to_ne_bytes());
            // SAFETY: attr is a valid bpf_attr for BPF_LINK_CREATE (28) whose pointers outlive
            // the call.
            let fd = unsafe {
                libc::syscall(libc::SYS_bpf, 28, attr.as_ptr(), attr.len() as libc::c_uint)
            };
            ensure!(
                fd >= 0,
                "creating a multi-uprobe link: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a new descriptor that nothing else owns.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        fds.push(program);
        Ok(Self { _fds: fds })
    }
}

/// `enum bpf_attach_type` in include/uapi/linux/bpf.h.
const BPF_TRACE_UPROBE_MULTI: u32 = 48;

/// `r0 = 0; exit`, as a kprobe-type program (which uprobes run).
fn load_noop_program(multi: bool) -> Result<OwnedFd> {
    let instructions: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
        0xb7, // BPF_JMP | BPF_EXIT
        0x95,
    ];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&2u32.to_ne_bytes()); // BPF_PROG_TYPE_KPROBE
    attr[4..8].copy_from_slice(&(instructions.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    if multi {
        // expected_attach_type = BPF_TRACE_UPROBE_MULTI, which multi-uprobe links require.
        attr[68..72].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_ne_bytes());
    }
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_LOAD (5) whose pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len() as libc::c_uint) };
    ensure!(
        fd >= 0,
        "loading the no-op program: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn uprobe_event(library: &Path, offset: u64, retprobe: bool, pid: u32) -> Result<OwnedFd> {
    let pmu: u32 = fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("no uprobe PMU")?
        .trim()
        .parse()?;
    let path = std::ffi::CString::new(library.as_os_str().as_encoded_bytes())?;
    // struct perf_event_attr: type, size, config (bit 0: retprobe, per
    // /sys/bus/event_source/devices/uprobe/format/retprobe), config1 = path, config2 = offset.
    const SIZE: usize = 128;
    let mut attr = [0u8; SIZE];
    attr[0..4].copy_from_slice(&pmu.to_ne_bytes());
    attr[4..8].copy_from_slice(&(SIZE as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&u64::from(retprobe).to_ne_bytes());
    attr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
    attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    attr[64..72].copy_from_slice(&offset.to_ne_bytes());
    // SAFETY: attr is a valid perf_event_attr whose path pointer outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            pid as libc::pid_t,
            -1,
            -1,
            libc::c_ulong::from(8u32), // PERF_FLAG_FD_CLOEXEC
        )
    };
    ensure!(
        fd >= 0,
        "perf_event_open (uprobe): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_attach_line() {
        let line = "leakhound: attached to pid 42 (/usr/lib/libc.so.6, 29 probes) in 131 ms";
        assert_eq!(parse_attach_ms(line), Some(131.0));
        assert_eq!(parse_attach_ms("attached"), None);
    }

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
