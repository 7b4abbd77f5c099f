//! Output formats. Each renders a [`Report`] (a recording and its analysis); they share no
//! state, so adding one is adding a type.

mod diff;
mod folded;
#[cfg(test)]
mod hostile_names;
mod json;
mod pprof;
pub mod pprof_proto;
mod saved;
mod svg;
mod text;

use std::{io, path::Path};

pub use diff::Diff;
pub use folded::Folded;
pub use json::Json;
pub use pprof::{Pprof, profile as pprof_profile};
pub use saved::{
    Invalid, LoadError, MAX_RECORDING_BYTES, RecordingError, SavedRecording, load_recording,
    read_recording,
};
pub use svg::Svg;
pub use text::Text;

use crate::{analysis::Analysis, model::Recording};

/// A recording with its analysis: what every format renders.
pub struct Report<'a> {
    pub recording: &'a Recording,
    pub analysis: Analysis,
    /// The earlier recording of a two-recording diff.
    pub baseline: Option<&'a Recording>,
}

impl<'a> Report<'a> {
    pub fn new(recording: &'a Recording) -> Self {
        Self {
            recording,
            analysis: Analysis::new(recording),
            baseline: None,
        }
    }

    /// A report of the change from `baseline` to `recording`.
    pub fn compared(baseline: &'a Recording, recording: &'a Recording) -> Self {
        Self {
            baseline: Some(baseline),
            ..Self::new(recording)
        }
    }
}

pub trait Render {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `root;...;leaf BYTES` per stack, for flamegraph.pl and inferno.
    Folded,
    /// A report for people: growing stacks first, memory, losses, the top stacks.
    Text,
    /// A flame graph of outstanding bytes (inferno, memory palette).
    Svg,
    /// Stacks, trends, ages, totals and RSS as one JSON object (schema in README.md).
    Json,
    /// gzipped pprof protobuf: in-use space and objects, for `go tool pprof` and Pyroscope.
    Pprof,
    /// `root;...;leaf BEFORE AFTER`: first to last sample, or between two recordings.
    Diff,
    /// The whole recording, for `leakhound report` to render again later.
    Recording,
}

impl Format {
    /// The format a file name asks for, if its ending is one leakhound knows.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        // Longest endings first: `.diff.folded` is not `.folded`, `.leakhound.json` not `.json`.
        const ENDINGS: [(&str, Format); 10] = [
            (".diff.folded", Format::Diff),
            (".leakhound.json", Format::Recording),
            (".pb.gz", Format::Pprof),
            (".pprof", Format::Pprof),
            (".folded", Format::Folded),
            (".txt", Format::Text),
            (".text", Format::Text),
            (".svg", Format::Svg),
            (".json", Format::Json),
            (".diff", Format::Diff),
        ];
        ENDINGS
            .iter()
            .find(|(ending, _)| name.len() > ending.len() && name.ends_with(ending))
            .map(|(_, format)| *format)
    }

    pub fn renderer(self, top: usize) -> Box<dyn Render> {
        match self {
            Self::Folded => Box::new(Folded),
            Self::Text => Box::new(Text { top }),
            Self::Svg => Box::new(Svg),
            Self::Json => Box::new(Json),
            Self::Pprof => Box::new(Pprof),
            Self::Diff => Box::new(Diff),
            Self::Recording => Box::new(SavedRecording),
        }
    }
}

/// `~` before a figure that byte sampling estimated, nothing before an exact one.
pub fn estimate_mark(estimated: bool) -> &'static str {
    if estimated { "~" } else { "" }
}

/// Bytes in the binary units people read (KiB, MiB, ...).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A signed change in bytes: `+1.5 KiB`, `-512 B`.
pub fn human_change(bytes: i64) -> String {
    let sign = if bytes < 0 { '-' } else { '+' };
    format!("{sign}{}", human_bytes(bytes.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_extensions() {
        let cases = [
            ("a/b.folded", Some(Format::Folded)),
            ("report.txt", Some(Format::Text)),
            ("report", None),
            ("x.json", Some(Format::Json)),
            ("x.leakhound.json", Some(Format::Recording)),
            ("heap.pb.gz", Some(Format::Pprof)),
            ("heap.pprof", Some(Format::Pprof)),
            ("change.diff.folded", Some(Format::Diff)),
            ("flame.svg", Some(Format::Svg)),
            (".json", None),
        ];
        for (path, format) in cases {
            assert_eq!(Format::from_path(Path::new(path)), format, "{path}");
        }
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_change(-512), "-512 B");
        assert_eq!(human_change(2048), "+2.0 KiB");
    }
}
