//! The JVM's attach socket, `/tmp/.java_pid<pid>` in the JVM's own `/tmp`: looked at without
//! following a link, checked, and connected to as the very inode that was checked.
//!
//! The target owns that `/tmp`. A symlink there to a socket of the host would make root
//! connect to the host's socket and send it the request; a socket that answers a byte at a
//! time would hold leakhound forever. So the entry is opened `O_PATH | O_NOFOLLOW` and must be
//! a socket that the JVM's user owns, mode 0600, as HotSpot makes it (`attachListener_linux.cpp`
//! binds, chmods to 0600, chowns to its effective uid and gid, then renames into place) and as
//! jcmd checks it; `connect` then goes through `/proc/self/fd/N`, which the kernel resolves to
//! that inode, whatever the name holds by then. The whole exchange has one deadline, and the
//! reply a size cap.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use thiserror::Error;

use super::{JvmIdentity, deadline::Deadline};
use crate::process::root::{EntryName, HeldDir, file_id, fstat, kind_of};

/// The longest reply read for `Compiler.perfmap`, which answers with a status line and little else; the
/// map itself goes to a file.
pub const MAX_REPLY: usize = 1 << 20;

/// Why the entry at the socket's name is not connected to.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SocketProblem {
    #[error("it is a {0}, not a socket")]
    NotASocket(&'static str),
    #[error("it is owned by uid {owner}, not by the JVM's uid {jvm}")]
    WrongOwner { owner: u32, jvm: u32 },
    #[error("its mode {mode:04o} opens it to others than its owner")]
    OpenToOthers { mode: u32 },
}

/// How an exchange with the socket failed.
#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no complete reply within {0:?}")]
    Deadline(Duration),
    #[error("the reply is longer than {0} bytes")]
    TooLong(usize),
}

/// The rules for the entry at the socket's name: a socket, owned by the JVM's effective uid,
/// that no one else may use.
pub fn vet(mode: u32, owner: u32, jvm: JvmIdentity) -> Result<(), SocketProblem> {
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(SocketProblem::NotASocket(kind_of(mode)));
    }
    if owner != jvm.euid {
        return Err(SocketProblem::WrongOwner {
            owner,
            jvm: jvm.euid,
        });
    }
    if mode & 0o077 != 0 {
        return Err(SocketProblem::OpenToOthers {
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Whatever is at the name, held as an `O_PATH` descriptor of the entry itself.
pub struct Entry {
    fd: OwnedFd,
    stat: libc::stat,
}

/// The entry at `name`, not following a link; `None` if there is none.
pub fn find(dir: &HeldDir, name: &EntryName) -> io::Result<Option<Entry>> {
    match dir.open_entry(name) {
        Ok(fd) => {
            let stat = fstat(&fd)?;
            Ok(Some(Entry { fd, stat }))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

impl Entry {
    pub fn id(&self) -> (u64, u64) {
        file_id(&self.stat)
    }

    pub fn vet(self, jvm: JvmIdentity) -> Result<AttachSocket, SocketProblem> {
        vet(self.stat.st_mode, self.stat.st_uid, jvm)?;
        Ok(AttachSocket { entry: self })
    }
}

/// A socket entry that passed [`vet`].
pub struct AttachSocket {
    entry: Entry,
}

impl AttachSocket {
    pub fn id(&self) -> (u64, u64) {
        self.entry.id()
    }

    /// Connects with the JVM's effective uid and gid when they are not ours: the JVM accepts
    /// its own user or root, and root in another user namespace is nobody to it. Credentials
    /// are per thread in the kernel, so a short-lived thread changes its own with raw syscalls
    /// (glibc's wrappers would change every thread) and the socket outlives it. The peer
    /// credentials the JVM checks are those of the thread that connects.
    pub fn connect_as(
        &self,
        jvm: JvmIdentity,
        deadline: Deadline,
    ) -> Result<OwnedFd, ExchangeError> {
        // The magic link names the checked inode; `connect` follows it there (verified on
        // 6.18: a socket reached so accepts, and the link of a symlink's O_PATH descriptor
        // does not lead to what the symlink points at).
        let via = format!("/proc/self/fd/{}", self.entry.fd.as_raw_fd());
        // SAFETY: geteuid and getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if (euid, egid) == (jvm.euid, jvm.egid) {
            return connect(&via, deadline);
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let keep = libc::c_long::from(-1i32);
                    // SAFETY: raw setresgid/setresuid on this thread only; -1 keeps a value.
                    let changed = unsafe {
                        libc::syscall(libc::SYS_setresgid, keep, jvm.egid as libc::c_long, keep)
                            == 0
                            && libc::syscall(
                                libc::SYS_setresuid,
                                keep,
                                jvm.euid as libc::c_long,
                                keep,
                            ) == 0
                    };
                    if !changed {
                        return Err(io::Error::last_os_error().into());
                    }
                    connect(&via, deadline)
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("connecting thread panicked").into()))
        })
    }
}

/// A non-blocking connect. A Unix socket whose backlog is full answers `EAGAIN` rather than
/// "in progress", and gives nothing to poll for: try again after a pause, until the deadline.
fn connect(path: &str, deadline: Deadline) -> Result<OwnedFd, ExchangeError> {
    // SAFETY: socket has no memory arguments.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; zeroed is a valid, empty address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG).into());
    }
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let mut pause = Duration::from_millis(1);
    loop {
        // SAFETY: the address is a valid sockaddr_un, and its size is passed with it.
        let rc = unsafe {
            libc::connect(
                socket.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(socket);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => {}
            _ => return Err(err.into()),
        }
        let Some(left) = deadline.remaining() else {
            return Err(ExchangeError::Deadline(deadline.budget()));
        };
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Sends the request and reads the reply to its end, all before the deadline, at most
/// `max_reply` bytes.
pub fn exchange(
    socket: &OwnedFd,
    request: &[u8],
    deadline: Deadline,
    max_reply: usize,
) -> Result<Vec<u8>, ExchangeError> {
    let mut sent = 0;
    while sent < request.len() {
        wait_for(socket, libc::POLLOUT, deadline)?;
        // SAFETY: the buffer and its length describe the unsent rest of the request.
        let n = unsafe {
            libc::send(
                socket.as_raw_fd(),
                request[sent..].as_ptr().cast(),
                request.len() - sent,
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        match n {
            n if n >= 0 => sent += n as usize,
            _ => retry_or_fail()?,
        }
    }
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        wait_for(socket, libc::POLLIN, deadline)?;
        // SAFETY: the buffer and its length are valid for writing.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return Ok(reply),
            n if n > 0 => {
                reply.extend_from_slice(&buf[..n as usize]);
                if reply.len() > max_reply {
                    return Err(ExchangeError::TooLong(max_reply));
                }
            }
            _ => retry_or_fail()?,
        }
    }
}

/// After a failed send or recv: go on for `EAGAIN` and `EINTR`, fail for anything else.
fn retry_or_fail() -> Result<(), ExchangeError> {
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EINTR) => Ok(()),
        _ => Err(err.into()),
    }
}

/// Waits until the socket is ready for `events` (or has an error or hang-up to report, which
/// the next call returns), or the deadline passes.
fn wait_for(
    socket: &OwnedFd,
    events: libc::c_short,
    deadline: Deadline,
) -> Result<(), ExchangeError> {
    loop {
        let Some(timeout) = deadline.poll_timeout_ms() else {
            return Err(ExchangeError::Deadline(deadline.budget()));
        };
        let mut poll = libc::pollfd {
            fd: socket.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and the count says one.
        match unsafe { libc::poll(&raw mut poll, 1, timeout) } {
            n if n > 0 => return Ok(()),
            0 => {}
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(err.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        os::unix::net::{UnixListener, UnixStream},
        path::PathBuf,
        time::Instant,
    };

    use super::*;

    /// One end of a connected pair for [`exchange`], the other for a peer thread.
    fn pair() -> (OwnedFd, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (OwnedFd::from(ours), theirs)
    }

    #[test]
    fn a_reply_is_read_to_its_end() {
        let (ours, mut theirs) = pair();
        let peer = std::thread::spawn(move || {
            let mut request = [0u8; 5];
            theirs.read_exact(&mut request).unwrap();
            theirs.write_all(b"0\nok\n").unwrap();
            request
        });
        let reply = exchange(
            &ours,
            b"1\0ab\0",
            Deadline::after(Duration::from_secs(5)),
            MAX_REPLY,
        )
        .unwrap();
        assert_eq!(reply, b"0\nok\n");
        assert_eq!(&peer.join().unwrap(), b"1\0ab\0");
    }

    #[test]
    fn a_dribbling_peer_ends_at_the_deadline() {
        let (ours, mut theirs) = pair();
        let peer = std::thread::spawn(move || {
            // One byte every 50 ms: each read would return in time, the reply never ends.
            while theirs.write_all(b"0").is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let result = exchange(
            &ours,
            b"x",
            Deadline::after(Duration::from_millis(300)),
            MAX_REPLY,
        );
        let took = started.elapsed();
        assert!(
            matches!(result, Err(ExchangeError::Deadline(_))),
            "{result:?}"
        );
        assert!(took < Duration::from_millis(600), "took {took:?}");
        drop(ours);
        peer.join().unwrap();
    }

    #[test]
    fn a_reply_over_the_cap_is_refused() {
        let (ours, mut theirs) = pair();
        let peer = std::thread::spawn(move || {
            let chunk = vec![b'a'; 64 << 10];
            while theirs.write_all(&chunk).is_ok() {}
        });
        let result = exchange(
            &ours,
            b"x",
            Deadline::after(Duration::from_secs(5)),
            MAX_REPLY,
        );
        assert!(
            matches!(result, Err(ExchangeError::TooLong(MAX_REPLY))),
            "{result:?}"
        );
        drop(ours);
        peer.join().unwrap();
    }

    fn me() -> JvmIdentity {
        // SAFETY: geteuid and getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        JvmIdentity { euid, egid, ..JVM }
    }

    #[test]
    fn connects_to_the_checked_inode_and_never_through_a_link() {
        let base: PathBuf =
            std::env::temp_dir().join(format!("leakhound-socket-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("tmp")).unwrap();
        let host_socket = base.join("host.sock");
        let host = UnixListener::bind(&host_socket).unwrap();
        host.set_nonblocking(true).unwrap();
        std::os::unix::fs::symlink(&host_socket, base.join("tmp/.java_pid1")).unwrap();
        let jvm_socket = UnixListener::bind(base.join("tmp/.java_pid2")).unwrap();
        std::fs::set_permissions(
            base.join("tmp/.java_pid2"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();

        let root = crate::process::root::TargetRoot::at(&base).unwrap();
        let tmp = root.hold_dir(std::path::Path::new("/tmp")).unwrap();
        let deadline = Deadline::after(Duration::from_secs(5));
        let link = find(&tmp, &EntryName::new(".java_pid1").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            link.vet(me()).err(),
            Some(SocketProblem::NotASocket("symbolic link"))
        );
        assert!(
            host.accept().is_err(),
            "nothing connected to the host's socket"
        );

        let socket = find(&tmp, &EntryName::new(".java_pid2").unwrap())
            .unwrap()
            .unwrap()
            .vet(me())
            .unwrap();
        let stream = socket.connect_as(me(), deadline).unwrap();
        let (mut accepted, _) = jvm_socket.accept().unwrap();
        accepted.write_all(b"0\n").unwrap();
        drop(accepted);
        assert_eq!(exchange(&stream, b"", deadline, MAX_REPLY).unwrap(), b"0\n");
        assert!(
            find(&tmp, &EntryName::new(".java_pid3").unwrap())
                .unwrap()
                .is_none()
        );
        std::fs::remove_dir_all(&base).unwrap();
    }

    const JVM: JvmIdentity = JvmIdentity {
        nspid: 1,
        euid: 1000,
        egid: 100,
        catches_quit: true,
    };

    #[test]
    fn only_a_private_socket_of_the_jvm_user_passes() {
        assert_eq!(vet(libc::S_IFSOCK | 0o600, 1000, JVM), Ok(()));
        assert_eq!(vet(libc::S_IFSOCK | 0o700, 1000, JVM), Ok(()));
        assert_eq!(
            vet(libc::S_IFLNK | 0o777, 1000, JVM),
            Err(SocketProblem::NotASocket("symbolic link"))
        );
        assert_eq!(
            vet(libc::S_IFREG | 0o600, 1000, JVM),
            Err(SocketProblem::NotASocket("regular file"))
        );
        assert_eq!(
            vet(libc::S_IFSOCK | 0o600, 0, JVM),
            Err(SocketProblem::WrongOwner {
                owner: 0,
                jvm: 1000
            })
        );
        assert_eq!(
            vet(libc::S_IFSOCK | 0o666, 1000, JVM),
            Err(SocketProblem::OpenToOthers { mode: 0o666 })
        );
    }
}
