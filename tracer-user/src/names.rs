//! Names read from a target, made safe to show. A symbol, a perf-map entry, a file name or a
//! command line is whatever the target's author wrote, so it may hold terminal escapes, bytes
//! that XML forbids, or a megabyte of text. The recording keeps names as they were read; every
//! report shows them through [`shown`] (or [`folded_frame`] inside a folded stack), the one
//! place where a name becomes text for a terminal, a file or a parser.
//!
//! The escapes are unambiguous: `\` is written `\\`, a character below U+0080 as `\xNN`, any
//! other as `\u{N}`, so a name can always be told from another name's escape.

use std::{borrow::Cow, fmt::Write as _};

use serde::Serialize;

use crate::model::FrameData;

/// Longest name shown, in bytes of its escaped form. C++ template names reach a few hundred
/// bytes; past this a name is cut and marked with [`CUT_MARK`].
pub const MAX_SHOWN_BYTES: usize = 1024;

/// Ends a name that was cut at [`MAX_SHOWN_BYTES`].
pub const CUT_MARK: &str = "[cut]";

/// What a name is shown inside: plain text, or one frame of a `;`-separated folded stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Context {
    Plain,
    /// `;` separates frames, so inside a frame it is escaped too (`\x3b`). A line ends in
    /// ` COUNT`, or ` BEFORE AFTER` in a differential one, so a space that is followed by
    /// nothing but a number is escaped (`\x20`): a name ending in ` 999` must not read as
    /// a count (inferno then takes the line for a differential one).
    FoldedFrame,
}

impl Context {
    /// Whether `c`, followed by `rest` in the name, is written as an escape.
    fn escapes(self, c: char, rest: &str) -> bool {
        c == '\\'
            || unsafe_to_show(c)
            || (self == Self::FoldedFrame && (c == ';' || (c == ' ' && looks_numeric(rest))))
    }
}

/// What folded-stack readers could take for a count: digits, perhaps with a fraction.
fn looks_numeric(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Characters that act on a terminal or that XML 1.0 cannot hold even as a reference: the C0
/// and C1 controls and DEL, U+FFFE and U+FFFF, and the bidirectional overrides and isolates,
/// which make text read differently from how it is stored.
fn unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{fffe}' | '\u{ffff}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `raw` as it is shown in every report: escaped and bounded.
pub fn shown(raw: &str) -> Cow<'_, str> {
    escape(raw, Context::Plain)
}

/// `raw` as one frame of a folded stack: [`shown`], with `;` escaped as `\x3b`.
pub fn folded_frame(raw: &str) -> Cow<'_, str> {
    escape(raw, Context::FoldedFrame)
}

fn escape(raw: &str, context: Context) -> Cow<'_, str> {
    let escapes = |(at, c): (usize, char)| context.escapes(c, &raw[at + c.len_utf8()..]);
    if raw.len() <= MAX_SHOWN_BYTES && !raw.char_indices().any(escapes) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len().min(MAX_SHOWN_BYTES) + CUT_MARK.len());
    let mut piece = String::new();
    for (at, c) in raw.char_indices() {
        piece.clear();
        match c {
            '\\' => piece.push_str("\\\\"),
            c if escapes((at, c)) && c.is_ascii() => {
                let _ = write!(piece, "\\x{:02x}", u32::from(c));
            }
            c if escapes((at, c)) => {
                let _ = write!(piece, "\\u{{{:x}}}", u32::from(c));
            }
            c => piece.push(c),
        }
        if out.len() + piece.len() > MAX_SHOWN_BYTES {
            out.push_str(CUT_MARK);
            return Cow::Owned(out);
        }
        out.push_str(&piece);
    }
    Cow::Owned(out)
}

/// A frame as reports show and serialise it: every string through [`shown`]. It serialises
/// like [`FrameData`], so the JSON report's frames keep their schema.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct ShownFrame<'a> {
    pub name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl<'a> From<&'a FrameData> for ShownFrame<'a> {
    fn from(frame: &'a FrameData) -> Self {
        Self {
            name: shown(&frame.name),
            module: frame.module.as_deref().map(shown),
            file: frame.file.as_deref().map(shown),
            line: frame.line,
            inlined: frame.inlined,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_borrowed_unchanged() {
        for name in [
            "main",
            "operator new(unsigned long)",
            "std::vector<int, std::allocator<int> >::push_back(int const&)",
            "JS:~handler /srv/app.js:1:2",
            "naïve_ünïcode_名前",
            "<&\"'>",
        ] {
            assert!(
                matches!(shown(name), Cow::Borrowed(n) if n == name),
                "{name}"
            );
        }
    }

    #[test]
    fn control_characters_and_backslashes_are_escaped() {
        assert_eq!(
            shown("\x1b]0;pwned\x07\x1b[2J"),
            "\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(shown("a\nb\rc\td\0e\x7f"), "a\\x0ab\\x0dc\\x09d\\x00e\\x7f");
        assert_eq!(shown("C1 \u{9b}2J"), "C1 \\u{9b}2J");
        assert_eq!(shown("rtl \u{202e}gpj.exe"), "rtl \\u{202e}gpj.exe");
        assert_eq!(
            shown("not xml \u{fffe}\u{ffff}"),
            "not xml \\u{fffe}\\u{ffff}"
        );
        // An escape in the raw name stays distinguishable from one leakhound wrote.
        assert_eq!(shown("literal \\x1b"), "literal \\\\x1b");
    }

    #[test]
    fn semicolons_are_escaped_only_inside_folded_frames() {
        assert_eq!(shown("a;b"), "a;b");
        assert_eq!(folded_frame("a;b"), "a\\x3bb");
        assert_eq!(folded_frame("x\x1by"), "x\\x1by");
    }

    #[test]
    fn a_number_at_the_end_of_a_folded_frame_is_not_a_count() {
        assert_eq!(folded_frame("stack 999"), "stack\\x20999");
        assert_eq!(folded_frame("v 1.5"), "v\\x201.5");
        assert_eq!(folded_frame("a 1 2"), "a 1\\x202");
        assert_eq!(
            folded_frame("operator new(unsigned long)"),
            "operator new(unsigned long)"
        );
        assert_eq!(folded_frame("trailing "), "trailing ");
        assert_eq!(shown("stack 999"), "stack 999");
    }

    #[test]
    fn long_names_are_cut_and_marked() {
        let huge = "n".repeat(1 << 20);
        let cut = shown(&huge);
        assert_eq!(cut.len(), MAX_SHOWN_BYTES + CUT_MARK.len());
        assert!(cut.ends_with(CUT_MARK));
        // Exactly at the limit is not cut.
        let limit = "n".repeat(MAX_SHOWN_BYTES);
        assert_eq!(shown(&limit), limit.as_str());
        // A cut never splits a character or an escape.
        let wide = "名".repeat(1000);
        let cut = shown(&wide);
        assert!(cut.ends_with(CUT_MARK) && cut.len() <= MAX_SHOWN_BYTES + CUT_MARK.len());
        let escapes = "\x1b".repeat(1000);
        let cut = shown(&escapes);
        assert!(
            cut.trim_end_matches(CUT_MARK).len().is_multiple_of(4),
            "{cut}"
        );
    }

    #[test]
    fn shown_frames_serialise_like_frames() {
        let frame = FrameData {
            module: Some("lib\x1b.so".into()),
            file: Some("a.c".into()),
            line: Some(3),
            ..FrameData::named("f\x07")
        };
        let json = serde_json::to_value(ShownFrame::from(&frame)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"name": "f\\x07", "module": "lib\\x1b.so", "file": "a.c", "line": 3})
        );
        let plain = FrameData::named("main");
        assert_eq!(
            serde_json::to_string(&ShownFrame::from(&plain)).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
    }
}
