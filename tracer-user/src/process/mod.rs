//! The traced process as `/proc` shows it: existence, liveness, mappings, and paths reached
//! through its own root so that targets in other mount namespaces work.

pub mod address_space;
pub mod allocators;
pub mod cgroup_memory;
pub mod elf;
pub mod launch;
pub mod mapped_object;
pub mod maps;
pub mod probe_offset;
pub mod root;
pub mod syscall_return;

use std::{fs, io::ErrorKind, path::PathBuf};

use crate::errors::TracerError;

#[derive(Clone, Debug)]
pub struct TargetProcess {
    pub pid: u32,
}

impl TargetProcess {
    /// A live process. A missing PID and a zombie get distinct errors.
    pub fn open(pid: u32) -> Result<Self, TracerError> {
        let status = match fs::read_to_string(format!("/proc/{pid}/status")) {
            Ok(status) => status,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                return Err(TracerError::NoSuchProcess { pid });
            }
            Err(source) => return Err(TracerError::ProcRead { pid, source }),
        };
        let state = status.lines().find_map(|line| line.strip_prefix("State:"));
        if state.is_some_and(|state| matches!(state.trim().chars().next(), Some('Z' | 'X'))) {
            return Err(TracerError::ProcessExited { pid });
        }
        Ok(Self { pid })
    }

    /// Whether it is a kernel thread (PF_KTHREAD in `/proc/PID/stat`'s flags): no user memory,
    /// no executable, nothing to trace.
    pub fn is_kernel_thread(&self) -> bool {
        const PF_KTHREAD: u64 = 0x0020_0000;
        fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .ok()
            .and_then(|stat| stat_flags(&stat))
            .is_some_and(|flags| flags & PF_KTHREAD != 0)
    }

    /// The command name (`/proc/PID/comm`), for messages.
    pub fn name(&self) -> String {
        fs::read_to_string(format!("/proc/{}/comm", self.pid))
            .map(|comm| comm.trim_end().to_owned())
            .unwrap_or_default()
    }

    pub fn is_alive(&self) -> bool {
        Self::open(self.pid).is_ok()
    }

    pub fn maps(&self) -> Result<Vec<maps::Mapping>, TracerError> {
        match fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
            Ok(text) => Ok(maps::parse(&text)),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                Err(TracerError::ProcessExited { pid: self.pid })
            }
            Err(err) if err.kind() == ErrorKind::PermissionDenied => {
                Err(TracerError::AccessDenied {
                    pid: self.pid,
                    what: "the memory map".into(),
                })
            }
            Err(source) => Err(TracerError::ProcRead {
                pid: self.pid,
                source,
            }),
        }
    }

    /// The executable, through the `/proc/PID/exe` link (works for deleted files too).
    pub fn exe_link(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/exe", self.pid))
    }

    /// The command line, for reports.
    pub fn command_line(&self) -> String {
        let raw = fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        raw.split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The flags field (the 9th) of `/proc/PID/stat`. The command name before it is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted after the
/// last `)`.
fn stat_flags(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(6)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_flags_follow_the_command_name() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0";
        assert_eq!(stat_flags(kthreadd), Some(2_129_984));
        let odd = "77 (a) b (c) S 1 77 77 0 -1 4194560 10 0 0 0";
        assert_eq!(stat_flags(odd), Some(4_194_560));
        assert_eq!(stat_flags("garbage"), None);
    }
}
