//! Golden files: every format rendered from saved recordings (testdata/*.leakhound.json) is
//! compared line by line with testdata/golden/. The recordings go through the same path as
//! `leakhound report`: read, analyse, render.
//!
//! After an intended change of output, regenerate with
//! `UPDATE_GOLDEN=1 cargo test -p tracer-user --test golden` and review the diff.

use std::{
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use prost::Message as _;
use tracer_user::{
    model::Recording,
    report::{Format, Report, pprof_proto::Profile, read_recording},
};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn load(name: &str) -> Recording {
    let path = testdata().join(format!("{name}.leakhound.json"));
    read_recording(File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn render(report: &Report, format: Format) -> Vec<u8> {
    let mut out = Vec::new();
    format
        .renderer(20)
        .render(report, &mut out)
        .unwrap_or_else(|e| panic!("rendering {format:?}: {e}"));
    out
}

/// Compares `actual` with the golden file `name`, or rewrites it under UPDATE_GOLDEN=1.
fn check(name: &str, actual: &str) {
    let path = testdata().join("golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (expected, actual): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), actual.lines().collect());
    let mut diff = String::new();
    let mut shown = 0;
    for i in 0..expected.len().max(actual.len()) {
        let (e, a) = (expected.get(i), actual.get(i));
        if e != a {
            if let Some(e) = e {
                diff.push_str(&format!("{:>5} - {e}\n", i + 1));
            }
            if let Some(a) = a {
                diff.push_str(&format!("{:>5} + {a}\n", i + 1));
            }
            shown += 1;
            if shown == 20 {
                diff.push_str("  ... (more differences)\n");
                break;
            }
        }
    }
    panic!(
        "{} differs from the rendered output (- golden, + now; {} vs {} lines):\n{diff}\
         If the change is intended: UPDATE_GOLDEN=1 cargo test -p tracer-user --test golden",
        path.display(),
        expected.len(),
        actual.len()
    );
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("the format is text")
}

/// pprof is gzipped protobuf: the golden file is its decoded form, which a person can read.
fn decoded_pprof(bytes: &[u8]) -> String {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut raw)
        .expect("pprof output is gzip");
    let profile = Profile::decode(raw.as_slice()).expect("pprof output is a Profile");
    format!("{profile:#?}\n")
}

#[test]
fn every_format_of_one_recording() {
    for name in ["growth_shapes", "growth_shapes_4s"] {
        let recording = load(name);
        let report = Report::new(&recording);
        check(&format!("{name}.txt"), &text(render(&report, Format::Text)));
        check(
            &format!("{name}.folded"),
            &text(render(&report, Format::Folded)),
        );
        check(
            &format!("{name}.json"),
            &text(render(&report, Format::Json)),
        );
        check(
            &format!("{name}.diff.folded"),
            &text(render(&report, Format::Diff)),
        );
        check(&format!("{name}.svg"), &text(render(&report, Format::Svg)));
        check(
            &format!("{name}.pprof.txt"),
            &decoded_pprof(&render(&report, Format::Pprof)),
        );
    }
}

/// A recording made with `--sample-bytes 16k`: estimates marked, with their intervals.
#[test]
fn a_sampled_recording_marks_its_estimates() {
    let recording = load("sampled_mix");
    assert_eq!(recording.sample_bytes, Some(16 * 1024));
    let report = Report::new(&recording);
    check("sampled_mix.txt", &text(render(&report, Format::Text)));
    check("sampled_mix.json", &text(render(&report, Format::Json)));
}

#[test]
fn diff_between_two_recordings() {
    let (before, after) = (load("growth_shapes_4s"), load("growth_shapes"));
    let report = Report::compared(&before, &after);
    check(
        "growth_shapes_4s_to_12s.diff.folded",
        &text(render(&report, Format::Diff)),
    );
}

#[test]
fn a_saved_recording_reads_back_unchanged() {
    let recording = load("growth_shapes");
    let saved = render(&Report::new(&recording), Format::Recording);
    let again = read_recording(saved.as_slice()).expect("reads back");
    assert_eq!(again, recording);
}

#[test]
fn go_tool_pprof_reads_the_profile() {
    let go_works = Command::new("go")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !go_works {
        println!("skipped: `go` is not installed (Debian package golang-go); pprof not checked");
        return;
    }
    let recording = load("growth_shapes");
    let dir = std::env::temp_dir().join(format!("leakhound-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("growth_shapes.pb.gz");
    std::fs::write(&path, render(&Report::new(&recording), Format::Pprof)).unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof", "-top"])
        .arg(&path)
        .env("HOME", &dir) // pprof keeps state under $HOME/pprof
        .output()
        .expect("running go tool pprof");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "go tool pprof failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    assert!(stdout.contains("Type: inuse_space"), "{stdout}");
    // The leak's 476 KiB, under its own name.
    let leak = stdout
        .lines()
        .find(|l| l.trim_end().ends_with(" leak_steady"))
        .unwrap_or_else(|| panic!("no leak_steady line:\n{stdout}"));
    assert!(leak.trim_start().starts_with("476kB"), "{leak}");
}
