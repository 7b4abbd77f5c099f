//! Children that never outlive the bench, and their output read line by line.

use super::*;
/// A child that is killed if the bench fails before it is waited for, so that no tracer (and
/// no probe) outlives the run.
pub(super) struct Guard {
    pub(super) child: Child,
    pub(super) reaped: bool,
}

impl Guard {
    pub(super) fn spawn(command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        Ok(Self {
            child,
            reaped: false,
        })
    }

    pub(super) fn wait(&mut self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.reaped = true;
                ensure!(
                    status.success(),
                    "{:?} exited with {status}",
                    self.child.id()
                );
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "child {} did not exit",
                self.child.id()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits with wait4, for the exit status and the peak resident set (KiB).
    pub(super) fn wait_rusage(&mut self) -> Result<(i32, i64)> {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; it is written by the call.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: our own unreaped child; both pointers are to live locals.
        let pid = unsafe { libc::wait4(self.child.id() as i32, &mut status, 0, &mut usage) };
        ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
        self.reaped = true;
        Ok((status, usage.ru_maxrss))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(super) fn lines_of(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

pub(super) fn wait_line(
    lines: &Receiver<String>,
    mut wanted: impl FnMut(&str) -> bool,
    patience: Duration,
) -> Result<String> {
    let deadline = Instant::now() + patience;
    // The lines passed over, for the error: what the process said before it ended.
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if wanted(&line) => return Ok(line),
            Ok(line) => before.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "timed out waiting for a line; it said:\n{}",
                    before.join("\n")
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the stream ended early; it said:\n{}", before.join("\n"))
            }
        }
    }
}
