//! Turns a target spec into a process to trace and the allocators to hook in it.

use std::{collections::HashSet, fs, path::PathBuf};

use crate::{
    config::TargetSpec,
    errors::TracerError,
    process::{
        TargetProcess,
        allocators::{self, AllocLib, Candidate, HookedObject},
        elf, launch,
        root::{self, RootError, TargetRoot},
    },
};

pub struct PreparedTarget {
    pub process: TargetProcess,
    /// Every object that defines an allocator, with its hook points. Empty for a Go program
    /// without cgo, which is traced at the mapping syscalls only.
    pub objects: Vec<HookedObject>,
    /// Set when leakhound launched the target: it is waiting to run.
    pub child: Option<launch::GatedChild>,
    pub command: String,
}

impl PreparedTarget {
    /// What was hooked, for the attach line.
    pub fn hooked_summary(&self) -> String {
        if self.objects.is_empty() {
            return "raw mapping syscalls only: no malloc in the process (Go runtime)".to_owned();
        }
        self.objects
            .iter()
            .map(|object| object.shown.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn prepare(spec: &TargetSpec, alloc_libs: &[AllocLib]) -> Result<PreparedTarget, TracerError> {
    match spec {
        TargetSpec::Pid(pid) => attach(*pid, alloc_libs),
        TargetSpec::Command(argv) => spawn(argv, alloc_libs),
    }
}

fn attach(pid: u32, alloc_libs: &[AllocLib]) -> Result<PreparedTarget, TracerError> {
    let process = TargetProcess::open(pid)?;
    let exe_path = fs::read_link(process.exe_link()).unwrap_or_else(|_| process.exe_link());
    let exe = match root::open_regular_link(&process.exe_link())
        .map_err(|err| match err {
            RootError::Io { source, .. } => TracerError::ReadElf {
                path: exe_path.clone(),
                source: source.into(),
            },
            other => TracerError::ReadElf {
                path: exe_path.clone(),
                source: other.to_string().into(),
            },
        })
        .and_then(|file| elf::read_object(&file, &exe_path))
    {
        Ok(data) => Some(data),
        Err(TracerError::ReadElf { source, .. })
            if source.downcast_ref::<std::io::Error>().is_some_and(|err| {
                matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM))
            }) =>
        {
            return Err(TracerError::PermissionDenied {
                what: format!("cannot read the executable of process {pid}"),
            });
        }
        Err(_) => {
            // Gone between the checks, or a kernel thread: the maps decide below.
            TargetProcess::open(pid)?;
            None
        }
    };
    let maps = process.maps()?;
    let target_root = TargetRoot::open(pid);
    let in_root = |path: &std::path::Path| match &target_root {
        Ok(target_root) => target_root.open_regular(path),
        Err(err) => Err(RootError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(err.to_string()),
        }),
    };
    let mut seen = HashSet::new();
    let candidates: Vec<Candidate> = maps
        .iter()
        .filter(|m| m.executable)
        .filter_map(|m| {
            let shown = m.path.clone()?;
            if !seen.insert(shown.clone()) {
                return None;
            }
            // map_files names the very inode the target mapped, even across mount
            // namespaces and after the file was replaced on disk; a path the target names
            // could be a symlink it planted since. Without the capability map_files needs,
            // the path is resolved inside the target's root instead.
            let link = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
            let file = root::open_regular_link(&link).or_else(|err| {
                if m.deleted || matches!(err, RootError::NotRegular { .. }) {
                    Err(err)
                } else {
                    in_root(&shown)
                }
            });
            Some(Candidate { shown, file })
        })
        .collect();
    let objects = allocators::find(candidates, alloc_libs, in_root)?;
    check_found(&objects, exe.as_deref(), &exe_path)?;
    let command = process.command_line();
    Ok(PreparedTarget {
        process,
        objects,
        child: None,
        command,
    })
}

fn spawn(
    argv: &[std::ffi::OsString],
    alloc_libs: &[AllocLib],
) -> Result<PreparedTarget, TracerError> {
    let (program, args) = argv.split_first().ok_or(TracerError::Launch {
        program: PathBuf::new(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let program = launch::resolve_program(program.as_ref())?;
    let loaded = launch::objects_of(&program)?;
    // The command is the user's own: its files are named in leakhound's own root.
    let candidates: Vec<Candidate> = std::iter::once(&loaded.program)
        .chain(&loaded.libraries)
        .map(|path| Candidate {
            shown: path.clone(),
            file: root::open_regular_link(path),
        })
        .collect();
    let objects = allocators::find(candidates, alloc_libs, root::open_regular_link)?;
    check_found(&objects, Some(&loaded.program_data), &loaded.program)?;
    let child = launch::GatedChild::spawn(&program, args)?;
    let process = TargetProcess { pid: child.pid() };
    let command = argv
        .iter()
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(PreparedTarget {
        process,
        objects,
        child: Some(child),
        command,
    })
}

/// A process with no allocator to hook is traced only if it is a Go program, whose runtime
/// maps its heap with raw syscalls; anything else would give an empty report, so it is an
/// error that says why.
fn check_found(
    objects: &[HookedObject],
    exe: Option<&[u8]>,
    exe_path: &std::path::Path,
) -> Result<(), TracerError> {
    if !objects.is_empty() || exe.is_some_and(elf::is_go) {
        return Ok(());
    }
    match exe.map(elf::is_dynamic) {
        Some(Ok(false)) => Err(TracerError::StaticBinary {
            path: exe_path.to_owned(),
        }),
        _ => Err(TracerError::NoAllocator {
            what: exe_path.display().to_string(),
        }),
    }
}
