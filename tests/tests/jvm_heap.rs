//! What grows inside a Java heap, from HotSpot's class histograms (`--jvm-heap-histogram`),
//! against the JVM of the RSS test (tests/targets/HeapGrowth.java), which knows the bytes its
//! byte[] cache keeps.
//!
//! - A JVM started with no flag: with the option, `byte[]` is the java-heap class that grew
//!   most, its growth within 10% of the cache's, classified growing, and the class reaches
//!   every format (folded, diff, pprof, SVG) with the bytes of the JSON report.
//! - Without the option, no histogram is taken: the JVM's own GC log shows no full GC, and the
//!   report has no java-heap stack. The same run checks that the class space, mapped before
//!   the attach, is named `java-metaspace` from HotSpot's tables, with resident bytes.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tests::process::{Proc, TIMEOUT};
use tests::report::Truth;
use tests::runtimes::{self, within_percent};
use tests::targets::read_truth;
use tests::{Run, arg, paths, read_report, serial};

macro_rules! require_java {
    ($test:expr) => {
        if !runtimes::available("java", "-version") || !runtimes::available("javac", "-version") {
            println!("skipped: {} needs java and javac", $test);
            return;
        }
    };
}

/// Starts the cache-growing JVM with `jvm_flags`, attaches with samples every 500 ms and
/// `extra`, lets the cache grow for 4 s and stops leakhound while the JVM still runs. Returns
/// the truth, the scratch directory (reports `out.*`) and leakhound's stderr.
fn trace(test: &str, jvm_flags: &[&str], extra: &[&str]) -> (Truth, PathBuf, String) {
    let dir = paths::scratch(test);
    let classes = runtimes::java_classes_of("HeapGrowth");
    let mut cmd = Command::new("java");
    cmd.args(jvm_flags)
        .arg("-cp")
        .arg(&classes)
        .args(["HeapGrowth", "4"])
        .current_dir(&dir);
    let mut target = Proc::spawn_ready(cmd, test);
    let pid = target.pid().to_string();
    let outputs: Vec<PathBuf> = ["json", "txt", "folded", "diff.folded", "pb.gz", "svg"]
        .iter()
        .map(|ext| dir.join(format!("out.{ext}")))
        .collect();
    let mut args = vec!["record", "--pid", &pid, "--interval", "500ms"];
    for out in &outputs {
        args.extend(["-o", arg(out)]);
    }
    args.extend_from_slice(extra);
    let mut run = Run::start(&args);
    run.wait_attached();
    target.write_line("go");
    let truth = read_truth(&target.stdout, test);
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();
    target.write_line("");
    let status = target.wait_exit(TIMEOUT);
    assert!(status.success(), "{test}: the target exited with {status}");
    (truth, dir, outcome.stderr.join("\n"))
}

fn json(dir: &Path) -> Value {
    let report = read_report(&dir.join("out.json"));
    serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}\n{report}"))
}

fn java_heap_stacks(report: &Value) -> Vec<&Value> {
    report["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| s["origin"] == "java-heap")
        .collect()
}

fn class_of(stack: &Value) -> &str {
    let frames = stack["frames"].as_array().expect("frames");
    assert_eq!(frames.len(), 1, "a java-heap stack is one class: {stack}");
    frames[0]["name"].as_str().expect("a name")
}

/// Growth from the first histogram to the last one.
fn growth(stack: &Value) -> i64 {
    let trend = &stack["trend"];
    trend["last_bytes"].as_i64().expect("last") - trend["first_bytes"].as_i64().expect("first")
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jvm_heap_histogram_names_the_byte_array_cache() {
    let test = "jvm_heap_histogram_names_the_byte_array_cache";
    require_java!(test);
    let _serial = serial();
    // No flag at all: the attach listener is started by leakhound's handshake.
    let (truth, dir, stderr) = trace(test, &[], &["--jvm-heap-histogram"]);
    let report = json(&dir);
    let cache = truth["cache_bytes"];
    let note = report["java_heap_histogram"].as_str().unwrap_or_default();
    let mut stacks = java_heap_stacks(&report);
    assert!(
        !stacks.is_empty(),
        "no java-heap stacks; {note}\nstderr:\n{stderr}"
    );
    stacks.sort_by_key(|s| std::cmp::Reverse(growth(s)));
    let top = stacks[0];
    let grew = growth(top);
    eprintln!(
        "{note}\nbyte[] cache {cache} bytes; top java-heap class {} grew {grew:+} bytes ({} live); next {}",
        class_of(top),
        top["bytes"],
        stacks
            .get(1)
            .map(|s| format!("{} {:+}", class_of(s), growth(s)))
            .unwrap_or_default()
    );
    assert_eq!(class_of(top), "byte[]", "{note}");
    assert!(
        grew > 0 && within_percent(cache, grew as u64, 10),
        "byte[] grew {grew} bytes, the cache keeps {cache} (more than 10% apart)"
    );
    assert_eq!(top["trend"]["class"], "growing", "{top}");
    assert_eq!(top["total_bytes"].as_i64(), Some(grew), "{top}");
    // Inside the Java heap: not added to the outstanding total.
    let counted: u64 = report["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["origin"] == "malloc" || s["origin"] == "mmap")
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(report["totals"]["bytes"].as_u64(), Some(counted));

    // Every format carries the class with the JSON report's bytes.
    let live = top["bytes"].as_u64().unwrap();
    let before = top["trend"]["first_bytes"].as_u64().unwrap();
    let folded = read_report(&dir.join("out.folded"));
    assert!(
        folded.lines().any(|l| l == format!("byte[] {live}")),
        "no `byte[] {live}` in the folded report:\n{folded}"
    );
    let diff = read_report(&dir.join("out.diff.folded"));
    assert!(
        diff.lines().any(|l| l == format!("byte[] {before} {live}")),
        "no `byte[] {before} {live}` in the diff:\n{diff}"
    );
    let svg = read_report(&dir.join("out.svg"));
    assert!(svg.contains("byte[]"), "no byte[] frame in the SVG");
    let pprof = Command::new("gzip")
        .arg("-dc")
        .arg(dir.join("out.pb.gz"))
        .output()
        .expect("gzip runs");
    assert!(pprof.status.success(), "the pprof report is no gzip");
    let raw = pprof.stdout;
    let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"byte[]") && has(b"java-heap"), "pprof lacks the class");
    let text = read_report(&dir.join("out.txt"));
    assert!(
        text.contains("java heap: GC.class_histogram at"),
        "the text report does not say what the histograms found:\n{text}"
    );
    assert!(text.contains("byte[]"), "{text}");
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn without_the_option_no_histogram_is_taken_and_class_space_is_named() {
    let test = "without_the_option_no_histogram_is_taken_and_class_space_is_named";
    require_java!(test);
    let _serial = serial();
    let gc_log = paths::scratch(test).join("gc.log");
    let log_flag = format!("-Xlog:gc:file={}", gc_log.display());
    let (truth, dir, _) = trace(test, &[&log_flag], &[]);
    assert!(truth["cache_bytes"] > 0);
    let report = json(&dir);
    assert!(java_heap_stacks(&report).is_empty(), "java-heap stacks");
    assert!(report.get("java_heap_histogram").is_none(), "{report}");
    let log = std::fs::read_to_string(&gc_log).expect("the JVM's GC log");
    // A histogram's collection is logged as `Pause Full (Heap Inspection Initiated GC)`.
    assert!(
        !log.contains("Heap Inspection") && !log.contains("Pause Full"),
        "the JVM ran a full GC:\n{log}"
    );
    // The JVM mapped its class space long before the attach: no traced stack names it.
    let regions = report["memory"]["regions"].as_array().expect("regions");
    let class_space: u64 = regions
        .iter()
        .filter(|row| row["kind"] == "java-metaspace" && row["label"] == "class space")
        .map(|row| row["resident_bytes"].as_u64().expect("resident"))
        .sum();
    eprintln!("class space: {class_space} bytes resident");
    assert!(
        class_space > 0,
        "no resident java-metaspace class space: {regions:?}"
    );
}
