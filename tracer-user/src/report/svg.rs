//! An SVG flame graph of outstanding bytes, drawn by inferno from the folded lines.

use std::io;

use inferno::flamegraph::{
    self, Options,
    color::{BasicPalette, Palette},
};

use super::{Folded, Render, Report, human_bytes};
use crate::names::shown;

pub struct Svg;

impl Render for Svg {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        let recording = report.recording;
        let mut folded = Vec::new();
        Folded.render(report, &mut folded)?;
        let folded = String::from_utf8_lossy(&folded);
        let mut options = Options::default();
        options.colors = Palette::Basic(BasicPalette::Mem);
        options.count_name = "bytes".to_owned();
        // Colours from the names' hashes: a function keeps its colour from run to run, and
        // the output is reproducible (golden tests).
        options.hash = true;
        options.title = "Outstanding native memory by call stack".to_owned();
        options.subtitle = Some(format!(
            "pid {} ({}): {} still held after {:.1} s of tracing",
            recording.pid,
            shown(&recording.command),
            human_bytes(recording.live_bytes()),
            recording.duration_secs
        ));
        if folded.trim().is_empty() {
            // inferno refuses empty input; an empty graph still says that nothing is held.
            return writeln!(
                out,
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="600" height="40"><text x="10" y="25">No stack holds memory.</text></svg>"#
            );
        }
        flamegraph::from_lines(&mut options, folded.lines(), out).map_err(io::Error::other)
    }
}
