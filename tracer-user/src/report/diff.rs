//! Differential folded stacks: `root;...;leaf BEFORE AFTER`, which difffolded.pl and
//! `inferno-flamegraph` (it detects the two counts) draw as a differential flame graph.

use std::io;

use super::{Render, Report};
use crate::analysis::diff;

pub struct Diff;

impl Render for Diff {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        let lines = match report.baseline {
            Some(before) => diff::between_recordings(before, report.recording),
            None => diff::between_samples(report.recording),
        };
        for line in lines {
            writeln!(out, "{} {} {}", line.stack, line.before, line.after)?;
        }
        Ok(())
    }
}
