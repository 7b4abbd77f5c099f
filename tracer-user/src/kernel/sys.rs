//! bpf(2) as leakhound calls it where aya 0.14 has no API: the workspace's `kernel-sys` crate,
//! which the benchmark's floor programs use too. Callers take a [`Bpf`], so that tests stand
//! in for the kernel (see `batch.rs`).

pub use kernel_sys::{Bpf, Kernel, cmd};
