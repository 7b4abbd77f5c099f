//! Continuous mode: a pprof profile per period, pushed to a profile store that speaks
//! Pyroscope's ingest API (`POST /ingest`), while the trace goes on.
//!
//! The session renders a profile every `--push-every` and hands it to [`Pusher`], whose own
//! thread sends it; tracing never waits for the network. At most [`QUEUE`] profiles wait: a
//! newer one pushes out the oldest (counted), so memory stays bounded however long the store
//! is away. A failed push is retried with a doubling pause (1 s up to 60 s), each profile at
//! most [`ATTEMPTS`] times. At the end (any ending: duration, signal, exit, exec, OOM kill) a
//! final profile is pushed and leakhound waits at most [`FINAL_WAIT`] for the queue to drain.

pub mod ingest;
pub mod labels;
pub mod pusher;

use std::time::Duration;

use clap::Args;

pub use pusher::Pusher;

/// Profiles waiting at most.
pub const QUEUE: usize = 4;
/// Tries per profile.
pub const ATTEMPTS: u32 = 5;
/// How long the end of a trace waits for the last pushes.
pub const FINAL_WAIT: Duration = Duration::from_secs(10);
/// The shortest `--push-every`: each push reads every live allocation from the kernel.
pub const MIN_PUSH_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Push a pprof profile (inuse and alloc space and objects) to this Pyroscope server
    /// every --push-every, and once more when tracing ends: its base URL
    /// (http://pyroscope:4040), to which /ingest is added.
    #[arg(long, value_name = "URL")]
    pub push: Option<String>,
    /// How often to push (1s at least; e.g. 5m).
    #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_push_every, requires = "push")]
    pub push_every: Duration,
    /// The service name the profiles carry (default: the target's command name).
    #[arg(long, value_name = "NAME", requires = "push")]
    pub service: Option<String>,
}

impl PushArgs {
    pub fn into_config(self) -> Option<PushConfig> {
        Some(PushConfig {
            url: self.push?,
            every: self.push_every,
            service: self.service,
        })
    }
}

fn parse_push_every(text: &str) -> Result<Duration, String> {
    let every = crate::cli::parse_duration(text)?;
    if every < MIN_PUSH_EVERY {
        return Err(format!("--push-every must be at least {MIN_PUSH_EVERY:?}"));
    }
    Ok(every)
}

#[derive(Clone, Debug)]
pub struct PushConfig {
    pub url: String,
    pub every: Duration,
    pub service: Option<String>,
}

/// A session's continuous mode: where it pushes, under which labels, and the period's start.
pub struct Continuous {
    pub config: PushConfig,
    pub labels: labels::Labels,
    pusher: Pusher,
    /// The end of the last period pushed (UNIX seconds): the next one starts there.
    last_until: u64,
}

impl Continuous {
    /// Starts the push thread for the target `pid` running `command`.
    pub fn start(config: PushConfig, pid: u32, command: &str) -> std::io::Result<Self> {
        let labels = labels::Labels::of(pid, config.service.as_deref(), command);
        Ok(Self {
            config,
            labels,
            pusher: Pusher::start()?,
            last_until: unix_now(),
        })
    }

    /// Renders `recording` as pprof and queues it for the period that ends now.
    pub fn offer(&mut self, recording: &crate::model::Recording) {
        let mut pprof = Vec::new();
        let report = crate::report::Report::new(recording);
        if let Err(err) = crate::report::Format::Pprof
            .renderer(0)
            .render(&report, &mut pprof)
        {
            log::warn!("no profile pushed: rendering it failed: {err}");
            return;
        }
        let until = unix_now().max(self.last_until + 1);
        let request = ingest::request(
            &self.config.url,
            &self.labels,
            self.last_until,
            until,
            &pprof,
        );
        self.last_until = until;
        self.pusher.offer(request);
    }

    /// The last profile is queued: waits at most `wait` for the queue to drain.
    pub fn finish(self, wait: Duration) -> (pusher::PushTally, Option<String>) {
        self.pusher.finish(wait)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn push_of(args: &[&str]) -> Result<Option<super::PushConfig>, clap::Error> {
        match Cli::try_parse_from(args)?.command {
            Command::Record(record) => Ok(record.into_config().push),
            _ => panic!("expected record"),
        }
    }

    #[test]
    fn push_options() {
        let push = push_of(&[
            "leakhound",
            "record",
            "--pid",
            "1",
            "--push",
            "http://p:4040",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(push.url, "http://p:4040");
        assert_eq!(push.every, std::time::Duration::from_secs(300));
        assert_eq!(push.service, None);
        let push = push_of(&[
            "leakhound",
            "record",
            "--pid",
            "1",
            "--push",
            "http://p",
            "--push-every",
            "30s",
            "--service",
            "api",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(push.every, std::time::Duration::from_secs(30));
        assert_eq!(push.service.as_deref(), Some("api"));
        assert!(
            push_of(&["leakhound", "record", "--pid", "1"])
                .unwrap()
                .is_none()
        );
        // A period without a store, or a period too short, is refused.
        assert!(push_of(&["leakhound", "record", "--pid", "1", "--push-every", "1m"]).is_err());
        assert!(
            push_of(&[
                "leakhound",
                "record",
                "--pid",
                "1",
                "--push",
                "u",
                "--push-every",
                "100ms"
            ])
            .is_err()
        );
    }
}
