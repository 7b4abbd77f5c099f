//! What a recording session is asked to do, independent of how it was asked.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use crate::{kernel::MapSizes, process::allocators::AllocLib, report::Format};

#[derive(Clone, Debug)]
pub enum TargetSpec {
    Pid(u32),
    /// argv of a command to launch.
    Command(Vec<OsString>),
}

#[derive(Clone, Debug)]
pub struct Output {
    /// `None` is stdout.
    pub path: Option<PathBuf>,
    pub format: Format,
}

#[derive(Clone, Debug)]
pub struct RecordConfig {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    /// How often to print a progress line; none without `--interval`.
    pub interval: Option<Duration>,
    /// How often to sample every stack for the trends (`--interval`, else 1 s).
    pub sample_every: Duration,
    /// Count only allocations at least this old at the end.
    pub min_age: Option<Duration>,
    /// How stacks are walked.
    pub unwind: crate::unwind::UnwindMode,
    /// Whether the runtimes' own metadata names and unwinds their frames (`--runtime-frames`).
    pub runtime_frames: bool,
    /// Sample a Node target's JavaScript heap through its inspector (`--js-heap`).
    pub js_heap: bool,
    pub outputs: Vec<Output>,
    pub sizes: MapSizes,
    pub top: usize,
    /// Allocators to hook beyond the ones found by their symbols (`--alloc-lib`).
    pub alloc_libs: Vec<AllocLib>,
    /// Mean bytes between samples (`--sample-bytes`); none records every allocation.
    pub sample_bytes: Option<u64>,
    /// Continuous mode: push a profile every period (`--push`).
    pub push: Option<crate::push::PushConfig>,
    /// Take a JVM's class histogram at the first and the last sample (`--jvm-heap-histogram`).
    pub jvm_heap_histogram: bool,
    /// See mapping syscalls at the syscall tracepoints even where libc's wrappers are
    /// probed (`--syscall-tracepoints`).
    pub syscall_tracepoints: bool,
}

/// `leakhound report`: render saved recordings again.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    /// One recording, or two to compare (earlier first).
    pub inputs: Vec<PathBuf>,
    pub outputs: Vec<Output>,
    pub top: usize,
}
