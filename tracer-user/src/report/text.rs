//! The report for people: what is outstanding, what was lost, and the stacks holding most.

use std::io;

use super::{Render, human_bytes};
use crate::model::{Origin, Recording};

pub struct Text {
    /// How many stacks to list.
    pub top: usize,
}

impl Render for Text {
    fn render(&self, rec: &Recording, out: &mut dyn io::Write) -> io::Result<()> {
        writeln!(out, "leakhound report: pid {} ({})", rec.pid, rec.command)?;
        writeln!(
            out,
            "traced for {:.1} s; ended by {}",
            rec.duration_secs, rec.ended_by
        )?;
        writeln!(out)?;
        let holding = rec.holding_stacks();
        writeln!(
            out,
            "outstanding: {} ({} bytes) in {} allocations across {} stacks",
            human_bytes(rec.live_bytes()),
            rec.live_bytes(),
            rec.live_allocations(),
            holding.len()
        )?;
        writeln!(
            out,
            "  malloc family {}, anonymous mmap {}",
            human_bytes(rec.live_bytes_of(Origin::Malloc)),
            human_bytes(rec.live_bytes_of(Origin::Mmap))
        )?;
        let c = &rec.counters;
        writeln!(
            out,
            "activity: {} allocations and {} frees tracked, {} mapping events",
            c.allocations, c.frees, rec.mapping.events
        )?;
        write_losses(rec, out)?;

        writeln!(out)?;
        if holding.is_empty() {
            writeln!(out, "No stack holds memory.")?;
            return Ok(());
        }
        writeln!(
            out,
            "Top {} stacks by outstanding bytes:",
            self.top.min(holding.len())
        )?;
        for (rank, stack) in holding.iter().take(self.top).enumerate() {
            let origin = match stack.origin {
                Origin::Malloc => "malloc",
                Origin::Mmap => "mmap",
            };
            writeln!(
                out,
                "\n#{} {} in {} allocations [{origin}] ({} allocated in {} calls while traced)",
                rank + 1,
                human_bytes(stack.live_bytes),
                stack.live_allocations,
                human_bytes(stack.total_bytes),
                stack.total_allocations
            )?;
            for frame in stack.frames.iter().rev() {
                let location = match (&frame.file, frame.line) {
                    (Some(file), Some(line)) => format!(" at {file}:{line}"),
                    (Some(file), None) => format!(" at {file}"),
                    _ => frame
                        .module
                        .as_ref()
                        .map(|m| format!(" in {m}"))
                        .unwrap_or_default(),
                };
                let inlined = if frame.inlined { " (inlined)" } else { "" };
                writeln!(out, "    {}{inlined}{location}", frame.name)?;
            }
        }
        Ok(())
    }
}

fn write_losses(rec: &Recording, out: &mut dyn io::Write) -> io::Result<()> {
    let c = &rec.counters;
    let losses: [(u64, String); 8] = [
        (
            c.alloc_map_full,
            format!(
                "allocations not tracked, allocation map full ({}; raise --max-allocs)",
                human_bytes(c.alloc_map_full_bytes)
            ),
        ),
        (
            c.stack_failed,
            "stacks not stored, counted under [lost stack] (raise --max-stacks)".into(),
        ),
        (
            c.events_lost,
            "mapping events lost, event buffer full".into(),
        ),
        (
            c.totals_map_full,
            "allocations without a stack total".into(),
        ),
        (c.thread_map_full, "calls missed, thread map full".into()),
        (
            c.return_without_entry,
            "returns without an entry (calls in flight at attach)".into(),
        ),
        (c.stale_entry, "calls that never returned".into()),
        (
            rec.mapping.malformed_events,
            "malformed mapping events".into(),
        ),
    ];
    let mut any = false;
    for (count, what) in losses.iter().filter(|(count, _)| *count > 0) {
        if !any {
            writeln!(out, "losses:")?;
            any = true;
        }
        writeln!(out, "  {count} {what}")?;
    }
    if !any {
        writeln!(out, "losses: none")?;
    }
    writeln!(
        out,
        "not losses: {} frees and {} unmaps of memory allocated before attach; {} address reuses without a seen free; {} failed calls",
        c.free_unknown, rec.mapping.untracked_unmaps, c.address_reused, c.failed_calls
    )?;
    if let Some(why) = &rec.mapping_unavailable {
        writeln!(out, "anonymous mmap was not tracked: {why}")?;
    }
    Ok(())
}
