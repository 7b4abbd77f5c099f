//! Per-function accuracy against the targets' own truth, in both ways of starting a trace.

use tests::targets;
use tests::{assert_matches_truth, require_root, serial, trace_attached, trace_launched};

/// Attach to a running target, let it allocate, stop leakhound with SIGINT.
#[test]
fn attach_mode_matches_truth() {
    require_root!("attach_mode_matches_truth");
    let _serial = serial();
    let (truth, folded) =
        trace_attached("attach_mode_matches_truth", &targets::alloc_family(), &[]);
    assert_matches_truth(&truth, &folded);
}

/// Launch the target under leakhound; its stdout (the truth) comes through leakhound's.
#[test]
fn launch_mode_matches_truth() {
    require_root!("launch_mode_matches_truth");
    let _serial = serial();
    let (truth, folded) = trace_launched(
        "launch_mode_matches_truth",
        None,
        &targets::alloc_family(),
        &[],
    );
    assert_matches_truth(&truth, &folded);
}
