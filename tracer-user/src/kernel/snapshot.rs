//! Everything a report needs from the kernel, read at the end of a trace in one place: the
//! per-stack totals, the live allocations, the loss counters, and the frames of the stacks the
//! report will show. What comes after (repairs, ages, naming, the recording) is pure and works
//! on this plain data (`crate::builder`).

use std::collections::HashMap;

use tracer_common::{AllocInfo, LOST_STACK, StackTotals, Truncation};

use super::{maps::KernelMaps, reader};
use crate::{errors::TracerError, model::KernelCounters};

/// One stored stack: return addresses, innermost first, and how its walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawStack {
    pub ips: Vec<u64>,
    pub truncation: Truncation,
}

#[derive(Debug)]
pub struct KernelSnapshot {
    pub totals: HashMap<u64, StackTotals>,
    /// Every live allocation by address, or why the allocation map could not be read.
    pub live: Result<Vec<(u64, AllocInfo)>, String>,
    pub counters: KernelCounters,
    /// The clock the kernel's timestamps use (`bpf_ktime_get_ns`), when this was read.
    pub now_ns: u64,
}

impl Default for KernelSnapshot {
    fn default() -> Self {
        Self {
            totals: HashMap::new(),
            live: Ok(Vec::new()),
            counters: KernelCounters::default(),
            now_ns: 0,
        }
    }
}

impl KernelSnapshot {
    /// Totals, counters and the live allocations.
    pub fn read(maps: &KernelMaps) -> Result<Self, TracerError> {
        Ok(Self {
            totals: reader::stack_totals(maps)?,
            counters: reader::counters(maps)?,
            live: reader::live_allocations(maps)
                .map(|(allocs, _)| allocs)
                .map_err(|err| err.to_string()),
            now_ns: reader::ktime_now_ns(),
        })
    }
}

/// The stacks under `keys`, read from the kernel's stack map. A key whose stack cannot be read
/// (or [`LOST_STACK`]) is left out: the report shows its bytes under `[lost stack]`.
pub fn read_stacks(
    maps: &KernelMaps,
    keys: impl IntoIterator<Item = u64>,
) -> HashMap<u64, RawStack> {
    let mut cache = reader::StackCache::default();
    let mut stacks = HashMap::new();
    for key in keys {
        if key == LOST_STACK || stacks.contains_key(&key) {
            continue;
        }
        let ips = cache.get(maps, key).to_vec();
        if ips.is_empty() {
            continue;
        }
        let truncation = Truncation::try_from(cache.truncated(key)).unwrap_or_else(|value| {
            log::debug!("stack {key:#x}: unknown truncation {value}");
            Truncation::DepthLimit
        });
        stacks.insert(key, RawStack { ips, truncation });
    }
    stacks
}
