//! Noticing that the target exited.
//!
//! An attached process is watched through a pidfd, which becomes readable at exit. A launched
//! command is our child, and is seized with ptrace for one event only, PTRACE_EVENT_EXIT: the
//! child stops on its way out while its memory map still exists, so that the mappings of a
//! short-lived command are known and its frames can be named. No other stop is kept: signals
//! are passed straight on, and job control (Ctrl-Z, SIGSTOP, SIGCONT) works as without a
//! tracer; see [`resume`].

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::{code_refresh::TargetCode, process::TargetProcess};

/// How a launched command ended.
#[derive(Clone, Copy, Debug)]
pub enum ChildExit {
    Code(i32),
    Signal(i32),
}

impl std::fmt::Display for ChildExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(code) => write!(f, "exit code {code}"),
            Self::Signal(signal) => write!(f, "signal {signal}"),
        }
    }
}

pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor is new and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Seizes the launched child (which must not have run yet) on a thread of its own, as ptrace
/// requires that one thread make every request. Returns once the seize is in place.
pub fn watch_child(
    target: TargetProcess,
    modules: Arc<Mutex<TargetCode>>,
) -> io::Result<oneshot::Receiver<ChildExit>> {
    let (seized_tx, seized_rx) = std::sync::mpsc::channel();
    let (exit_tx, exit_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("leakhound-child".into())
        .spawn(move || {
            let pid = target.pid as libc::pid_t;
            // SAFETY: plain ptrace request on our own child.
            let seized = unsafe {
                libc::ptrace(
                    libc::PTRACE_SEIZE,
                    pid,
                    0,
                    libc::PTRACE_O_TRACEEXIT as libc::c_ulong,
                )
            };
            let _ = seized_tx.send(if seized == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            });
            loop {
                let mut status = 0;
                // SAFETY: waits for our own child; `status` is a valid out pointer.
                if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } < 0 {
                    break;
                }
                if libc::WIFEXITED(status) {
                    let _ = exit_tx.send(ChildExit::Code(libc::WEXITSTATUS(status)));
                    return;
                }
                if libc::WIFSIGNALED(status) {
                    let _ = exit_tx.send(ChildExit::Signal(libc::WTERMSIG(status)));
                    return;
                }
                if !libc::WIFSTOPPED(status) {
                    continue;
                }
                let stop = Stop::of(status);
                if stop == Stop::Exit
                    && let Ok(mut modules) = modules.lock()
                {
                    modules.refresh(&target);
                }
                let (request, signal) = resume(stop);
                // SAFETY: plain ptrace request on our stopped tracee.
                unsafe { libc::ptrace(request, pid, 0, signal as libc::c_ulong) };
            }
        })?;
    seized_rx
        .recv()
        .map_err(|_| io::Error::other("watcher thread ended"))??;
    Ok(exit_rx)
}

/// What a ptrace stop of a seized tracee is (see "Stopped states" in ptrace(2)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// PTRACE_EVENT_EXIT: on its way out, its memory map still there.
    Exit,
    /// A group-stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU): the process is stopped.
    Group,
    /// Any other PTRACE_EVENT_STOP, with SIGTRAP: under PTRACE_SEIZE, the tracee stops so
    /// once more when SIGCONT ends a group-stop it was listening in.
    Event,
    /// A signal is about to be delivered.
    Signal(i32),
}

impl Stop {
    fn of(status: i32) -> Self {
        let signal = libc::WSTOPSIG(status);
        match status >> 16 {
            libc::PTRACE_EVENT_EXIT => Self::Exit,
            libc::PTRACE_EVENT_STOP
                if matches!(
                    signal,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                ) =>
            {
                Self::Group
            }
            libc::PTRACE_EVENT_STOP => Self::Event,
            _ => Self::Signal(signal),
        }
    }
}

/// The type of a ptrace request: glibc declares `ptrace` with an unsigned request, musl (the
/// static build, `cargo xtask dist`) with an `int`.
#[cfg(target_env = "musl")]
type PtraceRequest = libc::c_int;
#[cfg(not(target_env = "musl"))]
type PtraceRequest = libc::c_uint;

/// How to let the tracee go on after `stop`, as if it had no tracer: the request and the
/// signal to deliver.
///
/// A group-stop is answered with PTRACE_LISTEN, so the tracee stays stopped but SIGCONT can
/// wake it; when it does, the tracee reports one more PTRACE_EVENT_STOP, which must be
/// answered with PTRACE_CONT. Answering that one with PTRACE_LISTEN too (as a group-stop)
/// left a continued command frozen until the trace ended. A signal-delivery-stop gets its
/// signal back: a stop signal then starts the group-stop, SIGCONT and the rest do what they do.
fn resume(stop: Stop) -> (PtraceRequest, i32) {
    match stop {
        Stop::Group => (libc::PTRACE_LISTEN, 0),
        Stop::Exit | Stop::Event => (libc::PTRACE_CONT, 0),
        Stop::Signal(signal) => (libc::PTRACE_CONT, signal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop status as waitpid reports it: the signal in bits 8..16, the event above.
    fn status(signal: i32, event: i32) -> i32 {
        0x7f | (signal << 8) | (event << 16)
    }

    #[test]
    fn job_control_stops_are_told_apart() {
        let listen = |signal| resume(Stop::of(status(signal, libc::PTRACE_EVENT_STOP)));
        for signal in [libc::SIGSTOP, libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU] {
            assert_eq!(listen(signal), (libc::PTRACE_LISTEN, 0));
        }
        // The stop after SIGCONT woke a listening tracee: it must run again.
        assert_eq!(listen(libc::SIGTRAP), (libc::PTRACE_CONT, 0));
        // Signals are delivered, stop signals included (that starts the group-stop).
        for signal in [libc::SIGSTOP, libc::SIGCONT, libc::SIGTERM, libc::SIGUSR1] {
            assert_eq!(
                resume(Stop::of(status(signal, 0))),
                (libc::PTRACE_CONT, signal)
            );
        }
        assert_eq!(
            Stop::of(status(libc::SIGTRAP, libc::PTRACE_EVENT_EXIT)),
            Stop::Exit
        );
    }
}
