//! One traced process: a child of the agent running `leakhound record --pid N --push ...`, the
//! same session, hardening and pushes as a `record` run by hand. The child ends its trace on
//! SIGTERM (detaching every probe and pushing a final profile), and the kernel sends it
//! SIGTERM if the agent dies first (`PR_SET_PDEATHSIG`), so no trace outlives the agent.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command, ExitStatus, Stdio},
    thread::JoinHandle,
};

use super::scan::Identity;

pub struct Traced {
    pub identity: Identity,
    /// A hash of the command line when tracing started: a process that exec'd another
    /// program (which ends its trace) is picked up again if it still matches.
    pub cmdline_hash: u64,
    /// Failed traces of this process and command line before this one.
    pub failures: u32,
    child: Child,
    forward: Option<JoinHandle<()>>,
}

impl Traced {
    /// Starts `leakhound record --pid PID` followed by `record_args`.
    pub fn start(
        identity: Identity,
        cmdline_hash: u64,
        record_args: &[String],
        failures: u32,
    ) -> std::io::Result<Self> {
        let agent = std::process::id();
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0("leakhound")
            .args(["record", "--pid", &identity.pid.to_string()])
            .args(record_args)
            .stdin(Stdio::null())
            // The text report of each trace is not wanted: the pushed profiles are the output.
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // A Ctrl-C in the agent's terminal reaches the agent only, which ends each child.
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls are made (prctl,
        // getppid), and nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent may have ended before the prctl: then this trace must not start.
                if libc::getppid() as u32 != agent {
                    return Err(std::io::Error::other("the agent ended"));
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let stderr = child.stderr.take();
        let pid = identity.pid;
        // Each line of the child's stderr, prefixed with its target's pid.
        let forward = stderr.map(|stderr| {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("leakhound agent: pid {pid}: {line}");
                }
            })
        });
        Ok(Self {
            identity,
            cmdline_hash,
            failures,
            child,
            forward,
        })
    }

    /// The child's status once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten()?;
        if let Some(forward) = self.forward.take() {
            let _ = forward.join();
        }
        Some(status)
    }

    /// Asks the child to end its trace (its probes detached, a final profile pushed).
    pub fn end(&self) {
        // SAFETY: kill(2) on the pid of a child not yet reaped, so not reused.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// The last resort for a child that did not end in time; the kernel still detaches its
    /// probes, which are tied to its file descriptors.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        if let Some(forward) = self.forward.take() {
            let _ = forward.join();
        }
        status
    }
}
