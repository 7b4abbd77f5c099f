//! A memory cgroup with a low limit, for a target that the kernel must OOM-kill: cgroup v1's
//! memory controller where it is mounted (this machine kind), else cgroup v2's `memory.max`.
//! Removed on drop, once its processes are gone.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct MemoryCgroup {
    pub dir: PathBuf,
    pub limit: u64,
}

const V1: &str = "/sys/fs/cgroup/memory";
const V2: &str = "/sys/fs/cgroup";

impl MemoryCgroup {
    /// A new cgroup named after `test` with `limit` bytes of memory and no swap to spill to.
    pub fn new(test: &str, limit: u64) -> Self {
        let name = format!("leakhound-{test}-{}", std::process::id());
        let (dir, limit_file) = if Path::new(V1).join("memory.limit_in_bytes").is_file() {
            (Path::new(V1).join(&name), "memory.limit_in_bytes")
        } else {
            let controllers = std::fs::read_to_string(Path::new(V2).join("cgroup.controllers"))
                .unwrap_or_default();
            assert!(
                controllers.split_whitespace().any(|c| c == "memory"),
                "no memory cgroup controller here (v1 at {V1}, or v2 at {V2})"
            );
            (Path::new(V2).join(&name), "memory.max")
        };
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let cgroup = Self { dir, limit };
        cgroup.write(limit_file, &limit.to_string());
        // No swap: the limit must end in a kill, not in paging (absent files are fine).
        let _ = std::fs::write(cgroup.dir.join("memory.swappiness"), "0");
        let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        cgroup
    }

    /// Moves process `pid` into the cgroup; what it allocates from now on counts.
    pub fn add(&self, pid: libc::pid_t) {
        self.write("cgroup.procs", &pid.to_string());
    }

    /// What the cgroup has charged now: `memory.usage_in_bytes` (v1) or `memory.current` (v2).
    pub fn usage(&self) -> u64 {
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|file| std::fs::read_to_string(self.dir.join(file)).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| panic!("no usage readable in {}", self.dir.display()))
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("writing {value} to {}: {e}", path.display()));
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // A killed process leaves its cgroup when it is reaped; wait a little for that.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
