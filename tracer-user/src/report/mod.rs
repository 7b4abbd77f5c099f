//! Output formats. Each renders a [`Recording`]; they share no state, so adding one is adding
//! a type.

mod folded;
mod svg;
mod text;

use std::{io, path::Path};

pub use folded::Folded;
pub use svg::Svg;
pub use text::Text;

use crate::model::Recording;

pub trait Render {
    fn render(&self, recording: &Recording, out: &mut dyn io::Write) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `root;...;leaf BYTES` per stack, for flamegraph.pl and inferno.
    Folded,
    /// A report for people: totals, losses and the top stacks.
    Text,
    /// A flame graph of outstanding bytes (inferno, memory palette).
    Svg,
}

impl Format {
    /// The format a file name asks for, if its extension is one leakhound knows.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "folded" => Some(Self::Folded),
            "txt" | "text" => Some(Self::Text),
            "svg" => Some(Self::Svg),
            _ => None,
        }
    }

    pub fn renderer(self, top: usize) -> Box<dyn Render> {
        match self {
            Self::Folded => Box::new(Folded),
            Self::Text => Box::new(Text { top }),
            Self::Svg => Box::new(Svg),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_from_extensions() {
        assert_eq!(
            Format::from_path(Path::new("a/b.folded")),
            Some(Format::Folded)
        );
        assert_eq!(
            Format::from_path(Path::new("report.txt")),
            Some(Format::Text)
        );
        assert_eq!(Format::from_path(Path::new("report")), None);
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
