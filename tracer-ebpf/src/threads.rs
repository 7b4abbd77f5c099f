//! Each thread's state between an allocation call's entry and its return, by thread id.
//!
//! A malloc+free pair looks the state up three times (the entry, the return, and the free's
//! check for a free inside realloc); in an LRU hash map each lookup cost about 30 ns here, a
//! tenth of what full tracking adds to a pair. An array slot costs a few. A thread takes the
//! slot `tid mod slots` with one compare-and-swap at its first allocation call and keeps it
//! until it exits, when [`thread_exit`] gives it back; a thread whose slot another thread
//! holds keeps its state in the LRU map as before.
//!
//! Only the owning thread reads or writes a slot's state, so the state needs no lock: other
//! threads read only the owner word, to see that the slot is not theirs.

use aya_ebpf::{
    Global,
    bindings::BPF_NOEXIST,
    macros::{map, tracepoint},
    maps::{Array, LruHashMap},
    programs::TracePointContext,
};
use tracer_common::{ThreadState, counter};

use crate::{atomics::cas, state::count, state::target_process};

/// The state of threads whose slot another thread holds (or all, when the slots are off).
#[map]
static THREADS: LruHashMap<u64, ThreadState> = LruHashMap::with_max_entries(16384, 0);

/// One thread's slot: `owner` is its `pid_tgid`, 0 while the slot is free.
#[repr(C)]
pub struct ThreadSlot {
    owner: u64,
    state: ThreadState,
}

/// `2^THREAD_SLOT_BITS` slots, sized by the loader.
#[map]
static THREAD_SLOTS: Array<ThreadSlot> = Array::with_max_entries(1, 0);

/// log2 of the slot count; 0 when the slots are off.
#[unsafe(no_mangle)]
static THREAD_SLOT_BITS: Global<u32> = Global::new(0);

/// The slot that `pid_tgid`'s thread may own. Thread ids are handed out in sequence, so the
/// low bits of the id spread the live threads over the slots.
#[inline(always)]
fn slot_of(pid_tgid: u64) -> Option<*mut ThreadSlot> {
    let bits = THREAD_SLOT_BITS.load();
    if bits == 0 || bits > 24 {
        return None;
    }
    THREAD_SLOTS.get_ptr_mut((pid_tgid as u32) & ((1 << bits) - 1))
}

/// The calling thread's state, if it has one.
#[inline(always)]
pub fn state(pid_tgid: u64) -> Option<*mut ThreadState> {
    if let Some(slot) = slot_of(pid_tgid) {
        // SAFETY: the pointer is to a live array element; the owner word is an aligned u64.
        if unsafe { core::ptr::read_volatile(&raw const (*slot).owner) } == pid_tgid {
            // SAFETY: as above; the state is this thread's own.
            return Some(unsafe { &raw mut (*slot).state });
        }
    }
    THREADS.get_ptr_mut(&pid_tgid)
}

/// Gives the calling thread, which has no state yet, the state `state`.
#[inline(always)]
pub fn insert(pid_tgid: u64, state: &ThreadState) -> Result<(), i64> {
    if let Some(slot) = slot_of(pid_tgid) {
        // SAFETY: the pointer is to a live array element; the owner word is an aligned u64.
        if unsafe { cas(&raw mut (*slot).owner, 0, pid_tgid) }.1 {
            // SAFETY: the slot is this thread's from the compare-and-swap on; nothing else
            // reads its state.
            unsafe { (*slot).state = *state };
            return Ok(());
        }
    }
    THREADS
        .insert(&pid_tgid, state, u64::from(BPF_NOEXIST))
        .map_err(|err| {
            count(counter::THREAD_MAP_FULL, 1);
            i64::from(err)
        })
}

/// A thread of the target exits (`sched:sched_process_exit`, which runs in the exiting task
/// and fires for every thread): its slot is free for a thread that comes later, and its
/// entry in the LRU map goes with it.
#[tracepoint]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    let Some(pid_tgid) = target_process() else {
        return 0;
    };
    if let Some(slot) = slot_of(pid_tgid) {
        // SAFETY: the pointer is to a live array element. The thread runs no probe any more,
        // and a thread that takes the slot next writes its state after its compare-and-swap.
        unsafe {
            if core::ptr::read_volatile(&raw const (*slot).owner) == pid_tgid {
                core::ptr::write_volatile(&raw mut (*slot).owner, 0);
            }
        }
    }
    let _ = THREADS.remove(&pid_tgid);
    0
}
