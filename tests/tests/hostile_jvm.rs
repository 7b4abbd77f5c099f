//! A process that passes for a JVM (it maps a file named libjvm.so and catches SIGQUIT) sets
//! traps for the attach handshake that root's leakhound runs to get a perf map. It runs as
//! nobody, PID 1 in its own PID and mount namespaces with a /tmp of its own, as in a container.
//! Whatever the trap, no host file is touched, no host socket is connected to, the trace ends
//! on time with its reports, the target's native bytes are reported exactly, and no probe is
//! left behind.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tests::fake_jvm::{FakeJvm, NOBODY, Trap};
use tests::{Run, arg, assert_matches_truth, paths, read_report, require_root, serial};

const DURATION: Duration = Duration::from_secs(3);
/// How long after --duration leakhound may take to write its reports and exit.
const ENDING_SLACK: Duration = Duration::from_secs(1);

struct Traced {
    /// From `leakhound: attached` to its exit.
    took: Duration,
    /// leakhound's stderr.
    stderr: Vec<String>,
    /// What the fake JVM said when released.
    said: Vec<String>,
}

/// Traces the fake JVM for [`DURATION`], while it allocates, and checks what every trap must
/// leave true.
fn trace(test: &str, dir: &Path, trap: &Trap) -> Traced {
    let text = dir.join("out.txt");
    let folded = dir.join("out.folded");
    let mut jvm = FakeJvm::start(dir, trap);
    let pid = jvm.host_pid.to_string();
    let seconds = format!("{}s", DURATION.as_secs());
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        &seconds,
        "-o",
        arg(&text),
        "-o",
        arg(&folded),
    ]);
    run.wait_attached();
    let attached = Instant::now();
    let truth = jvm.go();
    let outcome = run.finish();
    let took = attached.elapsed();
    outcome.assert_success();
    eprintln!("{test}: leakhound ended {took:?} after attaching, with --duration {seconds}");
    assert!(
        outcome
            .stderr
            .iter()
            .any(|line| line.contains("without -XX:+PreserveFramePointer")),
        "leakhound should have taken the fake for a JVM"
    );
    assert!(
        read_report(&text).contains("outstanding"),
        "the text report is written"
    );
    assert_matches_truth(&truth, &read_report(&folded));
    let said = jvm.release();
    eprintln!("the fake JVM said: {said:?}");
    Traced {
        took,
        stderr: outcome.stderr,
        said,
    }
}

/// Checked last, so that a test first says what a trap did.
fn assert_ended_on_time(traced: &Traced) {
    assert!(
        traced.took <= DURATION + ENDING_SLACK,
        "leakhound ended {:?} after attaching; --duration {DURATION:?} allows {:?}",
        traced.took,
        DURATION + ENDING_SLACK
    );
}

fn said(traced: &Traced, line: &str) -> bool {
    traced.said.iter().any(|l| l == line)
}

fn stderr_mentions(traced: &Traced, text: &str) -> bool {
    traced.stderr.iter().any(|line| line.contains(text))
}

/// A root-only host file with known content.
fn host_file(dir: &Path) -> PathBuf {
    let file = dir.join("host_file");
    std::fs::write(&file, "the host's, not the target's\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
    file
}

/// `.attach_pid1` in the target's cwd and /tmp are symlinks to a host file: creating the
/// trigger by path would truncate the host file and give it to nobody.
#[test]
fn trigger_links_to_a_host_file_are_not_followed() {
    let test = "trigger_links_to_a_host_file_are_not_followed";
    require_root!(test);
    let _serial = serial();
    let dir = paths::scratch(test);
    let file = host_file(&dir);
    let traced = trace(test, &dir, &Trap::TriggerLinks(&file));

    let meta = std::fs::symlink_metadata(&file).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "the host's, not the target's\n"
    );
    assert_eq!((meta.uid(), meta.gid()), (0, 0), "the host file's owner");
    assert_eq!(meta.mode() & 0o7777, 0o600, "the host file's mode");
    assert!(meta.is_file());
    assert!(stderr_mentions(&traced, "cannot create the attach trigger"));
    // No trigger, so no signal.
    assert!(said(&traced, "sigquit 0"), "{:?}", traced.said);
    assert_ended_on_time(&traced);
}

/// `/tmp/.java_pid1` is a symlink to a root-owned host socket: nothing may connect to it. The
/// socket lets anyone connect (as some daemons' sockets do), so that not even a connection
/// made with the fake JVM's credentials is stopped by the socket's mode.
#[test]
fn a_socket_link_to_a_host_socket_is_refused() {
    let test = "a_socket_link_to_a_host_socket_is_refused";
    require_root!(test);
    let _serial = serial();
    let dir = paths::scratch(test);
    let socket = dir.join("host.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let traced = trace(test, &dir, &Trap::SocketLink(&socket));

    match listener.accept() {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("something connected to the host socket: {other:?}"),
    }
    assert!(stderr_mentions(&traced, "refusing the attach socket"));
    assert!(said(&traced, "sigquit 0"), "{:?}", traced.said);
    assert_ended_on_time(&traced);
}

/// The attach socket accepts and then sends one byte every 3 s: every read returns in time,
/// the reply never ends. The handshake's one deadline ends it, and the trace still ends on
/// time.
#[test]
fn a_dribbling_socket_does_not_hold_the_trace() {
    let test = "a_dribbling_socket_does_not_hold_the_trace";
    require_root!(test);
    let _serial = serial();
    let dir = paths::scratch(test);
    let traced = trace(test, &dir, &Trap::Dribble);
    assert!(stderr_mentions(&traced, "no complete reply within"));
    assert!(said(&traced, "sigquit 0"), "{:?}", traced.said);
    assert_ended_on_time(&traced);
}

/// Without a trap, the handshake works as with HotSpot: a trigger file owned by the JVM's
/// user in its cwd, SIGQUIT, a socket, an answer; and the trigger is gone afterwards.
#[test]
fn a_well_behaved_listener_is_asked_and_nothing_is_left() {
    let test = "a_well_behaved_listener_is_asked_and_nothing_is_left";
    require_root!(test);
    let _serial = serial();
    let dir = paths::scratch(test);
    let traced = trace(test, &dir, &Trap::Answer);
    assert!(
        said(&traced, &format!("trigger cwd {NOBODY}")),
        "the trigger in the cwd, owned by nobody: {:?}",
        traced.said
    );
    assert!(
        !said(&traced, "served 0") && !said(&traced, "sigquit 0"),
        "{:?}",
        traced.said
    );
    let left: Vec<&String> = traced
        .said
        .iter()
        .filter(|l| l.starts_with("left"))
        .collect();
    assert!(left.is_empty(), "files left in the target: {left:?}");
    assert!(!stderr_mentions(&traced, "cannot get a perf map"));
    assert_ended_on_time(&traced);
}
