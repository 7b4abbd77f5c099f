//! The repairs of one session: which allocation (by its address) or mapping (by the event
//! that made it) moved from the partial stack the kernel stored to the whole stack user space
//! walked from a copy.
//!
//! One ledger serves both origins, so that malloc-family blocks and anonymous mappings follow
//! the same rule: a repair applies only while what was repaired is still held on the partial
//! stack (a block may have been freed and its address reused by another stack), and totals
//! are conserved, moved rather than dropped.

use std::collections::HashMap;

use tracer_common::{AllocInfo, MAP_EVENT_TAG, StackTotals};

use crate::mapping_tracker::MappingTracker;

/// The partial and the whole stack of one allocation or mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    pub partial: u64,
    pub whole: u64,
}

#[derive(Debug, Default)]
pub struct RepairLedger {
    by_address: HashMap<u64, Repair>,
    /// Mappings' repairs by the time of the event that made them (its `timestamp_ns`).
    by_event: HashMap<u64, Repair>,
}

impl RepairLedger {
    /// Records the repair of the walk tagged `tag`: an allocation's address, or a mapping
    /// event's time with [`MAP_EVENT_TAG`] set.
    pub fn record(&mut self, tag: u64, repair: Repair) {
        if tag & MAP_EVENT_TAG != 0 {
            self.by_event.insert(tag & !MAP_EVENT_TAG, repair);
        } else {
            self.by_address.insert(tag, repair);
        }
    }

    pub fn len(&self) -> usize {
        self.by_address.len() + self.by_event.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves repaired blocks that are still live from their partial stack to their whole one,
    /// in the live list and in the kernel's totals; returns how many moved.
    pub fn apply_to_allocations(
        &self,
        totals: &mut HashMap<u64, StackTotals>,
        live: &mut [(u64, AllocInfo)],
    ) -> u64 {
        let mut moved = 0;
        for (addr, info) in live.iter_mut() {
            let Some(repair) = self.by_address.get(addr) else {
                continue;
            };
            if info.stack_key != repair.partial {
                continue;
            }
            info.stack_key = repair.whole;
            move_bytes(totals, repair, info.weight_bytes, info.weight_count);
            moved += 1;
        }
        moved
    }

    /// Moves repaired mappings that are still mapped to their whole stack.
    pub fn apply_to_mappings(&self, mappings: &mut MappingTracker) {
        mappings.repair(&self.by_event);
    }
}

/// Moves what one allocation stands for (`bytes`, `count`: its size and 1, or its weights
/// under byte sampling).
fn move_bytes(totals: &mut HashMap<u64, StackTotals>, repair: &Repair, bytes: u64, count: u64) {
    if let Some(partial) = totals.get_mut(&repair.partial) {
        partial.live_bytes = partial.live_bytes.wrapping_sub(bytes);
        partial.live_allocations = partial.live_allocations.wrapping_sub(count);
        partial.total_bytes = partial.total_bytes.saturating_sub(bytes);
        partial.total_allocations = partial.total_allocations.saturating_sub(count);
    }
    let whole = totals.entry(repair.whole).or_default();
    whole.live_bytes = whole.live_bytes.wrapping_add(bytes);
    whole.live_allocations = whole.live_allocations.wrapping_add(count);
    whole.total_bytes += bytes;
    whole.total_allocations += count;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_move_live_allocations_and_conserve_totals() {
        let repair = Repair {
            partial: 1,
            whole: 2,
        };
        let mut totals = HashMap::from([(
            1,
            StackTotals {
                live_bytes: 300,
                live_allocations: 3,
                total_bytes: 300,
                total_allocations: 3,
            },
        )]);
        move_bytes(&mut totals, &repair, 100, 1);
        assert_eq!(totals[&1].live_bytes + totals[&2].live_bytes, 300);
        assert_eq!(
            (totals[&1].live_allocations, totals[&2].live_allocations),
            (2, 1)
        );
        assert_eq!(totals[&2].total_bytes, 100);
    }

    /// A mapping's repair is filed under its event's time, never under an address that an
    /// allocation may hold.
    #[test]
    fn mapping_tags_and_addresses_are_kept_apart() {
        let mut ledger = RepairLedger::default();
        let repair = Repair {
            partial: 1,
            whole: 2,
        };
        ledger.record(MAP_EVENT_TAG | 0x1000, repair);
        assert_eq!(ledger.by_event.get(&0x1000), Some(&repair));
        assert!(ledger.by_address.is_empty());
        ledger.record(0x1000, repair);
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn a_reused_address_keeps_its_new_stack() {
        let mut ledger = RepairLedger::default();
        ledger.record(
            0x1000,
            Repair {
                partial: 1,
                whole: 2,
            },
        );
        let block = |stack_key| AllocInfo {
            stack_key,
            size: 64,
            weight_bytes: 64,
            weight_count: 1,
            ..AllocInfo::default()
        };
        let mut totals = HashMap::new();
        // Freed and reused by stack 9: left alone.
        let mut live = vec![(0x1000, block(9))];
        assert_eq!(ledger.apply_to_allocations(&mut totals, &mut live), 0);
        assert_eq!(live[0].1.stack_key, 9);
        let mut live = vec![(0x1000, block(1))];
        assert_eq!(ledger.apply_to_allocations(&mut totals, &mut live), 1);
        assert_eq!(live[0].1.stack_key, 2);
    }
}
