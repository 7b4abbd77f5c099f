//! Per-function accuracy against the targets' own truth, in both ways of starting a trace.

use std::process::Command;

use tests::targets;
use tests::{assert_matches_truth, serial, trace_attached, trace_launched};

/// Attach to a running target, let it allocate, stop leakhound with SIGINT.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn attach_mode_matches_truth() {
    let _serial = serial();
    let (truth, folded) =
        trace_attached("attach_mode_matches_truth", &targets::alloc_family(), &[]);
    assert_matches_truth(&truth, &folded);
}

/// Launch the target under leakhound; its stdout (the truth) comes through leakhound's.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn launch_mode_matches_truth() {
    let _serial = serial();
    let (truth, folded) = trace_launched(
        "launch_mode_matches_truth",
        None,
        &targets::alloc_family(),
        &[],
    );
    assert_matches_truth(&truth, &folded);
}

/// More live blocks than the kernel's table of slots holds: 107,040 kept and 100,000 churned
/// through realloc and free, against 8,192 slots (`--max-allocs 131072` gives a sixteenth), so
/// most blocks find their slot taken and go to the allocation map beside it, and every free
/// must find its block in whichever of the two it went to. Exact, with full tracking.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn blocks_past_the_slot_table_match_truth() {
    let _serial = serial();
    let (truth, folded) = trace_launched(
        "blocks_past_the_slot_table_match_truth",
        None,
        &targets::sampled_mix(),
        &["--max-allocs", "131072"],
    );
    assert_matches_truth(&truth, &folded);
}

/// More threads than thread slots: `--max-threads 4` gives four slots (by thread id), and
/// the target's main thread and its four allocating threads run at once, so at least one
/// thread keeps its state in the map beside the slots; the threads' exits give their slots
/// back. Exact, with full tracking.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn threads_past_their_slots_match_truth() {
    let _serial = serial();
    let (truth, folded) = trace_attached(
        "threads_past_their_slots_match_truth",
        &targets::alloc_family(),
        &["--max-threads", "4"],
    );
    assert_matches_truth(&truth, &folded);
}

/// Kernels before 6.6 have no multi-uprobe links: leakhound then attaches one perf event per
/// probe. The tests' kernel has both, so this forces the older path and checks it too.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn perf_event_uprobes_match_truth() {
    let _serial = serial();
    let mut via = Command::new(tests::leakhound_fault_bin());
    via.env("LEAKHOUND_TEST_PERF_UPROBES", "1");
    let stats = tests::paths::scratch("perf_event_uprobes_stats").join("stats.json");
    let (truth, folded) = trace_launched(
        "perf_event_uprobes_match_truth",
        Some(via),
        &targets::alloc_family(),
        &["--stats-json", tests::arg(&stats)],
    );
    assert_matches_truth(&truth, &folded);
    // And the probes really were perf events.
    let stats: serde_json::Value =
        serde_json::from_str(&tests::read_report(&stats)).expect("the statistics parse");
    let placed = stats["attach"]["placed"].as_array().expect("placed probes");
    let uprobes: Vec<&serde_json::Value> = placed
        .iter()
        .filter(|row| row["tracepoint"].is_null())
        .collect();
    assert!(uprobes.len() > 10, "{placed:?}");
    assert!(
        uprobes.iter().all(|row| row["mechanism"] == "perf-event"),
        "{uprobes:?}"
    );
    assert_eq!(stats["attach"]["multi_uprobe_links"], 0);
}
