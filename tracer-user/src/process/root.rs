//! Files of an untrusted target, opened so that the target cannot point leakhound elsewhere.
//!
//! A process in a container controls every path under its root: its `/tmp`, its working
//! directory, its perf map and the files it maps. Reached naively through `/proc/PID/root`, an
//! absolute symlink in there resolves against *leakhound's* root, so `/tmp/perf-1.map ->
//! /etc/shadow` would read the host's file, and a FIFO or `/dev/zero` would hang or exhaust
//! the reader. So:
//!
//! - every path is resolved inside the target's root, as the target itself would see it, by
//!   libpathrs (`pathrs`): `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from a
//!   descriptor of `/proc/PID/root`, or its own checked walk on kernels without openat2;
//! - a file is resolved as an `O_PATH` handle and checked with `fstat` before it is opened for
//!   reading, so no FIFO, device or socket is ever opened (opening some devices has effects);
//! - every read has a size cap ([`read_capped`]).

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read as _, SeekFrom},
    os::{
        fd::{AsRawFd, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
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
pub fn kind_of(mode: libc::mode_t) -> &'static str {
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
    root: pathrs::Root,
    /// `/proc/PID/root`, for messages.
    shown: PathBuf,
}

impl TargetRoot {
    /// Opens `/proc/PID/root`. The descriptor keeps naming that root after the target exits.
    pub fn open(pid: u32) -> Result<Self, RootError> {
        Self::at(Path::new(&format!("/proc/{pid}/root")))
    }

    /// A root at any directory; tests use it for a root of their own making.
    pub fn at(dir: &Path) -> Result<Self, RootError> {
        // Opened here, following the magic link: pathrs opens a root without following one.
        let fd = open_raw(dir, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).map_err(
            |source| RootError::Io {
                path: dir.to_owned(),
                source,
            },
        )?;
        let root = pathrs::Root::from_fd(fd);
        Ok(Self {
            root,
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
        let handle = if nofollow {
            self.root.resolve_nofollow(path)
        } else {
            self.root.resolve(path)
        };
        handle
            .map(OwnedFd::from)
            .map_err(|err| io_error(&self.display(path), &err))
    }

    /// A directory inside the root, as a descriptor to create or look up entries relative to.
    pub fn open_dir(&self, path: &Path) -> Result<OwnedFd, RootError> {
        let fd = self.open_path(path, false)?;
        let stat = fstat(&fd).map_err(|source| RootError::Io {
            path: self.display(path),
            source,
        })?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(RootError::NotRegular {
                path: self.display(path),
                kind: kind_of(stat.st_mode),
            });
        }
        reopen(&fd, libc::O_RDONLY | libc::O_DIRECTORY).map_err(|source| RootError::Io {
            path: self.display(path),
            source,
        })
    }

    /// A regular file inside the root, open for reading; anything else is refused unopened.
    pub fn open_regular(&self, path: &Path) -> Result<File, RootError> {
        let fd = self.open_path(path, false)?;
        reopen_regular(fd, &self.display(path))
    }

    /// A directory inside the root, held to create, look at and remove entries in it by name.
    pub fn hold_dir(&self, path: &Path) -> Result<HeldDir, RootError> {
        let shown = self.display(path);
        let fd = self.open_path(path, false)?;
        let stat = fstat(&fd).map_err(|source| RootError::Io {
            path: shown.clone(),
            source,
        })?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(RootError::NotRegular {
                path: shown,
                kind: kind_of(stat.st_mode),
            });
        }
        Ok(HeldDir { fd, shown })
    }
}

/// One name in a directory: not empty, no `/`, no NUL, not `.` or `..`. An entry is reached
/// by such a name relative to a [`HeldDir`], so nothing is resolved along a path again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryName(CString);

impl EntryName {
    pub fn new(name: &str) -> Option<Self> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return None;
        }
        CString::new(name).ok().map(Self)
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().expect("made from a str")
    }
}

/// A directory held open by descriptor. Its entries are created with `O_EXCL | O_NOFOLLOW`,
/// looked at without following a link, and removed by name in this very directory: a link
/// planted in it, or a rename of the directory itself, never sends leakhound elsewhere.
#[derive(Debug)]
pub struct HeldDir {
    fd: OwnedFd,
    /// Where it was opened from, for messages.
    shown: PathBuf,
}

impl HeldDir {
    /// The directory that a magic link such as `/proc/PID/cwd` names. The kernel resolves the
    /// link to the process's own directory, not by its path, so no link along it is followed.
    pub fn open_link(link: &Path) -> Result<Self, RootError> {
        let fd = open_raw(link, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC).map_err(
            |source| RootError::Io {
                path: link.to_owned(),
                source,
            },
        )?;
        Ok(Self {
            fd,
            shown: link.to_owned(),
        })
    }

    /// The same directory, held by a second descriptor.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            shown: self.shown.clone(),
        })
    }

    /// How an entry of this directory is shown in messages.
    pub fn display(&self, name: &EntryName) -> PathBuf {
        self.shown.join(name.as_str())
    }

    pub fn fstat(&self) -> io::Result<libc::stat> {
        fstat(&self.fd)
    }

    /// Creates a new regular file, open for writing. An entry of that name, a symlink or a
    /// dangling one included, is never reused: the call fails with `EEXIST`.
    pub fn create_exclusive(&self, name: &EntryName, mode: libc::mode_t) -> io::Result<File> {
        // SAFETY: the name is NUL-terminated; the mode is passed as the variadic argument
        // that O_CREAT reads.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.0.as_ptr(),
                libc::O_WRONLY
                    | libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_NOCTTY
                    | libc::O_CLOEXEC,
                libc::c_uint::from(mode),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// An `O_PATH` descriptor of the entry itself: a symlink is returned as the link.
    pub fn open_entry(&self, name: &EntryName) -> io::Result<OwnedFd> {
        // SAFETY: the name is NUL-terminated; openat has no other memory arguments.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.0.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// What the entry is now, without following a link.
    pub fn stat_entry(&self, name: &EntryName) -> io::Result<libc::stat> {
        // SAFETY: `stat` is plain data that fstatat fills in; zeroed is a valid value of it.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the name is NUL-terminated and `stat` is a valid out pointer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                name.0.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stat)
    }

    /// Removes the entry from this directory (a link is removed as a link).
    pub fn unlink_entry(&self, name: &EntryName) -> io::Result<()> {
        // SAFETY: the name is NUL-terminated; unlinkat has no other memory arguments.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), name.0.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What a `stat` identifies: the same pair is the same file, whatever its name now.
pub fn file_id(stat: &libc::stat) -> (u64, u64) {
    (stat.st_dev, stat.st_ino)
}

/// pathrs errors as the rest of leakhound sees them: an OS error keeps its errno, so that "not
/// found" stays quiet and a refusal by the resolver (a link out of the root, a magic link)
/// reads as what it is.
fn io_error(path: &Path, err: &pathrs::error::Error) -> RootError {
    let source = match err.kind() {
        pathrs::error::ErrorKind::OsError(Some(errno)) => io::Error::from_raw_os_error(errno),
        _ => io::Error::other(err.to_string()),
    };
    RootError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Opens a regular file through a link the kernel resolves to a fixed inode, such as
/// `/proc/PID/map_files/START-END` or `/proc/PID/exe`; anything else is refused unopened.
pub fn open_regular_link(link: &Path) -> Result<File, RootError> {
    let fd = open_raw(link, libc::O_PATH | libc::O_CLOEXEC).map_err(|source| RootError::Io {
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
    reopen(&fd, libc::O_RDONLY | libc::O_NOCTTY)
        .map(File::from)
        .map_err(|source| RootError::Io {
            path: shown.to_owned(),
            source,
        })
}

/// The inode an `O_PATH` descriptor names, opened with `flags`.
fn reopen(fd: &OwnedFd, flags: libc::c_int) -> io::Result<OwnedFd> {
    let via = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    open_raw(&via, flags | libc::O_CLOEXEC)
}

pub fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
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

fn open_raw(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: the path is NUL-terminated; open has no other memory arguments.
    let fd = unsafe { libc::open(c_path.as_ptr(), flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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
    fn paths_stay_inside_the_root() {
        check_containment("resolve");
    }

    #[test]
    fn entry_names_are_one_component() {
        assert_eq!(
            EntryName::new(".java_pid1").map(|n| n.as_str().to_owned()),
            Some(".java_pid1".to_owned())
        );
        for bad in ["", ".", "..", "a/b", "/a", "a/", "a\0b"] {
            assert_eq!(EntryName::new(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_held_directory_works_by_name_and_never_follows() {
        let fixture = Fixture::new("held");
        let root = TargetRoot::at(&fixture.root).unwrap();
        let tmp = root.hold_dir(Path::new("/tmp")).unwrap();
        let absolute = EntryName::new("absolute").unwrap();
        assert_eq!(
            tmp.stat_entry(&absolute).unwrap().st_mode & libc::S_IFMT,
            libc::S_IFLNK
        );
        let err = tmp.create_exclusive(&absolute, 0o600).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        let fresh = EntryName::new("fresh").unwrap();
        let file = tmp.create_exclusive(&fresh, 0o600).unwrap();
        assert_eq!(
            file_id(&fstat(&file).unwrap()),
            file_id(&tmp.stat_entry(&fresh).unwrap())
        );
        tmp.unlink_entry(&absolute).unwrap();
        assert_eq!(
            fs::read_to_string(&fixture.secret).unwrap(),
            "host secret\n"
        );
        // A root whose /tmp is a link out is held inside the root, or not at all.
        let escaping = fixture.base.join("escaping");
        fs::create_dir_all(&escaping).unwrap();
        symlink(&fixture.base, escaping.join("tmp")).unwrap();
        let held = TargetRoot::at(&escaping)
            .unwrap()
            .hold_dir(Path::new("/tmp"));
        assert!(held.is_err(), "/tmp -> a host directory must not be held");
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
