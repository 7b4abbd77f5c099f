//! Folded stacks: `root;...;leaf BYTES`, one line per distinct stack of names, with the bytes
//! each still holds. flamegraph.pl and inferno read it unchanged.

use std::{collections::BTreeMap, io};

use super::Render;
use crate::model::Recording;

pub struct Folded;

impl Render for Folded {
    fn render(&self, recording: &Recording, out: &mut dyn io::Write) -> io::Result<()> {
        // Distinct addresses can share names (two call sites on one line); merge them, and
        // sort so that the output is deterministic.
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for stack in recording.stacks.iter().filter(|stack| stack.live_bytes > 0) {
            let names: Vec<String> = stack
                .frames
                .iter()
                .map(|frame| sanitize(&frame.name))
                .collect();
            let key = if names.is_empty() {
                "[no frames]".to_owned()
            } else {
                names.join(";")
            };
            *lines.entry(key).or_default() += stack.live_bytes;
        }
        for (stack, bytes) in lines {
            writeln!(out, "{stack} {bytes}")?;
        }
        Ok(())
    }
}

/// `;` separates frames and a newline ends the record; neither may appear inside a name.
fn sanitize(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Frame, Origin, StackRecord};

    fn stack(names: &[&str], live_bytes: u64) -> StackRecord {
        StackRecord {
            origin: Origin::Malloc,
            frames: names.iter().map(|name| Frame::named(*name)).collect(),
            live_bytes,
            live_allocations: 1,
            total_bytes: live_bytes,
            total_allocations: 1,
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
        Folded.render(&recording, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "main;a:b 5\nmain;leak 128\n"
        );
    }
}
