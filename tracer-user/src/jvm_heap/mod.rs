//! What grows inside a Java heap, by class, from HotSpot's own class histograms
//! (`--jvm-heap-histogram`): no flag on the JVM, no agent, no restart.
//!
//! `GC.class_histogram` runs a full collection and counts what survives, so it is opt-in and
//! taken twice: at the first sample (on a thread of its own, so the trace goes on meanwhile)
//! and at the last one, before the report is built, within [`END_BUDGET`] however the JVM
//! answers. Both go through the attach handshake leakhound already speaks with a JVM
//! (`jit::jvm_attach`: trigger made in held directories, the socket checked by what it is, one
//! deadline, a bounded reply). Each class whose bytes grew between the two becomes a stack of
//! origin `java-heap` with the class as its one frame, so it goes through every format and the
//! trend classifier like the go-heap stacks (`crate::go_heap`); its bytes live inside the
//! Java heap, mapped before any trace, so they are not added to the outstanding total.
//!
//! No histogram is taken between the two (each costs a full GC), so a java-heap stack's
//! history holds the first histogram's bytes at the first sample, the last one's at the last
//! sample, and a straight line between: its trend says whether the class grew by the
//! classifier's thresholds, not how steadily.

pub mod histogram;

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::{
    jit::jvm_attach,
    model::{Frame, FrameData, Origin, StackRecord},
    process::TargetProcess,
    report::{human_bytes, human_change},
};
use histogram::Histogram;

/// What the first histogram may take: it runs beside the trace, and a full GC of a large heap
/// takes seconds.
pub const FIRST_BUDGET: Duration = Duration::from_secs(10);
/// What the end of a trace waits at most for the histograms (the first one, if still under
/// way, and the last one together).
pub const END_BUDGET: Duration = Duration::from_secs(3);
/// The longest reply read: some 80 bytes a class, so room for 200,000 classes.
pub const MAX_REPLY: usize = 16 << 20;

/// One histogram taken: when (seconds since attach, the sample's time), what it says, and
/// how long the request took (the full GC and the counting, as the JVM paused for them).
#[derive(Clone, Debug)]
pub struct Taken {
    pub secs: f64,
    pub histogram: Histogram,
    pub took: Duration,
}

/// Runs `GC.class_histogram` in the JVM within `budget`.
pub fn take(target: &TargetProcess, secs: f64, budget: Duration) -> Result<Taken, String> {
    let started = Instant::now();
    let reply = jvm_attach::request(target, "GC.class_histogram", budget, MAX_REPLY)
        .map_err(|err| err.to_string())?;
    let took = started.elapsed();
    let histogram = histogram::parse(&reply).map_err(|err| err.to_string())?;
    Ok(Taken {
        secs,
        histogram,
        took,
    })
}

/// The classes whose bytes grew from `first` to `last`, as java-heap stacks with histories
/// at `sample_secs` (the recording's samples). Pure.
pub fn growth_stacks(first: &Taken, last: &Taken, sample_secs: &[f64]) -> Vec<StackRecord> {
    let before = first.histogram.by_class();
    let mut stacks: Vec<StackRecord> = last
        .histogram
        .by_class()
        .into_iter()
        .filter_map(|((name, module), (instances, bytes))| {
            let (was_instances, was_bytes) = before.get(&(name, module)).copied().unwrap_or((0, 0));
            (bytes > was_bytes).then(|| StackRecord {
                origin: Origin::JavaHeap,
                frames: vec![Frame::from(FrameData {
                    module: module.map(str::to_owned),
                    ..FrameData::named(name)
                })],
                live_bytes: bytes,
                live_allocations: instances,
                // What the trace saw allocated at least: the growth.
                total_bytes: bytes - was_bytes,
                total_allocations: instances.saturating_sub(was_instances),
                history: sample_secs
                    .iter()
                    .map(|&at| on_line((first.secs, was_bytes), (last.secs, bytes), at))
                    .collect(),
                ages: None,
                live_bytes_variance: None,
            })
        })
        .collect();
    stacks.sort_by(|a, b| {
        b.live_bytes
            .cmp(&a.live_bytes)
            .then_with(|| a.frames[0].name.cmp(&b.frames[0].name))
    });
    stacks
}

/// The value at `at` on the line from `from` to `to`, held at the ends outside them.
fn on_line(from: (f64, u64), to: (f64, u64), at: f64) -> u64 {
    if at <= from.0 || to.0 <= from.0 {
        return from.1;
    }
    if at >= to.0 {
        return to.1;
    }
    let share = (at - from.0) / (to.0 - from.0);
    (from.1 as f64 + (to.1 as f64 - from.1 as f64) * share).round() as u64
}

/// The one line the reports give: what the histograms found, or why there are none.
pub fn summary(first: &Taken, last: &Taken, stacks: &[StackRecord]) -> String {
    let grew: u64 = stacks.iter().map(|s| s.total_bytes).sum();
    format!(
        "GC.class_histogram at {:.1} s and {:.1} s (a full GC each; the requests took {:.0} ms and {:.0} ms): {} classes grew, together {}; {} live at the end",
        first.secs,
        last.secs,
        first.took.as_secs_f64() * 1e3,
        last.took.as_secs_f64() * 1e3,
        stacks.len(),
        human_change(i64::try_from(grew).unwrap_or(i64::MAX)),
        human_bytes(last.histogram.total_bytes),
    )
}

/// Takes the histograms of one session.
pub struct JavaHeapSampler {
    state: State,
}

enum State {
    /// Before the first sample.
    Waiting,
    /// The first histogram is being taken.
    Pending(mpsc::Receiver<Result<Taken, String>>),
    Both(Taken, Taken),
    /// No java-heap stacks, and why.
    Failed(String),
}

impl Default for JavaHeapSampler {
    fn default() -> Self {
        Self {
            state: State::Waiting,
        }
    }
}

/// Whether the process mapped HotSpot: anything else would take SIGQUIT for what it is.
fn is_jvm(target: &TargetProcess) -> Result<(), String> {
    let maps = target.maps().map_err(|err| err.to_string())?;
    let mapped = maps.iter().any(|m| {
        m.path
            .as_deref()
            .and_then(|p| p.file_name())
            .is_some_and(|name| name == "libjvm.so")
    });
    if mapped {
        Ok(())
    } else {
        Err("the target is not a JVM (no libjvm.so mapped)".to_owned())
    }
}

impl JavaHeapSampler {
    /// At every periodic sample: the first one starts the first histogram.
    pub fn sample(&mut self, target: &TargetProcess, secs: f64) {
        if !matches!(self.state, State::Waiting) {
            return;
        }
        if let Err(why) = is_jvm(target) {
            self.state = State::Failed(why);
            return;
        }
        let (tx, rx) = mpsc::channel();
        let target = target.clone();
        let spawned = std::thread::Builder::new()
            .name("jvm-histogram".into())
            .spawn(move || {
                let _ = tx.send(take(&target, secs, FIRST_BUDGET));
            });
        self.state = match spawned {
            Ok(_) => State::Pending(rx),
            Err(err) => State::Failed(format!("no thread for the first histogram: {err}")),
        };
    }

    /// At the last sample: waits for the first histogram and takes the last one, all within
    /// [`END_BUDGET`].
    pub fn sample_last(&mut self, target: &TargetProcess, secs: f64) {
        let deadline = Instant::now() + END_BUDGET;
        let state = std::mem::replace(&mut self.state, State::Waiting);
        let first = match state {
            State::Waiting => {
                self.state = State::Failed(match is_jvm(target) {
                    Ok(()) => "one sample only: the trace ended before a second histogram could show growth".to_owned(),
                    Err(why) => why,
                });
                return;
            }
            State::Pending(rx) => match rx.recv_timeout(END_BUDGET) {
                Ok(Ok(first)) => first,
                Ok(Err(why)) => {
                    self.state = State::Failed(format!("the first histogram failed: {why}"));
                    return;
                }
                Err(_) => {
                    self.state = State::Failed(format!(
                        "the first histogram was not done within {:.1} s of the end",
                        END_BUDGET.as_secs_f64()
                    ));
                    return;
                }
            },
            done @ (State::Both(..) | State::Failed(_)) => {
                self.state = done;
                return;
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        self.state = match take(target, secs, left) {
            Ok(last) => State::Both(first, last),
            Err(why) => State::Failed(format!("the last histogram failed: {why}")),
        };
    }

    /// The end came with no last sample (an exec replaced the JVM).
    pub fn skip_last(&mut self, why: &str) {
        if !matches!(self.state, State::Failed(_)) {
            self.state = State::Failed(format!("no last histogram: {why}"));
        }
    }

    /// The java-heap stacks, histories at `sample_secs`, and the report's line.
    pub fn finish(self, sample_secs: &[f64]) -> (Vec<StackRecord>, String) {
        match self.state {
            State::Both(first, last) => {
                let stacks = growth_stacks(&first, &last, sample_secs);
                let line = summary(&first, &last, &stacks);
                (stacks, line)
            }
            State::Failed(why) => (Vec::new(), format!("no java-heap stacks: {why}")),
            State::Waiting | State::Pending(_) => (
                Vec::new(),
                "no java-heap stacks: no last histogram was taken".to_owned(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(secs: f64, text: &str) -> Taken {
        Taken {
            secs,
            histogram: histogram::parse(text).unwrap(),
            took: Duration::from_millis(20),
        }
    }

    #[test]
    fn classes_that_grew_become_java_heap_stacks() {
        let first = taken(
            1.0,
            " num #instances #bytes class name (module)\n\
             1: 10 1000 [B (java.base@17)\n\
             2: 5 200 java.lang.String (java.base@17)\n\
             3: 4 64 Gone\n\
             Total 19 1264\n",
        );
        let last = taken(
            5.0,
            " num #instances #bytes class name (module)\n\
             1: 50 41000 [B (java.base@17)\n\
             2: 5 200 java.lang.String (java.base@17)\n\
             3: 2 48 New\n\
             Total 57 41248\n",
        );
        let stacks = growth_stacks(&first, &last, &[1.0, 2.0, 3.0, 5.0]);
        assert_eq!(stacks.len(), 2, "{stacks:?}");
        let bytes = &stacks[0];
        assert_eq!(bytes.origin, Origin::JavaHeap);
        assert_eq!(bytes.frames.len(), 1);
        assert_eq!(bytes.frames[0].name, "byte[]");
        assert_eq!(bytes.frames[0].module.as_deref(), Some("java.base@17"));
        assert_eq!((bytes.live_bytes, bytes.live_allocations), (41_000, 50));
        assert_eq!((bytes.total_bytes, bytes.total_allocations), (40_000, 40));
        assert_eq!(bytes.history, [1000, 11_000, 21_000, 41_000]);
        assert_eq!(stacks[1].frames[0].name, "New");
        assert_eq!(stacks[1].history, [0, 12, 24, 48]);
        let line = summary(&first, &last, &stacks);
        assert!(line.contains("2 classes grew"), "{line}");
    }

    #[test]
    fn a_class_that_grew_steadily_enough_is_growing() {
        let first = taken(1.0, " num #instances #bytes\n1: 1 1000 [B\nTotal 1 1000\n");
        let last = taken(9.0, " num #instances #bytes\n1: 9 9000 [B\nTotal 9 9000\n");
        let secs: Vec<f64> = (1..=9).map(f64::from).collect();
        let stacks = growth_stacks(&first, &last, &secs);
        let trend = crate::analysis::trend::trend(&secs, &stacks[0].history);
        assert_eq!(trend.class, crate::analysis::TrendClass::Growing);
        assert!((trend.bytes_per_second - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn the_line_holds_at_its_ends() {
        assert_eq!(on_line((1.0, 10), (3.0, 30), 0.5), 10);
        assert_eq!(on_line((1.0, 10), (3.0, 30), 2.0), 20);
        assert_eq!(on_line((1.0, 10), (3.0, 30), 4.0), 30);
        assert_eq!(on_line((1.0, 30), (3.0, 10), 2.0), 20);
        assert_eq!(on_line((3.0, 10), (3.0, 30), 3.0), 10);
    }

    #[test]
    fn no_second_histogram_no_stacks_and_a_reason() {
        let mut sampler = JavaHeapSampler::default();
        sampler.skip_last("the target exec'd");
        let (stacks, line) = sampler.finish(&[1.0]);
        assert!(stacks.is_empty());
        assert_eq!(
            line,
            "no java-heap stacks: no last histogram: the target exec'd"
        );
    }
}
