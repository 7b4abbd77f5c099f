//! The target's exec, seen at the `sched:sched_process_exec` tracepoint.
//!
//! An exec replaces the process's whole memory: every block and mapping of the old image is
//! gone, and the new program's addresses (and its code, which the unwind rules describe) mean
//! something else. leakhound does not follow it: the exec ends the trace. From that moment
//! [`ended`] is true, so no probe records anything of the new program, and user space is told
//! on a ring buffer of its own. The tracepoint fires after the new image is loaded and before
//! it runs a single instruction, so the cut is exact.
//!
//! The OOM killer's choice is seen at `oom:mark_victim`, which fires before the victim is
//! sent SIGKILL (mm/oom_kill.c, `__oom_kill_process`): user space is told on the same ring,
//! with the victim's RSS from the kernel's record, so it can read the maps and write every
//! report before the process and its memory are gone. Recording goes on: the target runs no
//! more of its own code once killed.

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
        rss_kib: 0,
    };
    LIFECYCLE_EVENTS.output::<LifecycleEvent>(&event, 0).ok()
}

/// Where `oom:mark_victim`'s fields sit in its record, from the event's `format` file (user
/// space reads it: the record gained its memory fields in Linux 6.2 and may move again). 0
/// for a field the record lacks; the victim's pid is always there.
#[unsafe(no_mangle)]
static OOM_PID_AT: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static OOM_ANON_RSS_AT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OOM_FILE_RSS_AT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OOM_SHMEM_RSS_AT: Global<u32> = Global::new(0);

#[tracepoint]
pub fn oom_notice(ctx: TracePointContext) -> u32 {
    let _ = try_oom_notice(&ctx);
    0
}

fn try_oom_notice(ctx: &TracePointContext) -> Option<()> {
    // SAFETY: a read inside the tracepoint's record, at an offset from its format file.
    let victim = unsafe { ctx.read_at::<i32>(OOM_PID_AT.load() as usize) }.ok()? as u32;
    let known = LIFECYCLE.get_ptr_mut(lifecycle::TARGET_ROOT_TGID)?;
    // The program runs in the task that ran out of memory, most often the target itself: the
    // check learns its root-namespace TGID then, if no program has yet, where leakhound runs
    // in a PID namespace of its own and could not tell it.
    let _ = target_process();
    // SAFETY: a live array value.
    let target = unsafe { core::ptr::read_volatile(known) };
    if target == 0 || u64::from(victim) != target {
        return Some(());
    }
    // SAFETY: a plain helper call with no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    LIFECYCLE.set(lifecycle::OOM_KILLED_AT, now, 0).ok()?;
    let event = LifecycleEvent {
        kind: LifecycleKind::OomKill as u32,
        _pad: 0,
        timestamp_ns: now,
        rss_kib: rss_kib(ctx).unwrap_or(u64::MAX),
    };
    LIFECYCLE_EVENTS.output::<LifecycleEvent>(&event, 0).ok()
}

/// The victim's resident memory in KiB: the record's anonymous, file and shared counts,
/// which the kernel already gives in KiB.
fn rss_kib(ctx: &TracePointContext) -> Option<u64> {
    let mut total = 0u64;
    for at in [
        OOM_ANON_RSS_AT.load(),
        OOM_FILE_RSS_AT.load(),
        OOM_SHMEM_RSS_AT.load(),
    ] {
        if at == 0 {
            return None;
        }
        // SAFETY: a read inside the tracepoint's record, at an offset from its format file.
        total += unsafe { ctx.read_at::<u64>(at as usize) }.ok()?;
    }
    Some(total)
}

/// Whether the target exec'd: nothing more is recorded.
#[inline(always)]
pub fn ended() -> bool {
    LIFECYCLE
        .get(lifecycle::ENDED_AT)
        .is_some_and(|ended_at| *ended_at != 0)
}
