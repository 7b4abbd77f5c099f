//! A fake JVM in a container: `targets/fake_jvm.c`, PID 1 in new PID and mount namespaces
//! with a tmpfs of its own on /tmp, running as nobody, as a hostile process in a container
//! would be. It maps a file named libjvm.so and catches SIGQUIT, so leakhound takes it for a
//! JVM and runs the attach handshake against the trap it planted.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::container::{SETUP, inside, quote};
use crate::process::{Proc, TIMEOUT, only_child};
use crate::report::Truth;
use crate::targets::{self, read_truth};

/// The uid the fake JVM runs as (nobody).
pub const NOBODY: u32 = 65534;

/// What the fake JVM plants for the handshake (see `targets/fake_jvm.c`).
pub enum Trap<'a> {
    /// `.attach_pid1` in its cwd and /tmp, symlinks to this host file.
    TriggerLinks(&'a Path),
    /// `/tmp/.java_pid1`, a symlink to this host socket.
    SocketLink(&'a Path),
    /// A socket of its own that sends one byte every 3 s.
    Dribble,
    /// No trap: a listener that starts on SIGQUIT and a trigger file, and answers.
    Answer,
    /// On SIGQUIT it looks at the trigger file, and never listens.
    Silent,
}

pub struct FakeJvm {
    pub proc: Proc,
    /// Its PID as leakhound sees it.
    pub host_pid: libc::pid_t,
    /// Its working directory, which it may write.
    pub cwd: PathBuf,
}

impl FakeJvm {
    /// Starts it with its cwd in `dir/cwd`; it has mapped libjvm.so, planted its trap and
    /// waits for "go".
    pub fn start(dir: &Path, trap: &Trap) -> Self {
        let cwd = dir.join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        std::os::unix::fs::chown(&cwd, Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::set_permissions(&cwd, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (mode, path) = match trap {
            Trap::TriggerLinks(path) => ("links", Some(path)),
            Trap::SocketLink(path) => ("socket-link", Some(path)),
            Trap::Dribble => ("dribble", None),
            Trap::Answer => ("answer", None),
            Trap::Silent => ("silent", None),
        };
        // The program and the library are reached through /mnt if they are under /tmp,
        // which the tmpfs hides; the trap's path is the host's, as a planted link names it.
        let mut script = format!(
            "{SETUP} && exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups -- {} {} {mode}",
            quote(&inside(&targets::fake_jvm())),
            quote(&inside(&targets::fake_libjvm())),
        );
        if let Some(path) = path {
            script.push(' ');
            script.push_str(&quote(&path.to_string_lossy()));
        }
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--pid", "--fork", "--mount-proc", "sh", "-c"])
            .arg(script)
            .current_dir(&cwd);
        let proc = Proc::spawn(cmd, &format!("fake_jvm {mode}"), true);
        let ready = proc
            .stdout
            .next(Instant::now() + TIMEOUT, "`ready <pid>`")
            .expect("ready line");
        assert_eq!(
            ready.trim_end(),
            "ready 1",
            "the fake JVM is PID 1 in its namespace"
        );
        let host_pid = only_child(proc.pid());
        Self {
            proc,
            host_pid,
            cwd,
        }
    }

    /// Lets it allocate; returns its truth.
    pub fn go(&mut self) -> Truth {
        self.proc.write_line("go");
        read_truth(&self.proc.stdout, "fake_jvm")
    }

    /// Ends it; returns what it printed after its truth (`sigquit N`, `served N`, `trigger
    /// ...`, `left ...`). It must exit cleanly.
    pub fn release(mut self) -> Vec<String> {
        self.proc.write_line("");
        let deadline = Instant::now() + TIMEOUT;
        let mut said = Vec::new();
        while let Some(line) = self.proc.stdout.next(deadline, "`end`") {
            if line == "end" {
                break;
            }
            said.push(line);
        }
        let status = self.proc.wait_exit(TIMEOUT);
        assert!(status.success(), "the fake JVM exited with {status}");
        said
    }
}
