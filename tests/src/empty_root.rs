//! leakhound as a debug container runs it: the static binary (`cargo xtask dist`) alone in an
//! empty root, in a mount namespace of its own, joined to the target's PID namespace
//! (`kubectl debug --target`), so `--pid` is the PID that namespace gives the target.
//!
//! The root is a fresh tmpfs holding only `/leakhound`, with `/proc` mounted for the joined
//! PID namespace, a fresh sysfs on `/sys` (without tracefs: leakhound mounts that itself, as in
//! a pod), and the test's output directory bound at `/out`. No libc, no loader, no `/usr`, no
//! `/tmp`: what the binary needs beyond itself would fail here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::container::quote;
use crate::process::TIMEOUT;

/// The static binary: $LEAKHOUND_STATIC_BIN, else `target/dist/leakhound` of the workspace.
pub fn static_bin() -> PathBuf {
    let bin = std::env::var_os("LEAKHOUND_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::paths::workspace().join("target/dist/leakhound"));
    assert!(
        bin.is_file(),
        "{} does not exist: build it with `cargo xtask dist` (cargo xtask test does)",
        bin.display()
    );
    bin
}

/// The command that runs `static_bin` as `/leakhound` in an empty root, inside the PID
/// namespace of `host_pid`; leakhound's arguments are appended by the caller. Paths given to
/// leakhound are inside the new root: `out_dir` is `/out` there.
pub fn command(static_bin: &Path, host_pid: u32, out_dir: &Path) -> Command {
    let root = out_dir.join("root");
    std::fs::create_dir_all(&root).expect("root mount point");
    let script = format!(
        "set -e; root={root}; \
         mount -t tmpfs -o mode=0755 leakhound-root \"$root\"; \
         mkdir \"$root/proc\" \"$root/sys\" \"$root/out\"; \
         cp {bin} \"$root/leakhound\"; \
         mount -t proc proc \"$root/proc\"; \
         mount -t sysfs sysfs \"$root/sys\"; \
         mount --bind {out} \"$root/out\"; \
         exec chroot \"$root\" /leakhound \"$@\"",
        root = quote(&root.to_string_lossy()),
        bin = quote(&static_bin.to_string_lossy()),
        out = quote(&out_dir.to_string_lossy()),
    );
    // nsenter joins the target's PID namespace (for the children it forks); unshare gives them
    // a private mount namespace, so nothing mounted here is seen outside or outlives them.
    let mut cmd = Command::new("nsenter");
    cmd.args(["--target", &host_pid.to_string(), "--pid", "--"])
        .args(["unshare", "--mount", "--propagation", "private", "--fork"])
        .args(["sh", "-c", &script, "empty-root"]);
    cmd
}

/// The PID, on the host, of the process named `comm` under `ancestor` (leakhound, a few forks
/// and execs below nsenter, which does not pass signals on).
pub fn descendant_named(ancestor: libc::pid_t, comm: &str) -> libc::pid_t {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut queue = vec![ancestor];
        while let Some(pid) = queue.pop() {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if pid != ancestor && name.trim_end() == comm {
                return pid;
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            queue.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<libc::pid_t>().ok()),
            );
        }
        assert!(Instant::now() < deadline, "no {comm} under {ancestor}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
