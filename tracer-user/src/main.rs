use std::{fs::File, io::Write as _, process::ExitCode};

use clap::Parser as _;
use tracer_user::{
    cli::{Cli, Command},
    config::RecordConfig,
    model::Recording,
    session,
};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let Cli {
        command: Command::Record(args),
    } = Cli::parse();
    let config = args.into_config();
    let outcome = session::record(&config);

    // Whatever was gathered is written, even when the session ended in an error.
    let mut failed = false;
    if let Some(recording) = &outcome.recording
        && let Err(err) = write_outputs(&config, recording)
    {
        eprintln!("leakhound: error: cannot write the report: {err:#}");
        eprintln!("  hint: check that the output directory exists and is writable");
        failed = true;
    }
    if let Some(error) = &outcome.error {
        eprintln!("leakhound: error: {error}");
        eprintln!("  hint: {}", error.hint());
        failed = true;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_outputs(config: &RecordConfig, recording: &Recording) -> anyhow::Result<()> {
    use anyhow::Context as _;
    for output in &config.outputs {
        let renderer = output.format.renderer(config.top);
        match &output.path {
            Some(path) => {
                let mut file =
                    File::create(path).with_context(|| format!("creating {}", path.display()))?;
                renderer
                    .render(recording, &mut file)
                    .with_context(|| format!("writing {}", path.display()))?;
                file.flush()?;
            }
            None => {
                let mut stdout = std::io::stdout().lock();
                renderer.render(recording, &mut stdout)?;
                stdout.flush()?;
            }
        }
    }
    Ok(())
}
