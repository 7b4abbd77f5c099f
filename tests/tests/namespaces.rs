//! Targets in containers: traced from the host through their own PID and mount namespaces, and
//! traced by a leakhound that itself runs inside the target's PID namespace, as a debug pod
//! that shares it does (`kubectl debug --target`).

use std::{
    fs,
    process::Command,
    time::{Duration, Instant},
};

use tests::process::{Proc, TIMEOUT};
use tests::targets::{self, read_truth};
use tests::{Run, arg, assert_matches_truth, paths, read_report, require_root, serial};

/// The host PID of the only child of `parent` (unshare forks the target).
fn only_child(parent: libc::pid_t) -> libc::pid_t {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|pid| pid.parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "unshare ({parent}) started no child"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn target_in_its_own_pid_and_mount_namespaces_traced_from_the_host() {
    require_root!("target_in_its_own_pid_and_mount_namespaces_traced_from_the_host");
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
    let host_pid = only_child(target.pid()).to_string();

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
fn leakhound_inside_the_targets_pid_namespace() {
    require_root!("leakhound_inside_the_targets_pid_namespace");
    let _serial = serial();
    let dir = paths::scratch("leakhound_in_namespace");
    let out = dir.join("out.folded");
    // leakhound sees the target by its namespace PID, which the kernel-side filter must use.
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(tests::leakhound_bin());
    let exe = targets::alloc_family();
    let run = Run::start_with(
        cmd,
        &[
            "record",
            "-o",
            arg(&out),
            "--",
            arg(&exe),
            "--now",
            "--exit",
        ],
    );
    let truth = read_truth(&run.proc.stdout, "alloc_family in a PID namespace");
    run.finish().assert_success();
    assert_matches_truth(&truth, &read_report(&out));
}
