//! `leakhound agent`: continuous mode for a whole node. It scans `/proc` every
//! `--scan-every`, and traces each process that matches its selector with a child of its own
//! running `leakhound record --pid N --push URL` ([`children`]): the same session, hardening
//! and pushes as a record run by hand, and a trace that fails or ends (the target exited or
//! exec'd) touches no other. New matches are attached at the next scan; exited ones are
//! dropped. At most `--max-targets` are traced at once (each holds its own kernel maps), and
//! the agent says when matching processes wait for a free place. A trace that fails while
//! its process lives on (a process caught before its dynamic loader mapped libc, a kernel
//! short of memory for the maps) is tried again after `--retry-after`, then after twice as
//! long each time, [`ATTEMPTS`] times in all. SIGTERM or SIGINT ends every
//! trace: each child detaches its probes and pushes a final profile before the agent exits.

pub mod children;
pub mod scan;
pub mod selector;

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

use children::Traced;
use scan::Identity;
use selector::Selector;

/// How long the end waits for the children: each waits up to [`crate::push::FINAL_WAIT`] for
/// its last pushes, after writing its report.
const END_WAIT: Duration = Duration::from_secs(40);

/// Traces started for one process and command line whose traces all failed, before the agent
/// leaves it untraced: a failure that repeats this often is not a passing one.
pub const ATTEMPTS: u32 = 4;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Trace processes whose command line (arguments joined by spaces) matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub match_cmdline: Option<String>,
    /// Trace processes in this cgroup or below it (a path as /proc/PID/cgroup shows it, such
    /// as /kubepods/burstable), or whose cgroup path contains this text (no leading /).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// Trace the processes of this container (its id, or the first digits of it).
    #[arg(long, value_name = "ID")]
    pub container: Option<String>,
    /// Look for new and exited processes this often.
    #[arg(long, value_name = "DUR", default_value = "10s", value_parser = crate::cli::parse_interval)]
    pub scan_every: Duration,
    /// Processes traced at once at most; further matches wait for a place (and are said).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_targets: u32,
    /// After a trace fails while its process lives on, try again after this long (twice as
    /// long after each further failure, 4 tries in all).
    #[arg(long, value_name = "DUR", default_value = "30s", value_parser = crate::cli::parse_interval)]
    pub retry_after: Duration,
    /// Record a sample of the allocations in each target (as `record --sample-bytes`).
    #[arg(long, value_name = "BYTES", value_parser = crate::cli::parse_bytes)]
    pub sample_bytes: Option<u64>,
    #[command(flatten)]
    pub push: crate::push::PushArgs,
}

/// The agent's plain configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub selector: Selector,
    pub scan_every: Duration,
    pub max_targets: usize,
    pub retry_after: Duration,
    /// What follows `record --pid N` in each child.
    pub record_args: Vec<String>,
}

impl AgentArgs {
    pub fn into_config(self) -> Result<AgentConfig, String> {
        let selector = Selector::new(self.match_cmdline.as_deref(), self.cgroup, self.container)?;
        let push = self
            .push
            .into_config()
            .ok_or("the agent pushes what it traces: give --push URL")?;
        let mut record_args = vec![
            "--push".to_owned(),
            push.url,
            "--push-every".to_owned(),
            format!("{}ms", push.every.as_millis()),
        ];
        if let Some(service) = push.service {
            record_args.extend(["--service".to_owned(), service]);
        }
        if let Some(bytes) = self.sample_bytes {
            record_args.extend(["--sample-bytes".to_owned(), bytes.to_string()]);
        }
        Ok(AgentConfig {
            selector,
            scan_every: self.scan_every,
            max_targets: self.max_targets as usize,
            retry_after: self.retry_after,
            record_args,
        })
    }
}

/// What the agent knows of a pid that matched.
enum Known {
    Traced(Traced),
    /// Its trace ended while the process lives on (it failed, or the process exec'd): traced
    /// again if it runs another command line that matches, or at `retry_at`.
    Ended {
        start: u64,
        cmdline_hash: u64,
        /// Traces of this process and command line that failed, one after the other.
        failures: u32,
        /// When to try again after a failure; `None` after a trace that ended well, or after
        /// [`ATTEMPTS`] failures.
        retry_at: Option<Instant>,
    },
}

/// The wait before the next try after `failures` failed traces, or `None` once there were
/// [`ATTEMPTS`]: `first`, then twice as long each time.
fn retry_delay(first: Duration, failures: u32) -> Option<Duration> {
    (failures < ATTEMPTS).then(|| first.saturating_mul(1 << failures.saturating_sub(1).min(16)))
}

pub struct Agent {
    config: AgentConfig,
    known: HashMap<u32, Known>,
    /// leakhound's own executable: its processes (this one, its children) are never traced.
    own_executable: Option<(u64, u64)>,
    /// Matching processes left untraced at the last scan because of the cap.
    waiting: usize,
}

impl Agent {
    pub fn new(config: AgentConfig) -> Self {
        Self {
            config,
            known: HashMap::new(),
            own_executable: scan::executable("self"),
            waiting: 0,
        }
    }

    fn traced(&self) -> usize {
        self.known
            .values()
            .filter(|known| matches!(known, Known::Traced(_)))
            .count()
    }

    /// Reaps ended traces, starts new ones, forgets processes that are gone.
    pub fn scan(&mut self) {
        let retry_after = self.config.retry_after;
        for (pid, known) in &mut self.known {
            if let Known::Traced(traced) = known
                && let Some(status) = traced.exited()
            {
                eprintln!("leakhound agent: pid {pid}: trace ended ({status})");
                // A failure right after a good trace counts from one again; a process that is
                // gone (it exited while its trace attached) is not tried again.
                let gone =
                    scan::identity(*pid).is_none_or(|now| now.start != traced.identity.start);
                let failures = if status.success() || gone {
                    0
                } else {
                    traced.failures + 1
                };
                *known = ended(
                    *pid,
                    traced.identity.start,
                    traced.cmdline_hash,
                    failures,
                    retry_after,
                );
            }
        }
        let now = Instant::now();
        let pids = scan::pids();
        let own = std::process::id();
        let mut running = self.traced();
        let mut waiting = 0;
        for &pid in &pids {
            if pid == own {
                continue;
            }
            let Some(identity) = scan::identity(pid) else {
                continue;
            };
            if let Some(Known::Traced(_)) = self.known.get(&pid) {
                continue;
            }
            let Some(seen) = scan::seen(pid) else {
                continue;
            };
            let cmdline_hash = hash(&seen.cmdline);
            let mut failures = 0;
            if let Some(Known::Ended {
                start,
                cmdline_hash: ended,
                failures: failed,
                retry_at,
            }) = self.known.get(&pid)
                && (*start, *ended) == (identity.start, cmdline_hash)
            {
                if !retry_at.is_some_and(|at| now >= at) {
                    continue;
                }
                failures = *failed;
            }
            if !self.config.selector.matches(&seen)
                || scan::executable(&pid.to_string()) == self.own_executable
            {
                continue;
            }
            if running >= self.config.max_targets {
                waiting += 1;
                continue;
            }
            self.start(identity, cmdline_hash, &seen.cmdline, failures);
            running += 1;
        }
        if waiting != self.waiting {
            if waiting > 0 {
                eprintln!(
                    "leakhound agent: {waiting} matching processes are not traced: {} are, the most --max-targets allows",
                    self.config.max_targets
                );
            } else {
                eprintln!("leakhound agent: every matching process is traced");
            }
            self.waiting = waiting;
        }
        // Memory stays bounded over days: only live processes are remembered.
        let live: HashSet<u32> = pids.into_iter().collect();
        self.known
            .retain(|pid, known| matches!(known, Known::Traced(_)) || live.contains(pid));
    }

    /// Starts a trace of `identity`, after `failures` failed ones of the same command line.
    fn start(&mut self, identity: Identity, cmdline_hash: u64, cmdline: &str, failures: u32) {
        let shown: String = crate::names::shown(cmdline).chars().take(200).collect();
        let pid = identity.pid;
        match Traced::start(identity, cmdline_hash, &self.config.record_args, failures) {
            Ok(traced) => {
                eprintln!("leakhound agent: pid {pid}: tracing `{shown}`");
                self.known.insert(pid, Known::Traced(traced));
            }
            Err(err) => {
                eprintln!("leakhound agent: pid {pid}: cannot start its trace: {err}");
                let known = ended(
                    pid,
                    identity.start,
                    cmdline_hash,
                    failures + 1,
                    self.config.retry_after,
                );
                self.known.insert(pid, known);
            }
        }
    }

    /// Ends every trace: each child detaches and pushes its final profile. Returns how many
    /// had to be killed.
    pub fn end(&mut self, why: &str) -> usize {
        let mut traced: Vec<(u32, Traced)> = self
            .known
            .drain()
            .filter_map(|(pid, known)| match known {
                Known::Traced(traced) => Some((pid, traced)),
                Known::Ended { .. } => None,
            })
            .collect();
        eprintln!(
            "leakhound agent: {why}: ending {} traces (each pushes a final profile)",
            traced.len()
        );
        for (_, child) in &traced {
            child.end();
        }
        let deadline = Instant::now() + END_WAIT;
        while !traced.is_empty() && Instant::now() < deadline {
            traced.retain_mut(|(pid, child)| match child.exited() {
                Some(status) => {
                    eprintln!("leakhound agent: pid {pid}: trace ended ({status})");
                    false
                }
                None => true,
            });
            std::thread::sleep(Duration::from_millis(50));
        }
        for (pid, child) in &mut traced {
            let status = child.kill();
            eprintln!(
                "leakhound agent: pid {pid}: its trace did not end within {} s and was killed ({status:?})",
                END_WAIT.as_secs()
            );
        }
        traced.len()
    }
}

/// A trace of `pid` that ended after `failures` failures in a row, said in one line when it
/// will be tried again or not.
fn ended(pid: u32, start: u64, cmdline_hash: u64, failures: u32, retry_after: Duration) -> Known {
    let retry_at = if failures == 0 {
        None
    } else {
        match retry_delay(retry_after, failures) {
            Some(delay) => {
                eprintln!(
                    "leakhound agent: pid {pid}: its trace failed ({failures} of {ATTEMPTS} tries): trying again in {} s",
                    delay.as_secs_f64()
                );
                Some(Instant::now() + delay)
            }
            None => {
                eprintln!(
                    "leakhound agent: pid {pid}: its trace failed {ATTEMPTS} times (the lines above say why): not traced again unless it runs another command line"
                );
                None
            }
        }
    };
    Known::Ended {
        start,
        cmdline_hash,
        failures,
        retry_at,
    }
}

fn hash(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// `leakhound agent`: scans and traces until SIGTERM or SIGINT.
pub fn main(args: AgentArgs) -> ExitCode {
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("leakhound: error: {err}");
            eprintln!("  hint: leakhound agent --match-cmdline REGEX --push http://pyroscope:4040");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("leakhound: error: cannot start the agent's runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut agent = Agent::new(config);
    let scan_every = agent.config.scan_every;
    let why = runtime.block_on(async {
        let (Ok(mut sigint), Ok(mut sigterm)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return "no signal handler".to_owned();
        };
        let mut tick = tokio::time::interval(scan_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        eprintln!(
            "leakhound agent: scanning /proc every {:.1} s",
            scan_every.as_secs_f64()
        );
        loop {
            tokio::select! {
                _ = sigint.recv() => break "SIGINT".to_owned(),
                _ = sigterm.recv() => break "SIGTERM".to_owned(),
                _ = tick.tick() => agent.scan(),
            }
        }
    });
    if agent.end(&why) > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn config(args: &[&str]) -> Result<super::AgentConfig, String> {
        match Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Agent(agent) => agent.into_config(),
            _ => panic!("expected agent"),
        }
    }

    #[test]
    fn each_child_gets_the_push_options() {
        let config = config(&[
            "leakhound",
            "agent",
            "--match-cmdline",
            "^/usr/bin/api",
            "--push",
            "http://p:4040",
            "--push-every",
            "30s",
            "--service",
            "api",
            "--sample-bytes",
            "512k",
        ])
        .unwrap();
        assert_eq!(
            config.record_args,
            [
                "--push",
                "http://p:4040",
                "--push-every",
                "30000ms",
                "--service",
                "api",
                "--sample-bytes",
                "524288"
            ]
        );
        assert_eq!(config.scan_every, std::time::Duration::from_secs(10));
        assert_eq!(config.max_targets, 16);
    }

    #[test]
    fn failed_traces_wait_twice_as_long_each_time_then_stop() {
        let first = std::time::Duration::from_secs(30);
        let waits: Vec<_> = (1..=super::ATTEMPTS + 1)
            .map(|failures| super::retry_delay(first, failures).map(|d| d.as_secs()))
            .collect();
        assert_eq!(waits, [Some(30), Some(60), Some(120), None, None]);
    }

    #[test]
    fn a_selector_and_a_store_are_required() {
        assert!(config(&["leakhound", "agent", "--push", "http://p"]).is_err());
        assert!(config(&["leakhound", "agent", "--cgroup", "/kubepods"]).is_err());
        assert!(config(&["leakhound", "agent", "--container", "abc", "--push", "u"]).is_ok());
        assert!(
            config(&[
                "leakhound",
                "agent",
                "--cgroup",
                "x",
                "--push",
                "u",
                "--max-targets",
                "0"
            ])
            .is_err()
        );
    }
}
