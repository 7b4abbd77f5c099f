//! Command-line arguments, turned into the plain configuration that the library takes.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{Output, RecordConfig, TargetSpec},
    kernel::MapSizes,
    report::Format,
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
    Record(RecordArgs),
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
    /// Print a short progress line on stderr this often.
    #[arg(short, long, value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Write the report here; repeat for several files. The extension picks the format
    /// (.folded, .txt, .svg); other names use --format. Without it the report goes to stdout.
    #[arg(short, long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,
    /// Format for stdout and for files whose extension does not say.
    #[arg(short, long, value_enum)]
    pub format: Option<Format>,
    /// Live allocations tracked at once (kernel map size).
    #[arg(long, default_value_t = MapSizes::default().max_allocs, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_allocs: u32,
    /// Distinct stacks kept (kernel map size).
    #[arg(long, default_value_t = MapSizes::default().max_stacks, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_stacks: u32,
    /// Stacks listed in the text report.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
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
        let outputs = if self.outputs.is_empty() {
            vec![Output {
                path: None,
                format: self.format.unwrap_or(Format::Text),
            }]
        } else {
            self.outputs
                .into_iter()
                .map(|path| {
                    let format = Format::from_path(&path)
                        .or(self.format)
                        .unwrap_or(Format::Folded);
                    Output {
                        path: Some(path),
                        format,
                    }
                })
                .collect()
        };
        RecordConfig {
            target,
            duration: self.duration,
            interval: self.interval,
            outputs,
            sizes: MapSizes {
                max_allocs: self.max_allocs,
                max_stacks: self.max_stacks,
                ..MapSizes::default()
            },
            top: self.top,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RecordConfig, clap::Error> {
        let cli = Cli::try_parse_from(args)?;
        let Command::Record(record) = cli.command;
        Ok(record.into_config())
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
}
