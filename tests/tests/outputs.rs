//! Output paths: refused before any probe is placed when they cannot be written, and written
//! each on its own at the end, so that one failure does not lose the other reports.

use tests::targets::{self, Target};
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial};

/// A missing directory and a directory given as a file are both named, before the command
/// runs or anything is attached.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn unwritable_outputs_are_refused_before_attaching() {
    let _serial = serial();
    let scratch = paths::scratch("unwritable_outputs_are_refused_before_attaching");
    let missing = scratch.join("no/such/dir/report.txt");
    let outcome = Run::start(&[
        "record",
        "-o",
        arg(&missing),
        "-o",
        arg(&scratch),
        "--",
        arg(&targets::alloc_family()),
        "--now",
        "--exit",
    ])
    .finish();
    outcome.assert_error("does not exist");
    let stderr = outcome.stderr.join("\n");
    assert!(stderr.contains(arg(&missing)), "{stderr}");
    assert!(stderr.contains("is a directory"), "{stderr}");
    assert!(
        !stderr.contains("leakhound: attached"),
        "attached although an output cannot be written:\n{stderr}"
    );
    assert!(
        !outcome.stdout.iter().any(|line| line.starts_with("ready")),
        "the command ran although an output cannot be written: {:?}",
        outcome.stdout
    );
}

/// A directory removed during the trace fails its report only: the others are written, the
/// failure is named on its own line, and the exit status says something failed.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn one_failed_output_does_not_lose_the_others() {
    let _serial = serial();
    let scratch = paths::scratch("one_failed_output_does_not_lose_the_others");
    let doomed_dir = scratch.join("removed-during-the-trace");
    std::fs::create_dir_all(&doomed_dir).expect("creating the doomed directory");
    let doomed = doomed_dir.join("report.txt");
    let folded = scratch.join("out.folded");
    let json = scratch.join("out.json");
    let mut target = Target::start(&targets::alloc_family(), &[]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "-o",
        arg(&doomed),
        "-o",
        arg(&folded),
        "-o",
        arg(&json),
    ]);
    run.wait_attached();
    std::fs::remove_dir(&doomed_dir).expect("removing the directory");
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    let stderr = outcome.stderr.join("\n");
    assert_eq!(outcome.status.code(), Some(1), "{stderr}");
    let failures: Vec<&String> = outcome
        .stderr
        .iter()
        .filter(|line| line.starts_with("leakhound: error:"))
        .collect();
    assert_eq!(failures.len(), 1, "{stderr}");
    assert!(failures[0].contains(arg(&doomed)), "{stderr}");
    assert_matches_truth(&truth, &read_report(&folded));
    let json: serde_json::Value =
        serde_json::from_str(&read_report(&json)).expect("the JSON report is valid");
    assert!(json["totals"]["bytes"].as_u64().unwrap_or(0) > 0);
    target.release();
}

/// `leakhound report` of a crafted recording: one line saying what is wrong, a hint, exit 1.
#[test]
fn a_crafted_recording_is_refused_in_one_line() {
    let _serial = serial();
    let scratch = paths::scratch("a_crafted_recording_is_refused_in_one_line");
    let crafted = scratch.join("crafted.leakhound.json");
    std::fs::write(
        &crafted,
        r#"{"version":1,"pid":1,"command":"x","duration_secs":-5.0,"ended_by":"x",
            "counters":{"allocations":0,"frees":0,"alloc_map_full":0,"alloc_map_full_bytes":0,
            "stack_failed":0,"free_unknown":0,"return_without_entry":0,"stale_entry":0,
            "thread_map_full":0,"events_lost":0,"totals_map_full":0,"address_reused":0,
            "failed_calls":0},"mapping":{"events":0,"untracked_unmaps":0,"malformed_events":0},
            "stacks":[]}"#,
    )
    .expect("writing the recording");
    let out = scratch.join("out.txt");
    let outcome = Run::start(&["report", arg(&crafted), "-o", arg(&out)]).finish();
    outcome.assert_error("duration is -5");
    let errors = outcome
        .stderr
        .iter()
        .filter(|line| line.starts_with("leakhound: error:"))
        .count();
    assert_eq!(errors, 1, "{:?}", outcome.stderr);
    assert!(
        !out.exists(),
        "a report was written from a refused recording"
    );
}

/// With the allocation map full (`--max-allocs`), the bytes of the allocations that were not
/// tracked are a line of their own in the folded report and a frame in the flame graph, with
/// the count the JSON report gives, rather than missing without a word.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn untracked_allocations_are_visible_in_the_flame_graph_formats() {
    let _serial = serial();
    let scratch = paths::scratch("untracked_allocations_are_visible_in_the_flame_graph_formats");
    let (folded, svg, json) = (
        scratch.join("out.folded"),
        scratch.join("flame.svg"),
        scratch.join("out.json"),
    );
    let mut target = Target::start(&targets::alloc_family(), &[]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--max-allocs",
        "16",
        "-o",
        arg(&folded),
        "-o",
        arg(&svg),
        "-o",
        arg(&json),
    ]);
    run.wait_attached();
    target.go();
    let _ = target.read_truth();
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.release();

    let json: serde_json::Value =
        serde_json::from_str(&read_report(&json)).expect("the JSON report is valid");
    let dropped = json["drops"]["alloc_map_full_bytes"]
        .as_u64()
        .expect("drops.alloc_map_full_bytes");
    assert!(dropped > 0, "16 slots did not fill the allocation map");
    let folded = read_report(&folded);
    let line = format!("[not tracked: allocation map full] {dropped}");
    assert!(
        folded.lines().any(|l| l == line),
        "no `{line}` in the folded report:\n{folded}"
    );
    let svg = read_report(&svg);
    assert!(
        svg.contains("[not tracked: allocation map full]"),
        "the flame graph does not show the untracked bytes"
    );
}

/// `--stats-json` says where every probe went and what the report's steps took: each hooked
/// function of libc has its programs at one offset with its kind as cookie, the probe count
/// is the rows listed, and the counters are the JSON report's, number for number.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn stats_json_lists_every_probe_phase_and_counter() {
    let _serial = serial();
    let dir = paths::scratch("stats_json_lists_every_probe_phase_and_counter");
    let (stats, report) = (dir.join("stats.json"), dir.join("report.json"));
    let run = Run::start(&[
        "record",
        "--stats-json",
        arg(&stats),
        "-o",
        arg(&report),
        "--",
        arg(&targets::alloc_family()),
        "--now",
        "--exit",
    ]);
    let _ = targets::read_truth(&run.proc.stdout, "stats_json");
    run.finish().assert_success();
    let stats: serde_json::Value =
        serde_json::from_str(&read_report(&stats)).expect("the statistics parse");
    let report: serde_json::Value =
        serde_json::from_str(&read_report(&report)).expect("the report parses");

    let attach = &stats["attach"];
    assert!(
        attach["millis"].as_f64().is_some_and(|ms| ms > 0.0),
        "{attach}"
    );
    let placed = attach["placed"].as_array().expect("placed probes");
    assert_eq!(
        attach["probes"].as_u64(),
        Some(placed.len() as u64),
        "{attach}"
    );
    let rows = |what: &str| -> Vec<&serde_json::Value> {
        placed.iter().filter(|row| row["what"] == what).collect()
    };
    // malloc: an entry and a return program at the same offset, cookie 0 (AllocKind::Malloc);
    // calloc: cookie 1.
    for (function, cookie) in [("malloc", 0), ("calloc", 1)] {
        let programs: Vec<(&str, u64, u64)> = rows(function)
            .iter()
            .map(|row| {
                (
                    row["program"].as_str().expect("program"),
                    row["offset"].as_u64().expect("offset"),
                    row["cookie"].as_u64().expect("cookie"),
                )
            })
            .collect();
        assert_eq!(programs.len(), 2, "{function}: {programs:?}");
        // malloc's size is in its own register at leakhound's point in glibc: the program that
        // knows its cookie; calloc's entry reads it.
        let entry = if function == "malloc" {
            "malloc_enter"
        } else {
            "alloc_enter"
        };
        let mut names: Vec<&str> = programs.iter().map(|p| p.0).collect();
        names.sort_unstable();
        let mut expected = [entry, "alloc_exit"];
        expected.sort_unstable();
        assert_eq!(names, expected, "{function}: {programs:?}");
        assert_eq!(programs[0].1, programs[1].1, "{function}: one offset");
        assert!(
            programs.iter().all(|p| p.2 == cookie),
            "{function}: {programs:?}"
        );
    }
    let free = rows("free");
    assert_eq!(free.len(), 1, "{free:?}");
    assert!(
        free[0]["library"]
            .as_str()
            .is_some_and(|lib| lib.contains("libc.so")),
        "{free:?}"
    );
    assert!(
        placed
            .iter()
            .filter(|row| row["tracepoint"].is_null())
            .all(|row| row["mechanism"] == "multi-uprobe-link"),
        "{placed:?}"
    );
    assert_eq!(
        placed
            .iter()
            .filter(|row| row["mechanism"] == "tracepoint")
            .count(),
        // The exec; a thread's exit; the OOM killer's choice of victim. No syscall
        // tracepoint: libc's mapping wrappers are probed after their system call.
        3
    );
    let after_syscall: Vec<&str> = placed
        .iter()
        .filter(|row| row["program"] == "map_syscall_done")
        .filter_map(|row| row["what"].as_str())
        .collect();
    assert_eq!(
        after_syscall,
        ["munmap", "mprotect", "mremap"],
        "{placed:?}"
    );

    let phases: Vec<&str> = stats["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|phase| phase["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        phases,
        [
            "kernel maps read",
            "stacks read",
            "addresses symbolized",
            "ages and stacks built"
        ]
    );
    assert!(stats["outputs_ms"].as_f64().is_some());

    let counters = stats["counters"].as_object().expect("counters");
    assert!(counters["allocations"].as_u64().is_some_and(|n| n > 0));
    for (name, value) in counters {
        let in_report = report["activity"]
            .get(name)
            .or_else(|| report["drops"].get(name))
            .unwrap_or_else(|| panic!("{name} is not in the JSON report"));
        assert_eq!(value, in_report, "{name}");
    }
}
