//! A hostile container for the tests: a truth target as PID 1 of new PID and mount namespaces,
//! with a private tmpfs on /tmp, into which a test plants whatever a container could (symlinks
//! out of it, FIFOs, devices, huge files) before leakhound attaches from the host.
//!
//! The container shares the host's root otherwise, so a file meant to be seen only by the host
//! lives under the host's /tmp ([`HostFile`]): inside the container that path names nothing,
//! and a symlink to it resolves to a host file only if leakhound resolves it against its own
//! root instead of the container's. The host's /tmp stays reachable inside at /mnt, for a
//! checkout (and so the targets) under /tmp ([`inside`]).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::process::{Proc, TIMEOUT, only_child};
use crate::report::Truth;
use crate::targets::read_truth;

/// Shell commands that make a container's /tmp its own, keeping the host's at /mnt.
pub const SETUP: &str = "mount --bind /tmp /mnt && mount -t tmpfs tmpfs /tmp";

/// A host path as a process in the container reaches it: the host's /tmp is at /mnt there.
pub fn inside(path: &Path) -> String {
    let path = path.to_string_lossy();
    match path.strip_prefix("/tmp/") {
        Some(rest) => format!("/mnt/{rest}"),
        None => path.into_owned(),
    }
}

/// A word quoted for `sh -c`.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

pub struct Container {
    proc: Proc,
    /// The target's PID on the host; it is PID 1 inside.
    pub host_pid: u32,
    /// Lines the target printed before `ready`.
    pub preamble: Vec<String>,
}

impl Container {
    /// Starts `exe` (a truth target waiting for `go`) in its own namespaces.
    pub fn start(exe: &Path) -> Self {
        let mut unshare = Command::new("unshare");
        unshare
            .args(["--mount", "--pid", "--fork", "--mount-proc", "sh", "-c"])
            .arg(format!("{SETUP} && exec {}", quote(&inside(exe))));
        let proc = Proc::spawn(unshare, "container", true);
        let mut preamble = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let line = proc
                .stdout
                .next(deadline, "`ready 1`")
                .expect("the container's target printed `ready`");
            if line.starts_with("ready ") {
                assert_eq!(line.trim_end(), "ready 1", "the target is PID 1 inside");
                break;
            }
            preamble.push(line);
        }
        let host_pid = only_child(proc.pid()) as u32;
        Self {
            proc,
            host_pid,
            preamble,
        }
    }

    /// Runs a shell script in the container's mount namespace, as the container would.
    pub fn run(&self, script: &str) {
        let status = Command::new("nsenter")
            .args(["-t", &self.host_pid.to_string(), "-m", "sh", "-c", script])
            .status()
            .expect("nsenter runs");
        assert!(status.success(), "in the container: {script}: {status}");
    }

    pub fn go(&mut self) {
        self.proc.write_line("go");
    }

    pub fn read_truth(&self) -> Truth {
        read_truth(&self.proc.stdout, "container target")
    }

    /// Ends a target that was never told to go: EOF makes it leave without allocating.
    pub fn abandon(mut self) {
        self.proc.close_stdin();
        assert!(self.proc.wait_exit(TIMEOUT).success());
    }

    /// Lets the target exit and checks that it did so cleanly.
    pub fn release(mut self) {
        self.proc.write_line("");
        assert!(self.proc.wait_exit(TIMEOUT).success());
    }
}

/// A root-only file under the host's /tmp, with known content; removed on drop.
pub struct HostFile {
    dir: PathBuf,
    pub path: PathBuf,
    content: Vec<u8>,
}

impl HostFile {
    pub fn new(test: &str, name: &str, content: &[u8]) -> Self {
        let dir = PathBuf::from(format!("/tmp/leakhound-host-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("host dir");
        let path = dir.join(name);
        std::fs::write(&path, content).expect("host file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Self {
            dir,
            path,
            content: content.to_vec(),
        }
    }

    /// The file is as it was made: content, owner root, mode 0600.
    pub fn assert_unchanged(&self) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::symlink_metadata(&self.path).expect("the host file still exists");
        assert!(
            meta.is_file(),
            "{} is no longer a file",
            self.path.display()
        );
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "owner changed");
        assert_eq!(meta.mode() & 0o7777, 0o600, "mode changed");
        assert_eq!(
            std::fs::read(&self.path).expect("read"),
            self.content,
            "content changed"
        );
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The peak resident memory of a running process, from `/proc/PID/status` (`VmHWM`).
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
