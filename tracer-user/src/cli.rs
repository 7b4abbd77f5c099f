//! Command-line arguments, turned into the plain configuration that the library takes.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{Output, RecordConfig, ReportConfig, TargetSpec},
    kernel::MapSizes,
    process::allocators::AllocLib,
    report::Format,
    unwind::UnwindMode,
};

#[derive(Debug, Parser)]
#[command(
    name = "leakhound",
    version,
    about = "Find the native memory a running process keeps, by call stack."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace a running process (--pid) or a command (after --) and report what it still holds.
    // Boxed: the record options are far larger than the others' (clippy::large_enum_variant).
    Record(Box<RecordArgs>),
    /// Render a saved recording again (no root needed), or compare two as a diff.
    Report(ReportArgs),
    /// Trace every process that matches a selector, found by scanning /proc, each pushed to
    /// a Pyroscope server (continuous mode for a node; see README, Fleet).
    Agent(Box<crate::agent::AgentArgs>),
    /// Print what leakhound reads of a running JVM's own metadata (for checking by hand).
    #[command(hide = true)]
    DebugJvm(DebugJvmArgs),
}

#[derive(Debug, Args)]
pub struct DebugJvmArgs {
    /// The JVM's process id.
    #[arg(long)]
    pub pid: u32,
    /// Resolve the pcs in this file (hex, one a line; `-` for stdin).
    #[arg(long, value_name = "FILE")]
    pub pcs: Option<PathBuf>,
    /// List every field, type and constant read from the VM's tables.
    #[arg(long)]
    pub tables: bool,
}

/// Sampling interval when --interval is not given.
pub const DEFAULT_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The shortest --interval. Each sample reads every stack's total from the kernel (about
/// 4 us each, so 64 ms for the default 16,384 stacks) and prints a line; 0.1 ms printed
/// about 9,700 lines a second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

const OUTPUT_HELP: &str = "Write the report here; repeat for several files. The file name's \
ending picks the format: .folded, .txt, .svg, .json, .pb.gz or .pprof (pprof), .diff.folded \
(first-to-last change), .leakhound.json (the whole recording, for `leakhound report`); other \
names use --format, else folded. Without -o the report goes to stdout.";

#[derive(Debug, Args)]
pub struct OutputArgs {
    #[arg(
        short,
        long = "output",
        value_name = "FILE",
        help = "Write the report here (repeatable); the file name's ending picks the format",
        long_help = OUTPUT_HELP
    )]
    pub outputs: Vec<PathBuf>,
    /// Format for stdout and for files whose ending does not say.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,
    /// Stacks listed in the text report.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
}

impl OutputArgs {
    /// Without -o the report goes to stdout (also when --save writes the recording).
    fn into_outputs(self, save: Option<PathBuf>, stdout_default: Format) -> Vec<Output> {
        let mut outputs: Vec<Output> = self
            .outputs
            .iter()
            .map(|path| Output {
                format: Format::from_path(path)
                    .or(self.format)
                    .unwrap_or(Format::Folded),
                path: Some(path.clone()),
            })
            .collect();
        if outputs.is_empty() {
            outputs.push(Output {
                path: None,
                format: self.format.unwrap_or(stdout_default),
            });
        }
        if let Some(path) = save {
            outputs.push(Output {
                path: Some(path),
                format: Format::Recording,
            });
        }
        outputs
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A recording saved with `-o FILE.leakhound.json` or `--save FILE`; give two (earlier
    /// first) to write the change between them (--format diff).
    #[arg(required = true, num_args = 1..=2, value_name = "RECORDING")]
    pub inputs: Vec<PathBuf>,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl ReportArgs {
    pub fn into_config(self) -> ReportConfig {
        let stdout_default = if self.inputs.len() == 2 {
            Format::Diff
        } else {
            Format::Text
        };
        ReportConfig {
            top: self.output.top,
            outputs: self.output.into_outputs(None, stdout_default),
            inputs: self.inputs,
        }
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The process to attach to.
    #[arg(
        short,
        long,
        conflicts_with = "command",
        required_unless_present = "command"
    )]
    pub pid: Option<u32>,
    /// Stop after this long (e.g. 30s, 500ms, 5m; a bare number is seconds).
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Sample every stack's outstanding bytes this often (100ms at least), for the trends, and
    /// print a progress line on stderr. Without it, samples are taken every second and nothing
    /// is printed.
    #[arg(short, long, value_parser = parse_interval)]
    pub interval: Option<Duration>,
    /// Count only allocations at least this old when tracing ends (e.g. 30s): what the
    /// process has held for a while, not what it is about to free.
    #[arg(long, value_parser = parse_duration, value_name = "DUR")]
    pub min_age: Option<Duration>,
    /// How to walk stacks: auto and dwarf unwind with each module's CFI (.eh_frame), so code
    /// built without frame pointers shows whole stacks; fp follows frame pointers only.
    #[arg(long, value_enum, default_value_t = UnwindMode::Auto)]
    pub unwind: UnwindMode,
    /// Java and JavaScript frames from the runtime's own metadata (HotSpot's vmStructs, V8's
    /// postmortem constants): compiled frames unwound by their recorded sizes, interpreted
    /// frames named from their slots. `off` leaves frame pointers and perf maps.
    #[arg(long, value_enum, default_value_t = RuntimeFrames::On)]
    pub runtime_frames: RuntimeFrames,
    /// Bytes of stack copied when a CFI walk asks user space for a rule (512 to 8192). A stack
    /// deeper than the copy is repaired up to the copy's end and marked [truncated].
    #[arg(long, value_name = "BYTES", default_value_t = 8192, value_parser = clap::value_parser!(u64).range(512..=8192))]
    pub stack_copy: u64,
    /// Record a sample of the allocations, one every BYTES bytes on average (e.g. 512k):
    /// each is picked with probability 1 - exp(-size/BYTES) and stands for size/p bytes, so
    /// totals are unbiased estimates, reported with a 95% interval. Allocations passed over
    /// cost no stack walk. Without it every allocation is recorded. Mappings are always
    /// recorded in full.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub sample_bytes: Option<u64>,
    /// A Node target's live JavaScript heap by allocation stack (origin js-heap), from V8's
    /// sampling heap profiler: opens the process's inspector (SIGUSR1) on its loopback for
    /// the trace, and closes it again at the end.
    #[arg(long)]
    pub js_heap: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Also save the whole recording here (JSON), to render again with `leakhound report`.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Write the session's statistics here (JSON): the attach time and every probe placed with
    /// its offset, the report's phase timings, and the kernel's counters.
    #[arg(long, value_name = "FILE")]
    pub stats_json: Option<PathBuf>,
    /// Show the kernel programs' own diagnostics (map updates that fail other than full),
    /// under the log target `leakhound::kernel`; as `RUST_LOG=leakhound::kernel=debug`.
    #[arg(long)]
    pub log_kernel: bool,
    /// Live allocations tracked at once (kernel map size).
    #[arg(long, default_value_t = MapSizes::default().max_allocs, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocs: u32,
    /// Distinct stacks kept (kernel map size).
    #[arg(long, default_value_t = MapSizes::default().max_stacks, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: u32,
    /// Threads of the target whose allocation calls are followed at once (kernel map size):
    /// each takes a slot by thread id, and a thread whose slot is taken goes to a map of as
    /// many entries beside the slots.
    #[arg(long, default_value_t = MapSizes::default().max_threads, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_threads: u32,
    /// Also hook this allocator: a library (or executable) as the target sees it, or a bare
    /// file name, with the prefix of its symbols after a colon (`libmy.so:my_` hooks
    /// `my_malloc`, `my_free`, ...). Repeatable. Allocators that define `malloc`, or
    /// `je_malloc`, `_rjem_malloc`, `mi_malloc` or `tc_malloc`, are found without it.
    #[arg(long, value_name = "PATH[:PREFIX]", value_parser = AllocLib::parse)]
    pub alloc_lib: Vec<AllocLib>,
    #[command(flatten)]
    pub push: crate::push::PushArgs,
    /// For a JVM: take its class histogram (`GC.class_histogram`, through the attach
    /// mechanism) at the first and the last sample, and report the classes whose bytes grew
    /// as java-heap stacks. Each histogram runs a full GC in the JVM.
    #[arg(long)]
    pub jvm_heap_histogram: bool,
    /// Also see mapping calls that bypass libc's wrappers (raw `syscall` instructions in the
    /// program's own code or a library's), at the kernel's syscall tracepoints. They are on
    /// by themselves for Go programs and static executables; elsewhere they are left off,
    /// since while they are attached every system call on the machine is slower (about 95 ns
    /// more per traced malloc here).
    #[arg(long)]
    pub syscall_tracepoints: bool,
    /// The command to launch and trace from its first allocation.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

impl RecordArgs {
    pub fn into_config(self) -> RecordConfig {
        let target = match self.pid {
            Some(pid) => TargetSpec::Pid(pid),
            None => TargetSpec::Command(self.command),
        };
        RecordConfig {
            target,
            duration: self.duration,
            interval: self.interval,
            sample_every: self.interval.unwrap_or(DEFAULT_SAMPLE_EVERY),
            min_age: self.min_age,
            unwind: self.unwind,
            runtime_frames: self.runtime_frames == RuntimeFrames::On,
            js_heap: self.js_heap,
            top: self.output.top,
            outputs: self.output.into_outputs(self.save, Format::Text),
            sizes: MapSizes {
                max_allocs: self.max_allocs,
                max_stacks: self.max_stacks,
                max_threads: self.max_threads,
                stack_copy: self.stack_copy,
                ..MapSizes::default()
            },
            alloc_libs: self.alloc_lib,
            sample_bytes: self.sample_bytes,
            push: self.push.into_config(),
            jvm_heap_histogram: self.jvm_heap_histogram,
            syscall_tracepoints: self.syscall_tracepoints,
        }
    }
}

/// Whether runtime metadata names and unwinds Java and JavaScript frames (`--runtime-frames`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeFrames {
    On,
    Off,
}

/// `4096`, `512k`, `512KiB`, `1m`, `1MiB`, `1g`: binary multiples, case-insensitive.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a size (try 4096, 512k or 1m)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use k, m or g)"
            ));
        }
    };
    let bytes = value
        .checked_mul(1 << shift)
        .filter(|bytes| (1..=tracer_common::sampling::MAX_MEAN).contains(bytes))
        .ok_or_else(|| format!("'{text}' must be between 1 byte and 64 GiB"))?;
    Ok(bytes)
}

/// `500ms`, `2s`, `1.5m`, `1h`, or a bare number of seconds. Zero is refused: a zero
/// duration or interval is always a mistake.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (try 10s, 500ms or 2m)"))?;
    let scale = match unit.trim() {
        "" | "s" | "sec" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit '{other}' in '{text}' (use ms, s, m or h)"
            ));
        }
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("'{text}' must be longer than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration of at least [`MIN_INTERVAL`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < MIN_INTERVAL {
        return Err(format!(
            "'{text}' is shorter than the minimum of {} ms: each sample reads every stack from the kernel",
            MIN_INTERVAL.as_millis()
        ));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RecordConfig, clap::Error> {
        match Cli::try_parse_from(args)?.command {
            Command::Record(record) => Ok(record.into_config()),
            Command::Report(_) | Command::DebugJvm(_) | Command::Agent(_) => {
                panic!("expected record")
            }
        }
    }

    fn parse_report(args: &[&str]) -> Result<ReportConfig, clap::Error> {
        match Cli::try_parse_from(args)?.command {
            Command::Report(report) => Ok(report.into_config()),
            Command::Record(_) | Command::DebugJvm(_) | Command::Agent(_) => {
                panic!("expected report")
            }
        }
    }

    #[test]
    fn debug_jvm_takes_a_pid_and_an_optional_pc_file() {
        let Command::DebugJvm(args) =
            Cli::try_parse_from(["leakhound", "debug-jvm", "--pid", "7", "--pcs", "-"])
                .unwrap()
                .command
        else {
            panic!("expected debug-jvm");
        };
        assert_eq!((args.pid, args.pcs), (7, Some(PathBuf::from("-"))));
        assert!(Cli::try_parse_from(["leakhound", "debug-jvm"]).is_err());
    }

    #[test]
    fn samples_every_second_unless_an_interval_is_given() {
        let config = parse(&["leakhound", "record", "-p", "1"]).unwrap();
        assert_eq!(config.interval, None);
        assert_eq!(config.sample_every, Duration::from_secs(1));
        assert_eq!(config.min_age, None);
        let config = parse(&[
            "leakhound",
            "record",
            "-p",
            "1",
            "-i",
            "250ms",
            "--min-age",
            "1m",
        ])
        .unwrap();
        assert_eq!(config.interval, Some(Duration::from_millis(250)));
        assert_eq!(config.sample_every, Duration::from_millis(250));
        assert_eq!(config.min_age, Some(Duration::from_secs(60)));
    }

    #[test]
    fn save_adds_a_recording_and_keeps_stdout() {
        let config = parse(&["leakhound", "record", "-p", "1", "--save", "r.json"]).unwrap();
        let outputs: Vec<_> = config
            .outputs
            .iter()
            .map(|o| (o.path.clone(), o.format))
            .collect();
        assert_eq!(
            outputs,
            [
                (None, Format::Text),
                (Some(PathBuf::from("r.json")), Format::Recording)
            ]
        );
    }

    #[test]
    fn report_takes_one_or_two_recordings() {
        let config = parse_report(&["leakhound", "report", "a.leakhound.json"]).unwrap();
        assert_eq!(config.outputs[0].format, Format::Text);
        let config = parse_report(&[
            "leakhound",
            "report",
            "a.leakhound.json",
            "b.leakhound.json",
        ])
        .unwrap();
        assert_eq!(config.inputs.len(), 2);
        assert_eq!(config.outputs[0].format, Format::Diff);
        let config =
            parse_report(&["leakhound", "report", "a", "-o", "x.pb.gz", "--top", "3"]).unwrap();
        assert_eq!(config.outputs[0].format, Format::Pprof);
        assert_eq!(config.top, 3);
        assert!(parse_report(&["leakhound", "report"]).is_err());
        assert!(parse_report(&["leakhound", "report", "a", "b", "c"]).is_err());
    }

    #[test]
    fn intervals_have_a_minimum() {
        assert_eq!(parse_interval("100ms"), Ok(MIN_INTERVAL));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        let err = parse_interval("0.0001").unwrap_err();
        assert!(err.contains("minimum of 100 ms"), "{err}");
        assert!(parse_interval("99ms").is_err());
        assert!(parse(&["leakhound", "record", "-p", "1", "-i", "0.0001"]).is_err());
        // --duration has no such floor.
        assert!(parse(&["leakhound", "record", "-p", "1", "-d", "10ms"]).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn pid_or_command_but_not_both() {
        let config = parse(&["leakhound", "record", "--pid", "42"]).unwrap();
        assert!(matches!(config.target, TargetSpec::Pid(42)));
        let config = parse(&["leakhound", "record", "--", "./demo", "--flag"]).unwrap();
        let TargetSpec::Command(argv) = config.target else {
            panic!("expected a command")
        };
        assert_eq!(argv, ["./demo", "--flag"]);
        assert!(parse(&["leakhound", "record", "--pid", "1", "--", "/bin/true"]).is_err());
        assert!(parse(&["leakhound", "record"]).is_err());
        assert!(parse(&["leakhound", "record", "--pid", "x"]).is_err());
        assert!(parse(&["leakhound", "record", "--pid", "1", "--duration", "abc"]).is_err());
    }

    #[test]
    fn outputs_take_their_format_from_the_extension() {
        let config = parse(&[
            "leakhound",
            "record",
            "-p",
            "1",
            "-o",
            "a.folded",
            "-o",
            "b.txt",
            "-o",
            "c",
            "--format",
            "text",
        ])
        .unwrap();
        let formats: Vec<_> = config.outputs.iter().map(|o| o.format).collect();
        assert_eq!(formats, [Format::Folded, Format::Text, Format::Text]);
        let config = parse(&["leakhound", "record", "-p", "1"]).unwrap();
        assert_eq!(config.outputs[0].path, None);
        assert_eq!(config.outputs[0].format, Format::Text);
    }

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("2M"), Ok(2 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("65g").is_err());
        assert!(parse_bytes("12q").is_err());
        assert!(parse_bytes("k").is_err());
        let config =
            parse(&["leakhound", "record", "-p", "1", "--sample-bytes", "64k"]).expect("valid");
        assert_eq!(config.sample_bytes, Some(64 << 10));
    }
}
