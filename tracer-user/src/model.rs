//! Plain data that the analysis and the output formats share. A recording can be saved and
//! read back, so every format is produced by the same code live and offline.

use serde::{Deserialize, Serialize};

/// The kernel side's activity and loss counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    pub allocations: u64,
    pub frees: u64,
    pub alloc_map_full: u64,
    pub alloc_map_full_bytes: u64,
    pub stack_failed: u64,
    pub free_unknown: u64,
    pub return_without_entry: u64,
    pub stale_entry: u64,
    pub thread_map_full: u64,
    pub events_lost: u64,
    pub totals_map_full: u64,
    pub address_reused: u64,
    pub failed_calls: u64,
}

/// Where a stack's memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The malloc family.
    Malloc,
    /// Anonymous mmap (and mremap).
    Mmap,
}

/// One named frame.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// The function (demangled), or `module+0xoffset` when no symbol covers the address.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// An inlined call inside the frame before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl Frame {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            module: None,
            file: None,
            line: None,
            inlined: false,
        }
    }
}

/// What one call stack holds at the end of the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackRecord {
    pub origin: Origin,
    /// Root first.
    pub frames: Vec<Frame>,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Everything allocated on this stack while traced, freed or not.
    pub total_bytes: u64,
    pub total_allocations: u64,
}

/// User-space counters about mapping events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingCounters {
    pub events: u64,
    /// Unmaps of memory that was not tracked (mapped before attach, or the allocator's own).
    pub untracked_unmaps: u64,
    pub malformed_events: u64,
}

/// A finished trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub pid: u32,
    pub command: String,
    pub duration_secs: f64,
    /// Why tracing stopped.
    pub ended_by: String,
    pub counters: KernelCounters,
    pub mapping: MappingCounters,
    /// Why anonymous mappings were not tracked, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_unavailable: Option<String>,
    pub stacks: Vec<StackRecord>,
}

impl Recording {
    pub fn live_bytes(&self) -> u64 {
        self.stacks.iter().map(|stack| stack.live_bytes).sum()
    }

    pub fn live_allocations(&self) -> u64 {
        self.stacks.iter().map(|stack| stack.live_allocations).sum()
    }

    pub fn live_bytes_of(&self, origin: Origin) -> u64 {
        self.stacks
            .iter()
            .filter(|stack| stack.origin == origin)
            .map(|stack| stack.live_bytes)
            .sum()
    }

    /// Stacks that still hold memory, largest first, ties broken by frames for stable output.
    pub fn holding_stacks(&self) -> Vec<&StackRecord> {
        let mut stacks: Vec<_> = self
            .stacks
            .iter()
            .filter(|stack| stack.live_bytes > 0)
            .collect();
        stacks.sort_by(|a, b| {
            b.live_bytes
                .cmp(&a.live_bytes)
                .then_with(|| a.frames.cmp_names(&b.frames))
        });
        stacks
    }
}

trait FrameNames {
    fn cmp_names(&self, other: &Self) -> std::cmp::Ordering;
}

impl FrameNames for Vec<Frame> {
    fn cmp_names(&self, other: &Self) -> std::cmp::Ordering {
        self.iter()
            .map(|f| &f.name)
            .cmp(other.iter().map(|f| &f.name))
    }
}
