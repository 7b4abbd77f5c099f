//! Byte sampling (`--sample-bytes N`): which allocations are recorded, and what each recorded
//! one stands for. The arithmetic is tracer-common's `sampling`, shared with user space.

use aya_ebpf::{Global, helpers::bpf_get_prandom_u32, macros::map, maps::Array};
use tracer_common::sampling::{self, CERTAIN, CURVE_LEN};

/// The mean bytes between samples, N; 0 records every allocation.
#[unsafe(no_mangle)]
static SAMPLE_BYTES: Global<u64> = Global::new(0);

/// `sampling::curve_point` for every step, written by user space before any probe is attached.
#[map]
static SAMPLE_CURVE: Array<u32> = Array::with_max_entries(CURVE_LEN, 0);

/// The chance that a block of `size` bytes is recorded, drawn now: the probability as a
/// fraction of 2^32, or 0 when the block is passed over.
#[inline(always)]
pub fn draw(size: u64) -> u64 {
    let mean = SAMPLE_BYTES.load();
    if mean == 0 {
        return CERTAIN;
    }
    let q = sampling::probability(size, mean, |step| {
        SAMPLE_CURVE.get(step).map_or(0, |point| u64::from(*point))
    });
    // SAFETY: a plain helper call with no arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    if sampling::sampled(q, random) { q } else { 0 }
}

/// `(bytes, allocations)` that a recorded block of `size` bytes and probability `q` stands for.
#[inline(always)]
pub fn weights(size: u64, q: u64) -> (u64, u64) {
    if q >= CERTAIN {
        return (size, 1);
    }
    // SAFETY: plain helper calls with no arguments.
    let random = unsafe { [bpf_get_prandom_u32(), bpf_get_prandom_u32()] };
    sampling::weights(size, q, random)
}
