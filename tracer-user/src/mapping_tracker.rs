//! Anonymous mappings, as user space rebuilds them from the kernel's mapping events.
//!
//! Pure: it takes the ring buffer's records as bytes, so the session feeds it live and a test
//! feeds it an array. The interval map itself is [`Regions`].

use std::collections::HashMap;

use tracer_common::{MapEvent, MapEventKind, StackTotals};

use crate::{
    model::MappingCounters,
    regions::{Held, Regions},
    unwind::ledger::Repair,
};

/// What one stack mapped over the whole trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Made {
    pub bytes: u64,
    pub mappings: u64,
}

// Clone: continuous mode renders a profile mid-trace from a copy (src/push).
#[derive(Clone, Debug, Default)]
pub struct MappingTracker {
    regions: Regions,
    /// Bytes and mappings ever made per stack while traced.
    made: HashMap<u64, Made>,
    counters: MappingCounters,
}

impl MappingTracker {
    /// One record of the kernel's mapping ring buffer; a short or unknown one is counted as
    /// malformed and otherwise ignored.
    pub fn consume(&mut self, record: &[u8]) {
        self.counters.events += 1;
        match parse_event(record) {
            Some(event) => self.apply(&event),
            None => self.counters.malformed_events += 1,
        }
    }

    fn apply(&mut self, event: &MapEvent) {
        match MapEventKind::try_from(event.kind) {
            Ok(MapEventKind::Map) => {
                self.regions
                    .map(event.addr, event.len, event.stack_key, event.timestamp_ns);
                let made = self.made.entry(event.stack_key).or_default();
                made.bytes += event.len.div_ceil(4096) * 4096;
                made.mappings += 1;
            }
            Ok(MapEventKind::Unmap) => {
                if self.regions.unmap(event.addr, event.len) == 0 {
                    self.counters.untracked_unmaps += 1;
                }
            }
            Ok(MapEventKind::Remap) => {
                self.regions
                    .remap(event.old_addr, event.old_len, event.addr, event.len);
            }
            Err(_) => self.counters.malformed_events += 1,
        }
    }

    /// Moves the mapping at `start` to the whole stack an unwind repair found for it.
    pub fn repair(&mut self, start: u64, repair: Repair) {
        let bytes = self.regions.rekey(start, repair.partial, repair.whole);
        if bytes == 0 {
            return;
        }
        if let Some(made) = self.made.get_mut(&repair.partial) {
            made.bytes = made.bytes.saturating_sub(bytes);
            made.mappings = made.mappings.saturating_sub(1);
        }
        let made = self.made.entry(repair.whole).or_default();
        made.bytes += bytes;
        made.mappings += 1;
    }

    /// Everything still mapped goes, as at an exec; returns the mappings and bytes released.
    pub fn release_all(&mut self) -> (u64, u64) {
        let released = self
            .held_by_stack()
            .values()
            .fold((0, 0), |(n, bytes), held| {
                (n + held.regions, bytes + held.bytes)
            });
        self.regions = Regions::default();
        released
    }

    pub fn held_by_stack(&self) -> HashMap<u64, Held> {
        self.regions.held_by_stack()
    }

    /// Every live mapping: stack key, bytes, and when it was made (`bpf_ktime_get_ns`).
    pub fn live(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.regions.live()
    }

    /// Per stack that mapped anything: what it holds now and what it made, as the kernel's
    /// malloc totals say it for the malloc family.
    pub fn totals(&self) -> impl Iterator<Item = (u64, StackTotals)> + '_ {
        let held = self.held_by_stack();
        self.made.iter().map(move |(key, made)| {
            let now = held.get(key).copied().unwrap_or_default();
            (
                *key,
                StackTotals {
                    live_bytes: now.bytes,
                    live_allocations: now.regions,
                    total_bytes: made.bytes,
                    total_allocations: made.mappings,
                },
            )
        })
    }

    pub fn counters(&self) -> MappingCounters {
        self.counters
    }
}

fn parse_event(bytes: &[u8]) -> Option<MapEvent> {
    (bytes.len() >= size_of::<MapEvent>()).then(|| {
        // SAFETY: the buffer holds at least one MapEvent, a plain-old-data type; the read is
        // unaligned because ring buffer records are only 8-byte aligned by convention.
        unsafe { bytes.as_ptr().cast::<MapEvent>().read_unaligned() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(event: &MapEvent) -> Vec<u8> {
        // SAFETY: MapEvent is plain old data; the slice covers exactly one value.
        unsafe {
            std::slice::from_raw_parts((&raw const *event).cast::<u8>(), size_of::<MapEvent>())
        }
        .to_vec()
    }

    fn event(kind: MapEventKind, addr: u64, len: u64, stack_key: u64) -> MapEvent {
        MapEvent {
            kind: kind as u32,
            addr,
            len,
            stack_key,
            ..MapEvent::default()
        }
    }

    #[test]
    fn short_and_unknown_records_are_malformed() {
        let mut tracker = MappingTracker::default();
        tracker.consume(&[0u8; 8]);
        let mut unknown = event(MapEventKind::Map, 0x1000, 4096, 1);
        unknown.kind = 99;
        tracker.consume(&record(&unknown));
        assert_eq!(tracker.counters().malformed_events, 2);
        assert_eq!(tracker.counters().events, 2);
        assert_eq!(tracker.live().count(), 0);
    }

    #[test]
    fn maps_unmaps_and_repairs_keep_made_and_held_apart() {
        let mut tracker = MappingTracker::default();
        tracker.consume(&record(&event(MapEventKind::Map, 0x10000, 8192, 1)));
        tracker.consume(&record(&event(MapEventKind::Map, 0x20000, 100, 1)));
        tracker.consume(&record(&event(MapEventKind::Unmap, 0x10000, 4096, 0)));
        tracker.consume(&record(&event(MapEventKind::Unmap, 0x90000, 4096, 0)));
        assert_eq!(tracker.counters().untracked_unmaps, 1);
        let totals: HashMap<u64, StackTotals> = tracker.totals().collect();
        assert_eq!(totals[&1].live_bytes, 8192);
        assert_eq!(totals[&1].live_allocations, 2);
        assert_eq!(totals[&1].total_bytes, 12288);
        tracker.repair(
            0x20000,
            Repair {
                partial: 1,
                whole: 7,
            },
        );
        let totals: HashMap<u64, StackTotals> = tracker.totals().collect();
        assert_eq!(totals[&1].live_bytes, 4096);
        assert_eq!(totals[&7].live_bytes, 4096);
        assert_eq!(totals[&1].total_bytes + totals[&7].total_bytes, 12288);
        assert_eq!(tracker.release_all(), (2, 8192));
        assert_eq!(tracker.live().count(), 0);
    }
}
