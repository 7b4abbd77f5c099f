//! Rare diagnostic events from the kernel side: map updates that fail in a way that is not
//! "full" (which is counted, not logged), and the like. They go through aya-log to leakhound's
//! log under `leakhound::kernel`, shown with `--log-kernel` or
//! `RUST_LOG=leakhound::kernel=debug`.
//!
//! Off unless asked for: the loader sets aya-log's `AYA_LOG_LEVEL` to 0 by default, so a site
//! costs one global load and a branch, and every site is on an error path.

/// Logs one diagnostic event. aya-log's macros take a context they do not use yet; the
/// helpers these sites live in have none, so a unit stands in for it.
macro_rules! diag {
    ($($arg:tt)+) => {
        aya_log_ebpf::warn!(&(), target: "leakhound::kernel", $($arg)+)
    };
}

pub(crate) use diag;
