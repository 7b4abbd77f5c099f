//! The pure analysis core: plain recorded data in, plain results out, no syscalls. A live
//! session and `leakhound report` on a saved recording go through the same functions, and the
//! unit tests cover them without root.

pub mod age;
pub mod diff;
pub mod history;
pub mod memory;
pub mod trend;

use std::cmp::Ordering;

use crate::model::{Frame, Recording, cmp_frame_names};
pub use memory::Reconciliation;
pub use trend::{Trend, TrendClass};

/// What the reports need beyond the recording itself.
#[derive(Clone, Debug)]
pub struct Analysis {
    /// One per stack of the recording, in its order.
    pub trends: Vec<Trend>,
    /// Indices of the stacks worth reporting, in report order: growing stacks by growth
    /// (bytes per second, then steadiness), then the rest by outstanding bytes.
    pub ranked: Vec<usize>,
    pub reconciliation: Option<Reconciliation>,
}

impl Analysis {
    pub fn new(recording: &Recording) -> Self {
        let secs: Vec<f64> = recording.samples.iter().map(|s| s.secs).collect();
        let trends: Vec<Trend> = recording
            .stacks
            .iter()
            .map(|stack| trend::trend(&secs, &stack.history))
            .collect();
        let mut ranked: Vec<usize> = (0..recording.stacks.len())
            .filter(|&i| {
                recording.stacks[i].live_bytes > 0 || trends[i].class == TrendClass::Growing
            })
            .collect();
        ranked.sort_by(|&a, &b| {
            let (ta, tb) = (&trends[a], &trends[b]);
            let (sa, sb) = (&recording.stacks[a], &recording.stacks[b]);
            let growing = |t: &Trend| t.class == TrendClass::Growing;
            growing(tb)
                .cmp(&growing(ta))
                .then_with(|| {
                    if growing(ta) && growing(tb) {
                        tb.bytes_per_second
                            .total_cmp(&ta.bytes_per_second)
                            .then_with(|| tb.grew_share.total_cmp(&ta.grew_share))
                    } else {
                        Ordering::Equal
                    }
                })
                .then_with(|| sb.live_bytes.cmp(&sa.live_bytes))
                .then_with(|| cmp_frame_names(&sa.frames, &sb.frames))
                .then_with(|| sa.origin.cmp(&sb.origin))
        });
        Self {
            trends,
            ranked,
            reconciliation: memory::reconcile(recording),
        }
    }

    /// Ranked stacks that are growing, fastest first.
    pub fn growing(&self) -> impl Iterator<Item = usize> + '_ {
        self.ranked
            .iter()
            .copied()
            .filter(|&i| self.trends[i].class == TrendClass::Growing)
    }
}

/// A stack as one folded-format key: names root first, joined by `;`. `;` separates frames and
/// a newline ends the record, so inside a name both are escaped (`\x3b`, `\x0a`; see
/// [`crate::names`]).
pub fn folded_name(frames: &[Frame]) -> String {
    if frames.is_empty() {
        return "[no frames]".to_owned();
    }
    frames
        .iter()
        .map(|frame| crate::names::folded_frame(&frame.name))
        .collect::<Vec<_>>()
        .join(";")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Sample, StackRecord};

    fn stack(name: &str, history: &[u64]) -> StackRecord {
        StackRecord {
            origin: Origin::Malloc,
            frames: vec![Frame::named("main"), Frame::named(name)],
            live_bytes: *history.last().unwrap(),
            live_allocations: 1,
            total_bytes: 0,
            total_allocations: 0,
            history: history.to_vec(),
            ages: None,
            live_bytes_variance: None,
        }
    }

    #[test]
    fn growing_stacks_rank_first_by_rate_then_the_rest_by_bytes() {
        let samples = (1..=6)
            .map(|i| Sample {
                secs: i as f64,
                memory: None,
            })
            .collect();
        let recording = Recording {
            samples,
            stacks: vec![
                stack("cache", &[900_000; 6]),
                stack("slow_leak", &[100, 200, 300, 400, 500, 600]),
                stack("fast_leak", &[1000, 2000, 3000, 4000, 5000, 6000]),
                stack("freed", &[0; 6]),
                stack("small", &[10; 6]),
            ],
            ..Recording::default()
        };
        let analysis = Analysis::new(&recording);
        let names: Vec<&str> = analysis
            .ranked
            .iter()
            .map(|&i| recording.stacks[i].frames[1].name.as_str())
            .collect();
        assert_eq!(names, ["fast_leak", "slow_leak", "cache", "small"]);
        assert_eq!(analysis.growing().count(), 2);
    }

    #[test]
    fn folded_names_are_escaped() {
        assert_eq!(
            folded_name(&[Frame::named("a;b"), Frame::named("c\nd")]),
            "a\\x3bb;c\\x0ad"
        );
        assert_eq!(folded_name(&[]), "[no frames]");
    }
}
