//! The cost per allocation in a JVM and in a Node.js target, untraced and under leakhound with
//! the runtimes' own frames on and off (`--runtime-frames`), each target timing itself.

use super::*;

/// Rounds per configuration; the median is shown. Each round is a fresh process.
const RUNTIME_ROUNDS: usize = 3;
const CALLS_UNTRACED: u64 = 2_000_000;
/// Traced calls: about two seconds of each target under leakhound, so that its samples (one a
/// second) read the RSS split of a live target.
const CALLS_TRACED_JVM: u64 = 400_000;
const CALLS_TRACED_NODE: u64 = 50_000;

/// One runtime's row: ns per allocation (a JVM's allocate+free pair, a Node Buffer).
#[derive(Debug, Default)]
pub(super) struct RuntimeRow {
    pub(super) name: &'static str,
    pub(super) untraced: f64,
    pub(super) frames_on: f64,
    pub(super) frames_off: f64,
    /// The RSS split read at every sample in the last traced round (frames on): samples,
    /// mean and longest ms.
    pub(super) rss_split: Option<(u64, f64, f64)>,
}

/// How to start one runtime's target with a number of calls.
struct RuntimeTarget {
    name: &'static str,
    traced_calls: u64,
    command: Box<dyn Fn(u64) -> Command>,
}

/// Measures the JVM and Node rows, where `java`/`javac` and `node` are installed; a missing
/// runtime is a row left out, said on stderr.
pub(super) fn runtime_rows(root: &Path, leakhound: &Path, out: &Path) -> Result<Vec<RuntimeRow>> {
    let mut targets = Vec::new();
    if has_program("javac") && has_program("java") {
        let classes = out.join("java");
        fs::create_dir_all(&classes)?;
        crate::run(
            Command::new("javac")
                .args(["-nowarn", "-d"])
                .arg(&classes)
                .arg(root.join("bench/AllocLoop.java")),
        )?;
        targets.push(RuntimeTarget {
            name: "JVM 17, Unsafe.allocateMemory+freeMemory",
            traced_calls: CALLS_TRACED_JVM,
            command: Box::new(move |calls| {
                let mut command = Command::new("java");
                command
                    .args(["-Xmx64m", "-cp"])
                    .arg(&classes)
                    .args(["AllocLoop", &calls.to_string()]);
                command
            }),
        });
    } else {
        eprintln!("bench: no java/javac: the JVM row is left out");
    }
    if has_program("node") {
        let script = root.join("bench/alloc_loop.js");
        targets.push(RuntimeTarget {
            name: "Node.js, Buffer.allocUnsafeSlow(256)",
            traced_calls: CALLS_TRACED_NODE,
            command: Box::new(move |calls| {
                let mut command = Command::new("node");
                command.arg(&script).arg(calls.to_string());
                command
            }),
        });
    } else {
        eprintln!("bench: no node: the Node.js row is left out");
    }
    let mut rows = Vec::new();
    for target in &targets {
        let mut row = RuntimeRow {
            name: target.name,
            ..RuntimeRow::default()
        };
        let stats = out.join("runtime-stats.json");
        row.untraced = median_of_rounds(|| time_calls(target, CALLS_UNTRACED, None))?;
        row.frames_on = median_of_rounds(|| {
            time_calls(target, target.traced_calls, Some((leakhound, "on", &stats)))
        })?;
        row.rss_split = LeakhoundStats::read(&stats)?.rss_split;
        row.frames_off = median_of_rounds(|| {
            time_calls(
                target,
                target.traced_calls,
                Some((leakhound, "off", &stats)),
            )
        })?;
        rows.push(row);
    }
    Ok(rows)
}

fn has_program(name: &str) -> bool {
    Command::new(name)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn median_of_rounds(mut round: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut values = Vec::with_capacity(RUNTIME_ROUNDS);
    for _ in 0..RUNTIME_ROUNDS {
        values.push(round()?);
    }
    Ok(median(&mut values))
}

/// Runs the target for `calls`, traced by leakhound with `--runtime-frames` as given, and
/// returns the ns per call that the target measured.
fn time_calls(
    target: &RuntimeTarget,
    calls: u64,
    tracer: Option<(&Path, &str, &Path)>,
) -> Result<f64> {
    let mut command = (target.command)(calls);
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = Guard::spawn(&mut command)?;
    let stdout = lines_of(child.child.stdout.take().context("target stdout")?);
    let ready = wait_line(&stdout, |line| line.starts_with("ready "), PATIENCE)?;
    let pid = ready.trim_start_matches("ready ").trim().to_owned();
    let mut leakhound = match tracer {
        Some((leakhound, frames, stats)) => {
            let mut tracer = Guard::spawn(
                Command::new(leakhound)
                    .args(["record", "--pid", &pid, "--runtime-frames", frames])
                    .arg("--stats-json")
                    .arg(stats)
                    .args(["-o", "/dev/null", "-f", "folded"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped()),
            )?;
            let stderr = lines_of(tracer.child.stderr.take().context("leakhound stderr")?);
            wait_line(&stderr, |line| line.contains("attached to pid"), PATIENCE)?;
            // The reader lives as long as leakhound: a closed pipe would fail its next line.
            Some((tracer, stderr))
        }
        None => None,
    };
    child
        .child
        .stdin
        .as_mut()
        .context("target stdin")?
        .write_all(b"go\n")?;
    let line = wait_line(&stdout, |line| line.starts_with("ns "), PATIENCE)?;
    let ns: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("a time in {line:?}"))?;
    child
        .wait(PATIENCE)
        .with_context(|| format!("the {} target", target.name))?;
    if let Some((tracer, _stderr)) = &mut leakhound {
        // SAFETY: kill has no memory effects; the pid is our own unreaped child.
        unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
        tracer
            .wait(PATIENCE)
            .with_context(|| format!("leakhound on the {} target", target.name))?;
    }
    Ok(ns)
}

/// The rows as a table: ns per call and the ratio to untraced.
pub(super) fn print_runtime_rows(rows: &[RuntimeRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!(
        "runtimes: ns per allocation (the target's own timing, median of {RUNTIME_ROUNDS} processes)"
    );
    println!(
        "  {:<44} {:>10} {:>22} {:>22}",
        "target", "untraced", "runtime frames on", "runtime frames off"
    );
    for row in rows {
        println!(
            "  {:<44} {:>10.0} {:>13.0} ({:>6}) {:>13.0} ({:>6})",
            row.name,
            row.untraced,
            row.frames_on,
            ratio(row.frames_on / row.untraced),
            row.frames_off,
            ratio(row.frames_off / row.untraced),
        );
    }
    for row in rows {
        if let Some((samples, mean, max)) = row.rss_split {
            println!(
                "  {}: the RSS split (smaps and the runtime's ranges) took {mean:.2} ms per sample on average, at most {max:.2} ms ({samples} samples)",
                row.name
            );
        }
    }
}
