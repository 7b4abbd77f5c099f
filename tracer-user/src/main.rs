use std::{fs::File, io::Write as _, process::ExitCode};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use tracer_user::{
    cli::{Cli, Command},
    config::{Output, ReportConfig},
    model::Recording,
    report::{self, Format, Report},
    session,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match Cli::parse().command {
        Command::Record(args) => record(args),
        Command::Report(args) => match replay(&args.into_config()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("leakhound: error: {err:#}");
                eprintln!(
                    "  hint: give a recording saved with `-o FILE.leakhound.json` or `--save FILE`"
                );
                ExitCode::FAILURE
            }
        },
        Command::DebugJvm(args) => {
            match tracer_user::jit::hotspot::debug::run(args.pid, args.pcs.as_deref(), args.tables)
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("leakhound: error: {err:#}");
                    eprintln!("  hint: give the pid of a running HotSpot JVM, as root");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn record(args: tracer_user::cli::RecordArgs) -> ExitCode {
    let config = args.into_config();
    let outcome = session::record(&config);

    // Whatever was gathered is written, even when the session ended in an error.
    let mut failed = false;
    if let Some(recording) = &outcome.recording {
        match write_outputs(&config.outputs, config.top, &Report::new(recording)) {
            Ok(()) => {
                let files: Vec<String> = config
                    .outputs
                    .iter()
                    .filter_map(|output| Some(output.path.as_ref()?.display().to_string()))
                    .collect();
                if !files.is_empty() {
                    eprintln!("leakhound: wrote {}", files.join(", "));
                }
            }
            Err(err) => {
                eprintln!("leakhound: error: cannot write the report: {err:#}");
                eprintln!("  hint: check that the output directory exists and is writable");
                failed = true;
            }
        }
    }
    if let Some(error) = &outcome.error {
        eprintln!("leakhound: error: {error}");
        eprintln!("  hint: {}", error.hint());
        failed = true;
    }
    // The report is out; no probe may outlive this process.
    if let Some(detaching) = outcome.detaching {
        detaching.wait();
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `leakhound report`: the saved recordings through the same analysis and formats.
fn replay(config: &ReportConfig) -> anyhow::Result<()> {
    let recordings = config
        .inputs
        .iter()
        .map(|path| {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            report::read_recording(file).with_context(|| format!("reading {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<Recording>>>()?;
    let report = match recordings.as_slice() {
        [one] => Report::new(one),
        [before, after] => {
            if let Some(output) = config.outputs.iter().find(|o| o.format != Format::Diff) {
                let name = clap::ValueEnum::to_possible_value(&output.format)
                    .map_or_else(String::new, |v| v.get_name().to_owned());
                bail!(
                    "two recordings can only be compared as a diff, not as {name}; use --format diff or an output ending in .diff.folded"
                );
            }
            Report::compared(before, after)
        }
        _ => bail!("give one recording, or two to compare"),
    };
    write_outputs(&config.outputs, config.top, &report)
}

fn write_outputs(outputs: &[Output], top: usize, report: &Report) -> anyhow::Result<()> {
    for output in outputs {
        let renderer = output.format.renderer(top);
        match &output.path {
            Some(path) => {
                let mut file =
                    File::create(path).with_context(|| format!("creating {}", path.display()))?;
                renderer
                    .render(report, &mut file)
                    .with_context(|| format!("writing {}", path.display()))?;
                file.flush()?;
            }
            None => {
                let mut stdout = std::io::stdout().lock();
                renderer.render(report, &mut stdout)?;
                stdout.flush()?;
            }
        }
    }
    Ok(())
}
