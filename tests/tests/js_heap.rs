//! `--js-heap` against a real Node process: V8's sampling heap profiler, reached through the
//! inspector that leakhound opens with SIGUSR1, must name the path that piles up `message`
//! listeners as the top js-heap stack, with bytes near what the listeners keep, and leave the
//! target as found: running, with no inspector listening.
//!
//! The target (tests/targets/listener_pileup.js) adds listeners that each keep 1024 doubles
//! (8,192 bytes of payload); it prints how many. Once the data handler is optimized, TurboFan
//! inlines `addMessageListener` into it and V8's profiler then charges the handler (an inlined
//! function has no frame of its own), so the listener path is the stacks that end in either.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;
use tests::process::{Proc, TIMEOUT};
use tests::runtimes;
use tests::targets::read_truth;
use tests::{Run, arg, paths, read_report, serial};

/// Payload each listener keeps: `new Array(1024).fill(double)`.
const BYTES_PER_LISTENER: u64 = 1024 * 8;
/// V8's profile is an estimate from one sample per 32 KiB (about one listener in four) plus
/// object headers: the listener path must come within this of the payload.
const BOUND_PERCENT: f64 = 15.0;
/// The data handler in listener_pileup.js (where `addMessageListener` is called).
const HANDLER: &str = "(anonymous listener_pileup.js:28)";
const ADDER: &str = "addMessageListener";

/// The ports the process listens on (TCP, v4 and v6), from its own namespace's tables.
fn listening_ports(pid: i32) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(3) == Some(&"0A")
                && let Some(port) = fields
                    .get(1)
                    .and_then(|local| local.rsplit(':').next())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            {
                ports.insert(port);
            }
        }
    }
    ports
}

struct Traced {
    listeners: u64,
    report: Value,
    text: String,
    folded: String,
    stderr: String,
}

/// Attaches with `--js-heap`, lets the listeners pile up, stops leakhound while the target
/// runs, and checks that the target is left as found.
fn trace(test: &str, mut target_cmd: Command) -> Traced {
    let dir = paths::scratch(test);
    let (json, text, folded) = (
        dir.join("out.json"),
        dir.join("out.txt"),
        dir.join("out.folded"),
    );
    target_cmd.current_dir(&dir);
    let mut target = Proc::spawn_ready(target_cmd, test);
    let before = listening_ports(target.pid());
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--js-heap",
        "--interval",
        "500ms",
        "-o",
        arg(&json),
        "-o",
        arg(&text),
        "-o",
        arg(&folded),
    ]);
    run.wait_attached();
    target.write_line("go");
    let truth = read_truth(&target.stdout, test);
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();
    // Left as found: still running, and listening on exactly the ports it had.
    assert!(
        target.try_status().is_none(),
        "{test}: the target ended under leakhound"
    );
    let after = listening_ports(target.pid());
    assert_eq!(
        after, before,
        "{test}: the target's listening ports changed (the inspector was left open?)"
    );
    target.write_line("");
    let status = target.wait_exit(TIMEOUT);
    assert!(status.success(), "{test}: the target exited with {status}");
    let report = read_report(&json);
    Traced {
        listeners: truth["listeners"],
        report: serde_json::from_str(&report).unwrap_or_else(|e| panic!("{e}\n{report}")),
        text: read_report(&text),
        folded: read_report(&folded),
        stderr: outcome.stderr.join("\n"),
    }
}

fn names(stack: &Value) -> Vec<&str> {
    stack["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect()
}

/// Whether a stack is the listener path: it ends in the adder, or in the handler that
/// inlined it.
fn is_listener_path(frames: &[&str]) -> bool {
    matches!(frames.last(), Some(&ADDER) | Some(&HANDLER)) && frames.contains(&HANDLER)
}

fn check(test: &str, traced: &Traced) {
    let stacks = traced.report["stacks"].as_array().expect("stacks");
    let js: Vec<&Value> = stacks.iter().filter(|s| s["origin"] == "js-heap").collect();
    assert!(
        !js.is_empty(),
        "{test}: no js-heap stack\n{}",
        traced.stderr
    );
    let top = js[0];
    let top_frames = names(top);
    let listener_bytes: u64 = js
        .iter()
        .filter(|s| is_listener_path(&names(s)))
        .map(|s| s["bytes"].as_u64().expect("bytes"))
        .sum();
    let truth = traced.listeners * BYTES_PER_LISTENER;
    let off = (listener_bytes as f64 / truth as f64 - 1.0) * 100.0;
    eprintln!(
        "{test}: {} listeners, payload {truth} bytes; js-heap listener path {listener_bytes} bytes ({off:+.1}%); top js-heap stack {} bytes, {}: {:?}",
        traced.listeners,
        top["bytes"],
        top["trend"]["class"],
        &top_frames[top_frames.len().saturating_sub(3)..]
    );
    assert!(
        is_listener_path(&top_frames),
        "{test}: the top js-heap stack is not the listener path: {top_frames:?}"
    );
    assert_eq!(top["trend"]["class"], "growing", "{test}: {top}");
    assert!(
        off.abs() <= BOUND_PERCENT,
        "{test}: the listener path holds {listener_bytes} bytes for a payload of {truth} ({off:+.1}%)"
    );
    // Not added to the outstanding total, and in every format.
    let total: u64 = stacks
        .iter()
        .filter(|s| s["origin"] == "malloc" || s["origin"] == "mmap")
        .map(|s| s["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(traced.report["totals"]["bytes"].as_u64(), Some(total));
    assert!(
        traced.text.contains("[js-heap]") && traced.text.contains("js heap live ~"),
        "{test}: the text report has no js-heap stack"
    );
    let folded_line = format!("{} {}", top_frames.join(";"), top["bytes"]);
    assert!(
        traced.folded.lines().any(|l| l == folded_line),
        "{test}: the folded stacks lack `{folded_line}`"
    );
}

/// Traces `pid` with `--js-heap` for `duration`, writing `json`; leakhound must succeed and say
/// exactly one `--js-heap:` line, which is returned.
fn the_one_js_heap_notice(test: &str, pid: &str, duration: &str, json: &Path) -> String {
    let mut run = Run::start(&[
        "record",
        "--pid",
        pid,
        "--js-heap",
        "--interval",
        "200ms",
        "--duration",
        duration,
        "-o",
        arg(json),
    ]);
    run.wait_attached();
    let outcome = run.finish();
    outcome.assert_success();
    let said: Vec<&String> = outcome
        .stderr
        .iter()
        .filter(|l| l.contains("--js-heap:"))
        .collect();
    assert_eq!(said.len(), 1, "{test}: {:?}", outcome.stderr);
    said[0].clone()
}

fn listener_pileup() -> Command {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/listener_pileup.js");
    let mut cmd = Command::new("node");
    // 6 s of 64 listeners every 50 ms: about 7,500 listeners, 60 MiB of V8 heap.
    cmd.arg(script).args(["6", "64"]);
    cmd
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn js_heap_names_the_listener_pileup() {
    let test = "js_heap_names_the_listener_pileup";
    if !runtimes::available("node", "--version") {
        println!("skipped: {test} needs node");
        return;
    }
    let _serial = serial();
    let traced = trace(test, listener_pileup());
    check(test, &traced);
}

/// The target in a network namespace of its own (loopback only): leakhound must open,
/// reach and close the inspector inside it (setns), since the host's 127.0.0.1 is not its.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn js_heap_reaches_a_target_in_its_own_network_namespace() {
    let test = "js_heap_reaches_a_target_in_its_own_network_namespace";
    if !runtimes::available("node", "--version") || !runtimes::available("ip", "-V") {
        println!("skipped: {test} needs node and ip (iproute2)");
        return;
    }
    let _serial = serial();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/listener_pileup.js");
    let mut cmd = Command::new("unshare");
    // The shell brings the new namespace's loopback up and becomes node (same PID).
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && exec node \"$0\" 6 64",
    ])
    .arg(script);
    let traced = trace(test, cmd);
    check(test, &traced);
}

/// A process that is not Node (no SIGUSR1 handler: the signal would kill it): `--js-heap`
/// sends nothing, says why in one line, and every report is still written.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn js_heap_refuses_a_process_without_an_inspector() {
    let test = "js_heap_refuses_a_process_without_an_inspector";
    let _serial = serial();
    let dir = paths::scratch(test);
    let json = dir.join("out.json");
    let mut target = Proc::spawn(
        {
            let mut cmd = Command::new("sleep");
            cmd.arg("60");
            cmd
        },
        test,
        true,
    );
    let pid = target.pid().to_string();
    let said = the_one_js_heap_notice(test, &pid, "1s", &json);
    assert!(said.contains("does not catch SIGUSR1"), "{said}");
    assert!(
        target.try_status().is_none(),
        "{test}: the target did not survive"
    );
    let report: Value = serde_json::from_str(&read_report(&json)).expect("json report");
    assert!(report["stacks"].is_array());
    target.signal(libc::SIGKILL);
    let _ = target.wait_timeout(TIMEOUT);
}

/// An inspector already open (`--inspect`) with a client connected: leakhound does not join
/// the session, says so in one line, writes every report, and leaves the inspector as it was.
/// The target runs in a network namespace of its own, so its port 9229 is its alone; the
/// client is a second Node process in that namespace holding a connection.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn js_heap_leaves_an_attached_inspector_alone() {
    let test = "js_heap_leaves_an_attached_inspector_alone";
    if !runtimes::available("node", "--version") || !runtimes::available("ip", "-V") {
        println!("skipped: {test} needs node and ip (iproute2)");
        return;
    }
    let _serial = serial();
    let dir = paths::scratch(test);
    let json = dir.join("out.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/listener_pileup.js");
    // The client connects once the inspector listens, holds the connection, and leaves after
    // 30 s whatever happens.
    let client = "const c = () => require('net').connect(9229, '127.0.0.1').on('error', () => setTimeout(c, 50)); c(); setTimeout(() => process.exit(0), 30000)";
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && node -e \"$1\" & exec node --inspect=127.0.0.1:9229 \"$0\" 2 8",
    ])
    .arg(&script)
    .arg(client)
    .current_dir(&dir);
    let mut target = Proc::spawn_ready(cmd, test);
    // Wait for the client's connection to show in the target's table.
    let pid = target.pid();
    let connected = || {
        std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.split_whitespace().nth(1) == Some("0100007F:240D")
                    && l.split_whitespace().nth(3) == Some("01")
            })
    };
    let until = Instant::now() + TIMEOUT;
    while !connected() {
        assert!(Instant::now() < until, "{test}: the client never connected");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = listening_ports(pid);
    assert!(before.contains(&9229), "{test}: no inspector: {before:?}");
    let pid = pid.to_string();
    let said = the_one_js_heap_notice(test, &pid, "4s", &json);
    assert!(said.contains("already connected"), "{said}");
    assert!(target.try_status().is_none(), "{test}: the target ended");
    assert_eq!(
        listening_ports(target.pid()),
        before,
        "{test}: ports changed"
    );
    let report: Value = serde_json::from_str(&read_report(&json)).expect("json report");
    assert!(
        report["stacks"]
            .as_array()
            .expect("stacks")
            .iter()
            .all(|s| s["origin"] != "js-heap")
    );
    target.write_line("");
    let _ = target.wait_timeout(TIMEOUT);
    if target.try_status().is_none() {
        target.signal(libc::SIGKILL);
        let _ = target.wait_timeout(TIMEOUT);
    }
}

/// Continuous mode with `--js-heap`: a periodic push (not only the final report) carries the
/// js-heap stacks of the last profile read, so a fleet's store sees the listener path grow.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn js_heap_stacks_are_in_periodic_pushes() {
    let test = "js_heap_stacks_are_in_periodic_pushes";
    if !runtimes::available("node", "--version") {
        println!("skipped: {test} needs node");
        return;
    }
    let _serial = serial();
    let dir = paths::scratch(test);
    let receiver = tests::ingest_receiver::Receiver::start(0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/listener_pileup.js");
    let mut cmd = Command::new("node");
    cmd.arg(&script).args(["4", "64"]).current_dir(&dir);
    let mut target = Proc::spawn_ready(cmd, test);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--js-heap",
        "--interval",
        "500ms",
        "--push",
        &receiver.url,
        "--push-every",
        "1s",
        "-o",
        arg(&dir.join("out.folded")),
    ]);
    run.wait_attached();
    target.write_line("go");
    let truth = read_truth(&target.stdout, test);
    // A periodic push whose profile was read after the last listener was added.
    let after = Instant::now() + std::time::Duration::from_millis(1600);
    let deadline = Instant::now() + TIMEOUT;
    let periodic = loop {
        if let Some(request) = receiver
            .received()
            .into_iter()
            .find(|r| r.accepted && r.at > after)
        {
            break request;
        }
        assert!(Instant::now() < deadline, "{test}: no periodic push");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.write_line("");
    let status = target.wait_exit(TIMEOUT);
    assert!(status.success(), "{test}: the target exited with {status}");

    let profile = dir.join("periodic.pb.gz");
    std::fs::write(&profile, periodic.profile()).expect("the profile written");
    let folded = tests::pprof::pprof_folded(&profile, "inuse_space");
    let lines = tests::report::parse_folded(&folded).unwrap_or_else(|e| panic!("{e}\n{folded}"));
    let listener_bytes: u64 = lines
        .iter()
        .filter(|l| {
            let frames: Vec<&str> = l.frames.iter().map(String::as_str).collect();
            is_listener_path(&frames)
        })
        .map(|l| l.bytes)
        .sum();
    let payload = truth["listeners"] * BYTES_PER_LISTENER;
    let off = (listener_bytes as f64 / payload as f64 - 1.0) * 100.0;
    eprintln!(
        "{test}: {} listeners, payload {payload} bytes; the periodic push's listener path {listener_bytes} bytes ({off:+.1}%)",
        truth["listeners"]
    );
    assert!(
        off.abs() <= BOUND_PERCENT,
        "{test}: the periodic push's listener path holds {listener_bytes} bytes for a payload of {payload} ({off:+.1}%):\n{folded}"
    );
}
