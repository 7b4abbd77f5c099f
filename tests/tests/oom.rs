//! A target in a memory cgroup with a low limit leaks until the kernel OOM-kills it: the
//! `oom:mark_victim` tracepoint fires before the kill, and every report is written with what
//! the target held at that moment.

use std::os::unix::process::ExitStatusExt as _;
use std::time::Instant;

use tests::memory_cgroup::MemoryCgroup;
use tests::process::TIMEOUT;
use tests::{Run, arg, paths, read_report, serial, targets};

/// Low enough to be reached in well under a second of 1 MiB blocks.
const LIMIT: u64 = 64 << 20;

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn oom_kill_ends_the_trace_with_every_report() {
    let _serial = serial();
    let dir = paths::scratch("oom_kill");
    let cgroup = MemoryCgroup::new("oom", LIMIT);
    let mut target = targets::Target::start(&targets::oom_leak(), &[]);
    cgroup.add(target.pid());
    let pid = target.pid().to_string();
    let json = dir.join("out.json");
    let text = dir.join("out.txt");
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--interval",
        "100ms",
        "-o",
        arg(&json),
        "-o",
        arg(&text),
        "-o",
        arg(&dir.join("out.folded")),
    ]);
    run.wait_attached();
    target.go();

    // The target's own account: the held bytes, the block size, and each block it leaked.
    let deadline = Instant::now() + TIMEOUT;
    let (mut held, mut block, mut leaked) = (None, None, 0u64);
    while let Some(line) = target
        .proc
        .stdout
        .next(deadline, "the target's lines until its kill")
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["truth", "hold_known", bytes] => held = bytes.parse::<u64>().ok(),
            ["block", bytes] => block = bytes.parse::<u64>().ok(),
            ["leaked", n] => leaked = n.parse().expect("a count"),
            _ => {}
        }
    }
    let status = target.proc.wait_exit(TIMEOUT);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the kernel killed the target: {status}"
    );
    let (held, block) = (held.expect("held bytes"), block.expect("block size"));
    eprintln!("the target leaked {leaked} blocks of {block} bytes before its kill");
    assert!(leaked > 0 && leaked * block < LIMIT);

    let outcome = run.finish();
    outcome.assert_success();
    let report: serde_json::Value =
        serde_json::from_str(&read_report(&json)).expect("the JSON report parses");
    let ended_by = report["ended_by"].as_str().expect("ended_by");
    eprintln!("ended_by: {ended_by}");
    assert!(ended_by.starts_with("OOM kill: RSS "), "{ended_by}");
    assert!(
        ended_by.contains(&format!("memory cgroup limit 64.0 MiB ({LIMIT} bytes, ")),
        "{ended_by}"
    );
    let rss: u64 = ended_by
        .split_once("MiB (")
        .and_then(|(_, rest)| rest.split_once(" bytes) at the kill"))
        .and_then(|(bytes, _)| bytes.parse().ok())
        .unwrap_or_else(|| panic!("no RSS in bytes in {ended_by}"));
    // What the killer saw resident: the leaked blocks and more, never above the limit by much.
    assert!(
        rss >= leaked * block && rss <= LIMIT + (8 << 20),
        "RSS at the kill {rss} against {leaked} blocks of {block} and the limit {LIMIT}"
    );
    let text_report = read_report(&text);
    assert!(
        text_report.contains("ended by OOM kill: RSS "),
        "the text report says so:\n{text_report}"
    );

    // The leaking stack on top, with the blocks allocated by the kill: every block printed,
    // and perhaps the one being filled when the limit was hit.
    let stacks = report["stacks"].as_array().expect("stacks");
    let leaf = |stack: &serde_json::Value| {
        stack["frames"]
            .as_array()
            .and_then(|frames| frames.last())
            .and_then(|frame| frame["name"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let top = &stacks[0];
    assert_eq!(
        leaf(top),
        "leak_block",
        "the leaking stack ranks first: {top}"
    );
    let bytes = top["bytes"].as_u64().expect("bytes");
    assert!(
        bytes == leaked * block || bytes == (leaked + 1) * block,
        "leak_block holds {bytes} bytes; the target leaked {leaked} (or one more) of {block}"
    );
    let held_stack = stacks
        .iter()
        .find(|stack| leaf(stack) == "hold_known")
        .expect("the held blocks' stack");
    assert_eq!(
        held_stack["bytes"].as_u64(),
        Some(held),
        "hold_known's bytes"
    );
    eprintln!(
        "OOM report: leak_block {bytes} bytes (target printed {leaked} blocks), hold_known {} of {held}",
        held_stack["bytes"]
    );
}
