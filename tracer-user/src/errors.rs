//! Errors that a user can act on. Each has a one-line cause (its `Display`) and a hint.

use std::{io, path::PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracerError {
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: u32 },

    #[error("process {pid} has exited")]
    ProcessExited { pid: u32 },

    #[error("cannot read /proc/{pid}: {source}")]
    ProcRead { pid: u32, source: io::Error },

    #[error("permission denied: {what}")]
    PermissionDenied { what: String },

    #[error("this kernel has no uprobe support ({missing} is missing)")]
    NoUprobes { missing: &'static str },

    #[error("{} is statically linked: there is no dynamic libc to hook", path.display())]
    StaticBinary { path: PathBuf },

    #[error("no dynamic libc found in {what}")]
    NoLibc { what: String },

    #[error("cannot read ELF file {}: {source}", path.display())]
    ReadElf {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("cannot start {}: {source}", program.display())]
    Launch { program: PathBuf, source: io::Error },

    #[error("cannot load the eBPF programs: {0}")]
    Load(#[source] Box<aya::EbpfError>),

    #[error("the kernel rejected program {program}: {source}\n{verifier_log}")]
    Verifier {
        program: String,
        source: Box<aya::programs::ProgramError>,
        verifier_log: String,
    },

    #[error("cannot attach {what}: {source}")]
    Attach {
        what: String,
        source: Box<aya::programs::ProgramError>,
    },

    #[error("cannot read kernel map {map}: {source}")]
    Map {
        map: &'static str,
        source: Box<aya::maps::MapError>,
    },

    #[error("{0}")]
    Io(#[from] io::Error),
}

impl TracerError {
    /// What the user can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoSuchProcess { .. } => {
                "check the PID; for a process in a container, give the PID that leakhound's PID namespace sees"
            }
            Self::ProcessExited { .. } => {
                "the target is gone; start it again and attach while it runs"
            }
            Self::ProcRead { .. } | Self::PermissionDenied { .. } => {
                "run as root (sudo), or grant CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE; in Kubernetes use a privileged debug pod"
            }
            Self::NoUprobes { .. } => {
                "use a kernel built with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS"
            }
            Self::StaticBinary { .. } => {
                "trace a dynamically linked build of the program; statically linked allocators are not hooked yet"
            }
            Self::NoLibc { .. } => {
                "leakhound hooks the C library's allocator; make sure the target links libc dynamically"
            }
            Self::ReadElf { .. } => "check that the file is a readable ELF object",
            Self::Launch { .. } => "check the command's path and permissions",
            Self::Load(_) | Self::Verifier { .. } => {
                "this kernel may be too old or restricted for leakhound's programs; run with RUST_LOG=debug and report the log"
            }
            Self::Attach { .. } => {
                "the target may have exited or unmapped the library; check it is still running"
            }
            Self::Map { .. } | Self::Io(_) => "run with RUST_LOG=debug for details",
        }
    }

    /// Whether an I/O error deep inside says EPERM/EACCES, so that it can be reported as a
    /// permission problem rather than a puzzling load failure.
    pub fn is_permission(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(err);
        while let Some(err) = current {
            if let Some(io) = err.downcast_ref::<io::Error>()
                && matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES))
            {
                return true;
            }
            current = err.source();
        }
        false
    }
}
