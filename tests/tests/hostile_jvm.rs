//! A process that passes for a JVM (it maps a file named libjvm.so and catches SIGQUIT) sets
//! traps for the attach handshake that root's leakhound runs to get a perf map. It runs as
//! nobody, PID 1 in its own PID and mount namespaces with a /tmp of its own, as in a container.
//! Whatever the trap, no host file is touched, no host socket is connected to, no file is
//! left in the target, the trace ends on time with its reports, the target's native bytes are
//! reported exactly, and no probe is left behind (checked by `Run::finish`).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tests::container::HostFile;
use tests::fake_jvm::{FakeJvm, NOBODY, Trap};
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial};

/// How long a trace runs when the handshake fails at once.
const SHORT: Duration = Duration::from_secs(3);
/// Longer than leakhound's whole handshake may take while tracing (5 s) after the first
/// refresh, so that the handshake has ended by its own deadline before the trace ends.
const PAST_THE_DEADLINE: Duration = Duration::from_secs(7);
/// How long after --duration leakhound may take to write its reports and exit.
const ENDING_SLACK: Duration = Duration::from_secs(1);
/// The same while a handshake is still under way on the code refresher's thread: the end waits
/// at most 0.9 s for that thread (session.rs), then writes the reports without it.
const ENDING_SLACK_MID_HANDSHAKE: Duration = Duration::from_millis(1500);

struct Traced {
    duration: Duration,
    /// From `leakhound: attached` to its exit.
    took: Duration,
    /// leakhound's stderr.
    stderr: Vec<String>,
    /// What the fake JVM said when released, after leakhound had exited.
    said: Vec<String>,
}

impl Traced {
    fn said(&self, line: &str) -> bool {
        self.said.iter().any(|l| l == line)
    }

    fn mentions(&self, text: &str) -> bool {
        self.stderr.iter().any(|line| line.contains(text))
    }

    /// No attach file that the fake JVM did not make is left in its cwd or /tmp.
    fn assert_nothing_left(&self) {
        let left: Vec<&String> = self.said.iter().filter(|l| l.starts_with("left")).collect();
        assert!(left.is_empty(), "files left in the target: {left:?}");
    }

    /// Checked last, so that a test first says what a trap did.
    fn assert_ended_within(&self, slack: Duration) {
        assert!(
            self.took <= self.duration + slack,
            "leakhound ended {:?} after attaching; --duration {:?} allows {:?}",
            self.took,
            self.duration,
            self.duration + slack
        );
    }
}

/// Traces the fake JVM for `duration`, while it allocates, and checks what every trap must
/// leave true: both reports written, the known bytes exact, the fake taken for a JVM.
fn trace(test: &str, trap: &Trap, duration: Duration) -> Traced {
    let dir = paths::scratch(test);
    let text = dir.join("out.txt");
    let folded = dir.join("out.folded");
    let mut jvm = FakeJvm::start(&dir, trap);
    let pid = jvm.host_pid.to_string();
    let seconds = format!("{}s", duration.as_secs());
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
        duration,
        took,
        stderr: outcome.stderr,
        said,
    }
}

/// `.attach_pid1` in the target's cwd and /tmp are symlinks to a root-only host file:
/// creating the trigger by path would truncate the host file and give it to nobody.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn trigger_links_to_a_host_file_are_not_followed() {
    let test = "trigger_links_to_a_host_file_are_not_followed";
    let _serial = serial();
    let file = HostFile::new(test, "host_file", b"the host's, not the target's\n");
    let traced = trace(test, &Trap::TriggerLinks(&file.path), SHORT);
    file.assert_unchanged();
    assert!(traced.mentions("cannot create the attach trigger"));
    // No trigger, so no signal.
    assert!(traced.said("sigquit 0"), "{:?}", traced.said);
    traced.assert_ended_within(ENDING_SLACK);
}

/// A root-owned Unix socket under the host's /tmp, which the test listens on.
struct HostSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl HostSocket {
    /// It lets anyone connect (as some daemons' sockets do), so that not even a connection
    /// made with the fake JVM's credentials is stopped by its mode.
    fn new(test: &str) -> Self {
        let dir = PathBuf::from(format!("/tmp/leakhound-host-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        listener.set_nonblocking(true).unwrap();
        Self {
            dir,
            path,
            listener,
        }
    }

    fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("something connected to the host socket: {other:?}"),
        }
    }
}

impl Drop for HostSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/tmp/.java_pid1` is a symlink to a host socket: nothing may connect to it.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_socket_link_to_a_host_socket_is_refused() {
    let test = "a_socket_link_to_a_host_socket_is_refused";
    let _serial = serial();
    let socket = HostSocket::new(test);
    let traced = trace(test, &Trap::SocketLink(&socket.path), SHORT);
    socket.assert_untouched();
    assert!(traced.mentions("refusing the attach socket"));
    assert!(traced.said("sigquit 0"), "{:?}", traced.said);
    traced.assert_ended_within(ENDING_SLACK);
}

/// The attach socket accepts and then sends one byte every 3 s: every read returns in time,
/// the reply never ends. The handshake's one deadline ends it.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_dribbling_socket_meets_the_handshake_deadline() {
    let test = "a_dribbling_socket_meets_the_handshake_deadline";
    let _serial = serial();
    let traced = trace(test, &Trap::Dribble, PAST_THE_DEADLINE);
    assert!(
        traced.mentions("no complete reply within 5s"),
        "the handshake ends at its deadline and says so"
    );
    assert!(traced.said("sigquit 0"), "{:?}", traced.said);
    traced.assert_ended_within(ENDING_SLACK);
}

/// The same socket, with the trace ending while the handshake still waits for it: the end
/// does not wait for the handshake's deadline.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_dribbling_socket_does_not_hold_the_end_of_the_trace() {
    let test = "a_dribbling_socket_does_not_hold_the_end_of_the_trace";
    let _serial = serial();
    let traced = trace(test, &Trap::Dribble, Duration::from_secs(2));
    traced.assert_ended_within(ENDING_SLACK_MID_HANDSHAKE);
}

/// Without a trap, the handshake works as with HotSpot: a trigger file owned by the JVM's
/// user in its cwd, SIGQUIT, a socket, an answer; and the trigger is gone afterwards.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_well_behaved_listener_is_asked_and_nothing_is_left() {
    let test = "a_well_behaved_listener_is_asked_and_nothing_is_left";
    let _serial = serial();
    let traced = trace(test, &Trap::Answer, SHORT);
    assert!(
        traced.said(&format!("trigger cwd {NOBODY}")),
        "the trigger in the cwd, owned by nobody: {:?}",
        traced.said
    );
    assert!(
        !traced.said("served 0") && !traced.said("sigquit 0"),
        "{:?}",
        traced.said
    );
    traced.assert_nothing_left();
    assert!(!traced.mentions("cannot get a perf map"));
    traced.assert_ended_within(ENDING_SLACK);
}

/// The fake JVM takes SIGQUIT and never opens a socket; the trace ends while leakhound still
/// waits for it, with the trigger file in place. leakhound's exit removes it.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_trigger_is_removed_when_the_trace_ends_mid_handshake() {
    let test = "a_trigger_is_removed_when_the_trace_ends_mid_handshake";
    let _serial = serial();
    let traced = trace(test, &Trap::Silent, Duration::from_secs(2));
    assert!(
        traced.said(&format!("trigger cwd {NOBODY}")),
        "the trigger was made: {:?}",
        traced.said
    );
    traced.assert_nothing_left();
    traced.assert_ended_within(ENDING_SLACK_MID_HANDSHAKE);
}
