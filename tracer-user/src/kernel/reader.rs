//! Reads what the kernel side gathered: per-stack totals, stacks and loss counters.
//!
//! Per-stack totals are kept in the kernel, so a report costs one map walk over the stacks,
//! not over every live allocation.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
};
use tracer_common::{StackFrames, StackTotals, counter};

use crate::{errors::TracerError, model::KernelCounters};

pub fn stack_totals(ebpf: &Ebpf) -> Result<HashMap<u64, StackTotals>, TracerError> {
    let map: BpfHashMap<&MapData, u64, StackTotals> = BpfHashMap::try_from(
        ebpf.map("STACK_TOTALS").ok_or(missing("STACK_TOTALS"))?,
    )
    .map_err(|source| TracerError::Map {
        map: "STACK_TOTALS",
        source: Box::new(source),
    })?;
    map.iter()
        .map(|entry| {
            entry.map_err(|source| TracerError::Map {
                map: "STACK_TOTALS",
                source: Box::new(source),
            })
        })
        .collect()
}

pub fn counters(ebpf: &Ebpf) -> Result<KernelCounters, TracerError> {
    let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
        ebpf.map("COUNTERS").ok_or(missing("COUNTERS"))?,
    )
    .map_err(|source| TracerError::Map {
        map: "COUNTERS",
        source: Box::new(source),
    })?;
    let read = |index: u32| -> Result<u64, TracerError> {
        let values = map.get(&index, 0).map_err(|source| TracerError::Map {
            map: "COUNTERS",
            source: Box::new(source),
        })?;
        Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
    };
    Ok(KernelCounters {
        allocations: read(counter::ALLOCATIONS)?,
        frees: read(counter::FREES)?,
        alloc_map_full: read(counter::ALLOC_MAP_FULL)?,
        alloc_map_full_bytes: read(counter::ALLOC_MAP_FULL_BYTES)?,
        stack_failed: read(counter::STACK_FAILED)?,
        free_unknown: read(counter::FREE_UNKNOWN)?,
        return_without_entry: read(counter::RETURN_WITHOUT_ENTRY)?,
        stale_entry: read(counter::STALE_ENTRY)?,
        thread_map_full: read(counter::THREAD_MAP_FULL)?,
        events_lost: read(counter::EVENTS_LOST)?,
        totals_map_full: read(counter::TOTALS_MAP_FULL)?,
        address_reused: read(counter::ADDRESS_REUSED)?,
        failed_calls: read(counter::FAILED_CALLS)?,
    })
}

/// Caches stacks by key: a key is a hash of the frames, so its frames never change.
#[derive(Default)]
pub struct StackCache {
    stacks: HashMap<u64, Vec<u64>>,
}

impl StackCache {
    /// The user-space return addresses of a stack, innermost first.
    pub fn get(&mut self, ebpf: &Ebpf, key: u64) -> Result<&[u64], TracerError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.stacks.entry(key) {
            let map: BpfHashMap<&MapData, u64, StackFrames> = BpfHashMap::try_from(
                ebpf.map("STACKS").ok_or(missing("STACKS"))?,
            )
            .map_err(|source| TracerError::Map {
                map: "STACKS",
                source: Box::new(source),
            })?;
            let frames = match map.get(&key, 0) {
                Ok(stack) => {
                    let len = (stack.len as usize).min(stack.ips.len());
                    stack.ips[..len].to_vec()
                }
                Err(source) => {
                    log::debug!("stack {key:#x} unreadable: {source}");
                    Vec::new()
                }
            };
            slot.insert(frames);
        }
        Ok(&self.stacks[&key])
    }
}

fn missing(map: &'static str) -> TracerError {
    TracerError::Map {
        map,
        source: Box::new(aya::maps::MapError::InvalidName { name: map.into() }),
    }
}
