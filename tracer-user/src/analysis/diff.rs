//! The change in outstanding bytes per stack, as two-value folded lines
//! (`root;...;leaf BEFORE AFTER`), the input of difffolded.pl and `inferno-flamegraph`'s
//! differential mode.

use std::collections::BTreeMap;

use super::folded_name;
use crate::model::Recording;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffLine {
    pub stack: String,
    pub before: u64,
    pub after: u64,
}

/// From the first sample of the recording to its last. A recording without samples counts
/// from nothing to its end state.
pub fn between_samples(recording: &Recording) -> Vec<DiffLine> {
    let mut lines: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for stack in &recording.stacks {
        let (before, after) = match (stack.history.first(), stack.history.last()) {
            (Some(&first), Some(&last)) => (first, last),
            _ => (0, stack.live_bytes),
        };
        let entry = lines.entry(folded_name(&stack.frames)).or_default();
        entry.0 += before;
        entry.1 += after;
    }
    collect(lines)
}

/// From the end state of one recording to the end state of another (of the same program,
/// say before and after a change).
pub fn between_recordings(before: &Recording, after: &Recording) -> Vec<DiffLine> {
    let mut lines: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for stack in &before.stacks {
        lines.entry(folded_name(&stack.frames)).or_default().0 += stack.live_bytes;
    }
    for stack in &after.stacks {
        lines.entry(folded_name(&stack.frames)).or_default().1 += stack.live_bytes;
    }
    collect(lines)
}

fn collect(lines: BTreeMap<String, (u64, u64)>) -> Vec<DiffLine> {
    lines
        .into_iter()
        .filter(|(_, (before, after))| *before > 0 || *after > 0)
        .map(|(stack, (before, after))| DiffLine {
            stack,
            before,
            after,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frame, Origin, StackRecord};

    fn stack(names: &[&str], live: u64, history: &[u64]) -> StackRecord {
        StackRecord {
            origin: Origin::Malloc,
            frames: names.iter().map(|n| Frame::named(*n)).collect(),
            live_bytes: live,
            live_allocations: 1,
            total_bytes: live,
            total_allocations: 1,
            history: history.to_vec(),
            ages: None,
            live_bytes_variance: None,
        }
    }

    fn line(stack: &str, before: u64, after: u64) -> DiffLine {
        DiffLine {
            stack: stack.into(),
            before,
            after,
        }
    }

    #[test]
    fn first_to_last_sample_merging_names() {
        let recording = Recording {
            stacks: vec![
                stack(&["main", "leak"], 300, &[100, 200, 300]),
                stack(&["main", "leak"], 10, &[10, 10, 10]),
                stack(&["main", "gone"], 0, &[50, 0, 0]),
                stack(&["main", "never"], 0, &[0, 0, 0]),
                stack(&["old"], 7, &[]),
            ],
            ..Recording::default()
        };
        assert_eq!(
            between_samples(&recording),
            [
                line("main;gone", 50, 0),
                line("main;leak", 110, 310),
                line("old", 0, 7)
            ]
        );
    }

    #[test]
    fn between_two_recordings() {
        let before = Recording {
            stacks: vec![stack(&["a"], 5, &[]), stack(&["b"], 9, &[])],
            ..Recording::default()
        };
        let after = Recording {
            stacks: vec![stack(&["b"], 1, &[]), stack(&["c"], 3, &[])],
            ..Recording::default()
        };
        assert_eq!(
            between_recordings(&before, &after),
            [line("a", 5, 0), line("b", 9, 1), line("c", 0, 3)]
        );
    }
}
