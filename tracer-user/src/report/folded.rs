//! Folded stacks: `root;...;leaf BYTES`, one line per distinct stack of names, with the bytes
//! each still holds. flamegraph.pl and inferno read it unchanged. Allocations that the full
//! allocation map could not track get a line of their own, [`NOT_TRACKED_FRAME`].

use std::{collections::BTreeMap, io};

use super::{Render, Report};
use crate::{analysis::folded_name, model::NOT_TRACKED_FRAME};

pub struct Folded;

impl Render for Folded {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        // Distinct addresses can share names (two call sites on one line); merge them, and
        // sort so that the output is deterministic.
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for stack in report
            .recording
            .stacks
            .iter()
            .filter(|stack| stack.live_bytes > 0)
        {
            *lines.entry(folded_name(&stack.frames)).or_default() += stack.live_bytes;
        }
        let untracked = report.recording.counters.alloc_map_full_bytes;
        if untracked > 0 {
            *lines.entry(NOT_TRACKED_FRAME.to_owned()).or_default() += untracked;
        }
        for (stack, bytes) in lines {
            writeln!(out, "{stack} {bytes}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frame, Origin, Recording, StackRecord};

    fn stack(names: &[&str], live_bytes: u64) -> StackRecord {
        StackRecord {
            origin: Origin::Malloc,
            frames: names.iter().map(|name| Frame::named(*name)).collect(),
            live_bytes,
            live_allocations: 1,
            total_bytes: live_bytes,
            total_allocations: 1,
            history: Vec::new(),
            ages: None,
            live_bytes_variance: None,
        }
    }

    #[test]
    fn merges_equal_names_skips_freed_and_sorts() {
        let recording = Recording {
            stacks: vec![
                stack(&["main", "leak"], 100),
                stack(&["main", "other"], 0),
                stack(&["main", "leak"], 28),
                stack(&["main", "a;b"], 5),
            ],
            ..Recording::default()
        };
        let mut out = Vec::new();
        Folded.render(&Report::new(&recording), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "main;a\\x3bb 5\nmain;leak 128\n"
        );
    }

    #[test]
    fn untracked_allocations_have_a_line() {
        let mut recording = Recording {
            stacks: vec![stack(&["main", "leak"], 100)],
            ..Recording::default()
        };
        recording.counters.alloc_map_full = 3;
        recording.counters.alloc_map_full_bytes = 4096;
        let mut out = Vec::new();
        Folded.render(&Report::new(&recording), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "[not tracked: allocation map full] 4096\nmain;leak 100\n"
        );
    }
}
