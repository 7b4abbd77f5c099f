//! Syscall tracepoints are found by name under tracefs. Some machines boot without it mounted;
//! leakhound mounts it for the session and unmounts it again, leaving the system as it was.

use std::{ffi::CString, path::Path};

const TRACEFS: &str = "/sys/kernel/tracing";

/// Unmounts tracefs on drop if this session mounted it.
#[derive(Debug)]
pub struct TracefsGuard {
    mounted_here: bool,
}

impl TracefsGuard {
    /// Makes sure tracefs is reachable. Returns an error text when it is not and cannot be.
    pub fn ensure() -> Result<Self, String> {
        if Path::new(TRACEFS).join("events").is_dir() {
            return Ok(Self {
                mounted_here: false,
            });
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
            return Err(format!(
                "cannot mount tracefs at {TRACEFS}: {}",
                std::io::Error::last_os_error()
            ));
        }
        log::debug!("mounted tracefs at {TRACEFS} for this session");
        Ok(Self { mounted_here: true })
    }
}

impl Drop for TracefsGuard {
    fn drop(&mut self) {
        if self.mounted_here {
            let target = CString::new(TRACEFS).expect("constant path");
            // SAFETY: a valid NUL-terminated path. MNT_DETACH: the perf events keep what
            // they need, and nothing else here holds the mount.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
