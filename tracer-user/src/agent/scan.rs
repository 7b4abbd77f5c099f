//! What the agent reads of every process in `/proc`: its start time (with the pid, a
//! process's identity: pids are reused), its command line and its cgroups, each read bounded.
//! The command line and cgroup names are the process's own choice, so they are data to match,
//! nothing more.

use std::{io::Read as _, os::unix::fs::MetadataExt as _};

use super::selector::Seen;

/// At most this much of `/proc/PID/cmdline`, `/proc/PID/cgroup` or `/proc/PID/stat` is read.
const READ_LIMIT: u64 = 64 << 10;

/// A process as the pid and the time it started (in clock ticks since boot) name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub pid: u32,
    pub start: u64,
}

/// The pids in `/proc` now.
pub fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The identity of `pid`, or none once it is gone.
pub fn identity(pid: u32) -> Option<Identity> {
    let stat = read(pid, "stat")?;
    Some(Identity {
        pid,
        start: start_time(&String::from_utf8_lossy(&stat))?,
    })
}

/// The command line and cgroups of `pid`.
pub fn seen(pid: u32) -> Option<Seen> {
    let cmdline = read(pid, "cmdline")?;
    let cmdline = cmdline
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    let cgroup = String::from_utf8_lossy(&read(pid, "cgroup").unwrap_or_default()).into_owned();
    Some(Seen { cmdline, cgroup })
}

/// The file (device and inode) that `pid` runs, to tell leakhound's own processes apart.
pub fn executable(pid: &str) -> Option<(u64, u64)> {
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

fn read(pid: u32, file: &str) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/{file}"))
        .ok()?
        .take(READ_LIMIT)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// Field 22 of `/proc/PID/stat` (proc(5)), counted after the command name, which is in
/// parentheses and may itself hold spaces and parentheses: the last `)` ends it.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts with field 3 (the state).
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_follows_the_last_parenthesis() {
        let stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 150 0 0 0 1 2 0 0 20 0 1 0 987654 2314240 400 18446744073709551615";
        assert_eq!(start_time(stat), Some(987_654));
        assert_eq!(start_time("4242 (x"), None);
        assert_eq!(start_time("4242 (x) S 1"), None);
    }

    #[test]
    fn this_process_is_seen() {
        let me = std::process::id();
        let identity = identity(me).expect("our own stat");
        assert_eq!(identity.pid, me);
        assert!(pids().contains(&me));
        let seen = seen(me).expect("our own cmdline");
        assert!(!seen.cmdline.is_empty());
        assert!(executable("self").is_some());
    }
}
