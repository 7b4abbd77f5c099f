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

    /// Denied although leakhound has its privileges: CAP_SYS_PTRACE was dropped, or a
    /// security module or sandbox protects the process.
    #[error(
        "the kernel denies leakhound access to {what} of process {pid}, though leakhound has its tracing privileges"
    )]
    AccessDenied { pid: u32, what: String },

    #[error("process {pid} ({name}) is a kernel thread: it has no user memory to trace")]
    KernelThread { pid: u32, name: String },

    #[error("this kernel has no uprobe support ({missing} is missing)")]
    NoUprobes { missing: &'static str },

    #[error(
        "{} is statically linked and has no allocator symbols (no malloc in its symbol table) and no Go runtime",
        path.display()
    )]
    StaticBinary { path: PathBuf },

    #[error("no allocator (malloc, or a prefixed malloc) is defined by any object of {what}")]
    NoAllocator { what: String },

    #[error("{} defines no {symbol}", path.display())]
    AllocLibWithoutMalloc { path: PathBuf, symbol: String },

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
            Self::AccessDenied { .. } => {
                "reading another process's executable and memory map takes CAP_SYS_PTRACE over it (root has it unless it was dropped, as with setpriv or a container's capability set); with it, a security module or sandbox is protecting this process, which cannot be traced from here"
            }
            Self::KernelThread { .. } => "give the PID of a user-space process",
            Self::NoUprobes { .. } => {
                "use a kernel built with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS"
            }
            Self::StaticBinary { .. } => {
                "leakhound finds a statically linked allocator by its symbols: trace a build that keeps its symbol table (not stripped), or one that links the allocator dynamically"
            }
            Self::NoAllocator { .. } => {
                "name the allocator's library and its symbol prefix with --alloc-lib PATH:PREFIX"
            }
            Self::AllocLibWithoutMalloc { .. } => {
                "check the path and the prefix: `nm -D PATH | grep malloc` (or `nm PATH`) lists the names it defines"
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
