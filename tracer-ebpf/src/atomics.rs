//! Atomic operations on map values. `core::sync::atomic`'s types are not offered on bpf (the
//! target declares no compare-and-swap), but the intrinsics lower to the BPF instructions
//! `lock xadd` and `cmpxchg`, which the kernel has had since Linux 5.12.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

/// An atomic add whose result is unused.
///
/// # Safety
/// `dst` must point to a live, aligned map value field.
#[inline(always)]
pub unsafe fn add(dst: *mut u64, value: u64) {
    // SAFETY: guaranteed by the caller.
    let _ = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(dst, value) };
}

/// Compare-and-swap: (the value found, whether it was `old` and is now `new`).
///
/// # Safety
/// `dst` must point to a live, aligned map value field.
#[inline(always)]
pub unsafe fn cas(dst: *mut u64, old: u64, new: u64) -> (u64, bool) {
    // SAFETY: guaranteed by the caller. BPF's cmpxchg is sequentially consistent.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(dst, old, new)
    }
}

/// Adds 1 to `dst` and returns the value before, or `None` if other CPUs changed it between
/// each of a few tries. (The fetching add is refused by the BPF backend for the CPU version
/// the object is built for; compare-and-swap is not.)
///
/// # Safety
/// `dst` must point to a live, aligned map value field.
#[inline(always)]
pub unsafe fn fetch_increment(dst: *mut u64) -> Option<u64> {
    for _ in 0..4 {
        // SAFETY: guaranteed by the caller.
        let seen = unsafe { core::ptr::read_volatile(dst) };
        // SAFETY: as above.
        if unsafe { cas(dst, seen, seen + 1) }.1 {
            return Some(seen);
        }
    }
    None
}
