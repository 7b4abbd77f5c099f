//! Child processes with bounded waits: their output arrives line by line over channels, and
//! their exit is awaited through a pidfd, so every wait has a deadline and none is a sleep.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Long enough for a loaded 2-core machine, short enough that a hang fails the test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// One output stream of a child, read by its own thread.
pub struct Lines {
    label: String,
    rx: Receiver<String>,
    all: Arc<Mutex<Vec<String>>>,
}

impl Lines {
    /// With `forward`, every line is also echoed to the test's stderr (shown with --nocapture).
    pub fn spawn(reader: impl Read + Send + 'static, label: &str, forward: bool) -> Self {
        let (tx, rx) = channel();
        let all = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&all);
        let prefix = label.to_owned();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if forward {
                    eprintln!("[{prefix}] {line}");
                }
                lock(&sink).push(line.clone());
                // The receiver may be gone when the test has finished with this stream.
                let _ = tx.send(line);
            }
        });
        Lines {
            label: label.to_owned(),
            rx,
            all,
        }
    }

    /// The next line not yet returned by `next`; None at EOF. Panics at the deadline.
    pub fn next(&self, deadline: Instant, waiting_for: &str) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "timed out waiting for {waiting_for} on {}; it printed so far:\n{}",
                self.label,
                self.snapshot().join("\n")
            ),
        }
    }

    /// The next line if one arrives within `timeout`; None when none does (or at EOF).
    pub fn next_within(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Every line read so far.
    pub fn snapshot(&self) -> Vec<String> {
        lock(&self.all).clone()
    }

    /// Every line up to EOF; waits for EOF until the deadline, then returns what there is.
    /// (A launched target can inherit the pipe and hold it open past leakhound's exit.)
    pub fn drain(&self, deadline: Instant) -> Vec<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(_) => continue,
                Err(_) => return self.snapshot(),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking reader thread cannot leave the Vec half-updated; keep going.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A spawned child with piped stdio. Dropping it kills and reaps the child if still running.
pub struct Proc {
    name: String,
    child: Child,
    pidfd: OwnedFd,
    stdin: Option<ChildStdin>,
    pub stdout: Lines,
    pub stderr: Lines,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Spawns a target that says `ready <pid>` first (with its own pid) and waits for that line.
    pub fn spawn_ready(cmd: Command, name: &str) -> Self {
        let proc = Self::spawn(cmd, name, true);
        let ready = proc
            .stdout
            .next(Instant::now() + TIMEOUT, "`ready <pid>`")
            .unwrap_or_else(|| panic!("{name} closed stdout before `ready`"));
        assert_eq!(
            ready.trim_end(),
            format!("ready {}", proc.pid()),
            "{name}'s first line"
        );
        proc
    }

    /// Spawns `cmd` with stdin, stdout and stderr piped. `forward_stderr` echoes its stderr.
    pub fn spawn(mut cmd: Command, name: &str, forward_stderr: bool) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let pid = child.id() as libc::pid_t;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let err = std::io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            panic!("pidfd_open({pid}) for {name}: {err}");
        }
        // SAFETY: fd was just returned by pidfd_open, is valid and owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let stdin = child.stdin.take();
        let stdout = Lines::spawn(
            child.stdout.take().expect("piped stdout"),
            &format!("{name} stdout"),
            false,
        );
        let stderr = Lines::spawn(
            child.stderr.take().expect("piped stderr"),
            name,
            forward_stderr,
        );
        Proc {
            name: name.to_owned(),
            child,
            pidfd,
            stdin,
            stdout,
            stderr,
            status: None,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn write_line(&mut self, line: &str) {
        let stdin = self
            .stdin
            .as_mut()
            .unwrap_or_else(|| panic!("{}: stdin already closed", self.name));
        // A child that died early shows up as EPIPE here; say which child.
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("writing {line:?} to {}: {e}", self.name));
    }

    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends `sig`. Only while unreaped, so the pid cannot belong to another process yet.
    pub fn signal(&self, sig: libc::c_int) {
        assert!(
            self.status.is_none(),
            "{} was already reaped; not signalling",
            self.name
        );
        // SAFETY: kill has no memory arguments; the pid is our unreaped child.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.name,
            std::io::Error::last_os_error()
        );
    }

    /// Waits until the child has exited, WITHOUT reaping it: it stays a zombie.
    pub fn wait_exited_unreaped(&self, timeout: Duration) -> bool {
        if self.status.is_some() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: pfd is a valid pollfd for the duration of the call, and the count is 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            match rc {
                1.. => return true,
                0 => return false,
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => panic!(
                    "poll on pidfd of {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                ),
            }
        }
    }

    /// The exit status if the child has exited, reaping it; None while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name));
        }
        self.status
    }

    /// Waits for exit and reaps; None at the timeout (the child is left running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() && self.wait_exited_unreaped(timeout) {
            self.status = Some(
                self.child
                    .wait()
                    .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name)),
            );
        }
        self.status
    }

    /// Waits for exit; at the timeout kills the child and panics with its stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.wait_timeout(timeout) {
            return status;
        }
        self.kill();
        panic!(
            "{} did not exit within {timeout:?}; killed it. Its stderr:\n{}",
            self.name,
            self.stderr.snapshot().join("\n")
        );
    }

    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The host PID of the only child of `parent` (unshare forks the target).
pub fn only_child(parent: libc::pid_t) -> libc::pid_t {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
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
