//! leakhound's eBPF programs.
//!
//! The real build targets `bpfel-unknown-none` (run by tracer-user's build.rs). The host build
//! exists only so that `cargo clippy --workspace` and `cargo test --workspace` cover the crate,
//! hence the `target_arch` gates.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds and compare-and-swaps on map values: see atomics.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(
        internal_features,
        reason = "atomic_xadd and atomic_cxchg are the only atomics on bpf"
    )
)]
// aya-ebpf's map methods take `impl Borrow<K>`: a reference keeps one copy of a key or value
// on the 512-byte BPF stack, where passing it by value would make the callee copy it again.
#![cfg_attr(
    target_arch = "bpf",
    expect(
        clippy::needless_borrows_for_generic_args,
        reason = "one copy of map keys and values on the BPF stack"
    )
)]

#[cfg(target_arch = "bpf")]
mod alloc;
#[cfg(target_arch = "bpf")]
mod args;
#[cfg(target_arch = "bpf")]
mod atomics;
#[cfg(target_arch = "bpf")]
mod blocks;
#[cfg(target_arch = "bpf")]
mod diag;
#[cfg(target_arch = "bpf")]
mod lifecycle;
#[cfg(target_arch = "bpf")]
mod mapping;
#[cfg(target_arch = "bpf")]
mod sampling;
#[cfg(target_arch = "bpf")]
mod stacks;
#[cfg(target_arch = "bpf")]
mod state;
#[cfg(target_arch = "bpf")]
mod threads;
#[cfg(target_arch = "bpf")]
mod totals;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach this, so it is never executed.
    unsafe { core::hint::unreachable_unchecked() }
}

/// GPL-compatible, as bpf_probe_read_user and the stack helpers require.
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
