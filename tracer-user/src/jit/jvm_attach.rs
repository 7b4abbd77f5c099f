//! HotSpot's dynamic attach, as `jcmd` does it, to run `Compiler.perfmap` (JDK 17 and later):
//! the JVM then writes `/tmp/perf-<pid>.map` for the code it has compiled so far.
//!
//! The handshake (HotSpot `attachListener_linux.cpp`, JDK `VirtualMachineImpl.java`):
//! 1. The JVM listens on `/tmp/.java_pid<pid>` once its attach listener runs; `<pid>` is the
//!    PID in the JVM's own namespace, and `/tmp` is the JVM's, resolved inside its root.
//! 2. If it does not listen yet, create `.attach_pid<pid>` in its working directory (or its
//!    `/tmp`), owned by its effective uid or by root, and send SIGQUIT: the signal thread sees
//!    the file and starts the listener instead of printing a thread dump.
//! 3. Connect. The JVM checks the peer's credentials: effective uid and gid equal to its own,
//!    or uid 0, as its own user namespace sees them.
//! 4. Send `1\0jcmd\0Compiler.perfmap\0\0\0` (protocol version, command, three arguments) and
//!    read to the end: a status line (`0` is success), then the command's output.
//!
//! leakhound runs as root, and anything that maps a `libjvm.so` and catches SIGQUIT passes
//! for a JVM; its working directory and `/tmp` are its own to fill with links. So the trigger
//! is made and removed by name in held directories, never through a link (`trigger.rs`); the
//! socket is checked by what it is, not by its name, and connected to as that inode
//! (`socket.rs`); and the whole handshake, the wait for the socket included, has one deadline.

mod deadline;
mod socket;
mod trigger;

use std::{
    fs, io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use thiserror::Error;

use crate::{
    exit_watch,
    process::{
        TargetProcess,
        root::{EntryName, HeldDir, RootError, TargetRoot},
    },
};
use deadline::Deadline;
pub use socket::{ExchangeError, SocketProblem};
use trigger::Trigger;

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("the JVM does not handle SIGQUIT (-Xrs?), so its attach listener cannot be started")]
    NoQuitHandler,
    #[error("cannot create the attach trigger {} as a new file: {source}", path.display())]
    Trigger { path: PathBuf, source: io::Error },
    #[error("the JVM did not open its attach socket within {0:?} (-XX:+DisableAttachMechanism?)")]
    NoSocket(Duration),
    #[error("refusing the attach socket {}: {problem}; not connected", path.display())]
    Untrusted {
        path: PathBuf,
        problem: SocketProblem,
    },
    #[error("attach socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        source: ExchangeError,
    },
    #[error("the JVM closed the connection without a reply (credentials refused?)")]
    NoReply,
    #[error("the JVM answered {status}: {message}")]
    Refused { status: i32, message: String },
    #[error("cannot read /proc/{pid}/status")]
    Status { pid: u32 },
    #[error("cannot send SIGQUIT to pid {pid}: {source}")]
    Signal { pid: u32, source: io::Error },
    #[error(transparent)]
    Root(#[from] RootError),
}

impl AttachError {
    /// Errors that asking again would repeat. A socket that fails the checks, or a peer that
    /// does not answer within the deadline, is not a JVM to wait for again: each attempt would
    /// hold the trace for the whole deadline.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::NoQuitHandler
                | Self::NoSocket(_)
                | Self::Refused { .. }
                | Self::Untrusted { .. }
                | Self::Socket {
                    source: ExchangeError::Deadline(_) | ExchangeError::TooLong(_),
                    ..
                }
        )
    }
}

/// What identifies the JVM's side of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JvmIdentity {
    /// The JVM's PID in its own namespace (`NSpid`'s last field).
    pub nspid: u32,
    pub euid: u32,
    pub egid: u32,
    /// Whether it catches SIGQUIT (`SigCgt`); sending it otherwise would kill the process.
    pub catches_quit: bool,
}

/// Parses `/proc/PID/status`.
pub fn identity(status: &str) -> Option<JvmIdentity> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::split_whitespace)
    };
    let nspid = super::namespace_pid(status)?;
    // Uid: real, effective, saved, filesystem.
    let euid = field("Uid:")?.nth(1)?.parse().ok()?;
    let egid = field("Gid:")?.nth(1)?.parse().ok()?;
    let caught = u64::from_str_radix(field("SigCgt:")?.next()?, 16).ok()?;
    Some(JvmIdentity {
        nspid,
        euid,
        egid,
        catches_quit: caught & (1 << (libc::SIGQUIT - 1)) != 0,
    })
}

/// The request for one diagnostic command, as jcmd sends it.
pub fn jcmd_request(command: &str) -> Vec<u8> {
    let mut request = Vec::new();
    for part in ["1", "jcmd", command, "", ""] {
        request.extend_from_slice(part.as_bytes());
        request.push(0);
    }
    request
}

/// The longest message of a refusal that is shown: the reply comes from the target.
const MAX_MESSAGE_CHARS: usize = 200;

/// Splits a reply into its status and the text after the status line. Any bytes are taken: a
/// reply that does not start with a number is no reply.
pub fn parse_reply(reply: &[u8]) -> Result<String, AttachError> {
    let text = String::from_utf8_lossy(reply);
    let (status, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let status: i32 = status.trim().parse().map_err(|_| AttachError::NoReply)?;
    // jcmd reports an unknown or failed command with status 0 and the exception as output,
    // on its first line: further lines may be data that names exceptions (a class histogram
    // lists `java.lang.IllegalStateException` like any class).
    let first = rest.lines().next().unwrap_or("");
    let failed = first.starts_with("java.lang.") || first.contains("Exception");
    if status != 0 || failed {
        return Err(AttachError::Refused {
            status,
            message: one_line(rest, MAX_MESSAGE_CHARS),
        });
    }
    Ok(rest.trim().to_owned())
}

/// Text from the target made fit for one line of leakhound's stderr: control characters
/// (newlines, terminal escapes) become spaces, runs of space one, and it is cut at `max` chars.
fn one_line(text: &str, max: usize) -> String {
    let mut line = String::new();
    let mut chars = 0;
    for c in text.trim().chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (line.is_empty() || line.ends_with(' ')) {
            continue;
        }
        if chars == max {
            line.push_str("...");
            break;
        }
        line.push(c);
        chars += 1;
    }
    line.trim_end().to_owned()
}

/// Runs `Compiler.perfmap` in the JVM, starting its attach listener first if needed; all of it
/// within `budget`.
pub fn request_perf_map(target: &TargetProcess, budget: Duration) -> Result<String, AttachError> {
    request(target, "Compiler.perfmap", budget, socket::MAX_REPLY)
}

/// Runs one diagnostic command in the JVM, as `jcmd PID COMMAND` does, starting its attach
/// listener first if needed; all of it within `budget`, and a reply of at most `max_reply`
/// bytes.
pub fn request(
    target: &TargetProcess,
    command: &str,
    budget: Duration,
    max_reply: usize,
) -> Result<String, AttachError> {
    let handshake = Handshake::begin(target, budget)?;
    let socket_error = |source| AttachError::Socket {
        path: handshake.tmp.display(&handshake.socket),
        source,
    };
    let (jvm, deadline) = (handshake.jvm, handshake.deadline);
    let stream = match handshake.find_socket()? {
        Some(socket) => match socket.connect_as(jvm, deadline) {
            Ok(stream) => stream,
            // Nobody listens: a socket left by an earlier JVM with this PID. HotSpot replaces
            // it when its listener starts.
            Err(ExchangeError::Io(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
                handshake
                    .start_listener(Some(socket.id()))?
                    .connect_as(jvm, deadline)
                    .map_err(socket_error)?
            }
            Err(err) => return Err(socket_error(err)),
        },
        None => handshake
            .start_listener(None)?
            .connect_as(jvm, deadline)
            .map_err(socket_error)?,
    };
    let reply = socket::exchange(&stream, &jcmd_request(command), deadline, max_reply)
        .map_err(socket_error)?;
    parse_reply(&reply)
}

/// What one handshake works with, found once at its start.
struct Handshake<'t> {
    target: &'t TargetProcess,
    /// Held before the status is read: SIGQUIT then reaches the process whose status said
    /// that it catches the signal, even if that one has exited and its PID is another's by then.
    process: OwnedFd,
    jvm: JvmIdentity,
    /// The JVM's /tmp as the JVM resolves it, held: every later step is relative to it.
    tmp: HeldDir,
    /// `.java_pid<nspid>`.
    socket: EntryName,
    deadline: Deadline,
}

impl<'t> Handshake<'t> {
    fn begin(target: &'t TargetProcess, budget: Duration) -> Result<Self, AttachError> {
        let deadline = Deadline::after(budget);
        let status_error = || AttachError::Status { pid: target.pid };
        let process = exit_watch::pidfd(target.pid).map_err(|_| status_error())?;
        let status = fs::read_to_string(format!("/proc/{}/status", target.pid))
            .map_err(|_| status_error())?;
        let jvm = identity(&status).ok_or_else(status_error)?;
        let tmp = TargetRoot::open(target.pid)?.hold_dir(Path::new("/tmp"))?;
        let socket = EntryName::new(&format!(".java_pid{}", jvm.nspid)).expect("one file name");
        Ok(Self {
            target,
            process,
            jvm,
            tmp,
            socket,
            deadline,
        })
    }

    /// The socket if there is one; anything at its name that is not the JVM's socket is
    /// refused.
    fn find_socket(&self) -> Result<Option<socket::AttachSocket>, AttachError> {
        let shown = || self.tmp.display(&self.socket);
        let Some(entry) =
            socket::find(&self.tmp, &self.socket).map_err(|err| AttachError::Socket {
                path: shown(),
                source: err.into(),
            })?
        else {
            return Ok(None);
        };
        entry
            .vet(self.jvm)
            .map(Some)
            .map_err(|problem| AttachError::Untrusted {
                path: shown(),
                problem,
            })
    }

    /// Creates the trigger file, sends SIGQUIT and waits for the socket (another than `stale`,
    /// if given); the trigger is removed on the way out.
    fn start_listener(
        &self,
        stale: Option<(u64, u64)>,
    ) -> Result<socket::AttachSocket, AttachError> {
        let (target, jvm) = (self.target, self.jvm);
        if !jvm.catches_quit {
            return Err(AttachError::NoQuitHandler);
        }
        let name = EntryName::new(&format!(".attach_pid{}", jvm.nspid)).expect("one file name");
        // The working directory that the kernel holds for the process, not a path to it.
        let cwd = HeldDir::open_link(Path::new(&format!("/proc/{}/cwd", target.pid)));
        let in_cwd = match &cwd {
            Ok(dir) => Trigger::create(dir, &name, jvm),
            Err(err) => Err(io::Error::other(err.to_string())),
        };
        let _trigger = match in_cwd {
            Ok(trigger) => trigger,
            Err(err) => {
                log::debug!("no attach trigger in the JVM's working directory: {err}");
                Trigger::create(&self.tmp, &name, jvm).map_err(|source| AttachError::Trigger {
                    path: self.tmp.display(&name),
                    source,
                })?
            }
        };
        send_quit(&self.process).map_err(|source| AttachError::Signal {
            pid: target.pid,
            source,
        })?;
        let mut pause = Duration::from_millis(5);
        loop {
            // The JVM binds its socket under a temporary name and renames it into place, so
            // the name appears once, complete. It gives no event to wait on: poll with a
            // growing pause, as jcmd does.
            match self.find_socket()? {
                Some(found) if Some(found.id()) != stale => return Ok(found),
                _ => {}
            }
            let Some(left) = self.deadline.remaining() else {
                return Err(AttachError::NoSocket(self.deadline.budget()));
            };
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}

/// SIGQUIT through the process's pidfd; the caller checked that it catches the signal.
fn send_quit(process: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null siginfo (as kill
    // would send) and flags; no other memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            process.as_raw_fd(),
            libc::SIGQUIT,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_what_jcmd_sends() {
        assert_eq!(
            jcmd_request("Compiler.perfmap"),
            b"1\0jcmd\0Compiler.perfmap\0\0\0"
        );
    }

    #[test]
    fn reads_identity_from_status() {
        let status = "Name:\tjava\nNSpid:\t48213\t7\nUid:\t1000\t1001\t1001\t1001\n\
                      Gid:\t100\t101\t101\t101\nSigCgt:\t0000000181005ccf\n";
        let jvm = identity(status).unwrap();
        assert_eq!(jvm.nspid, 7);
        assert_eq!((jvm.euid, jvm.egid), (1001, 101));
        // 0x...cf has bit 2 (signal 3) set.
        assert!(jvm.catches_quit);
        let ignoring = status.replace("0000000181005ccf", "0000000181005cc3");
        assert!(!identity(&ignoring).unwrap().catches_quit);
        assert_eq!(identity("Name:\tjava\n"), None);
    }

    #[test]
    fn any_bytes_are_a_reply_or_no_reply() {
        // A small generator, so the test needs no crate: every length up to 64, random bytes
        // biased towards digits, newlines and NULs.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 65) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| match next() % 4 {
                    0 => b"0123456789-+\n \0"[(next() % 15) as usize],
                    _ => next() as u8,
                })
                .collect();
            if let Err(AttachError::Refused { message, .. }) = parse_reply(&bytes) {
                assert!(message.chars().all(|c| !c.is_control()), "{message:?}");
            }
        }
        assert!(matches!(
            parse_reply(&[0xff; 1 << 20]),
            Err(AttachError::NoReply)
        ));
        assert!(matches!(
            parse_reply(b"99999999999999999999\n"),
            Err(AttachError::NoReply)
        ));
    }

    #[test]
    fn a_refusal_is_shown_on_one_short_line() {
        let Err(AttachError::Refused { message, .. }) =
            parse_reply(b"1\n\x1b[2Jfirst\r\nsecond\tthird\n")
        else {
            panic!("a refusal");
        };
        assert_eq!(message, "[2Jfirst second third");
        let long = format!("1\n{}", "x".repeat(10_000));
        let Err(AttachError::Refused { message, .. }) = parse_reply(long.as_bytes()) else {
            panic!("a refusal");
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 3);
    }

    #[test]
    fn replies_are_status_then_output() {
        assert_eq!(parse_reply(b"0\n").unwrap(), "");
        assert_eq!(
            parse_reply(b"0\nCommand executed successfully\n").unwrap(),
            "Command executed successfully"
        );
        assert!(matches!(parse_reply(b""), Err(AttachError::NoReply)));
        assert!(matches!(
            parse_reply(b"0\njava.lang.IllegalArgumentException: Unknown diagnostic command\n"),
            Err(AttachError::Refused { status: 0, .. })
        ));
        assert!(matches!(
            parse_reply(b"101\nprotocol mismatch\n"),
            Err(AttachError::Refused { status: 101, .. })
        ));
    }
}
