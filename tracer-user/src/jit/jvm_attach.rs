//! HotSpot's dynamic attach, as `jcmd` does it, to run `Compiler.perfmap` (JDK 17 and later):
//! the JVM then writes `/tmp/perf-<pid>.map` for the code it has compiled so far.
//!
//! The handshake (HotSpot `attachListener_linux.cpp`, JDK `VirtualMachineImpl.java`):
//! 1. The JVM listens on `/tmp/.java_pid<pid>` once its attach listener runs; `<pid>` is the
//!    PID in the JVM's own namespace, and `/tmp` is the JVM's, reached through `/proc/PID/root`.
//! 2. If it does not listen yet, create `.attach_pid<pid>` in its working directory (or its
//!    `/tmp`), owned by its effective uid or by root, and send SIGQUIT: the signal thread sees
//!    the file and starts the listener instead of printing a thread dump.
//! 3. Connect. The JVM checks the peer's credentials: effective uid and gid equal to its own,
//!    or uid 0, as its own user namespace sees them.
//! 4. Send `1\0jcmd\0Compiler.perfmap\0\0\0` (protocol version, command, three arguments) and
//!    read to the end: a status line (`0` is success), then the command's output.

use std::{
    fs::{self, File},
    io::{self, Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use thiserror::Error;

use crate::process::TargetProcess;

#[derive(Debug, Error)]
pub enum AttachError {
    #[error("the JVM does not handle SIGQUIT (-Xrs?), so its attach listener cannot be started")]
    NoQuitHandler,
    #[error("cannot create the attach trigger {}: {source}", path.display())]
    Trigger { path: PathBuf, source: io::Error },
    #[error("the JVM did not open its attach socket within {0:?} (-XX:+DisableAttachMechanism?)")]
    NoSocket(Duration),
    #[error("attach socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error("the JVM closed the connection without a reply (credentials refused?)")]
    NoReply,
    #[error("the JVM answered {status}: {message}")]
    Refused { status: i32, message: String },
    #[error("cannot read /proc/{pid}/status")]
    Status { pid: u32 },
}

impl AttachError {
    /// Errors that asking again would repeat.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::NoQuitHandler | Self::NoSocket(_) | Self::Refused { .. }
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

/// Splits a reply into its status and the text after the status line.
pub fn parse_reply(reply: &[u8]) -> Result<String, AttachError> {
    let text = String::from_utf8_lossy(reply);
    let (status, rest) = text.split_once('\n').unwrap_or((&text, ""));
    let status: i32 = status.trim().parse().map_err(|_| AttachError::NoReply)?;
    // jcmd reports an unknown or failed command with status 0 and the exception as output.
    let failed = rest.starts_with("java.lang.") || rest.contains("Exception");
    if status != 0 || failed {
        return Err(AttachError::Refused {
            status,
            message: rest.trim().to_owned(),
        });
    }
    Ok(rest.trim().to_owned())
}

/// Runs `Compiler.perfmap` in the JVM, starting its attach listener first if needed.
pub fn request_perf_map(target: &TargetProcess, timeout: Duration) -> Result<String, AttachError> {
    let status = fs::read_to_string(format!("/proc/{}/status", target.pid))
        .map_err(|_| AttachError::Status { pid: target.pid })?;
    let jvm = identity(&status).ok_or(AttachError::Status { pid: target.pid })?;
    // The JVM's /tmp, held open so that the socket is reached through /proc/self/fd even from
    // a thread that has given up root to match the JVM's credentials.
    let tmp = target.in_root(Path::new("/tmp"));
    let tmp_dir = File::open(&tmp).map_err(|source| AttachError::Socket {
        path: tmp.clone(),
        source,
    })?;
    let socket_path = PathBuf::from(format!(
        "/proc/self/fd/{}/.java_pid{}",
        tmp_dir.as_raw_fd(),
        jvm.nspid
    ));
    let shown = tmp.join(format!(".java_pid{}", jvm.nspid));

    let stream = match connect_as(&socket_path, jvm) {
        Ok(stream) => stream,
        Err(_) => {
            start_listener(target, jvm, &socket_path, timeout)?;
            connect_as(&socket_path, jvm).map_err(|source| AttachError::Socket {
                path: shown.clone(),
                source,
            })?
        }
    };
    let reply = exchange(stream, &jcmd_request("Compiler.perfmap"), timeout).map_err(|source| {
        AttachError::Socket {
            path: shown.clone(),
            source,
        }
    })?;
    drop(tmp_dir);
    parse_reply(&reply)
}

/// Creates the trigger file, sends SIGQUIT and waits for the socket; removes the trigger.
fn start_listener(
    target: &TargetProcess,
    jvm: JvmIdentity,
    socket: &Path,
    timeout: Duration,
) -> Result<(), AttachError> {
    if !jvm.catches_quit {
        return Err(AttachError::NoQuitHandler);
    }
    let name = format!(".attach_pid{}", jvm.nspid);
    let in_cwd = PathBuf::from(format!("/proc/{}/cwd", target.pid)).join(&name);
    let in_tmp = target.in_root(Path::new("/tmp")).join(&name);
    let trigger = create_trigger(&in_cwd, jvm)
        .map(|()| in_cwd.clone())
        .or_else(|_| create_trigger(&in_tmp, jvm).map(|()| in_tmp.clone()))
        .map_err(|source| AttachError::Trigger {
            path: in_tmp.clone(),
            source,
        })?;
    // SAFETY: kill has no memory arguments; the caller checked that this process is a JVM
    // that catches SIGQUIT.
    unsafe { libc::kill(target.pid as libc::pid_t, libc::SIGQUIT) };
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    let opened = loop {
        if fs::symlink_metadata(socket).is_ok() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        // The JVM gives no event to wait on; poll with a growing pause, as jcmd does.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    let _ = fs::remove_file(&trigger);
    if opened {
        Ok(())
    } else {
        Err(AttachError::NoSocket(timeout))
    }
}

/// The JVM trusts the trigger only if its owner is the JVM's effective uid or root, as its
/// namespace sees it; so the file is given to the JVM's user.
fn create_trigger(path: &Path, jvm: JvmIdentity) -> io::Result<()> {
    File::create(path)?;
    std::os::unix::fs::chown(path, Some(jvm.euid), Some(jvm.egid)).inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// Connects with the JVM's effective uid and gid when they are not ours: the JVM accepts its
/// own user or root, and root in another user namespace is nobody to it. Credentials are per
/// thread in the kernel, so a short-lived thread changes its own with raw syscalls (glibc's
/// wrappers would change every thread) and the socket outlives it.
fn connect_as(path: &Path, jvm: JvmIdentity) -> io::Result<UnixStream> {
    // SAFETY: geteuid and getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (euid, egid) == (jvm.euid, jvm.egid) {
        return UnixStream::connect(path);
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let keep = libc::c_long::from(-1i32);
                // SAFETY: raw setresgid/setresuid on this thread only; -1 keeps a value.
                let changed = unsafe {
                    libc::syscall(libc::SYS_setresgid, keep, jvm.egid as libc::c_long, keep) == 0
                        && libc::syscall(libc::SYS_setresuid, keep, jvm.euid as libc::c_long, keep)
                            == 0
                };
                if !changed {
                    return Err(io::Error::last_os_error());
                }
                UnixStream::connect(path)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("connecting thread panicked")))
    })
}

fn exchange(mut stream: UnixStream, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(request)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(reply)
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
