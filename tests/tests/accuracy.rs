//! Per-function accuracy against the targets' own truth, in both ways of starting a trace.

use tests::targets::{self, read_truth};
use tests::{
    Run, arg, assert_matches_truth, paths, read_report, require_root, serial, trace_attached,
};

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
    let dir = paths::scratch("launch_mode_matches_truth");
    let out = dir.join("out.folded");
    let exe = targets::alloc_family();

    let run = Run::start(&[
        "record",
        "-o",
        arg(&out),
        "--",
        arg(&exe),
        "--now",
        "--exit",
    ]);
    let truth = read_truth(&run.proc.stdout, "leakhound -- alloc_family");
    let outcome = run.finish();
    outcome.assert_success();

    assert_matches_truth(&truth, &read_report(&out));
}
