//! leakhound: an eBPF tracer of native allocations that a process still holds.
//!
//! The kernel side (tracer-ebpf) keeps live allocations and per-stack totals; this crate loads
//! it, attaches it to a running process or a command it launches, and turns what it gathered
//! into reports.

pub mod agent;
pub mod analysis;
pub mod builder;
pub mod cli;
pub mod code_refresh;
pub mod config;
pub mod errors;
pub mod events;
pub mod exec_watch;
pub mod exit_watch;
pub mod go_heap;
pub mod identities;
pub mod jit;
pub mod js_heap;
pub mod jvm_heap;
pub mod kernel;
pub mod mapping_tracker;
pub mod model;
pub mod names;
pub mod oom_kill;
pub mod output_files;
pub mod process;
pub mod push;
pub mod regions;
pub mod report;
pub mod reservations;
pub mod rss;
pub mod session;
pub mod stats;
pub mod symbolize;
pub mod target;
pub mod unwind;
