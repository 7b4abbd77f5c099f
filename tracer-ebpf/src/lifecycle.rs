//! The target's exec, seen at the `sched:sched_process_exec` tracepoint.
//!
//! An exec replaces the process's whole memory: every block and mapping of the old image is
//! gone, and the new program's addresses (and its code, which the unwind rules describe) mean
//! something else. leakhound does not follow it: the exec ends the trace. From that moment
//! [`ended`] is true, so no probe records anything of the new program, and user space is told
//! on a ring buffer of its own. The tracepoint fires after the new image is loaded and before
//! it runs a single instruction, so the cut is exact.

use aya_ebpf::{
    Global,
    helpers::bpf_ktime_get_ns,
    macros::{map, tracepoint},
    maps::{Array, RingBuf},
    programs::TracePointContext,
};
use tracer_common::{LifecycleEvent, LifecycleKind, lifecycle};

use crate::state::target_process;

/// Execs that start the trace rather than end it: 1 for a command leakhound launched, which
/// is forked, attached, then exec'd; 0 for a process attached by PID.
#[unsafe(no_mangle)]
static EXECS_BEFORE_TRACE: Global<u32> = Global::new(0);

/// See [`lifecycle`]'s slots.
#[map]
pub static LIFECYCLE: Array<u64> = Array::with_max_entries(lifecycle::COUNT, 0);

/// One record per event, and there is at most one: a page is plenty.
#[map]
pub static LIFECYCLE_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

#[tracepoint]
pub fn exec_notice(_ctx: TracePointContext) -> u32 {
    let _ = try_exec_notice();
    0
}

fn try_exec_notice() -> Option<()> {
    target_process()?;
    let seen = LIFECYCLE.get_ptr_mut(lifecycle::EXECS_SEEN)?;
    // SAFETY: a live array value. A plain read-modify-write is enough: the execs of one
    // process are serialised by the kernel (de_thread lets one exec through at a time).
    let before = unsafe {
        let before = *seen;
        *seen = before + 1;
        before
    };
    if before < u64::from(EXECS_BEFORE_TRACE.load()) {
        return Some(());
    }
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    LIFECYCLE.set(lifecycle::ENDED_AT, now, 0).ok()?;
    let event = LifecycleEvent {
        kind: LifecycleKind::Exec as u32,
        _pad: 0,
        timestamp_ns: now,
    };
    LIFECYCLE_EVENTS.output::<LifecycleEvent>(&event, 0).ok()
}

/// Whether the target exec'd: nothing more is recorded.
#[inline(always)]
pub fn ended() -> bool {
    LIFECYCLE
        .get(lifecycle::ENDED_AT)
        .is_some_and(|ended_at| *ended_at != 0)
}
