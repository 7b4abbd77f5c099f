use std::{
    process::ExitCode,
    sync::{Arc, Mutex},
    time::Instant,
};

use clap::Parser as _;
use tracer_user::{
    cli::{Cli, Command},
    config::{Output, ReportConfig},
    events::Events,
    model::Recording,
    output_files,
    report::{self, Format, Report},
    session,
    stats::Stats,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    // Read at load to decide whether the kernel programs log at all (kernel::loader).
    if matches!(&cli.command, Command::Record(args) if args.log_kernel) {
        logger.filter_module("leakhound::kernel", log::LevelFilter::Debug);
    }
    logger.init();
    match cli.command {
        Command::Record(args) => record(*args),
        Command::Report(args) => replay(&args.into_config()),
        Command::Agent(args) => tracer_user::agent::main(*args),
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
    let stats_path = args.stats_json.clone();
    let config = args.into_config();
    // A report that cannot be written is refused before any probe is placed.
    if refuse_bad_outputs(&config.outputs) {
        return ExitCode::FAILURE;
    }
    let stats = Arc::new(Mutex::new(Stats::default()));
    let observed = Arc::clone(&stats);
    let events = Events::stderr_and(move |event| {
        if let Ok(mut stats) = observed.lock() {
            stats.observe(event);
        }
    });
    let outcome = session::record(&config, events);

    // Whatever was gathered is written, even when the session ended in an error.
    let mut failed = false;
    if let Some(recording) = &outcome.recording {
        let started = Instant::now();
        failed |= !write_outputs(&config.outputs, config.top, &Report::new(recording));
        if let Ok(mut stats) = stats.lock() {
            stats.outputs_ms = Some(started.elapsed().as_secs_f64() * 1e3);
            stats.counters = recording.counters.by_name();
        }
    }
    if let Some(path) = &stats_path {
        let written = stats
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))
            .and_then(|stats| stats.write(path));
        if let Err(err) = written {
            eprintln!("leakhound: error: cannot write {}: {err}", path.display());
            failed = true;
        }
    }
    if let Some(error) = &outcome.error {
        eprintln!("leakhound: error: {error}");
        eprintln!("  hint: {}", error.hint());
        failed = true;
    }
    // Continuous mode: the final profile was queued with the report; give it a bounded wait.
    if let Some(pushing) = outcome.pushing {
        let url = pushing.config.url.clone();
        let (tally, last_error) = pushing.finish(tracer_user::push::FINAL_WAIT);
        eprintln!(
            "leakhound: pushed {} profiles to {url} ({} failed, {} dropped from a full queue)",
            tally.pushed, tally.failed, tally.dropped
        );
        if let Some(error) = last_error.filter(|_| tally.failed > 0) {
            eprintln!("  last push error: {error}");
        }
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

/// Prints one line per output path that cannot be written, and a hint; true if there was one.
fn refuse_bad_outputs(outputs: &[Output]) -> bool {
    let problems = output_files::check_all(outputs);
    for problem in &problems {
        eprintln!("leakhound: error: {problem}");
    }
    let mut hints: Vec<&str> = problems.iter().map(|p| p.hint()).collect();
    hints.dedup();
    for hint in hints {
        eprintln!("  hint: {hint}");
    }
    !problems.is_empty()
}

/// Writes every output, each on its own; says what was written and what failed. Returns
/// whether all were written.
fn write_outputs(outputs: &[Output], top: usize, report: &Report) -> bool {
    let written = output_files::write_all(outputs, top, report);
    if !written.files.is_empty() {
        let files: Vec<String> = written
            .files
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        eprintln!("leakhound: wrote {}", files.join(", "));
    }
    for failure in &written.failures {
        eprintln!("leakhound: error: {failure}");
    }
    if !written.failures.is_empty() {
        eprintln!(
            "  hint: the other reports were written; check the directory of each failed one (it must exist, be writable and have space)"
        );
    }
    written.failures.is_empty()
}

/// `leakhound report`: the saved recordings through the same analysis and formats.
fn replay(config: &ReportConfig) -> ExitCode {
    if refuse_bad_outputs(&config.outputs) {
        return ExitCode::FAILURE;
    }
    let recordings = match config
        .inputs
        .iter()
        .map(|path| report::load_recording(path))
        .collect::<Result<Vec<Recording>, _>>()
    {
        Ok(recordings) => recordings,
        Err(err) => {
            eprintln!("leakhound: error: {err}");
            eprintln!("  hint: {}", err.hint());
            return ExitCode::FAILURE;
        }
    };
    let report = match recordings.as_slice() {
        [one] => Report::new(one),
        [before, after] => {
            if let Some(output) = config.outputs.iter().find(|o| o.format != Format::Diff) {
                let name = clap::ValueEnum::to_possible_value(&output.format)
                    .map_or_else(String::new, |v| v.get_name().to_owned());
                eprintln!(
                    "leakhound: error: two recordings can only be compared as a diff, not as {name}"
                );
                eprintln!("  hint: use --format diff or an output ending in .diff.folded");
                return ExitCode::FAILURE;
            }
            Report::compared(before, after)
        }
        _ => {
            eprintln!("leakhound: error: give one recording, or two to compare");
            eprintln!("  hint: leakhound report REC.leakhound.json [LATER.leakhound.json]");
            return ExitCode::FAILURE;
        }
    };
    if write_outputs(&config.outputs, config.top, &report) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
