//! Per-function accuracy against the targets' own truth, in both ways of starting a trace.

use tests::targets::{self, Target, read_truth};
use tests::{Run, arg, assert_matches_truth, paths, read_report, require_root, serial};

/// Attach to a running target, let it allocate, stop leakhound with SIGINT.
#[test]
fn attach_mode_matches_truth() {
    require_root!("attach_mode_matches_truth");
    let _serial = serial();
    let dir = paths::scratch("attach_mode_matches_truth");
    let out = dir.join("out.folded");
    let mut target = Target::start(&targets::alloc_family(), &[]);

    let pid = target.pid().to_string();
    let mut run = Run::start(&["record", "--pid", &pid, "-o", arg(&out)]);
    run.wait_attached();
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();

    assert_matches_truth(&truth, &read_report(&out));
    // Detaching must leave the target intact.
    target.release();
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
