//! A target's life as leakhound meets it: paused and continued, exec'd into another program,
//! attached before its allocator is mapped, and processes that cannot be traced at all.

use std::time::{Duration, Instant};

use tests::process::TIMEOUT;
use tests::targets;
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial};

/// The process state letter of `/proc/PID/stat`.
fn state_of(pid: libc::pid_t) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Waits until `pid` is stopped (`T`, or `t` while its tracer holds it in the stop).
fn wait_stopped(pid: libc::pid_t) {
    let deadline = Instant::now() + TIMEOUT;
    while !matches!(state_of(pid), Some('T' | 't')) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} did not stop (state {:?})",
            state_of(pid)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The number in the next `tick N` line at or after `deadline`'s start.
fn next_tick(lines: &tests::process::Lines, deadline: Instant, what: &str) -> u64 {
    loop {
        let line = lines
            .next(deadline, what)
            .unwrap_or_else(|| panic!("the target's output ended while waiting for {what}"));
        if let Some(n) = line.strip_prefix("tick ") {
            return n.trim().parse().expect("tick count");
        }
    }
}

/// A launched command stopped with SIGSTOP, then with SIGTSTP, and continued each time with
/// SIGCONT, runs on as without a tracer; the trace then ends with it and matches its truth.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn launched_command_survives_job_control() {
    let _serial = serial();
    let out = paths::scratch("launched_command_survives_job_control").join("out.folded");
    let exe = targets::job_control();
    // In a process group of its own, in this session: the kernel discards SIGTSTP sent to a
    // process group with no parent outside it in the session (an orphaned group, as a test run
    // from a script or CI can be), and the test's own process keeps this one from being that.
    let mut leakhound = std::process::Command::new(tests::leakhound_bin());
    std::os::unix::process::CommandExt::process_group(&mut leakhound, 0);
    let mut run = Run::start_with(
        leakhound,
        &["record", "-o", arg(&out), "--", arg(&exe), "--now"],
    );
    let stdout = &run.proc.stdout;
    let ready = stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("the command's `ready` line");
    let pid: libc::pid_t = ready
        .strip_prefix("ready ")
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {ready:?}"));
    next_tick(stdout, Instant::now() + TIMEOUT, "a first tick");

    for stop in [libc::SIGSTOP, libc::SIGTSTP] {
        // SAFETY: kill has no memory arguments; the pid is the command leakhound launched,
        // which runs until the test tells it to stop ticking.
        assert_eq!(unsafe { libc::kill(pid, stop) }, 0);
        wait_stopped(pid);
        // Ticks printed before the stop may still be in the pipe: the last one read after a
        // quiet spell is the tick the command stopped at.
        let mut stopped_at = 0;
        while let Ok(line) = stdout_quiet_line(stdout) {
            if let Some(n) = line.strip_prefix("tick ") {
                stopped_at = n.trim().parse().expect("tick count");
            }
        }
        assert!(
            matches!(state_of(pid), Some('T' | 't')),
            "pid {pid} resumed by itself after signal {stop}"
        );
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
        let resumed = next_tick(
            stdout,
            Instant::now() + Duration::from_secs(10),
            &format!("a tick after SIGCONT (stopped by signal {stop})"),
        );
        assert!(
            resumed > stopped_at,
            "tick {resumed} after SIGCONT, stopped at {stopped_at}"
        );
    }

    run.proc.write_line("stop");
    let truth = targets::read_truth(&run.proc.stdout, "job_control");
    run.finish().assert_success();
    assert_matches_truth(&truth, &read_report(&out));
}

/// The next line if one arrives within 300 ms, else an error: how the test tells that a
/// stopped command has gone quiet.
fn stdout_quiet_line(lines: &tests::process::Lines) -> Result<String, ()> {
    lines.next_within(Duration::from_millis(300)).ok_or(())
}

/// Checks the reports of a trace that the target's exec ended: nothing the old program held
/// is outstanding, and all of it is reported as released by the exec, which ran `program`.
fn assert_ended_by_exec(
    dir: &std::path::Path,
    truth: &tests::report::Truth,
    stderr: &[String],
    program: &str,
) {
    assert!(
        stderr.iter().any(|line| line.contains("exec'd")),
        "leakhound did not say that the target exec'd; stderr:\n{}",
        stderr.join("\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&read_report(&dir.join("out.json"))).expect("JSON report");
    let ended_by = json["ended_by"].as_str().unwrap_or_default();
    assert!(ended_by.starts_with("exec"), "ended_by is {ended_by:?}");
    assert_eq!(
        json["totals"]["bytes"], 0,
        "bytes still outstanding after the exec: {:#}",
        json["totals"]
    );
    for stack in json["stacks"].as_array().expect("stacks") {
        assert_eq!(stack["bytes"], 0, "a stack still holds bytes: {stack:#}");
    }
    let released = &json["released_by_exec"];
    let truth_bytes: u64 = truth.values().sum();
    let released_bytes = released["released_bytes"].as_u64().unwrap_or_default();
    assert!(
        released_bytes >= truth_bytes,
        "released by exec {released_bytes} bytes, but the target held {truth_bytes}: {released:#}"
    );
    assert!(
        released["released_allocations"]
            .as_u64()
            .unwrap_or_default()
            >= 10,
        "the target's 10 blocks were not all released: {released:#}"
    );
    // A program that is gone before leakhound reads its name cannot be named.
    assert!(
        released["program"]
            .as_str()
            .is_some_and(|name| name.ends_with(program) || name == "another program"),
        "the exec'd program: {released:#}"
    );
    let text = read_report(&dir.join("out.txt"));
    assert!(
        text.contains("ended by exec") && text.contains("released by exec"),
        "the text report does not say exec:\n{text}"
    );
}

/// `targets/exec_after_leak.c` with `args`, leakhound attached by PID writing JSON and text
/// under the test's scratch directory, and the target's truth once it has leaked.
fn attached_exec_target(
    test: &str,
    args: &[&str],
) -> (
    std::path::PathBuf,
    targets::Target,
    Run,
    tests::report::Truth,
) {
    let dir = paths::scratch(test);
    let mut target = targets::Target::start(&targets::exec_after_leak(), args);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "-o",
        arg(&dir.join("out.json")),
        "-o",
        arg(&dir.join("out.txt")),
    ]);
    run.wait_attached();
    target.go();
    let truth = target.read_truth();
    (dir, target, run, truth)
}

/// Attached by PID, the target execs `/bin/sleep` (the same libc, so the probes reach the new
/// program too): the trace ends at once, and the old program's blocks are released.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn exec_ends_an_attached_trace() {
    let _serial = serial();
    let (dir, mut target, run, truth) = attached_exec_target("exec_ends_an_attached_trace", &[]);
    let exec_at = Instant::now();
    target.proc.write_line("exec");
    let outcome = run.finish();
    eprintln!(
        "leakhound exited {:?} after the exec was requested",
        exec_at.elapsed()
    );
    outcome.assert_success();
    assert_ended_by_exec(&dir, &truth, &outcome.stderr, "sleep");
    // The target is /bin/sleep now; dropping it kills it.
}

/// The target execs a program that exits at once: whether leakhound sees the exit or the
/// exec first, the old program's blocks are released by the exec, not outstanding.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn exec_into_a_program_that_exits_at_once() {
    let _serial = serial();
    let (dir, mut target, run, truth) = attached_exec_target(
        "exec_into_a_program_that_exits_at_once",
        &["--then", "/bin/true"],
    );
    target.proc.write_line("exec");
    assert!(target.proc.wait_exit(TIMEOUT).success(), "/bin/true failed");
    let outcome = run.finish();
    outcome.assert_success();
    assert_ended_by_exec(&dir, &truth, &outcome.stderr, "true");
}

/// A launched command's own exec starts the trace; its second exec ends it.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn exec_ends_a_launched_trace() {
    let _serial = serial();
    let dir = paths::scratch("exec_ends_a_launched_trace");
    let exe = targets::exec_after_leak();
    let mut run = Run::start(&[
        "record",
        "-o",
        arg(&dir.join("out.json")),
        "-o",
        arg(&dir.join("out.txt")),
        "--",
        arg(&exe),
        "--now",
    ]);
    let truth = targets::read_truth(&run.proc.stdout, "exec_after_leak");
    run.proc.write_line("exec");
    let outcome = run.finish();
    outcome.assert_success();
    assert_ended_by_exec(&dir, &truth, &outcome.stderr, "sleep");
}

/// Attached by PID right after exec, before the dynamic loader has mapped libc: leakhound
/// waits for the allocator to be mapped, then attaches, and the bytes match the truth. The
/// race is made certain: the test starts the target under ptrace, so it stops at its exec,
/// and lets it go only once leakhound says it is waiting.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn attach_before_the_allocator_is_mapped() {
    let _serial = serial();
    let out = paths::scratch("attach_before_the_allocator_is_mapped").join("out.folded");
    let mut cmd = std::process::Command::new(targets::alloc_family());
    // SAFETY: the closure runs in the child between fork and exec and makes one
    // async-signal-safe system call.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let proc = tests::process::Proc::spawn(cmd, "alloc_family", true);
    let pid = proc.pid();
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        waited == pid && libc::WIFSTOPPED(status) && libc::WSTOPSIG(status) == libc::SIGTRAP,
        "the target did not stop at its exec (status {status:#x})"
    );
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    assert!(
        !maps.contains("libc.so"),
        "libc is mapped already at exec:\n{maps}"
    );

    let pid_arg = pid.to_string();
    let mut run = Run::start(&["record", "--pid", &pid_arg, "-o", arg(&out)]);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let line = run
            .proc
            .stderr
            .next(deadline, "`leakhound: waiting for pid`")
            .expect("leakhound's stderr ended before it waited");
        if line.starts_with(&format!(
            "leakhound: waiting for pid {pid} to map its allocator"
        )) {
            break;
        }
        assert!(
            !line.starts_with("leakhound: attached") && !line.starts_with("leakhound: error"),
            "leakhound did not wait for the allocator: {line}"
        );
    }
    // SAFETY: a plain ptrace request on the stopped tracee this thread started.
    let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) };
    assert_eq!(
        detached,
        0,
        "PTRACE_DETACH: {}",
        std::io::Error::last_os_error()
    );
    run.wait_attached();
    let ready = proc
        .stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("the target's `ready` line");
    assert_eq!(ready.trim_end(), format!("ready {pid}"));
    let mut target = targets::Target { proc };
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    assert_matches_truth(&truth, &read_report(&out));
    target.release();
}

/// A static executable has no dynamic loader to wait for: the refusal comes at once.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn static_binary_is_not_waited_for() {
    let _serial = serial();
    let target = targets::Target::start(&targets::static_target_stripped(), &[]);
    let pid = target.pid().to_string();
    let outcome = Run::start(&["record", "--pid", &pid]).finish();
    outcome.assert_error("statically linked");
    assert!(
        !outcome
            .stderr
            .iter()
            .any(|line| line.contains("waiting for pid")),
        "leakhound waited for a static executable: {:?}",
        outcome.stderr
    );
}

/// A kernel thread (PID 2, kthreadd) has no user memory: a one-line error says so.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn kernel_thread_is_refused() {
    let _serial = serial();
    let comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    if comm.trim() != "kthreadd" {
        println!("skipped: pid 2 is not kthreadd here ({comm:?})");
        return;
    }
    let outcome = Run::start(&["record", "--pid", "2"]).finish();
    outcome.assert_error("kernel thread");
    assert!(
        !outcome.stderr.join("\n").contains("--alloc-lib"),
        "a kernel thread got an allocator hint: {:?}",
        outcome.stderr
    );
}

/// Root without CAP_SYS_PTRACE cannot read another user's process: the error says what is
/// missing rather than telling root to run as root.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn root_without_ptrace_is_not_told_to_be_root() {
    let _serial = serial();
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: needs setpriv (util-linux)");
        return;
    }
    let mut nobody = std::process::Command::new("setpriv");
    nobody
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(targets::alloc_family());
    let proc = tests::process::Proc::spawn(nobody, "alloc_family", true);
    let ready = proc
        .stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("the target's `ready` line");
    let pid = ready.trim_start_matches("ready ").trim().to_owned();
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"])
        .arg(tests::leakhound_bin());
    let outcome = Run::start_with(cmd, &["record", "--pid", &pid]).finish();
    outcome.assert_hint_mentions("CAP_SYS_PTRACE");
    let text = outcome.stderr.join("\n");
    assert!(
        !text.contains("run as root"),
        "root was told to run as root:\n{text}"
    );
    // Dropping the target closes its stdin: it leaves without allocating.
}

/// Lines of a mount table (`/proc/PID/mountinfo`) that mount something at the tracefs path.
fn tracefs_mounts(pid: &str) -> Vec<String> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_else(|e| panic!("mountinfo of {pid}: {e}"));
    table
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some("/sys/kernel/tracing"))
        .map(str::to_owned)
        .collect()
}

/// Runs leakhound against `pid` in a mount namespace of the test's own (never the host's),
/// where tracefs is not mounted, and a holder process keeps that namespace's mount table to
/// look at. Returns the run, once attached, and the holder.
fn run_without_tracefs(pid: &str, out: &std::path::Path) -> (Run, Holder) {
    let script = "umount /sys/kernel/tracing || exit 3; \
        sleep 600 </dev/null >/dev/null 2>&1 & echo \"holder $!\" >&2; exec \"$0\" \"$@\"";
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", script])
        .arg(tests::leakhound_bin());
    let mut run = Run::start_with(cmd, &["record", "--pid", pid, "-o", arg(out)]);
    let line = run
        .proc
        .stderr
        .next(Instant::now() + TIMEOUT, "`holder <pid>`")
        .expect("the holder's pid");
    let holder = Holder(
        line.strip_prefix("holder ")
            .unwrap_or_else(|| panic!("expected `holder <pid>`, got {line:?}"))
            .trim()
            .to_owned(),
    );
    assert!(
        tracefs_mounts(&holder.0).is_empty(),
        "tracefs is still mounted in the test's namespace"
    );
    run.wait_attached();
    (run, holder)
}

/// The `sleep 600` that keeps a test namespace alive; killed when dropped.
struct Holder(String);

impl Drop for Holder {
    fn drop(&mut self) {
        if let Ok(pid) = self.0.parse::<libc::pid_t>() {
            // SAFETY: kill has no memory arguments; the pid is the holder this test started,
            // which only this guard ends.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Without tracefs, leakhound mounts one where only it sees it: the tracepoints attach (mmap
/// is tracked), and nothing is mounted in the namespace it ran in, not even after a SIGKILL.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn tracefs_mount_is_never_left_behind() {
    let _serial = serial();
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: needs unshare (util-linux)");
        return;
    }
    let dir = paths::scratch("tracefs_mount_is_never_left_behind");
    let mut target = targets::Target::start(&targets::alloc_family(), &[]);
    let pid = target.pid().to_string();

    let out = dir.join("out.json");
    let (run, holder) = run_without_tracefs(&pid, &out);
    assert_eq!(
        tracefs_mounts(&holder.0),
        Vec::<String>::new(),
        "leakhound's tracefs shows in the namespace it runs in"
    );
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    drop(holder);
    let json: serde_json::Value = serde_json::from_str(&read_report(&out)).expect("JSON report");
    assert!(
        json.get("mapping_unavailable").is_none(),
        "the tracepoints were not attached: {}",
        json["mapping_unavailable"]
    );

    let (run, holder) = run_without_tracefs(&pid, &dir.join("killed.json"));
    run.signal(libc::SIGKILL);
    let outcome = run.finish();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&outcome.status),
        Some(libc::SIGKILL)
    );
    let left = tracefs_mounts(&holder.0);
    drop(holder);
    assert!(left.is_empty(), "a killed leakhound left {left:?}");

    target.go();
    let _ = target.read_truth();
    target.release();
}
