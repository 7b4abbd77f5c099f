//! Names are data: a target whose perf map names its code with terminal escapes, markup,
//! separators, bytes that are not UTF-8 and a huge name. Every report stays valid for its
//! reader, no raw control character reaches a terminal, and the bytes still match the truth.

use std::process::Command;

use tests::targets::{self, Target};
use tests::{Run, arg, assert_matches_truth, leakhound_bin, paths, read_report, serial};

/// Any control character but the newline that ends a line, or an XML noncharacter.
fn assert_shows_no_raw_controls(what: &str, text: &str) {
    if let Some(c) = text
        .chars()
        .find(|&c| (c.is_control() && c != '\n') || c == '\u{fffe}' || c == '\u{ffff}')
    {
        panic!("{what} holds the raw character {c:?}");
    }
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn hostile_perf_map_names_stay_data() {
    let _serial = serial();
    let scratch = paths::scratch("hostile_perf_map_names_stay_data");
    let out = |name: &str| scratch.join(name);
    let mut target = Target::start(&targets::hostile_names(), &[]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "-o",
        arg(&out("report.txt")),
        "-o",
        arg(&out("out.folded")),
        "-o",
        arg(&out("flame.svg")),
        "-o",
        arg(&out("report.json")),
        "--save",
        arg(&out("run.leakhound.json")),
    ]);
    run.wait_attached();
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();
    target.release();

    let text = read_report(&out("report.txt"));
    let folded = read_report(&out("out.folded"));
    let svg = read_report(&out("flame.svg"));
    let json = read_report(&out("report.json"));
    // The names did reach the stacks, escaped: else this test would prove nothing.
    assert!(
        text.contains("\\x1b]0;pwned\\x07\\x1b[2J"),
        "the perf map's names are not in the report:\n{text}"
    );
    assert!(text.contains("[cut]"), "the huge name was not cut:\n{text}");
    assert!(folded.contains("evil\\x3bdecoy"), "{folded}");

    for (what, body) in [("text", &text), ("folded", &folded), ("SVG", &svg)] {
        assert_shows_no_raw_controls(what, body);
    }
    assert_shows_no_raw_controls("stderr", &outcome.stderr.join("\n"));
    // The bytes: a split frame would have given decoy some, a name read as a count would
    // have broken the line.
    assert_matches_truth(&truth, &folded);

    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    roxmltree::Document::parse_with_options(&svg, options)
        .unwrap_or_else(|e| panic!("the SVG is not well-formed XML: {e}"));
    let json: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("the JSON is invalid: {e}"));
    assert_shows_no_raw_controls("JSON strings", &json.to_string());

    // The saved recording, rendered again on stdout.
    let replay = Command::new(leakhound_bin())
        .args(["report", arg(&out("run.leakhound.json"))])
        .output()
        .expect("running leakhound report");
    assert!(replay.status.success(), "{replay:?}");
    let stdout = String::from_utf8(replay.stdout).expect("UTF-8 on stdout");
    assert!(!stdout.contains('\x1b'), "a raw ESC on stdout");
    assert_shows_no_raw_controls("stdout", &stdout);
    assert_eq!(
        stdout, text,
        "the replayed report differs from the live one"
    );
}
