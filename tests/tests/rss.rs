//! Where the RSS goes, against real runtimes: the JSON report's `memory.regions` must name
//! the kind that grew, with the bytes the target itself says it keeps.
//!
//! - Node.js, a loopback server whose `message` listeners pile up: V8's heap, committed with
//!   mprotect inside reservations, must explain at least 80% of the RSS growth and be
//!   classified growing.
//! - Node.js attached after it built a heap of 48 MiB: the pages mapped before any probe are
//!   named `v8-heap` from their own headers, with the resident bytes V8 says its heap has.
//! - OpenJDK with no flags, a growing byte[] cache beside direct buffers and zlib state: the
//!   Java heap (its range read from HotSpot's vmStructs) must hold the cache's growth within
//!   10%, and named kinds must explain at least 90% of the RSS.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tests::process::{Proc, TIMEOUT};
use tests::report::Truth;
use tests::runtimes::{self, within_percent};
use tests::targets::read_truth;
use tests::{Run, arg, paths, read_report, serial};

macro_rules! require_program {
    ($test:expr, $program:expr, $flag:expr) => {
        if !runtimes::available($program, $flag) {
            println!("skipped: {} needs {}", $test, $program);
            return;
        }
    };
}

/// Attaches with samples every 500 ms, lets the target grow, and stops leakhound while the
/// target still runs. Returns the truth, the JSON report and the text report.
fn trace(test: &str, mut target_cmd: Command) -> (Truth, Value, String) {
    let dir = paths::scratch(test);
    let json = dir.join("out.json");
    let text = dir.join("out.txt");
    target_cmd.current_dir(&dir);
    let mut target = Proc::spawn_ready(target_cmd, test);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--interval",
        "500ms",
        "-o",
        arg(&json),
        "-o",
        arg(&text),
    ]);
    run.wait_attached();
    target.write_line("go");
    let truth = read_truth(&target.stdout, test);
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.write_line("");
    let status = target.wait_exit(TIMEOUT);
    assert!(status.success(), "{test}: the target exited with {status}");
    let report = read_report(&json);
    let value: Value = serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}\n{report}"));
    (truth, value, read_report(&text))
}

fn regions(report: &Value) -> &Vec<Value> {
    report["memory"]["regions"]
        .as_array()
        .unwrap_or_else(|| panic!("no memory.regions in {report}"))
}

/// Resident growth of every row of `kind`, summed.
fn growth_of(report: &Value, kind: &str) -> i64 {
    regions(report)
        .iter()
        .filter(|row| row["kind"] == kind)
        .map(|row| row["growth_resident_bytes"].as_i64().expect("growth"))
        .sum()
}

fn where_it_goes(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("where the RSS goes"))
        .take_while(|l| l.starts_with("where") || l.starts_with("  "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_listener_pileup_is_v8_heap_growth() {
    let test = "node_listener_pileup_is_v8_heap_growth";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/listener_pileup.js");
    let mut cmd = Command::new("node");
    // 6 s of 64 listeners every 50 ms: about 60 MiB of V8 heap.
    cmd.arg(&script).args(["6", "64"]);
    let (truth, report, text) = trace(test, cmd);
    let split = where_it_goes(&text);
    let rss_growth = report["memory"]["growth"]["rss_bytes"]
        .as_i64()
        .expect("rss growth");
    let v8 = growth_of(&report, "v8-heap");
    eprintln!(
        "node: {} listeners; RSS {rss_growth:+} bytes, v8-heap {v8:+} bytes\n{split}",
        truth["listeners"]
    );
    assert!(rss_growth > 32 << 20, "the RSS grew too little:\n{split}");
    assert!(
        v8 * 100 >= rss_growth * 80,
        "v8-heap growth {v8} explains less than 80% of the RSS growth {rss_growth}:\n{split}"
    );
    let largest = regions(&report)
        .iter()
        .filter(|row| row["kind"] == "v8-heap")
        .max_by_key(|row| row["growth_resident_bytes"].as_i64())
        .expect("a v8-heap row");
    assert_eq!(largest["trend"], "growing", "{split}");
    assert!(
        text.contains("what grew") && text.contains("v8-heap +"),
        "the text report does not say that v8-heap grew:\n{split}"
    );
}

/// Resident bytes of every row of `kind` at the last sample, summed.
fn resident_of(report: &Value, kind: &str) -> u64 {
    regions(report)
        .iter()
        .filter(|row| row["kind"] == kind)
        .map(|row| row["resident_bytes"].as_u64().expect("resident bytes"))
        .sum()
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_heap_built_before_the_attach_is_v8_heap() {
    let test = "node_heap_built_before_the_attach_is_v8_heap";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/prebuilt_heap.js");
    let mut cmd = Command::new("node");
    cmd.arg(&script).arg("48");
    let (truth, report, text) = trace(test, cmd);
    let split = where_it_goes(&text);
    let v8 = resident_of(&report, "v8-heap");
    let physical = truth["v8_physical"];
    eprintln!(
        "node: V8 says {physical} bytes resident in its heap ({} committed); v8-heap {v8} bytes resident\n{split}",
        truth["v8_committed"]
    );
    assert!(
        physical > 40 << 20,
        "the heap is smaller than built:\n{split}"
    );
    assert!(
        within_percent(physical, v8, 10),
        "v8-heap holds {v8} resident bytes, V8 says {physical}:\n{split}"
    );
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jvm_byte_array_cache_is_java_heap_growth() {
    let test = "jvm_byte_array_cache_is_java_heap_growth";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let _serial = serial();
    let classes = runtimes::java_classes_of("HeapGrowth");
    let mut cmd = Command::new("java");
    // The heap is committed at start (-Xms = -Xmx); its pages are touched as the cache grows.
    cmd.args(["-Xms256m", "-Xmx256m", "-cp"])
        .arg(&classes)
        .args(["HeapGrowth", "6"]);
    let (truth, report, text) = trace(test, cmd);
    let split = where_it_goes(&text);
    let cache = truth["cache_bytes"];
    let heap = growth_of(&report, "java-heap");
    let explained = report["memory"]["explained_share"]
        .as_f64()
        .expect("explained_share");
    eprintln!(
        "jvm: byte[] cache {cache} bytes; java-heap {heap:+} bytes; named kinds explain {:.1}%\n{split}",
        explained * 100.0
    );
    assert!(
        heap > 0 && within_percent(cache, heap as u64, 10),
        "java-heap grew {heap} bytes, the cache keeps {cache} (more than 10% apart):\n{split}"
    );
    assert!(
        explained >= 0.9,
        "named kinds explain {:.1}% of the RSS, under 90%:\n{split}",
        explained * 100.0
    );
    assert!(text.contains("java-heap +"), "{split}");
}
