//! Noticing that the target exec'd another program, which ends the trace.
//!
//! The kernel side (tracer-ebpf's lifecycle module) sees the exec at the
//! `sched:sched_process_exec` tracepoint, stops recording at that instant, marks the moment
//! in its lifecycle array, and sends one event on a ring buffer of its own. The event makes
//! the notice prompt; the mark is read before each (once a second) reread of the target's
//! code, so that the new program's code is not mixed with the old one's. (An exec in the
//! microseconds between that read and the reread is the one window left.)

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{LifecycleEvent, LifecycleKind, lifecycle};

use crate::{errors::TracerError, kernel::maps::KernelMaps};

pub struct ExecWatch {
    events: AsyncFd<RingBuf<MapData>>,
    seen: bool,
}

impl ExecWatch {
    /// Waits on the kernel's lifecycle ring buffer.
    pub fn new(ring: RingBuf<MapData>) -> Result<Self, TracerError> {
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let events =
            unsafe { AsyncFd::register(ring) }.map_err(|err| TracerError::Io(err.into()))?;
        Ok(Self {
            events,
            seen: false,
        })
    }

    /// Completes when the target exec's; never again after that.
    pub async fn exec(&mut self) {
        while !self.seen {
            let Ok(mut guard) = self.events.readable_mut().await else {
                break;
            };
            while let Some(item) = guard.get_inner_mut().next() {
                self.seen |= is_exec(&item);
            }
            guard.clear_ready();
            if self.seen {
                return;
            }
        }
        std::future::pending().await
    }

    /// Whether the kernel marked an exec (one map read).
    pub fn ended(&mut self, maps: &KernelMaps) -> bool {
        let marked = maps
            .lifecycle
            .get(&lifecycle::ENDED_AT, 0)
            .is_ok_and(|ended_at| ended_at != 0);
        self.seen |= marked;
        self.seen
    }
}

fn is_exec(record: &[u8]) -> bool {
    if record.len() < size_of::<LifecycleEvent>() {
        return false;
    }
    // SAFETY: the buffer holds at least one LifecycleEvent, a plain-old-data type; the read
    // is unaligned because ring buffer records are only 8-byte aligned by convention.
    let event = unsafe { record.as_ptr().cast::<LifecycleEvent>().read_unaligned() };
    LifecycleKind::try_from(event.kind) == Ok(LifecycleKind::Exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_exec_records_count() {
        let event = LifecycleEvent {
            kind: LifecycleKind::Exec as u32,
            _pad: 0,
            timestamp_ns: 7,
        };
        // SAFETY: LifecycleEvent is plain old data; the slice covers exactly one value.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<LifecycleEvent>())
        };
        assert!(is_exec(bytes));
        assert!(!is_exec(&bytes[..8]));
        let mut other = bytes.to_vec();
        other[0] = 9;
        assert!(!is_exec(&other));
    }
}
