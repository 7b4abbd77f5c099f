//! Reads what the kernel side gathered: per-stack totals, stacks and loss counters.
//!
//! Per-stack totals are kept in the kernel, so a report costs one map walk over the stacks,
//! not over every live allocation.

use std::{collections::HashMap, hash::Hash, os::fd::AsFd as _, time::Instant};

use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, IterableMap, MapData},
};
use tracer_common::{AllocInfo, BlockSlot, SLOT_BEING_WRITTEN, StackTotals, counter, probe_hits};

use super::{
    batch::{self, BatchError},
    maps::KernelMaps,
    sys::Kernel,
};
use crate::{errors::TracerError, model::KernelCounters};

pub fn stack_totals(maps: &KernelMaps) -> Result<HashMap<u64, StackTotals>, TracerError> {
    Ok(read_hash(&maps.totals, "STACK_TOTALS")?
        .0
        .into_iter()
        .collect())
}

/// Every live allocation (address, info), and whether the batched read worked.
pub fn live_allocations(maps: &KernelMaps) -> Result<(Vec<(u64, AllocInfo)>, bool), TracerError> {
    let started = Instant::now();
    let (mut entries, batched) = read_hash(&maps.allocs, "ALLOCS")?;
    entries.extend(slotted_blocks(&maps.block_slots)?);
    log::info!(
        "read {} live allocations in {:.1} ms ({})",
        entries.len(),
        super::loader::elapsed_ms(started),
        if batched {
            "batched"
        } else {
            "one entry at a time"
        }
    );
    Ok((entries, batched))
}

/// The blocks in the kernel's slot table: every slot that holds a block whose info is written.
fn slotted_blocks(
    slots: &Array<MapData, BlockSlot>,
) -> Result<impl Iterator<Item = (u64, AllocInfo)>, TracerError> {
    let fd = slots.map().fd().as_fd();
    let entries: Vec<(u32, BlockSlot)> =
        match batch::lookup_all::<u32, BlockSlot>(&Kernel, fd, batch::DEFAULT_CHUNK) {
            Ok(entries) => entries,
            Err(BatchError::Unsupported(err)) => {
                log::debug!("no batched lookup for BLOCK_SLOTS ({err}); reading slot by slot");
                (0..slots.len())
                    .map(|index| slots.get(&index, 0).map(|slot| (index, slot)))
                    .collect::<Result<_, _>>()
                    .map_err(|source| TracerError::Map {
                        map: "BLOCK_SLOTS",
                        source: Box::new(source),
                    })?
            }
            Err(BatchError::Failed(err)) => return Err(TracerError::Io(err)),
        };
    Ok(entries
        .into_iter()
        .map(|(_, slot)| slot)
        .filter(|slot| slot.addr != 0 && slot.addr & SLOT_BEING_WRITTEN == 0)
        .map(|slot| (slot.addr, slot.info)))
}

/// The clock `bpf_ktime_get_ns` reads (CLOCK_MONOTONIC), in nanoseconds, to age the kernel's
/// timestamps.
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A whole hash map, batched where the kernel can, else through aya's iterator.
fn read_hash<K: Pod + Eq + Hash, V: Pod>(
    map: &BpfHashMap<MapData, K, V>,
    name: &'static str,
) -> Result<(Vec<(K, V)>, bool), TracerError> {
    match batch::lookup_all::<K, V>(&Kernel, map.map().fd().as_fd(), batch::DEFAULT_CHUNK) {
        Ok(entries) => return Ok((entries, true)),
        Err(BatchError::Unsupported(err)) => {
            log::debug!("no batched lookup for {name} ({err}); reading entry by entry");
        }
        Err(BatchError::Failed(err)) => return Err(TracerError::Io(err)),
    }
    let entries = map
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TracerError::Map {
            map: name,
            source: Box::new(source),
        })?;
    Ok((entries, false))
}

/// Every counter of `tracer_common::counter::ALL`, summed over CPUs, into the fields of the
/// same names.
pub fn counters(maps: &KernelMaps) -> Result<KernelCounters, TracerError> {
    let mut values = serde_json::Map::new();
    for info in counter::ALL {
        let per_cpu = maps
            .counters
            .get(&info.index, 0)
            .map_err(|source| TracerError::Map {
                map: "COUNTERS",
                source: Box::new(source),
            })?;
        let sum = per_cpu.iter().copied().fold(0u64, u64::wrapping_add);
        values.insert(info.name.to_owned(), sum.into());
    }
    // The model's fields are checked against the list (model.rs), so this cannot miss one.
    serde_json::from_value(values.into()).map_err(|err| TracerError::Io(std::io::Error::other(err)))
}

/// Probe hits in the target so far: (allocation entries, free entries).
pub fn probe_hits(maps: &KernelMaps) -> Result<(u64, u64), TracerError> {
    let sum = |index: u32| -> Result<u64, TracerError> {
        let per_cpu = maps
            .probe_hits
            .get(&index, 0)
            .map_err(|source| TracerError::Map {
                map: "PROBE_HITS",
                source: Box::new(source),
            })?;
        Ok(per_cpu.iter().copied().fold(0u64, u64::wrapping_add))
    };
    Ok((sum(probe_hits::ALLOC)?, sum(probe_hits::FREE)?))
}

/// Caches stacks by key: a key is a hash of the frames, so its frames never change.
#[derive(Default)]
pub struct StackCache {
    stacks: HashMap<u64, Vec<u64>>,
    truncated: HashMap<u64, u32>,
}

impl StackCache {
    /// The user-space return addresses of a stack, innermost first.
    pub fn get(&mut self, maps: &KernelMaps, key: u64) -> &[u64] {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.stacks.entry(key) {
            let frames = match maps.stacks.get(&key, 0) {
                Ok(stack) => {
                    let len = (stack.len as usize).min(stack.ips.len());
                    self.truncated.insert(key, stack.truncated);
                    stack.ips[..len].to_vec()
                }
                Err(source) => {
                    log::debug!("stack {key:#x} unreadable: {source}");
                    Vec::new()
                }
            };
            slot.insert(frames);
        }
        &self.stacks[&key]
    }

    /// How the walk of a stack read by [`Self::get`] ended (`StackFrames::truncated`).
    pub fn truncated(&self, key: u64) -> u32 {
        self.truncated.get(&key).copied().unwrap_or(0)
    }
}
