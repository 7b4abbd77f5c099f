//! Refusals: a non-zero exit, a `leakhound: error:` line with a cause a user understands, and
//! a `  hint: ` line. The keywords asserted here are part of the contract with tracer-user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use tests::process::{Proc, TIMEOUT};
use tests::targets::{self, Target};
use tests::{Run, arg, leakhound_bin, probes, serial};

/// A pid that no process has: counting down from the top of the pid space.
fn unused_pid() -> libc::pid_t {
    let max: libc::pid_t = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .find(|&pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid")
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn nonexistent_pid() {
    let _serial = serial();
    let pid = unused_pid().to_string();
    Run::start(&["record", "--pid", &pid])
        .finish()
        .assert_error("no process");
}

/// A zombie: exited but not yet reaped, so /proc/PID is still there.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn exited_pid() {
    let _serial = serial();
    let zombie = Proc::spawn(Command::new("true"), "true", true);
    assert!(zombie.wait_exited_unreaped(TIMEOUT), "`true` did not exit");
    let pid = zombie.pid().to_string();
    Run::start(&["record", "--pid", &pid])
        .finish()
        .assert_error("exited");
    drop(zombie);
}

/// Without root (and without CAP_BPF) the hint says which capabilities are needed.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn not_root() {
    let _serial = serial();
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("skipped: not_root needs setpriv (util-linux)");
        return;
    }
    // Copies in a world-readable directory, so that uid 65534 can run them wherever the
    // workspace lives.
    let dir = std::env::temp_dir().join(format!("leakhound-not-root-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = |from: &Path| {
        let to = dir.join(from.file_name().expect("file name"));
        std::fs::copy(from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
        to
    };
    let bin = copy(&leakhound_bin());
    let exe = copy(&targets::alloc_family());
    for p in [&dir, &bin, &exe] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .current_dir(&dir);
    // The target waits for "go" on the stdin it shares with leakhound; if leakhound started
    // it before failing, closing that stdin when leakhound is done makes it exit.
    let outcome = Run::start_with(cmd, &["record", "--", arg(&exe)]).finish();
    let _ = std::fs::remove_dir_all(&dir);
    outcome.assert_hint_mentions("CAP_BPF");
}

/// A static executable with no symbol table and no Go runtime: nothing names its allocator.
/// (With its symbol table it is traced: tests/allocators.rs, `static_glibc_from_symtab`.)
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn stripped_static_binary_attach() {
    let _serial = serial();
    let target = Target::start(&targets::static_target_stripped(), &[]);
    let pid = target.pid().to_string();
    let outcome = Run::start(&["record", "--pid", &pid]).finish();
    outcome.assert_error("statically linked");
    outcome.assert_hint_mentions("symbol table");
    // Dropping the target closes its stdin: it leaves without allocating.
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn stripped_static_binary_launch() {
    let _serial = serial();
    let exe = targets::static_target_stripped();
    let outcome = Run::start(&["record", "--", arg(&exe), "--now", "--exit"]).finish();
    outcome.assert_error("statically linked");
    outcome.assert_hint_mentions("symbol table");
    assert!(
        !outcome.stdout.iter().any(|line| line.starts_with("ready")),
        "the command ran although leakhound refused it: {:?}",
        outcome.stdout
    );
}

/// `--alloc-lib` naming a library without the named malloc is refused before anything runs.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn alloc_lib_without_malloc() {
    let _serial = serial();
    let exe = targets::alloc_family();
    let outcome = Run::start(&[
        "record",
        "--alloc-lib",
        "/lib/x86_64-linux-gnu/libc.so.6:nosuch_",
        "--",
        arg(&exe),
        "--now",
        "--exit",
    ])
    .finish();
    outcome.assert_error("nosuch_malloc");
}

/// Usage errors need no root: they must be refused before anything is traced.
#[test]
fn pid_and_command_conflict() {
    let _serial = serial();
    Run::start(&["record", "--pid", "1", "--", "/bin/true"])
        .finish()
        .assert_failed();
}

#[test]
fn malformed_duration() {
    let _serial = serial();
    Run::start(&["record", "--duration", "abc", "--", "/bin/true"])
        .finish()
        .assert_failed();
}

/// The binary that ships has no fault injection: the variables that make the test build fail
/// its attach, or refuse multi-uprobe links, change nothing in it.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn the_shipped_binary_ignores_fault_variables() {
    let _serial = serial();
    let mut cmd = Command::new(leakhound_bin());
    cmd.env("LEAKHOUND_TEST_FAIL_ATTACH_AFTER", "0")
        .env("LEAKHOUND_TEST_PERF_UPROBES", "1");
    let outcome = Run::start_with(
        cmd,
        &[
            "record",
            "--",
            arg(&targets::alloc_family()),
            "--now",
            "--exit",
        ],
    )
    .finish();
    outcome.assert_success();
    assert!(
        outcome
            .stderr
            .iter()
            .any(|line| line.starts_with("leakhound: attached")
                && line.contains("multi-uprobe links")),
        "the shipped binary should attach with multi-uprobe links whatever the environment: {:?}",
        outcome.stderr
    );
    probes::assert_clean("after the shipped binary ran with fault variables set");
}

/// An attach that fails half-way (injected after 6 probes) must detach what it had attached,
/// and a launched command must never run.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn failed_attach_leaves_nothing_behind() {
    let _serial = serial();
    let mut target = Target::start(&targets::alloc_family(), &[]);
    let pid = target.pid().to_string();
    let mut cmd = Command::new(tests::leakhound_fault_bin());
    cmd.env("LEAKHOUND_TEST_FAIL_ATTACH_AFTER", "6");
    let outcome = Run::start_with(cmd, &["record", "--pid", &pid]).finish();
    outcome.assert_error("injected failure");
    probes::assert_clean("after a failed attach by pid");
    target.go();
    let _ = target.read_truth();
    target.release();

    let mut cmd = Command::new(tests::leakhound_fault_bin());
    cmd.env("LEAKHOUND_TEST_FAIL_ATTACH_AFTER", "6");
    let outcome = Run::start_with(
        cmd,
        &[
            "record",
            "--",
            arg(&targets::alloc_family()),
            "--now",
            "--exit",
        ],
    )
    .finish();
    outcome.assert_error("injected failure");
    assert!(
        !outcome.stdout.iter().any(|line| line.starts_with("ready")),
        "the launched command ran although the attach failed: {:?}",
        outcome.stdout
    );
    probes::assert_clean("after a failed attach in launch mode");
}
