//! Turns a target spec into a process to trace and the allocators to hook in it.

use std::{
    collections::HashSet,
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

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
    /// Whether the program maps memory with system calls of its own rather than through
    /// libc's wrappers: a Go runtime, a static executable, or a program whose executable
    /// could not be read. Its mapping calls are then seen at the syscall tracepoints.
    pub raw_syscalls: bool,
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
            // Paths as the target names them: data, escaped like every name (crate::names).
            .map(|object| crate::names::shown(&object.shown.to_string_lossy()).into_owned())
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

/// How long a process that has not mapped its allocator yet (attached right after exec,
/// while its dynamic loader runs) is waited for.
const ALLOCATOR_WAIT: Duration = Duration::from_secs(5);

fn attach(pid: u32, alloc_libs: &[AllocLib]) -> Result<PreparedTarget, TracerError> {
    let process = TargetProcess::open(pid)?;
    if process.is_kernel_thread() {
        return Err(TracerError::KernelThread {
            pid,
            name: process.name(),
        });
    }
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
            // Only a privileged leakhound gets here (see session::preflight).
            return Err(TracerError::AccessDenied {
                pid,
                what: "the executable".into(),
            });
        }
        Err(_) => {
            // Gone between the checks: the maps decide below.
            TargetProcess::open(pid)?;
            None
        }
    };
    let mut objects = allocators_mapped(&process, alloc_libs)?;
    // A dynamically linked program maps its libraries after exec, from its dynamic loader.
    // Attached before that, while only the program and its loader are mapped, it is waited
    // for; a static one (Go included) never maps any, and one whose libraries are mapped
    // already has nothing more to wait for.
    if objects.is_empty()
        && let Some(interpreter) = exe.as_deref().and_then(launch::interpreter_of)
        && loader_still_running(
            mapped_code(&process)?
                .iter()
                .map(|(path, ..)| path.as_path()),
            &exe_path,
            &interpreter,
        )
    {
        objects = wait_for_allocator(&process, alloc_libs)?;
    }
    check_found(&objects, exe.as_deref(), &exe_path)?;
    let command = process.command_line();
    Ok(PreparedTarget {
        process,
        objects,
        child: None,
        command,
        raw_syscalls: makes_raw_syscalls(exe.as_deref()),
    })
}

/// Follows the mappings of a process whose dynamic loader has not mapped an allocator yet,
/// until one is mapped or [`ALLOCATOR_WAIT`] has passed (then none is found, and the caller
/// says so). The objects are looked for again only when the mapped files change.
fn wait_for_allocator(
    process: &TargetProcess,
    alloc_libs: &[AllocLib],
) -> Result<Vec<HookedObject>, TracerError> {
    eprintln!(
        "leakhound: waiting for pid {} to map its allocator (up to {} s)",
        process.pid,
        ALLOCATOR_WAIT.as_secs()
    );
    let deadline = Instant::now() + ALLOCATOR_WAIT;
    // Empty, so that the first look is made at once: the loader may have mapped everything
    // between the caller's look and this one.
    let mut files = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        TargetProcess::open(process.pid)?;
        let now = mapped_code(process)?;
        if now == files {
            continue;
        }
        files = now;
        let objects = allocators_mapped(process, alloc_libs)?;
        if !objects.is_empty() {
            return Ok(objects);
        }
    }
    Ok(Vec::new())
}

/// Whether the only code mapped is the program and its dynamic loader: the loader has not
/// mapped the libraries yet. Names are compared by file name, since the program's path is seen
/// from here and the mappings' from inside the target, and the loader is named by a link.
fn loader_still_running<'a>(
    mut mapped: impl Iterator<Item = &'a std::path::Path>,
    exe: &std::path::Path,
    interpreter: &std::path::Path,
) -> bool {
    mapped.all(|path| {
        path.file_name() == exe.file_name() || path.file_name() == interpreter.file_name()
    })
}

/// The files a process has mapped executable, with their ranges: the loader maps a library
/// in steps, and a range that changed under a look at it (its `map_files` link gone) is worth
/// another look once it settles.
fn mapped_code(process: &TargetProcess) -> Result<Vec<(PathBuf, u64, u64)>, TracerError> {
    Ok(process
        .maps()?
        .into_iter()
        .filter(|m| m.executable)
        .filter_map(|m| Some((m.path?, m.start, m.end)))
        .collect())
}

/// Every mapped object that defines an allocator, and every `--alloc-lib`.
fn allocators_mapped(
    process: &TargetProcess,
    alloc_libs: &[AllocLib],
) -> Result<Vec<HookedObject>, TracerError> {
    let pid = process.pid;
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
    allocators::find(candidates, alloc_libs, in_root)
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
        raw_syscalls: makes_raw_syscalls(Some(&loaded.program_data)),
    })
}

/// Whether a program's executable makes mapping syscalls without libc: see
/// [`PreparedTarget::raw_syscalls`].
fn makes_raw_syscalls(exe: Option<&[u8]>) -> bool {
    exe.is_none_or(|data| elf::is_go(data) || !elf::is_dynamic(data).unwrap_or(false))
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
