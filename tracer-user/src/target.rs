//! Turns a target spec into a process to trace and the C library to hook in it.

use std::{fs, path::PathBuf};

use crate::{
    config::TargetSpec,
    errors::TracerError,
    process::{TargetProcess, elf, launch},
};

pub struct PreparedTarget {
    pub process: TargetProcess,
    /// The C library, as a path this process can open.
    pub library: PathBuf,
    /// The library as the target names it, for messages.
    pub library_display: PathBuf,
    /// Set when leakhound launched the target: it is waiting to run.
    pub child: Option<launch::GatedChild>,
    pub command: String,
}

pub fn prepare(spec: &TargetSpec) -> Result<PreparedTarget, TracerError> {
    match spec {
        TargetSpec::Pid(pid) => attach(*pid),
        TargetSpec::Command(argv) => spawn(argv),
    }
}

fn attach(pid: u32) -> Result<PreparedTarget, TracerError> {
    let process = TargetProcess::open(pid)?;
    let exe_path = fs::read_link(process.exe_link()).unwrap_or_else(|_| process.exe_link());
    match fs::read(process.exe_link()) {
        Ok(data) => {
            if let Ok(false) = elf::is_dynamic(&data) {
                return Err(TracerError::StaticBinary { path: exe_path });
            }
        }
        Err(err)
            if err.raw_os_error() == Some(libc::EACCES)
                || err.raw_os_error() == Some(libc::EPERM) =>
        {
            return Err(TracerError::PermissionDenied {
                what: format!("cannot read the executable of process {pid}"),
            });
        }
        Err(_) => {
            // Gone between the checks, or a kernel thread: the maps decide below.
            TargetProcess::open(pid)?;
        }
    }
    let maps = process.maps()?;
    let libc = maps
        .iter()
        .find(|m| {
            m.executable
                && m.path
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| launch::is_libc_name(&n.to_string_lossy()))
        })
        .ok_or_else(|| TracerError::NoLibc {
            what: format!("process {pid} ({})", exe_path.display()),
        })?;
    let display = libc.path.clone().unwrap_or_default();
    // The kernel resolves this path to the very inode the target mapped, even across mount
    // namespaces; map_files also covers a library replaced on disk since it was mapped.
    let library = if libc.deleted {
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            libc.start, libc.end
        ))
    } else {
        process.in_root(&display)
    };
    let command = process.command_line();
    Ok(PreparedTarget {
        process,
        library,
        library_display: display,
        child: None,
        command,
    })
}

fn spawn(argv: &[std::ffi::OsString]) -> Result<PreparedTarget, TracerError> {
    let (program, args) = argv.split_first().ok_or(TracerError::Launch {
        program: PathBuf::new(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let program = launch::resolve_program(program.as_ref())?;
    let library = launch::libc_of(&program)?;
    let child = launch::GatedChild::spawn(&program, args)?;
    let process = TargetProcess { pid: child.pid() };
    let command = argv
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(PreparedTarget {
        process,
        library_display: library.clone(),
        library,
        child: Some(child),
        command,
    })
}
