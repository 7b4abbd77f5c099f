//! Every format, fed names that a hostile target could write: terminal escapes, XML markup,
//! separators, control bytes and a huge name. Each output must stay valid for its reader and
//! must carry no raw control character.

use std::io::Read as _;

use prost::Message as _;

use super::{Format, Report};
use crate::{
    model::{Frame, FrameData, Origin, Recording, Sample, StackRecord},
    names::{CUT_MARK, MAX_SHOWN_BYTES},
};

/// Names that each break something when shown raw.
const HOSTILE: &[&str] = &[
    "\x1b]0;owned\x07\x1b[2J\x1b[H",
    "</text><script>alert(1)</script>",
    "a\"b'c&amp;d<e>f",
    "split;the;stack 999",
    "line\nbreak\r\n42",
    "nul\0bell\x07del\x7fc1\u{9b}",
    "not-xml\u{fffe}\u{ffff}",
    "\\x1b looks escaped",
];

fn recording() -> Recording {
    let huge = "H".repeat(1 << 20);
    let mut names: Vec<String> = HOSTILE.iter().map(|s| (*s).to_owned()).collect();
    names.push(huge);
    let stacks = names
        .iter()
        .enumerate()
        .map(|(i, name)| StackRecord {
            origin: Origin::Malloc,
            frames: vec![
                Frame::named("main"),
                FrameData {
                    module: Some(format!("lib\x1b[31m{i}.so")),
                    file: Some(format!("/src/\x07{i}.c")),
                    line: Some(7),
                    ..FrameData::named(name.clone())
                }
                .into(),
            ],
            live_bytes: 100 + i as u64,
            live_allocations: 1,
            total_bytes: 200 + i as u64,
            total_allocations: 2,
            history: vec![10, 100 + i as u64],
            ages: None,
            live_bytes_variance: None,
        })
        .collect();
    Recording {
        pid: 7,
        command: "evil\x1b]2;title\x07<cmd>&".to_owned(),
        duration_secs: 2.0,
        ended_by: "SIGINT".to_owned(),
        samples: vec![
            Sample {
                secs: 1.0,
                memory: None,
            },
            Sample {
                secs: 2.0,
                memory: None,
            },
        ],
        stacks,
        exec: Some(crate::model::ExecEnd {
            program: "/bin/\x1b]2;exec'd\x07".to_owned(),
            released_allocations: 1,
            released_bytes: 64,
        }),
        ..Recording::default()
    }
}

fn render(format: Format) -> Vec<u8> {
    let recording = recording();
    let mut out = Vec::new();
    format
        .renderer(100)
        .render(&Report::new(&recording), &mut out)
        .unwrap_or_else(|e| panic!("{format:?}: {e}"));
    out
}

/// No control character but the newlines that end lines (and tabs nowhere).
fn assert_no_raw_controls(format: Format, text: &str) {
    if let Some(c) = text.chars().find(|&c| c.is_control() && c != '\n') {
        panic!("{format:?} holds the raw control character {c:?}");
    }
    assert!(!text.contains('\u{fffe}') && !text.contains('\u{ffff}'));
}

#[test]
fn text_report_escapes_and_cuts_names() {
    let text = String::from_utf8(render(Format::Text)).unwrap();
    assert_no_raw_controls(Format::Text, &text);
    assert!(text.contains("\\x1b]0;owned\\x07\\x1b[2J"), "{text}");
    assert!(text.contains("pid 7 (evil\\x1b]2;title\\x07<cmd>&)"));
    assert!(text.contains("exec'd /bin/\\x1b]2;exec'd\\x07;"), "{text}");
    assert!(text.contains("line\\x0abreak\\x0d\\x0a42"));
    assert!(text.contains("in lib\\x1b[31m") || text.contains("at /src/\\x07"));
    let longest = text.lines().map(str::len).max().unwrap();
    assert!(longest < MAX_SHOWN_BYTES + 200, "a line of {longest} bytes");
    assert!(text.contains(CUT_MARK));
}

/// Parses folded lines as inferno and flamegraph.pl do: the count after the last space, frames
/// split at `;`.
fn folded_lines(text: &str) -> Vec<(Vec<&str>, u64)> {
    text.lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("a count");
            (stack.split(';').collect(), count.parse().expect("a number"))
        })
        .collect()
}

#[test]
fn folded_frames_stay_whole() {
    let text = String::from_utf8(render(Format::Folded)).unwrap();
    assert_no_raw_controls(Format::Folded, &text);
    let lines = folded_lines(&text);
    assert_eq!(
        lines.len(),
        HOSTILE.len() + 1,
        "one line per stack:\n{text}"
    );
    for (frames, _) in &lines {
        assert_eq!(frames.len(), 2, "a name split a frame: {frames:?}");
        assert_eq!(frames[0], "main");
    }
    assert!(text.contains("split\\x3bthe\\x3bstack\\x20999 "), "{text}");
    // Nor does a name that ends in a number look like a second count.
    for line in text.lines() {
        let (stack, _) = line.rsplit_once(' ').unwrap();
        let last = stack.rsplit(' ').next().unwrap();
        assert!(last.parse::<f64>().is_err(), "{line}");
    }
    let total: u64 = lines.iter().map(|(_, bytes)| bytes).sum();
    assert_eq!(total, recording().live_bytes());
}

#[test]
fn diff_frames_stay_whole() {
    let text = String::from_utf8(render(Format::Diff)).unwrap();
    assert_no_raw_controls(Format::Diff, &text);
    for line in text.lines() {
        let mut fields = line.rsplitn(3, ' ');
        let (after, before, stack) = (fields.next(), fields.next(), fields.next().unwrap());
        assert!(after.unwrap().parse::<u64>().is_ok() && before.unwrap().parse::<u64>().is_ok());
        assert_eq!(stack.split(';').count(), 2, "{line}");
    }
}

#[test]
fn svg_is_well_formed_xml() {
    let svg = String::from_utf8(render(Format::Svg)).unwrap();
    // inferno writes the SVG 1.1 doctype.
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(&svg, options)
        .unwrap_or_else(|e| panic!("invalid SVG: {e}"));
    assert_no_raw_controls(Format::Svg, &svg);
    // The markup in names is text, not elements: inferno's own script is the only one.
    let scripts: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("script"))
        .collect();
    assert_eq!(scripts.len(), 1);
    assert!(!scripts[0].text().unwrap_or_default().contains("alert(1)"));
    let titles: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text().map(str::to_owned))
        .collect();
    assert!(
        titles
            .iter()
            .any(|t| t.contains("</text><script>alert(1)</script>")),
        "{titles:?}"
    );
    // Frames reach inferno as folded frames, with `;` escaped.
    assert!(
        titles.iter().any(|t| t.contains("a\"b'c&amp\\x3bd<e>f")),
        "{titles:?}"
    );
    // A name ending in a number does not make inferno read the line as a differential one.
    assert!(
        !titles.iter().any(|t| t.contains("%;")),
        "a line was read as differential: {titles:?}"
    );
}

#[test]
fn json_is_valid_and_names_are_escaped() {
    let json: serde_json::Value = serde_json::from_slice(&render(Format::Json)).unwrap();
    let text = json.to_string();
    assert_no_raw_controls(Format::Json, &text);
    assert_eq!(json["command"], "evil\\x1b]2;title\\x07<cmd>&");
    assert_eq!(
        json["released_by_exec"]["program"],
        "/bin/\\x1b]2;exec'd\\x07"
    );
    let names: Vec<&str> = json["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frames"][1]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"split;the;stack 999"), "{names:?}");
    assert!(names.contains(&"nul\\x00bell\\x07del\\x7fc1\\u{9b}"));
    assert!(
        names
            .iter()
            .all(|n| n.len() <= MAX_SHOWN_BYTES + CUT_MARK.len())
    );
}

#[test]
fn pprof_strings_are_escaped() {
    let gz = render(Format::Pprof);
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut bytes)
        .unwrap();
    let profile = super::pprof_proto::Profile::decode(&bytes[..]).unwrap();
    for s in &profile.string_table {
        assert_no_raw_controls(Format::Pprof, s);
        assert!(
            s.len() <= MAX_SHOWN_BYTES + 200,
            "a string of {} bytes",
            s.len()
        );
    }
}

#[test]
fn the_saved_recording_keeps_names_as_they_were() {
    let saved = render(Format::Recording);
    let back = super::read_recording(&saved[..]).unwrap();
    assert_eq!(back.stacks, recording().stacks);
    assert_eq!(back.command, recording().command);
}
