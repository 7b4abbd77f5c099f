//! Noticing that the target exec'd another program, or was chosen by the OOM killer: either
//! ends the trace.
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
    /// The OOM killer chose the target, with its RSS at that moment when the kernel said.
    oom_kill: Option<OomKill>,
    /// The ending was reported; the future never completes again.
    reported: bool,
}

/// The OOM killer chose the target (`oom:mark_victim`): SIGKILL follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomKill {
    /// The victim's resident memory as the OOM killer saw it, when the kernel's record has it.
    pub rss_bytes: Option<u64>,
}

/// What the kernel said ended the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Exec,
    OomKill(OomKill),
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
            oom_kill: None,
            reported: false,
        })
    }

    /// Completes when the target exec's or is chosen by the OOM killer; never again after
    /// that. An exec wins: the memory the OOM killer would have taken is gone already.
    pub async fn ending(&mut self) -> Ending {
        while !self.reported {
            let Ok(mut guard) = self.events.readable_mut().await else {
                break;
            };
            while let Some(item) = guard.get_inner_mut().next() {
                match parse(&item) {
                    Some((LifecycleKind::Exec, _)) => self.seen = true,
                    Some((LifecycleKind::OomKill, rss_bytes)) => {
                        self.oom_kill = Some(OomKill { rss_bytes });
                    }
                    None => {}
                }
            }
            guard.clear_ready();
            let ending = if self.seen {
                Some(Ending::Exec)
            } else {
                self.oom_kill.map(Ending::OomKill)
            };
            if let Some(ending) = ending {
                self.reported = true;
                return ending;
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

    /// The OOM kill of the target, if the kernel marked one (one map read, and the ring
    /// drained): the target's exit can be noticed first, since the kill follows at once.
    pub fn oom_killed(&mut self, maps: &KernelMaps) -> Option<OomKill> {
        while let Some(item) = self.events.get_mut().next() {
            match parse(&item) {
                Some((LifecycleKind::Exec, _)) => self.seen = true,
                Some((LifecycleKind::OomKill, rss_bytes)) => {
                    self.oom_kill = Some(OomKill { rss_bytes });
                }
                None => {}
            }
        }
        let marked = maps
            .lifecycle
            .get(&lifecycle::OOM_KILLED_AT, 0)
            .is_ok_and(|at| at != 0);
        match self.oom_kill {
            Some(kill) => Some(kill),
            None if marked => Some(OomKill { rss_bytes: None }),
            None => None,
        }
    }
}

/// A whole lifecycle record: its kind, and for an OOM kill the victim's RSS in bytes.
fn parse(record: &[u8]) -> Option<(LifecycleKind, Option<u64>)> {
    if record.len() < size_of::<LifecycleEvent>() {
        return None;
    }
    // SAFETY: the buffer holds at least one LifecycleEvent, a plain-old-data type; the read
    // is unaligned because ring buffer records are only 8-byte aligned by convention.
    let event = unsafe { record.as_ptr().cast::<LifecycleEvent>().read_unaligned() };
    let kind = LifecycleKind::try_from(event.kind).ok()?;
    let rss_bytes = (event.rss_kib != u64::MAX).then(|| event.rss_kib.saturating_mul(1024));
    Some((kind, rss_bytes))
}

#[cfg(test)]
fn is_exec(record: &[u8]) -> bool {
    matches!(parse(record), Some((LifecycleKind::Exec, _)))
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
            rss_kib: 0,
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

    #[test]
    fn an_oom_record_carries_the_rss_in_bytes() {
        let event = LifecycleEvent {
            kind: LifecycleKind::OomKill as u32,
            _pad: 0,
            timestamp_ns: 7,
            rss_kib: 3,
        };
        // SAFETY: LifecycleEvent is plain old data; the slice covers exactly one value.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<LifecycleEvent>())
        };
        assert_eq!(parse(bytes), Some((LifecycleKind::OomKill, Some(3072))));
        let unknown = LifecycleEvent {
            rss_kib: u64::MAX,
            ..event
        };
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const unknown).cast::<u8>(),
                size_of::<LifecycleEvent>(),
            )
        };
        assert_eq!(parse(bytes), Some((LifecycleKind::OomKill, None)));
    }
}
