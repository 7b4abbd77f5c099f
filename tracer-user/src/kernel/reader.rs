//! Reads what the kernel side gathered: per-stack totals, stacks and loss counters.
//!
//! Per-stack totals are kept in the kernel, so a report costs one map walk over the stacks,
//! not over every live allocation.

use std::{collections::HashMap, hash::Hash, os::fd::AsFd as _, time::Instant};

use aya::{
    Pod,
    maps::{Array, HashMap as BpfHashMap, IterableMap, MapData},
};
use tracer_common::{
    AllocInfo, BlockSlot, LOST_STACK, LOST_STACK_TOTALS, SLOT_BEING_WRITTEN, StackTotals,
    StackTotalsSlot, counter, probe_hits,
};

use super::{
    batch::{self, BatchError},
    maps::KernelMaps,
    sys::Kernel,
};
use crate::{errors::TracerError, model::KernelCounters};

/// Outstanding and total bytes per stack key: the entries of the totals array handed out so
/// far, summed by key (a key given two entries by a race has its totals in both).
pub fn stack_totals(maps: &KernelMaps) -> Result<HashMap<u64, StackTotals>, TracerError> {
    let map_error = |map, source| TracerError::Map {
        map,
        source: Box::new(source),
    };
    let handed_out = maps
        .totals_handed_out
        .get(&0, 0)
        .map_err(|source| map_error("TOTALS_HANDED_OUT", source))?;
    // Entry 0 (LOST_STACK's) and the ones handed out, as far as the array goes.
    let used = handed_out
        .saturating_add(1)
        .min(u64::from(maps.totals.len())) as usize;
    let fd = maps.totals.map().fd().as_fd();
    let entries: Vec<(u32, StackTotalsSlot)> =
        match batch::lookup_prefix::<u32, StackTotalsSlot>(&Kernel, fd, batch::DEFAULT_CHUNK, used)
        {
            Ok(entries) => entries,
            Err(BatchError::Unsupported(err)) => {
                log::debug!("no batched lookup for STACK_TOTALS ({err}); reading entry by entry");
                (0..used as u32)
                    .map(|index| maps.totals.get(&index, 0).map(|slot| (index, slot)))
                    .collect::<Result<_, _>>()
                    .map_err(|source| map_error("STACK_TOTALS", source))?
            }
            Err(BatchError::Failed(err)) => return Err(TracerError::Io(err)),
        };
    Ok(sum_by_key(entries))
}

/// The totals of each key, from the array's entries by index.
fn sum_by_key(entries: Vec<(u32, StackTotalsSlot)>) -> HashMap<u64, StackTotals> {
    let mut totals: HashMap<u64, StackTotals> = HashMap::new();
    for (index, slot) in entries {
        let key = if index == LOST_STACK_TOTALS {
            LOST_STACK
        } else if slot.key != 0 {
            slot.key
        } else {
            // Never given, or given a moment ago and nothing added yet.
            continue;
        };
        let t = slot.totals();
        // A stack with an entry but no allocation yet (a mapping's stack, say) has no totals.
        if t == StackTotals::default() {
            continue;
        }
        let sum = totals.entry(key).or_default();
        sum.live_bytes = sum.live_bytes.wrapping_add(t.live_bytes);
        sum.live_allocations = sum.live_allocations.wrapping_add(t.live_allocations);
        sum.total_bytes = sum.total_bytes.wrapping_add(t.total_bytes);
        sum.total_allocations = sum.total_allocations.wrapping_add(t.total_allocations);
    }
    totals
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

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(key: u64, allocated: (u64, u64), freed: (u64, u64)) -> StackTotalsSlot {
        StackTotalsSlot {
            key,
            allocated_bytes: allocated.0,
            allocations: allocated.1,
            freed_bytes: freed.0,
            frees: freed.1,
        }
    }

    #[test]
    fn totals_are_summed_by_key_from_the_entries_given() {
        let totals = sum_by_key(vec![
            // LOST_STACK's entry, never keyed: counted under LOST_STACK when it holds anything.
            (LOST_STACK_TOTALS, slot(0, (100, 2), (40, 1))),
            (1, slot(7, (640, 10), (320, 5))),
            // A second entry for key 7, from two CPUs giving it one at once.
            (2, slot(7, (64, 1), (0, 0))),
            // Never given.
            (3, slot(0, (0, 0), (0, 0))),
            // Given to a mapping's stack: no allocation, no totals.
            (4, slot(9, (0, 0), (0, 0))),
            // A free seen before its allocation: live below zero for a moment, as i64.
            (5, slot(11, (0, 0), (32, 1))),
        ]);
        assert_eq!(totals.len(), 3, "{totals:?}");
        let lost = totals[&LOST_STACK];
        assert_eq!((lost.live_bytes, lost.live_allocations), (60, 1));
        let seven = totals[&7];
        assert_eq!(
            (
                seven.live_bytes,
                seven.live_allocations,
                seven.total_bytes,
                seven.total_allocations
            ),
            (384, 6, 704, 11)
        );
        assert_eq!(totals[&11].live_bytes as i64, -32);
        assert!(!totals.contains_key(&9) && !totals.contains_key(&0));
    }

    #[test]
    fn an_empty_lost_stack_entry_is_no_stack() {
        assert!(sum_by_key(vec![(LOST_STACK_TOTALS, StackTotalsSlot::default())]).is_empty());
    }
}
