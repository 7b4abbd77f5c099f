//! The malloc(64)+free microbenchmark under each tracer, synchronised by a handshake.

use super::*;
#[derive(Default)]
pub(super) struct Row {
    pub(super) threads: u32,
    pub(super) untraced: f64,
    pub(super) leakhound: f64,
    pub(super) leakhound_fp: f64,
    pub(super) leakhound_sampled: f64,
    pub(super) floor_entry: f64,
    pub(super) floor_same_points: f64,
    pub(super) floor_same_points_perf: f64,
    pub(super) bpftrace_count: f64,
    pub(super) heaptrack: f64,
    pub(super) free_skip: u64,
}

pub(super) enum Tracer<'a> {
    None,
    /// leakhound with extra options.
    Leakhound(&'a Path, &'a [&'a str]),
    /// A bpftrace script; `BEGIN` prints the handshake line.
    Bpftrace(String),
    /// Empty BPF programs on malloc's entry and return and on free, each moved by as many
    /// bytes as leakhound moves it: the floor at leakhound's own probe points.
    /// The allocator, the probes' offsets, and whether to use multi-uprobe links.
    Noop(&'a Libc, Skips, bool),
    Heaptrack(&'a Path),
}

pub(super) struct Bench<'a> {
    pub(super) binary: &'a Path,
    pub(super) threads: u32,
    /// An allocator to run the benchmark with (LD_PRELOAD), instead of glibc's.
    pub(super) preload: Option<&'a Path>,
}

/// How far past their entries leakhound put its probes on malloc and free.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Skips {
    pub(super) malloc: u64,
    pub(super) free: u64,
}

#[derive(Default)]
pub(super) struct Measured {
    pub(super) ns: f64,
    /// What leakhound said of its run, when it traced this one.
    pub(super) stats: Option<LeakhoundStats>,
}

impl Measured {
    /// How far past their symbols leakhound placed `allocator`'s malloc and free probes, from
    /// its statistics (where it placed each).
    pub(super) fn skips(&self, allocator: &Libc) -> Skips {
        self.stats
            .as_ref()
            .map_or(Skips::default(), |stats| stats.skips(allocator))
    }
}

impl Bench<'_> {
    pub(super) fn measure(&self, total_pairs: u64, tracer: Tracer<'_>) -> Result<Measured> {
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
        if let Some(preload) = self.preload {
            command.env("LD_PRELOAD", preload);
        }
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
        let mut stats_file = None;
        let mut noop = None;
        match &tracer {
            Tracer::None | Tracer::Heaptrack(_) => {}
            Tracer::Leakhound(leakhound, extra) => {
                let stats = self.binary.with_file_name(format!("stats-{pid}.json"));
                let _ = fs::remove_file(&stats);
                let mut child = Guard::spawn(
                    Command::new(leakhound)
                        .args(["record", "--pid", &pid.to_string(), "-f", "text"])
                        .arg("--stats-json")
                        .arg(&stats)
                        .args(*extra)
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped()),
                )?;
                stats_file = Some(stats);
                let stderr = lines_of(child.child.stderr.take().context("leakhound stderr")?);
                // The handshake only: the figures come from the statistics file.
                loop {
                    let line = wait_line(&stderr, |_| true, PATIENCE)?;
                    if line.starts_with("leakhound: attached") {
                        break;
                    }
                    if line.contains("error") {
                        bail!("leakhound: {line}");
                    }
                }
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
            Tracer::Noop(libc, skips, multi) => {
                noop = Some(if *multi {
                    NoopProbes::attach_multi(libc, *skips, pid)?
                } else {
                    NoopProbes::attach(libc, *skips, pid)?
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
        if let Some(path) = stats_file {
            measured.stats = Some(LeakhoundStats::read(&path)?);
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
    pub(super) fn label(&self) -> &'static str {
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

pub(super) fn noop_script(libc: &Path) -> String {
    let libc = libc.display();
    format!(
        "BEGIN {{ printf(\"bench: attached\\n\"); }} \
         uprobe:{libc}:malloc {{}} uretprobe:{libc}:malloc {{}} uprobe:{libc}:free {{}}"
    )
}

pub(super) fn count_script(libc: &Path) -> String {
    let libc = libc.display();
    format!(
        "BEGIN {{ printf(\"bench: attached\\n\"); }} \
         uprobe:{libc}:malloc {{ @malloc = count(); }} \
         uretprobe:{libc}:malloc {{ @malloc_ret = count(); }} \
         uprobe:{libc}:free {{ @free = count(); }}"
    )
}

pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
