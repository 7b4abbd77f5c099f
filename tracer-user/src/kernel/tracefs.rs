//! Tracepoints are found by name under tracefs (aya reads each one's id there). Some machines
//! boot without it mounted. leakhound then mounts it where only it can see it: on a thread of
//! its own that first moves to a mount namespace of its own, with no propagation back to the
//! host. The mount goes away with that namespace, when the thread ends, and also when
//! leakhound is killed, so nothing is ever left in the host's mount table; a launched command
//! still runs in the host's namespace. A tracepoint, once attached, no longer needs tracefs.

use std::{ffi::CString, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Runs `attach` where tracefs is mounted: here if it already is, else on a thread with a
/// private tracefs. Returns an error text when tracefs is missing and cannot be mounted.
pub fn with_tracefs<T: Send>(attach: impl FnOnce() -> T + Send) -> Result<T, String> {
    if mounted() {
        return Ok(attach());
    }
    std::thread::scope(|scope| {
        let thread = std::thread::Builder::new()
            .name("tracefs".into())
            .spawn_scoped(scope, || {
                mount_private()?;
                log::debug!("mounted tracefs at {TRACEFS} in a mount namespace of leakhound's own");
                Ok(attach())
            })
            .map_err(|err| format!("cannot start a thread to mount tracefs: {err}"))?;
        thread
            .join()
            .unwrap_or_else(|_| Err("the thread that mounts tracefs panicked".to_owned()))
    })
}

fn mounted() -> bool {
    Path::new(TRACEFS).join("events").is_dir()
}

/// Moves the calling thread (only it: the other threads share no `fs` with it afterwards) to a
/// new mount namespace, and mounts tracefs there.
fn mount_private() -> Result<(), String> {
    let failed = |what: &str| format!("cannot {what}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare takes flags only. CLONE_NEWNS implies CLONE_FS, so only this thread moves.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(failed("make a mount namespace to mount tracefs in"));
    }
    // Every mount in the copy stays shared with the host's until made private: a tracefs
    // mounted under a shared /sys would show up on the host too.
    // SAFETY: valid NUL-terminated strings or nulls, as mount(2) takes them for a
    // propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(failed("make leakhound's mounts private"));
    }
    let target = CString::new(TRACEFS).map_err(|err| err.to_string())?;
    // SAFETY: all arguments are valid NUL-terminated strings or null data.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(failed(&format!("mount tracefs at {TRACEFS}")));
    }
    Ok(())
}
