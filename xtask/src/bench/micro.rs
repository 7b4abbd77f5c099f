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
    pub(super) attach_ms: Option<f64>,
    pub(super) libc: Option<PathBuf>,
    /// Every moved probe leakhound logged: (function, bytes past its entry, the entry's file
    /// offset).
    pub(super) moved: Vec<(String, u64, u64)>,
}

impl Measured {
    /// The probes' offsets in `allocator` as leakhound placed them.
    pub(super) fn skips(&self, allocator: &Libc) -> Skips {
        let skip = |name: &str, entry: u64| {
            self.moved
                .iter()
                .find(|(moved, _, at)| moved == name && *at == entry)
                .map_or(0, |(_, skip, _)| *skip)
        };
        Skips {
            malloc: skip("malloc", allocator.malloc),
            free: skip("free", allocator.free),
        }
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
                    if let Some(moved) = parse_moved_probe(&line) {
                        measured.moved.push(moved);
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

/// `probe offset: NAME at +SKIP (file offset 0xSTART, ...)`, tracer-user's ELF module's
/// debug line for a probe moved past its function's entry.
pub(super) fn parse_moved_probe(line: &str) -> Option<(String, u64, u64)> {
    let rest = line.split("probe offset: ").nth(1)?;
    let (name, rest) = rest.split_once(" at +")?;
    let (skip, rest) = rest.split_once(' ')?;
    let start = rest.split("file offset 0x").nth(1)?;
    let start = start.split(|c: char| !c.is_ascii_hexdigit()).next()?;
    Some((
        name.to_owned(),
        skip.parse().ok()?,
        u64::from_str_radix(start, 16).ok()?,
    ))
}

pub(super) fn parse_attach_ms(line: &str) -> Option<f64> {
    line.rsplit_once(" in ")?
        .1
        .trim()
        .strip_suffix("ms")?
        .trim()
        .parse()
        .ok()
}
