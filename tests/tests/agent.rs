//! `leakhound agent` against the loopback Pyroscope receiver: two processes that match its
//! selector (one started before the agent, one after) and one that does not. Each matching
//! pid's pushed profiles hold, read back with `go tool pprof`, the in-use bytes per function
//! of its truth; the other pid is never pushed; a target that exits is dropped; SIGTERM to the
//! agent ends every trace with a final push and leaves no probe behind (`Run::finish`).
//! `--cgroup` against a real cgroup: of two processes of the same program, only the one moved
//! into the test's cgroup is traced and pushed. Both agent tests print what the agent and each
//! of its children cost in memory while they trace (the figures in README "Fleet").

use std::path::Path;
use std::time::{Duration, Instant};

use tests::ingest_receiver::{Ingested, Receiver};
use tests::memory_cgroup::MemoryCgroup;
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
/// Ends the agent with SIGTERM (it must exit cleanly), then the targets; returns all the
/// agent's stderr, `lines` read before and the rest.
fn stop(run: Run, mut lines: Vec<String>, targets: &mut [&mut targets::Target]) -> String {
    run.signal(libc::SIGTERM);
    let outcome = run.finish();
    lines.extend(outcome.stderr.iter().cloned());
    outcome.assert_success();
    for target in targets {
        target.release();
    }
    lines.join("\n")
}

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

/// What a process costs in memory: its peak and current RSS (`VmHWM`, `VmRSS` of
/// `/proc/PID/status`), the anonymous part (`RssAnon`), the part that is BPF maps mapped into it
/// (ring buffers: the kernel's pages, not more memory; a ring buffer's data shows twice, as
/// the kernel maps it twice for wrap-around reads), and the kernel memory of the BPF maps it
/// holds (each map's `memlock` in its fd's fdinfo, once per map id).
#[derive(Debug)]
struct Memory {
    pid: libc::pid_t,
    peak_rss: u64,
    rss: u64,
    anon: u64,
    maps_mapped: u64,
    maps: u64,
}

impl Memory {
    fn of(pid: libc::pid_t) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .and_then(|rest| rest.trim().strip_suffix("kB"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
                * 1024
        };
        let mut maps = std::collections::BTreeMap::new();
        let fds = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/fdinfo: {e}"));
        for fd in fds.filter_map(Result::ok) {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            let field = |key: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(key))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
                maps.insert(id, memlock);
            }
        }
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/smaps: {e}"));
        let mut maps_mapped = 0;
        let mut in_map = false;
        for line in smaps.lines() {
            if let Some(rss) = line.strip_prefix("Rss:") {
                if in_map {
                    let kib = rss.trim().trim_end_matches("kB").trim();
                    maps_mapped += kib.parse::<u64>().unwrap_or(0) * 1024;
                }
            } else if !line.contains(": ") && line.contains('-') {
                // A mapping's header line: `START-END PERMS OFFSET DEV INODE [PATH]`.
                in_map = line.ends_with("anon_inode:bpf-map");
            }
        }
        Self {
            pid,
            peak_rss: kib("VmHWM:"),
            rss: kib("VmRSS:"),
            anon: kib("RssAnon:"),
            maps_mapped,
            maps: maps.values().sum(),
        }
    }

    fn say(&self, what: &str) {
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        eprintln!(
            "memory of {what} (pid {}): peak RSS {:.1} MiB; RSS {:.1} MiB, of which anonymous {:.1} MiB and BPF maps mapped {:.1} MiB; kernel memory of its BPF maps {:.1} MiB",
            self.pid,
            mib(self.peak_rss),
            mib(self.rss),
            mib(self.anon),
            mib(self.maps_mapped),
            mib(self.maps)
        );
    }
}

/// The agent's children (one `leakhound record` per traced process) with their command lines.
fn children(agent: libc::pid_t) -> Vec<(libc::pid_t, String)> {
    let list = std::fs::read_to_string(format!("/proc/{agent}/task/{agent}/children"))
        .unwrap_or_else(|e| panic!("the agent's children: {e}"));
    list.split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(|pid: libc::pid_t| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            (pid, String::from_utf8_lossy(&cmdline).replace('\0', " "))
        })
        .collect()
}

/// Prints what the agent and each of its children cost in memory now, while they trace; returns
/// the children's command lines.
fn say_memory(agent: libc::pid_t) -> Vec<String> {
    let children = children(agent);
    let mut memories = Vec::new();
    for (pid, cmdline) in &children {
        let memory = Memory::of(*pid);
        memory.say(&format!("a child, `{}`", cmdline.trim_end()));
        memories.push(memory);
    }
    let own = Memory::of(agent);
    own.say("the agent itself");
    assert!(
        own.maps == 0 && memories.iter().all(|m| m.peak_rss >= m.rss && m.maps > 0),
        "the agent holds no BPF map, each child holds its own: {own:?} {memories:?}"
    );
    children.into_iter().map(|(_, cmdline)| cmdline).collect()
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
    assert_eq!(say_memory(run.proc.pid()).len(), 2, "a child per match");
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

    let stderr = stop(run, lines, &mut [&mut early, &mut other]);
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

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn the_agent_traces_only_the_processes_in_its_cgroup() {
    let _serial = serial();
    let dir = paths::scratch("agent_cgroup");
    // Declared before the targets: dropped after them, so it is empty when it is removed (on a
    // panic too). A limit far above what the target uses: it only has to be a cgroup.
    let cgroup = MemoryCgroup::new("agent-cgroup", 1 << 30);
    let receiver = Receiver::start(0);
    let exe = targets::alloc_family();
    let mut inside = targets::Target::start(&exe, &["lh-fleet-cgroup"]);
    let mut outside = targets::Target::start(&exe, &["lh-fleet-cgroup"]);
    cgroup.add(inside.pid());
    // The selector is the cgroup's path as the kernel names it in `/proc/PID/cgroup`.
    let name = cgroup.dir.file_name().expect("a name").to_string_lossy();
    let cgroups = std::fs::read_to_string(format!("/proc/{}/cgroup", inside.pid()))
        .expect("the target's cgroups");
    let path = cgroups
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .find(|path| path.ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("the target is not in {name}:\n{cgroups}"))
        .to_owned();
    let run = Run::start(&[
        "agent",
        "--cgroup",
        &path,
        "--scan-every",
        "200ms",
        "--push",
        &receiver.url,
        "--push-every",
        "1s",
    ]);
    let mut lines = Vec::new();
    let inside_pid = inside.pid();
    wait_line(
        &run,
        &mut lines,
        "the target in the cgroup attached",
        |line| {
            line.starts_with(&format!(
                "leakhound agent: pid {inside_pid}: leakhound: attached"
            ))
        },
    );
    inside.go();
    outside.go();
    let truth = inside.read_truth();
    outside.read_truth();
    let after = Instant::now() + Duration::from_millis(1100);
    let deadline = Instant::now() + TIMEOUT;
    while !receiver
        .received()
        .iter()
        .any(|r| r.accepted && is_of(r, inside_pid) && r.at > after)
    {
        assert!(Instant::now() < deadline, "no periodic push of the target");
        std::thread::sleep(Duration::from_millis(50));
    }
    let traced = say_memory(run.proc.pid());
    assert!(
        traced.len() == 1 && traced[0].contains(&format!("--pid {inside_pid} ")),
        "one child, for the target in the cgroup: {traced:?}"
    );
    let stderr = stop(run, lines, &mut [&mut inside, &mut outside]);

    let received = receiver.received();
    let outside_pid = outside.pid();
    assert!(
        !received.iter().any(|r| is_of(r, outside_pid)),
        "the target outside the cgroup was never pushed"
    );
    assert!(
        !stderr.contains(&format!("pid {outside_pid}:")),
        "nor traced:\n{stderr}"
    );
    let far = Instant::now() + TIMEOUT;
    let pushes = check_pushes(&dir, &received, inside_pid, (after, far), &truth);
    assert!(
        pushes >= 2,
        "{pushes} pushes of pid {inside_pid} checked: a periodic one and the final one"
    );
    eprintln!("checked against the truth: {pushes} profiles of pid {inside_pid} in {path}");
}

/// A trace that fails while its process lives on is tried again after `--retry-after`, then
/// after twice as long each time, and left after four tries (said in one line); every try
/// leaves no probe behind. The agent runs with fault injection, so each child's attach fails.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn the_agent_tries_a_failed_trace_again_then_leaves_it() {
    let _serial = serial();
    let receiver = Receiver::start(0);
    let exe = targets::alloc_family();
    let mut target = targets::Target::start(&exe, &["lh-fleet-retry"]);
    let mut agent = std::process::Command::new(tests::leakhound_fault_bin());
    agent.env("LEAKHOUND_TEST_FAIL_ATTACH_AFTER", "0");
    let run = Run::start_with(
        agent,
        &[
            "agent",
            "--match-cmdline",
            "alloc_family lh-fleet-retry$",
            "--scan-every",
            "100ms",
            "--retry-after",
            "300ms",
            "--push",
            &receiver.url,
        ],
    );
    let pid = target.pid();
    let tracing = format!("leakhound agent: pid {pid}: tracing");
    let left = format!("leakhound agent: pid {pid}: its trace failed 4 times");
    let mut lines = Vec::new();
    let mut tries = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while let Some(line) = run
        .proc
        .stderr
        .next(deadline, "that the agent left the target")
    {
        if line.starts_with(&tracing) {
            tries.push(Instant::now());
        }
        let done = line.starts_with(&left);
        lines.push(line);
        if done {
            break;
        }
    }
    assert_eq!(tries.len(), 4, "four tries:\n{}", lines.join("\n"));
    // 300 ms, then 600 and 1,200: each wait at least as long as asked (a scan may add 100 ms).
    for (n, pair) in tries.windows(2).enumerate() {
        let waited = pair[1] - pair[0];
        let asked = Duration::from_millis(300 << n);
        assert!(
            waited >= asked,
            "try {} came {waited:?} after the one before, not after {asked:?}",
            n + 2
        );
    }
    // Left alone: no fifth try.
    std::thread::sleep(Duration::from_secs(3));
    target.go();
    target.read_truth();
    run.signal(libc::SIGTERM);
    let outcome = run.finish();
    outcome.assert_success();
    target.release();
    // The whole of the agent's stderr, the lines read above included.
    let stderr = outcome.stderr.join("\n");
    assert_eq!(
        outcome
            .stderr
            .iter()
            .filter(|l| l.starts_with(&tracing))
            .count(),
        4,
        "no fifth try:\n{stderr}"
    );
    assert!(
        stderr.contains("injected failure"),
        "each try says why it failed:\n{stderr}"
    );
}
