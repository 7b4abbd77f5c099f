//! Noticing that the target exited.
//!
//! An attached process is watched through a pidfd, which becomes readable at exit. A launched
//! command is our child, and is seized with ptrace for one event only, PTRACE_EVENT_EXIT: the
//! child stops on its way out while its memory map still exists, so that the mappings of a
//! short-lived command are known and its frames can be named. No other stop is kept: signals
//! are passed straight on.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

use crate::{process::TargetProcess, symbolize::Modules};

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
    modules: Arc<Mutex<Modules>>,
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
                let event = status >> 16;
                let (request, signal) = if event == libc::PTRACE_EVENT_EXIT {
                    if let Ok(mut modules) = modules.lock() {
                        modules.refresh(&target);
                    }
                    (libc::PTRACE_CONT, 0)
                } else if event == libc::PTRACE_EVENT_STOP {
                    // A group stop (SIGSTOP and friends): stay stopped as without a tracer.
                    (libc::PTRACE_LISTEN, 0)
                } else {
                    (libc::PTRACE_CONT, libc::WSTOPSIG(status))
                };
                // SAFETY: plain ptrace request on our stopped tracee.
                unsafe { libc::ptrace(request, pid, 0, signal as libc::c_ulong) };
            }
        })?;
    seized_rx
        .recv()
        .map_err(|_| io::Error::other("watcher thread ended"))??;
    Ok(exit_rx)
}
