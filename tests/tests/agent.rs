//! `leakhound agent` against the loopback Pyroscope receiver: two processes that match its
//! selector (one started before the agent, one after) and one that does not. Each matching
//! pid's pushed profiles hold, read back with `go tool pprof`, the in-use bytes per function
//! of its truth; the other pid is never pushed; a target that exits is dropped; SIGTERM to the
//! agent ends every trace with a final push and leaves no probe behind (`Run::finish`).

use std::path::Path;
use std::time::{Duration, Instant};

use tests::ingest_receiver::{Ingested, Receiver};
use tests::pprof::pprof_folded;
use tests::process::TIMEOUT;
use tests::report::Truth;
use tests::{Run, assert_matches_truth, paths, serial, targets};

/// Reads the agent's stderr into `lines` until one satisfies `found`.
fn wait_line(run: &Run, lines: &mut Vec<String>, what: &str, found: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while let Some(line) = run.proc.stderr.next(deadline, what) {
        let hit = found(&line);
        lines.push(line);
        if hit {
            return;
        }
    }
    panic!("the agent never said {what}; stderr:\n{}", lines.join("\n"));
}

/// Whether a pushed profile's name carries the label `pid=PID`.
fn is_of(request: &Ingested, pid: libc::pid_t) -> bool {
    let name = request.param("name").unwrap_or_default();
    name.contains(&format!("pid={pid},")) || name.contains(&format!("pid={pid}}}"))
}

/// Every accepted profile of `pid` pushed in `window`, checked against `truth`; returns how
/// many there were.
fn check_pushes(
    dir: &Path,
    received: &[Ingested],
    pid: libc::pid_t,
    window: (Instant, Instant),
    truth: &Truth,
) -> usize {
    let mut checked = 0;
    for (index, request) in received
        .iter()
        .filter(|r| r.accepted && is_of(r, pid) && r.at > window.0 && r.at < window.1)
        .enumerate()
    {
        let name = request.param("name").expect("a name");
        assert!(
            name.starts_with("alloc_family{") && name.contains("host="),
            "service and labels in {name}"
        );
        let profile = dir.join(format!("pid{pid}-{index}.pb.gz"));
        std::fs::write(&profile, request.profile()).expect("the profile written");
        let folded = pprof_folded(&profile, "inuse_space");
        std::fs::write(profile.with_extension("folded"), &folded).expect("kept for reading");
        eprintln!("pid {pid}, push {index} ({name}):");
        assert_matches_truth(truth, &folded);
        checked += 1;
    }
    checked
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn the_agent_traces_and_pushes_every_matching_process() {
    let _serial = serial();
    let dir = paths::scratch("agent");
    let receiver = Receiver::start(0);
    let exe = targets::alloc_family();
    // The selector matches the argument `lh-fleet-yes` at the end of the command line (the
    // agent's own command line holds the regex, but never ends with it; it is never traced).
    let mut early = targets::Target::start(&exe, &["lh-fleet-yes"]);
    let mut other = targets::Target::start(&exe, &["lh-fleet-no"]);
    let run = Run::start(&[
        "agent",
        "--match-cmdline",
        "alloc_family lh-fleet-yes$",
        "--scan-every",
        "200ms",
        "--push",
        &receiver.url,
        "--push-every",
        "1s",
    ]);
    let mut lines = Vec::new();
    let attached = |pid: libc::pid_t| {
        move |line: &str| {
            line.starts_with(&format!("leakhound agent: pid {pid}: leakhound: attached"))
        }
    };
    wait_line(
        &run,
        &mut lines,
        "the first target attached",
        attached(early.pid()),
    );
    // Started after the agent: picked up by a later scan.
    let mut late = targets::Target::start(&exe, &["lh-fleet-yes"]);
    wait_line(
        &run,
        &mut lines,
        "the later target attached",
        attached(late.pid()),
    );
    early.go();
    late.go();
    other.go();
    let early_truth = early.read_truth();
    let late_truth = late.read_truth();
    other.read_truth();
    let truth_at = Instant::now();
    // A periodic push of each after the allocations, a whole period later.
    let after = truth_at + Duration::from_millis(1100);
    let deadline = Instant::now() + TIMEOUT;
    while ![early.pid(), late.pid()].iter().all(|&pid| {
        receiver
            .received()
            .iter()
            .any(|r| r.accepted && is_of(r, pid) && r.at > after)
    }) {
        assert!(Instant::now() < deadline, "no periodic push of each target");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A target that exits is dropped: its trace ends and pushes a final profile.
    let late_pid = late.pid();
    let late_released = Instant::now();
    late.release();
    wait_line(
        &run,
        &mut lines,
        "the exited target's trace ended",
        |line| {
            line.starts_with(&format!(
                "leakhound agent: pid {late_pid}: trace ended (exit status: 0)"
            ))
        },
    );

    run.signal(libc::SIGTERM);
    let outcome = run.finish();
    lines.extend(outcome.stderr.iter().cloned());
    outcome.assert_success();
    early.release();
    other.release();
    let stderr = lines.join("\n");
    let early_pid = early.pid();
    assert!(
        stderr.contains(&format!(
            "leakhound agent: pid {early_pid}: trace ended (exit status: 0)"
        )),
        "SIGTERM ended the first target's trace cleanly:\n{stderr}"
    );

    let received = receiver.received();
    let other_pid = other.pid();
    assert!(
        !received.iter().any(|r| is_of(r, other_pid)),
        "the target that does not match was never pushed"
    );
    assert!(
        !stderr.contains(&format!("pid {other_pid}:")),
        "nor traced:\n{stderr}"
    );
    let far = Instant::now() + TIMEOUT;
    let early_pushes = check_pushes(&dir, &received, early_pid, (after, far), &early_truth);
    let late_pushes = check_pushes(
        &dir,
        &received,
        late_pid,
        (after, late_released),
        &late_truth,
    );
    // The first target's pushes after its allocations: periodic ones, and the final one that
    // SIGTERM brought.
    assert!(
        early_pushes >= 2 && late_pushes >= 1,
        "pushes checked: {early_pushes} of pid {early_pid}, {late_pushes} of pid {late_pid}"
    );
    eprintln!(
        "checked against the truth: {early_pushes} profiles of pid {early_pid}, {late_pushes} of pid {late_pid}; {} requests in all",
        received.len()
    );
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn the_agent_says_when_the_cap_is_hit_and_takes_a_freed_place() {
    let _serial = serial();
    let receiver = Receiver::start(0);
    let exe = targets::alloc_family();
    let first = targets::Target::start(&exe, &["lh-fleet-cap"]);
    let second = targets::Target::start(&exe, &["lh-fleet-cap"]);
    let run = Run::start(&[
        "agent",
        "--match-cmdline",
        "alloc_family lh-fleet-cap$",
        "--scan-every",
        "200ms",
        "--max-targets",
        "1",
        "--push",
        &receiver.url,
        "--push-every",
        "60s",
    ]);
    let mut lines = Vec::new();
    wait_line(&run, &mut lines, "that the cap was hit", |line| {
        line == "leakhound agent: 1 matching processes are not traced: 1 are, the most --max-targets allows"
    });
    let traced_first = lines
        .iter()
        .any(|line| line.starts_with(&format!("leakhound agent: pid {}: tracing", first.pid())));
    let (mut traced, mut waiting) = if traced_first {
        (first, second)
    } else {
        (second, first)
    };
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("leakhound agent: pid {}: tracing", traced.pid()))),
        "one of the two is traced:\n{}",
        lines.join("\n")
    );
    let traced_pid = traced.pid();
    wait_line(&run, &mut lines, "the traced target attached", |line| {
        line.starts_with(&format!(
            "leakhound agent: pid {traced_pid}: leakhound: attached"
        ))
    });
    // The traced one exits: its place goes to the one that waited.
    traced.go();
    traced.read_truth();
    traced.release();
    let waiting_pid = waiting.pid();
    wait_line(&run, &mut lines, "the waiting target attached", |line| {
        line.starts_with(&format!(
            "leakhound agent: pid {waiting_pid}: leakhound: attached"
        ))
    });
    let all_traced = "leakhound agent: every matching process is traced";
    if !lines.iter().any(|line| line == all_traced) {
        wait_line(&run, &mut lines, "that every match is traced", |line| {
            line == all_traced
        });
    }
    run.signal(libc::SIGTERM);
    let outcome = run.finish();
    outcome.assert_success();
    waiting.go();
    waiting.read_truth();
    waiting.release();
    // Each trace pushed its final profile.
    assert!(
        [traced.pid(), waiting_pid].iter().all(|&pid| receiver
            .received()
            .iter()
            .any(|r| r.accepted && is_of(r, pid))),
        "a final push of each"
    );
}
