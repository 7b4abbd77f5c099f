//! Maps, load-time options and the bookkeeping that every probe shares.
//!
//! Map sizes here are defaults; the loader sizes each map from the user's options at load time.

use aya_ebpf::{
    Global,
    bindings::bpf_pidns_info,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_ns_current_pid_tgid, bpf_jiffies64},
    },
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{AllocInfo, MapArgs, counter, lifecycle, probe_hits};

use crate::{
    blocks, diag::diag, lifecycle::LIFECYCLE, sampling, threads, totals, totals::StackRef,
};

/// The traced process, as leakhound's own PID namespace sees it. uprobes are already scoped to
/// its memory, but syscall tracepoints fire for every process.
#[unsafe(no_mangle)]
static TARGET_TGID: Global<u32> = Global::new(0);

/// Leakhound's PID namespace (device and inode of /proc/self/ns/pid), set when that is not the
/// initial namespace, as in a debug pod that shares the target's PID namespace: the PID the
/// user gave is then not the one `bpf_get_current_pid_tgid` reports.
#[unsafe(no_mangle)]
static PIDNS_DEV: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static PIDNS_INO: Global<u64> = Global::new(0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Probe hits in the target (tracer_common::probe_hits).
#[map]
pub static PROBE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(probe_hits::COUNT, 0);

#[inline(always)]
pub fn hit(index: u32) {
    if let Some(slot) = PROBE_HITS.get_ptr_mut(index) {
        // SAFETY: the pointer is to this CPU's slot of a live per-CPU array element.
        unsafe { *slot += 1 };
    }
}

#[map]
pub static MAP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
pub static MAP_ARGS: HashMap<u64, MapArgs> = HashMap::with_max_entries(16384, 0);

/// The calling thread's `pid_tgid`, or `None` when it belongs to another process, or to the
/// program the target exec'd (see [`lifecycle`](crate::lifecycle)).
#[inline(always)]
pub fn target_thread() -> Option<u64> {
    target_process().filter(|_| !crate::lifecycle::ended())
}

/// The calling thread's `pid_tgid` when it belongs to the target process, whatever program
/// it runs. Every program checks, the uprobes too: the probe-cost calibration places them on
/// leakhound's own functions (tracer-user's `kernel::probe_cost`), where they must do nothing.
#[inline(always)]
pub fn target_process() -> Option<u64> {
    // Root-namespace ids: unique, so they also key per-thread state.
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = pid_tgid >> 32;
    let ino = PIDNS_INO.load();
    if ino == 0 {
        return (tgid == u64::from(TARGET_TGID.load())).then_some(pid_tgid);
    }
    // In a PID namespace of leakhound's own (a debug pod) the target's TGID as the kernel
    // reports it is not the one the user gave, and asking the kernel is a helper call that
    // each program of a malloc+free pair would make, about 120 ns each here: the first
    // program to run in the target learns its root-namespace TGID instead.
    let known = LIFECYCLE.get_ptr_mut(lifecycle::TARGET_ROOT_TGID);
    if let Some(known) = known {
        // SAFETY: a live array value; written once, with the same value by any writer.
        let root_tgid = unsafe { core::ptr::read_volatile(known) };
        if root_tgid != 0 {
            return (tgid == root_tgid).then_some(pid_tgid);
        }
    }
    let mut ids = bpf_pidns_info { pid: 0, tgid: 0 };
    // SAFETY: `ids` is a valid, writable bpf_pidns_info of the size passed.
    let rc = unsafe {
        bpf_get_ns_current_pid_tgid(
            PIDNS_DEV.load(),
            ino,
            &raw mut ids,
            size_of::<bpf_pidns_info>() as u32,
        )
    };
    // A task not visible in leakhound's namespace is not the target.
    if rc != 0 || ids.tgid != TARGET_TGID.load() {
        return None;
    }
    if let Some(known) = known {
        // SAFETY: as above. The kernel said this task is the target's, so its root TGID is.
        unsafe { core::ptr::write_volatile(known, tgid) };
    }
    Some(pid_tgid)
}

#[inline(always)]
pub fn count(index: u32, amount: u64) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is to this CPU's slot of a live per-CPU array element.
        unsafe { *slot += amount };
    }
}

/// Whether the thread is inside a probed allocation call, whose own work (nested calls, the
/// allocator's mmaps) is accounted by that outer call.
#[inline(always)]
pub fn inside_allocator(pid_tgid: u64) -> bool {
    // SAFETY: the thread's own state: only this thread writes it.
    unsafe { threads::state(pid_tgid).is_some_and(|state| (*state).depth > 0) }
}

/// Whether the thread, at user stack pointer `sp`, is inside an allocation call that byte
/// sampling passed over without a return probe (sessions): deeper than its entry, with its
/// return address still in place. A return address that a later call overwrote ends it.
#[inline(always)]
pub fn inside_passed_over_call(pid_tgid: u64, sp: u64) -> bool {
    // SAFETY: the thread's own state, copied out at once.
    let Some(state) = threads::state(pid_tgid).map(|state| unsafe { *state }) else {
        return false;
    };
    if state.passed_over_sp == 0 || sp >= state.passed_over_sp {
        return false;
    }
    // SAFETY: bpf_probe_read_user validates the user address.
    let ret = unsafe { aya_ebpf::helpers::bpf_probe_read_user(state.passed_over_sp as *const u64) };
    ret.is_ok_and(|ret| ret == state.passed_over_ret)
}

/// The clock as last read on this CPU, and the tick (jiffies) it was read in.
#[repr(C)]
pub struct TickClock {
    jiffies: u64,
    ktime_ns: u64,
}

#[map]
static TICK_CLOCK: PerCpuArray<TickClock> = PerCpuArray::with_max_entries(1, 0);

/// An allocation's time (`bpf_ktime_get_ns`'s clock): read once per tick on each CPU, and for
/// the rest of the tick the time it was read. Reading the clock cost about 65 ns here (a
/// tenth of what full tracking adds to a pair), and an age needs no finer grain than a tick.
#[inline(always)]
fn allocation_time() -> u64 {
    // SAFETY: plain helper calls with no arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(clock) = TICK_CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_ns() };
    };
    // SAFETY: this CPU's value. A program preempted between the two stores leaves a time from
    // another moment of the same few ticks, no worse.
    unsafe {
        if (*clock).jiffies == jiffies && (*clock).ktime_ns != 0 {
            return (*clock).ktime_ns;
        }
        let now = bpf_ktime_get_ns();
        (*clock).jiffies = jiffies;
        (*clock).ktime_ns = now;
        now
    }
}

/// Records a new live block at `addr`, picked with probability `probability` (a fraction of
/// 2^32). What it stands for goes to the totals of the stack `stack`.
#[inline(always)]
pub fn record(stack: StackRef, addr: u64, size: u64, probability: u64) {
    let (weight_bytes, weight_count) = sampling::weights(size, probability);
    let info = AllocInfo {
        size,
        timestamp_ns: allocation_time(),
        stack_key: stack.key,
        weight_bytes,
        weight_count,
        totals_index: stack.totals,
        _pad: 0,
    };
    // Inserted first and looked up only when that fails: the common case costs one call.
    let mut inserted = blocks::insert(addr, &info);
    if inserted == Err(blocks::EEXIST) {
        // An address that is still live had its free missed (freed before attach, or through
        // a path that is not hooked). Retire it so the totals match the live blocks.
        if release_tracked(addr) {
            count(counter::ADDRESS_REUSED, 1);
        }
        inserted = blocks::insert(addr, &info);
    }
    if let Err(err) = inserted {
        // E2BIG is the map being full, which the counters report; anything else is news.
        if err != E2BIG {
            diag!("allocation map insert failed: error {}", err);
        }
        count(counter::ALLOC_MAP_FULL, weight_count);
        count(counter::ALLOC_MAP_FULL_BYTES, weight_bytes);
        return;
    }
    count(counter::ALLOCATIONS, 1);
    totals::add_allocation(stack.totals, weight_bytes, weight_count);
}

/// `-E2BIG`, what an insert into a full hash map returns.
const E2BIG: i32 = -7;

/// The live block at `addr`, if it is tracked.
#[inline(always)]
pub fn tracked(addr: u64) -> Option<AllocInfo> {
    blocks::find(addr)
}

/// Releases a block by address. Returns whether it was tracked.
#[inline(always)]
pub fn release_tracked(addr: u64) -> bool {
    tracked(addr).is_some_and(|info| release(addr, &info))
}

/// Releases the block `info` found at `addr`. Returns whether this call removed it.
#[inline(always)]
pub fn release(addr: u64, info: &AllocInfo) -> bool {
    // Only the caller whose delete succeeds subtracts, so a race cannot subtract twice.
    if !blocks::remove(addr) {
        return false;
    }
    totals::add_free(info.totals_index, info.weight_bytes, info.weight_count);
    true
}
