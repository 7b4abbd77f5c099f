//! The one place where leakhound calls bpf(2) itself, for what aya 0.14 lacks (batched map
//! reads, multi-uprobe links). Callers take a [`Bpf`], so that tests stand in for the kernel
//! with a fake that checks the attributes and answers with the errors a kernel gives
//! (ENOSPC, ENOENT, EINVAL), as aya's `sys/` module lets its tests override `syscall`.

use std::{
    io,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

/// `enum bpf_cmd` values used here (include/uapi/linux/bpf.h).
pub mod cmd {
    pub const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
}

/// bpf(2).
pub trait Bpf {
    /// Runs `cmd` with the attribute block `attr`, `size` bytes long; returns what the call
    /// returned (a descriptor for some commands), or the error it set.
    ///
    /// # Safety
    /// `attr` must point at `size` writable bytes laid out as `union bpf_attr` for `cmd`, and
    /// every address inside it must point at a buffer as large as the command needs.
    unsafe fn call(&self, cmd: libc::c_int, attr: *mut u8, size: u32) -> io::Result<i64>;

    /// [`Bpf::call`] for the commands that return a new descriptor.
    ///
    /// # Safety
    /// As for [`Bpf::call`].
    unsafe fn call_for_fd(
        &self,
        cmd: libc::c_int,
        attr: *mut u8,
        size: u32,
    ) -> io::Result<OwnedFd> {
        // SAFETY: the caller's contract is this function's.
        let fd = unsafe { self.call(cmd, attr, size) }?;
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The running kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl Bpf for Kernel {
    unsafe fn call(&self, cmd: libc::c_int, attr: *mut u8, size: u32) -> io::Result<i64> {
        // SAFETY: the caller guarantees that `attr` is a valid bpf_attr of `size` bytes for
        // `cmd`.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc)
    }
}
