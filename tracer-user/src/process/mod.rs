//! The traced process as `/proc` shows it: existence, liveness, mappings, and paths reached
//! through its own root so that targets in other mount namespaces work.

pub mod allocators;
pub mod elf;
pub mod launch;
pub mod maps;
pub mod probe_offset;
pub mod root;

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

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

    pub fn is_alive(&self) -> bool {
        Self::open(self.pid).is_ok()
    }

    pub fn maps(&self) -> Result<Vec<maps::Mapping>, TracerError> {
        match fs::read_to_string(format!("/proc/{}/maps", self.pid)) {
            Ok(text) => Ok(maps::parse(&text)),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                Err(TracerError::ProcessExited { pid: self.pid })
            }
            Err(source) => Err(TracerError::ProcRead {
                pid: self.pid,
                source,
            }),
        }
    }

    /// A path as the target sees it, reached from here through `/proc/PID/root`.
    pub fn in_root(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(relative)
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
