//! What a session says while it runs: that it attached, its progress, and notices. They leave
//! the session through an [`Events`] handle rather than being printed where they happen, so
//! that a live view (or a test) can subscribe; the binary prints them on stderr.

use std::{fmt, sync::Arc};

use crate::{
    kernel::attach::Placed,
    report::{estimate_mark, human_bytes},
    stats::{Phase, SampleCost},
};

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The probes are placed: what was hooked, how many probes and links, in how long.
    Attached {
        pid: u32,
        hooked: String,
        probes: usize,
        multi_uprobe_links: usize,
        millis: f64,
        /// Every probe placed, for the statistics (not printed).
        placed: Vec<Placed>,
    },
    /// One `--interval` line: outstanding bytes and allocations (estimates under sampling),
    /// mapped bytes, stacks and losses so far.
    Progress {
        secs: f64,
        bytes: u64,
        allocations: u64,
        estimated: bool,
        mapped_bytes: u64,
        stacks: usize,
        lost: u64,
        /// What the target's calls cost in probes since the last line, when measured.
        load: Option<ProbeLoad>,
    },
    /// Something the user should hear of, said once (an exec, a slow target).
    Notice(String),
    /// A step of the report done, for the statistics; logged, not printed.
    Phase(Phase),
    /// What a step taken at every sample cost over the trace, for the statistics; logged, not
    /// printed.
    SampleCost(SampleCost),
}

impl Event {
    /// Whether the binary prints it on stderr.
    pub fn printed(&self) -> bool {
        !matches!(self, Self::Phase(_) | Self::SampleCost(_))
    }
}

/// The target's allocation calls since the last progress line, and the share of one CPU
/// that their probes took, by the cost per call of an empty probe measured at attach
/// (kernel::probe_cost): a floor, since leakhound's programs do more than return.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeLoad {
    pub alloc_calls_per_sec: f64,
    pub frees_per_sec: f64,
    /// Seconds in probes per second of wall time (0.25: a quarter of one CPU).
    pub share_of_cpu: f64,
}

/// As leakhound prints them on stderr; the tests read these lines.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Attached {
                pid,
                hooked,
                probes,
                multi_uprobe_links,
                millis,
                placed: _,
            } => {
                write!(
                    f,
                    "leakhound: attached to pid {pid} ({hooked}, {probes} probes"
                )?;
                if *multi_uprobe_links > 0 {
                    write!(f, ", {multi_uprobe_links} multi-uprobe links")?;
                }
                write!(f, ") in {millis:.0} ms")
            }
            Self::Progress {
                secs,
                bytes,
                allocations,
                estimated,
                mapped_bytes,
                stacks,
                lost,
                load,
            } => {
                let estimate = estimate_mark(*estimated);
                write!(
                    f,
                    "leakhound: [{secs:>6.1}s] outstanding {estimate}{} in {estimate}{allocations} allocations + {} mapped, {stacks} stacks, lost {lost}",
                    human_bytes(*bytes),
                    human_bytes(*mapped_bytes),
                )?;
                if let Some(load) = load {
                    write!(
                        f,
                        "; {:.0} allocation calls/s + {:.0} frees/s, at least {:.1}% of one CPU in probe traps",
                        load.alloc_calls_per_sec,
                        load.frees_per_sec,
                        100.0 * load.share_of_cpu
                    )?;
                }
                Ok(())
            }
            Self::Notice(text) => write!(f, "leakhound: {text}"),
            Self::Phase(Phase {
                name,
                millis,
                items,
            }) => {
                write!(f, "leakhound: report: ")?;
                if let Some(items) = items {
                    write!(f, "{items} ")?;
                }
                write!(f, "{name} in {millis:.1} ms")
            }
            Self::SampleCost(SampleCost {
                name,
                samples,
                mean_ms,
                max_ms,
            }) => write!(
                f,
                "leakhound: per sample: {name}: {samples} samples, {mean_ms:.2} ms on average, at most {max_ms:.2} ms"
            ),
        }
    }
}

/// Where a session's events go; cheap to clone, callable from any thread.
#[derive(Clone)]
pub struct Events(Arc<dyn Fn(Event) + Send + Sync>);

impl Events {
    pub fn new(sink: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Self(Arc::new(sink))
    }

    /// Every printed event as a line on stderr.
    pub fn stderr() -> Self {
        Self::stderr_and(|_| {})
    }

    /// As [`Self::stderr`], and every event (printed or not) to `observe` first.
    pub fn stderr_and(observe: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        Self::new(move |event| {
            observe(&event);
            if event.printed() {
                eprintln!("{event}");
            }
        })
    }

    pub fn send(&self, event: Event) {
        (self.0)(event);
    }

    pub fn notice(&self, text: impl Into<String>) {
        self.send(Event::Notice(text.into()));
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Events")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn events_read_as_the_lines_leakhound_always_printed() {
        let attached = Event::Attached {
            pid: 42,
            hooked: "/usr/lib/libc.so.6".into(),
            probes: 30,
            multi_uprobe_links: 5,
            millis: 81.4,
            placed: Vec::new(),
        };
        assert_eq!(
            attached.to_string(),
            "leakhound: attached to pid 42 (/usr/lib/libc.so.6, 30 probes, 5 multi-uprobe links) in 81 ms"
        );
        let mut progress = Event::Progress {
            secs: 2.0,
            bytes: 2048,
            allocations: 2,
            estimated: false,
            mapped_bytes: 0,
            stacks: 1,
            lost: 0,
            load: None,
        };
        assert!(
            progress
                .to_string()
                .starts_with("leakhound: [   2.0s] outstanding ")
        );
        let Event::Progress { load, .. } = &mut progress else {
            unreachable!()
        };
        *load = Some(ProbeLoad {
            alloc_calls_per_sec: 120_000.0,
            frees_per_sec: 119_500.0,
            share_of_cpu: 0.3912,
        });
        assert!(
            progress.to_string().ends_with(
                ", lost 0; 120000 allocation calls/s + 119500 frees/s, at least 39.1% of one CPU in probe traps"
            ),
            "{progress}"
        );
    }

    #[test]
    fn a_subscriber_sees_every_event() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let seen = Arc::clone(&seen);
            Events::new(move |event| seen.lock().unwrap().push(event))
        };
        events.clone().notice("first");
        events.notice("second");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                Event::Notice("first".into()),
                Event::Notice("second".into())
            ]
        );
    }
}
