//! Targets in containers: traced from the host through their own PID and mount namespaces, and
//! traced by a leakhound that itself runs inside the target's PID namespace, as a debug pod
//! that shares it does (`kubectl debug --target`).

use std::{process::Command, time::Instant};

use tests::process::{Proc, TIMEOUT};
use tests::targets::{self, read_truth};
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial, trace_launched};

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn target_in_its_own_pid_and_mount_namespaces_traced_from_the_host() {
    let _serial = serial();
    let dir = paths::scratch("namespaced_target");
    let out = dir.join("out.folded");
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--mount", "--pid", "--fork"])
        .arg(targets::alloc_family());
    let mut target = Proc::spawn(unshare, "unshare alloc_family", true);
    let ready = target
        .stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("ready line");
    // Inside its namespace the target is PID 1; the host knows it by another PID.
    assert_eq!(
        ready.trim_end(),
        "ready 1",
        "the target runs in a new PID namespace"
    );
    let host_pid = tests::process::only_child(target.pid()).to_string();

    let mut run = Run::start(&["record", "--pid", &host_pid, "-o", arg(&out)]);
    run.wait_attached();
    target.write_line("go");
    let truth = read_truth(&target.stdout, "namespaced alloc_family");
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    assert_matches_truth(&truth, &read_report(&out));
    target.write_line("");
    assert!(target.wait_exit(TIMEOUT).success());
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn leakhound_inside_the_targets_pid_namespace() {
    let _serial = serial();
    // leakhound sees the target by its namespace PID, which the kernel-side filter must use.
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(tests::leakhound_bin());
    let (truth, folded) = trace_launched(
        "leakhound_in_namespace",
        Some(unshare),
        &targets::alloc_family(),
        &[],
    );
    assert_matches_truth(&truth, &folded);
}
