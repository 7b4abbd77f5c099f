//! `leakhound record -- CMD`: start a command that waits, gated before `execve`, until the
//! probes are attached, so that its first allocation is already traced.

use std::{
    ffi::{CString, OsString},
    fs,
    io::{self, Read as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use crate::{errors::TracerError, process::elf};

/// A child that has forked but not yet run its command.
///
/// The fork and exec are done by hand: `std::process::Command::spawn` waits until the child
/// has exec'd, which a gated child does only after `spawn` has returned.
pub struct GatedChild {
    pid: libc::pid_t,
    gate: Option<fs::File>,
    /// Reports an exec failure: the child writes its errno here; exec closes it (CLOEXEC).
    exec_status: Option<fs::File>,
    program: PathBuf,
}

impl GatedChild {
    pub fn spawn(program: &Path, args: &[OsString]) -> Result<Self, TracerError> {
        use std::os::unix::ffi::OsStrExt as _;
        let launch_error = |source| TracerError::Launch {
            program: program.to_owned(),
            source,
        };
        let c_string = |bytes: &[u8]| {
            CString::new(bytes)
                .map_err(|_| launch_error(io::Error::from(io::ErrorKind::InvalidInput)))
        };
        // Everything the child needs is allocated before the fork: after it, the child may only
        // make async-signal-safe calls.
        let c_program = c_string(program.as_os_str().as_bytes())?;
        let c_args: Vec<CString> = std::iter::once(Ok(c_program.clone()))
            .chain(args.iter().map(|arg| c_string(arg.as_bytes())))
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|arg| arg.as_ptr()).collect();
        argv.push(std::ptr::null());

        let (gate_read, gate_write) = pipe()?;
        let (status_read, status_write) = pipe()?;
        // SAFETY: fork has no preconditions; the child branch below only calls read, write,
        // close, execv and _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(launch_error(io::Error::last_os_error()));
        }
        if pid == 0 {
            // SAFETY: async-signal-safe calls on descriptors and buffers prepared above.
            unsafe {
                libc::close(gate_write.as_raw_fd());
                libc::close(status_read.as_raw_fd());
                let mut byte = 0u8;
                // Blocks until the parent has attached (one byte) or has died (EOF).
                if libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1) == 1 {
                    libc::execv(c_program.as_ptr(), argv.as_ptr());
                }
                let errno = *libc::__errno_location();
                libc::write(
                    status_write.as_raw_fd(),
                    (&raw const errno).cast(),
                    size_of::<i32>(),
                );
                libc::_exit(127);
            }
        }
        drop((gate_read, status_write));
        Ok(Self {
            pid,
            gate: Some(fs::File::from(gate_write)),
            exec_status: Some(fs::File::from(status_read)),
            program: program.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Lets the command run, and reports whether its exec failed.
    pub fn release(&mut self) -> Result<(), TracerError> {
        if let Some(mut gate) = self.gate.take() {
            gate.write_all(&[1])?;
        }
        let Some(mut status) = self.exec_status.take() else {
            return Ok(());
        };
        let mut errno = [0u8; 4];
        match status.read(&mut errno) {
            Ok(4) => Err(TracerError::Launch {
                program: self.program.clone(),
                source: io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
            }),
            _ => Ok(()),
        }
    }

    /// Ends a child that never ran (a failed attach).
    pub fn abort(mut self) {
        self.gate = None;
        // SAFETY: signals and reaps our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), TracerError> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(TracerError::Io(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Finds a command the way `execvp` does.
pub fn resolve_program(program: &Path) -> Result<PathBuf, TracerError> {
    if program.components().count() > 1 {
        return Ok(program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| TracerError::Launch {
            program: program.to_owned(),
            source: io::Error::from(io::ErrorKind::NotFound),
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The ELF program that will really run: the interpreter of a `#!` script, else the file.
fn real_program(program: &Path) -> Result<PathBuf, TracerError> {
    let mut head = [0u8; 256];
    let n = fs::File::open(program)
        .and_then(|mut file| file.read(&mut head))
        .map_err(|source| TracerError::Launch {
            program: program.to_owned(),
            source,
        })?;
    let head = &head[..n];
    if let Some(line) = head.strip_prefix(b"#!") {
        let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
        let line = String::from_utf8_lossy(line);
        if let Some(interpreter) = line.split_whitespace().next() {
            return Ok(PathBuf::from(interpreter));
        }
    }
    Ok(program.to_owned())
}

/// What `program` will map when it runs: the ELF program itself (for a `#!` script, its
/// interpreter), then, for a dynamically linked one, every library its dynamic loader
/// resolves (`ld.so --list`, which only resolves and never runs the program). The listing
/// honours `LD_PRELOAD` in leakhound's environment, which the launched command inherits, and
/// `/etc/ld.so.preload`, so a preloaded allocator is found before the command starts.
pub struct LaunchObjects {
    pub program: PathBuf,
    pub program_data: Vec<u8>,
    pub dynamic: bool,
    /// The libraries, in load order (preloads first).
    pub libraries: Vec<PathBuf>,
}

pub fn objects_of(program: &Path) -> Result<LaunchObjects, TracerError> {
    let program = real_program(program)?;
    let data = fs::read(&program).map_err(|source| TracerError::Launch {
        program: program.clone(),
        source,
    })?;
    let dynamic = elf::is_dynamic(&data).map_err(|source| TracerError::ReadElf {
        path: program.clone(),
        source: source.into(),
    })?;
    let mut libraries = Vec::new();
    if dynamic {
        let interpreter =
            interpreter_of(&data).unwrap_or_else(|| "/lib64/ld-linux-x86-64.so.2".into());
        let output = Command::new(&interpreter)
            .arg("--list")
            .arg(&program)
            .output()
            .map_err(|source| TracerError::Launch {
                program: interpreter.clone(),
                source,
            })?;
        libraries = parse_listing(&String::from_utf8_lossy(&output.stdout));
    }
    Ok(LaunchObjects {
        program,
        program_data: data,
        dynamic,
        libraries,
    })
}

/// The program interpreter (`PT_INTERP`) of an executable: its dynamic loader, which maps its
/// libraries after exec. None for a static executable, static-pie included.
pub fn interpreter_of(data: &[u8]) -> Option<PathBuf> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(data).ok()?;
    let endian = elf.endian();
    let header = elf
        .elf_program_headers()
        .iter()
        .find(|header| header.p_type(endian) == object::elf::PT_INTERP)?;
    let bytes = header.data(endian, data).ok()?;
    let bytes = bytes.split(|&b| b == 0).next()?;
    Some(PathBuf::from(String::from_utf8_lossy(bytes).into_owned()))
}

/// The libraries in `ld.so --list` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` for a
/// needed library, `/usr/lib/.../libjemalloc.so.2 (0x...)` for a preloaded one (and for the
/// loader itself). The address in parentheses is cut at the last ` (`, so a path with spaces
/// or parentheses stays whole.
pub fn parse_listing(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once(" => ").map_or(line, |(_, path)| path);
            let path = path.rsplit_once(" (").map_or(path, |(path, _)| path).trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_needed_and_preloaded_libraries() {
        let listing = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \t/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 (0x00007f0)\n\
            \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f1)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
            \tlibx.so => /opt/dir (1)/libx.so (0x00007f4)\n\
            \tlibgone.so => not found\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let paths: Vec<PathBuf> = [
            "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/opt/dir (1)/libx.so",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(parse_listing(listing), paths);
        assert!(parse_listing("\tnot a dynamic executable\n").is_empty());
    }
}
