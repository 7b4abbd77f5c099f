//! tracefs for bpftrace, mounted for the run when missing.

use super::*;
/// bpftrace's library removes its probes through tracefs; mount it for the run if needed.
pub(super) struct TracefsMount {
    pub(super) mounted: bool,
}

impl TracefsMount {
    pub(super) fn ensure() -> Result<Self> {
        if Path::new("/sys/kernel/tracing/uprobe_events").exists() {
            return Ok(Self { mounted: false });
        }
        crate::run(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
        Ok(Self { mounted: true })
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if self.mounted {
            check_no_probes_left();
            let _ = Command::new("umount").arg("/sys/kernel/tracing").status();
        }
    }
}
