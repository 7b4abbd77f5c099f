//! Files of an untrusted target, opened so that the target cannot point leakhound elsewhere.
//!
//! A process in a container controls every path under its root: its `/tmp`, its working
//! directory, its perf map and the files it maps. Reached naively through `/proc/PID/root`, an
//! absolute symlink in there resolves against *leakhound's* root, so `/tmp/perf-1.map ->
//! /etc/shadow` would read the host's file, and a FIFO or `/dev/zero` would hang or exhaust
//! the reader. So:
//!
//! - every path is resolved inside the target's root, as the target itself would see it:
//!   `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a descriptor of `/proc/PID/root`,
//!   or, on kernels before 5.6, a walk of one component at a time that does the same;
//! - a file is opened as `O_PATH` first and checked with `fstat` before it is opened for
//!   reading, so no FIFO, device or socket is ever opened (opening some devices has effects);
//! - every read has a size cap ([`read_capped`]).
//!
//! The same model as the `openat2(2)` man page and libpathrs: `..` never leaves the root, and
//! symlinks are followed relative to it.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io::{self, Read as _, SeekFrom},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
};

use thiserror::Error;

/// Why a file in the target's root was not opened or read.
#[derive(Debug, Error)]
pub enum RootError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a regular file ({kind}); not opened", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("{} is {size} bytes, over the {cap}-byte limit; not read", path.display())]
    TooLarge { path: PathBuf, size: u64, cap: u64 },
}

impl RootError {
    /// The path does not exist (yet): not worth a warning.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The kind of file an `fstat` mode names, for messages.
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular file",
        libc::S_IFDIR => "directory",
        libc::S_IFIFO => "FIFO",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFSOCK => "socket",
        libc::S_IFLNK => "symbolic link",
        _ => "unknown file type",
    }
}

/// The root directory of a target process, held open: paths under it are resolved as the
/// target resolves them, whatever symlinks it planted.
#[derive(Debug)]
pub struct TargetRoot {
    dir: OwnedFd,
    /// `/proc/PID/root`, for messages.
    shown: PathBuf,
}

impl TargetRoot {
    /// Opens `/proc/PID/root`. The descriptor keeps naming that root after the target exits.
    pub fn open(pid: u32) -> Result<Self, RootError> {
        let shown = PathBuf::from(format!("/proc/{pid}/root"));
        let dir = open_raw(
            None,
            &shown,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(|source| RootError::Io {
            path: shown.clone(),
            source,
        })?;
        Ok(Self { dir, shown })
    }

    /// A root at any directory; tests use it for a root of their own making.
    pub fn at(dir: &Path) -> Result<Self, RootError> {
        let fd = open_raw(
            None,
            dir,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(|source| RootError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: fd,
            shown: dir.to_owned(),
        })
    }

    /// How a path in this root is shown in messages.
    pub fn display(&self, path: &Path) -> PathBuf {
        self.shown.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// An `O_PATH` descriptor of `path` resolved inside the root. The last component is
    /// followed only if it is a symlink resolving inside the root too; with `nofollow`, a
    /// symlink there is returned as itself (then `fstat` says it is a link).
    pub fn open_path(&self, path: &Path, nofollow: bool) -> Result<OwnedFd, RootError> {
        let mut flags = libc::O_PATH | libc::O_CLOEXEC;
        if nofollow {
            flags |= libc::O_NOFOLLOW;
        }
        resolve_in_root(&self.dir, path, flags).map_err(|source| RootError::Io {
            path: self.display(path),
            source,
        })
    }

    /// A directory inside the root, as a descriptor to create or look up entries relative to.
    pub fn open_dir(&self, path: &Path) -> Result<OwnedFd, RootError> {
        resolve_in_root(
            &self.dir,
            path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
        .map_err(|source| RootError::Io {
            path: self.display(path),
            source,
        })
    }

    /// A regular file inside the root, open for reading; anything else is refused unopened.
    pub fn open_regular(&self, path: &Path) -> Result<File, RootError> {
        let fd = self.open_path(path, false)?;
        reopen_regular(fd, &self.display(path))
    }
}

/// Opens a regular file through a link the kernel resolves to a fixed inode, such as
/// `/proc/PID/map_files/START-END` or `/proc/PID/exe`; anything else is refused unopened.
pub fn open_regular_link(link: &Path) -> Result<File, RootError> {
    let fd =
        open_raw(None, link, libc::O_PATH | libc::O_CLOEXEC).map_err(|source| RootError::Io {
            path: link.to_owned(),
            source,
        })?;
    reopen_regular(fd, link)
}

/// Checks what an `O_PATH` descriptor names, then opens that very inode for reading through
/// `/proc/self/fd`: nothing can be swapped in between.
fn reopen_regular(fd: OwnedFd, shown: &Path) -> Result<File, RootError> {
    let stat = fstat(&fd).map_err(|source| RootError::Io {
        path: shown.to_owned(),
        source,
    })?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(RootError::NotRegular {
            path: shown.to_owned(),
            kind: kind_of(stat.st_mode),
        });
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let file = open_raw(
        None,
        &via,
        libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
    )
    .map_err(|source| RootError::Io {
        path: shown.to_owned(),
        source,
    })?;
    Ok(File::from(file))
}

pub fn fstat(fd: &impl std::os::fd::AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain data that fstat fills in; zeroed is a valid value of it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the descriptor is open for the call, and `stat` is a valid out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

/// Reads at most `cap` bytes of `file` from `from`. A file that holds more says so rather than
/// being read whole: the caller decides whether a prefix is of use.
pub fn read_capped(
    mut file: impl io::Read + io::Seek,
    from: u64,
    cap: u64,
) -> io::Result<(Vec<u8>, bool)> {
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    let more = bytes.len() as u64 > cap;
    bytes.truncate(cap as usize);
    Ok((bytes, more))
}

/// Set once `openat2` answered ENOSYS: every later resolution walks by hand.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Most symlinks a resolution follows, as the kernel's own limit (MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

fn resolve_in_root(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        match openat2_in_root(root, path, flags) {
            Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {
                NO_OPENAT2.store(true, Ordering::Relaxed);
            }
            result => return result,
        }
    }
    walk_in_root(root, path, flags)
}

fn openat2_in_root(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let relative = relative_c_path(path)?;
    // SAFETY: open_how is plain data; zeroed is its documented default for unused fields.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: the path is NUL-terminated and `how` lives across the call, with its size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            relative.as_ptr(),
            &raw const how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// What `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` does, for kernels without it: one
/// component at a time, each opened `O_PATH | O_NOFOLLOW` relative to the directory before
/// it; a symlink's target is spliced into the rest of the path, an absolute one from the root
/// again; `..` at the root stays at the root. Magic links (`/proc/self/fd/N`) are symlinks to
/// `readlinkat` and so lose their magic.
fn walk_in_root(root: &OwnedFd, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    // Directories from the root down to where the walk is; `..` pops one.
    let mut stack: Vec<OwnedFd> = vec![root.try_clone()?];
    let mut pending: Vec<PathBuf> = components_reversed(path);
    let mut links = 0;
    let nofollow_last = flags & libc::O_NOFOLLOW != 0;
    while let Some(component) = pending.pop() {
        let last = pending.is_empty();
        let name = component.as_os_str();
        if name == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            if last {
                return reopen_dir_as(stack.last().expect("root stays"), flags);
            }
            continue;
        }
        let here = stack.last().expect("root stays");
        let fd = openat_raw(
            here,
            name,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )?;
        let stat = fstat(&fd)?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFLNK && !(last && nofollow_last) {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = readlinkat(here, name)?;
            if target.is_absolute() {
                stack.truncate(1);
            }
            pending.extend(components_reversed(&target));
            if pending.is_empty() {
                // A link to "/" alone.
                return reopen_dir_as(stack.last().expect("root stays"), flags);
            }
            continue;
        }
        if last {
            return reopen_dir_as(&fd, flags);
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        stack.push(fd);
    }
    reopen_dir_as(stack.last().expect("root stays"), flags)
}

/// The components of a path, last first, with `/` and `.` dropped.
fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    parts.reverse();
    parts
}

/// Opens what an `O_PATH` descriptor names with the flags asked for, the way the last step of
/// openat2 would; `O_PATH` asked for is a plain duplicate.
fn reopen_dir_as(fd: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    if flags & libc::O_PATH != 0 {
        if flags & libc::O_DIRECTORY != 0 && fstat(fd)?.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        return fd.try_clone();
    }
    let stat = fstat(fd)?;
    if flags & libc::O_DIRECTORY != 0 && stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    // Only directories and regular files are reopened: the walk must not open a device.
    if !matches!(stat.st_mode & libc::S_IFMT, libc::S_IFDIR | libc::S_IFREG) {
        return Err(io::Error::from_raw_os_error(libc::ENXIO));
    }
    let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    open_raw(None, &via, flags & !libc::O_NOFOLLOW)
}

fn relative_c_path(path: &Path) -> io::Result<CString> {
    let bytes = path.as_os_str().as_bytes();
    let trimmed = bytes.trim_ascii_start();
    let relative = {
        let mut rest = trimmed;
        while let [b'/', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() { b"." as &[u8] } else { rest }
    };
    CString::new(relative).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_raw(dir: Option<&OwnedFd>, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: the path is NUL-terminated; openat has no other memory arguments.
    let fd = unsafe { libc::openat(dirfd, c_path.as_ptr(), flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn openat_raw(dir: &OwnedFd, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    open_raw(Some(dir), Path::new(name), flags)
}

fn readlinkat(dir: &OwnedFd, name: &OsStr) -> io::Result<PathBuf> {
    let c_name =
        CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the name is NUL-terminated and the buffer's length is passed with it.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsStr::from_bytes(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::fs::symlink};

    /// A host directory with a secret, and beside it a "container root" whose files point at
    /// the secret every way a target could try.
    struct Fixture {
        base: PathBuf,
        root: PathBuf,
        secret: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let base =
                std::env::temp_dir().join(format!("leakhound-root-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&base);
            let root = base.join("root");
            fs::create_dir_all(root.join("tmp")).unwrap();
            fs::create_dir_all(root.join("etc")).unwrap();
            let secret = base.join("secret");
            fs::write(&secret, "host secret\n").unwrap();
            fs::write(root.join("etc/inside"), "inside\n").unwrap();
            // Absolute: resolves against the reader's root when followed naively.
            symlink(&secret, root.join("tmp/absolute")).unwrap();
            // Relative, climbing out.
            symlink("../../secret", root.join("tmp/climbing")).unwrap();
            // Absolute, but to a file that exists inside the root.
            symlink("/etc/inside", root.join("tmp/to_inside")).unwrap();
            // A magic link.
            symlink("/proc/self/root/etc/hostname", root.join("tmp/magic")).unwrap();
            // A loop.
            symlink("loop", root.join("tmp/loop")).unwrap();
            // Not a regular file.
            let fifo = CString::new(root.join("tmp/fifo").as_os_str().as_bytes()).unwrap();
            // SAFETY: the path is NUL-terminated.
            assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
            Self { base, root, secret }
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    fn read(root: &TargetRoot, path: &str) -> Result<String, RootError> {
        let mut file = root.open_regular(Path::new(path))?;
        let (bytes, _) = read_capped(&mut file, 0, 1 << 20).unwrap();
        Ok(String::from_utf8(bytes).unwrap())
    }

    fn check_containment(name: &str) {
        let fixture = Fixture::new(name);
        assert!(fixture.secret.exists());
        let root = TargetRoot::at(&fixture.root).unwrap();
        assert_eq!(read(&root, "/etc/inside").unwrap(), "inside\n");
        assert_eq!(read(&root, "/tmp/to_inside").unwrap(), "inside\n");
        assert_eq!(read(&root, "tmp/../../../etc/inside").unwrap(), "inside\n");
        for escaping in ["/tmp/absolute", "/tmp/climbing", "/tmp/magic", "/tmp/loop"] {
            let result = read(&root, escaping);
            assert!(
                result
                    .as_ref()
                    .is_err_and(|e| !matches!(e, RootError::NotRegular { .. })),
                "{escaping} must not resolve: {result:?}"
            );
        }
        assert!(matches!(
            read(&root, "/tmp/fifo"),
            Err(RootError::NotRegular { kind: "FIFO", .. })
        ));
        assert!(matches!(
            read(&root, "/tmp"),
            Err(RootError::NotRegular {
                kind: "directory",
                ..
            })
        ));
        assert!(read(&root, "/tmp/missing").unwrap_err().is_not_found());
        // A directory for creating files in, and nofollow on the last component.
        assert!(root.open_dir(Path::new("/tmp")).is_ok());
        let link = root.open_path(Path::new("/tmp/absolute"), true).unwrap();
        assert_eq!(fstat(&link).unwrap().st_mode & libc::S_IFMT, libc::S_IFLNK);
    }

    #[test]
    fn openat2_keeps_paths_inside_the_root() {
        check_containment("openat2");
    }

    #[test]
    fn the_manual_walk_keeps_paths_inside_the_root() {
        let fixture = Fixture::new("walk");
        let root = TargetRoot::at(&fixture.root).unwrap();
        let open = |path: &str| {
            walk_in_root(&root.dir, Path::new(path), libc::O_PATH | libc::O_CLOEXEC)
                .and_then(|fd| reopen_regular(fd, Path::new(path)).map_err(io::Error::other))
        };
        let mut inside = open("/tmp/to_inside").unwrap();
        let (bytes, _) = read_capped(&mut inside, 0, 100).unwrap();
        assert_eq!(bytes, b"inside\n");
        assert!(open("tmp/../../../etc/inside").is_ok());
        for escaping in ["/tmp/absolute", "/tmp/climbing", "/tmp/magic", "/tmp/loop"] {
            assert!(open(escaping).is_err(), "{escaping} must not resolve");
        }
        assert!(open("/tmp/fifo").is_err());
        let fifo = walk_in_root(
            &root.dir,
            Path::new("/tmp/fifo"),
            libc::O_RDONLY | libc::O_CLOEXEC,
        );
        assert!(fifo.is_err(), "the walk never opens a FIFO for reading");
    }

    #[test]
    fn reads_are_capped() {
        let fixture = Fixture::new("cap");
        let root = TargetRoot::at(&fixture.root).unwrap();
        let mut file = root.open_regular(Path::new("/etc/inside")).unwrap();
        assert_eq!(
            read_capped(&mut file, 0, 3).unwrap(),
            (b"ins".to_vec(), true)
        );
        assert_eq!(
            read_capped(&mut file, 2, 100).unwrap(),
            (b"side\n".to_vec(), false)
        );
    }

    #[test]
    fn links_to_devices_are_refused_unopened() {
        assert!(matches!(
            open_regular_link(Path::new("/dev/zero")),
            Err(RootError::NotRegular {
                kind: "character device",
                ..
            })
        ));
        assert!(open_regular_link(Path::new("/proc/self/exe")).is_ok());
    }
}
