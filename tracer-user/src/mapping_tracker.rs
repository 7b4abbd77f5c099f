//! Anonymous mappings, as user space rebuilds them from the kernel's mapping events.
//!
//! Pure: it takes the ring buffer's records as bytes, so the session feeds it live and a test
//! feeds it an array. The interval map itself is [`Regions`].

use std::collections::HashMap;

use tracer_common::{MapEvent, MapEventKind, StackTotals};

use crate::{
    model::MappingCounters,
    regions::{Held, Regions},
    reservations::Reservations,
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
    /// Anonymous `PROT_NONE` address space, in which an `mprotect` that opens pages for
    /// writing commits them (counted on its stack) and one back to `PROT_NONE` releases them.
    reserved: Reservations,
    /// Bytes and mappings ever made per stack while traced.
    made: HashMap<u64, Made>,
    counters: MappingCounters,
}

const PAGE: u64 = 4096;
const PROT_NONE: u32 = 0;
const PROT_WRITE: u32 = 0x2;

fn end_of(addr: u64, len: u64) -> u64 {
    addr.saturating_add(len.div_ceil(PAGE).saturating_mul(PAGE))
}

impl MappingTracker {
    /// A tracker that knows the reservations the target made before it was attached.
    pub fn with_reservations(reserved: Reservations) -> Self {
        Self {
            reserved,
            ..Self::default()
        }
    }

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
        let end = end_of(event.addr, event.len);
        match MapEventKind::try_from(event.kind) {
            // A reservation: address space only. One made MAP_FIXED over committed memory
            // replaces it, so that memory is released.
            Ok(MapEventKind::Map) if event.prot == PROT_NONE => {
                self.regions.unmap(event.addr, event.len);
                self.reserved.add(event.addr, end);
            }
            Ok(MapEventKind::Map) => {
                self.reserved.remove(event.addr, end);
                self.regions
                    .map(event.addr, event.len, event.stack_key, event.timestamp_ns);
                self.count_made(event.stack_key, end - event.addr);
            }
            Ok(MapEventKind::Unmap) => {
                let tracked = self.regions.unmap(event.addr, event.len);
                let reserved = self.reserved.remove(event.addr, end);
                if tracked == 0 && reserved == 0 {
                    self.counters.untracked_unmaps += 1;
                }
            }
            Ok(MapEventKind::Remap) => {
                let moved =
                    self.regions
                        .remap(event.old_addr, event.old_len, event.addr, event.len);
                let old_end = end_of(event.old_addr, event.old_len);
                if !moved && self.reserved.remove(event.old_addr, old_end) > 0 {
                    self.reserved.add(event.addr, end);
                }
            }
            Ok(MapEventKind::Protect) if event.prot & PROT_WRITE != 0 => {
                // Only pages of a reservation that nothing holds yet are committed here:
                // memory mapped writable from the start is already counted where it was
                // mapped, and file mappings are never reservations.
                // The pieces keep the event's time, by which an unwind repair finds them.
                for (start, stop) in self.reserved.within(event.addr, end) {
                    for (gap, gap_end) in self.regions.gaps(start, stop) {
                        self.regions
                            .map(gap, gap_end - gap, event.stack_key, event.timestamp_ns);
                        self.count_made(event.stack_key, gap_end - gap);
                    }
                }
            }
            Ok(MapEventKind::Protect) if event.prot == PROT_NONE => {
                // Closed again: what was committed is released and becomes a reservation,
                // which a later mprotect may commit again.
                for (start, stop) in self.regions.pieces(event.addr, end) {
                    self.reserved.add(start, stop);
                }
                self.regions.unmap(event.addr, event.len);
            }
            // Read-only or executable flips change nothing that is held.
            Ok(MapEventKind::Protect) => {}
            Err(_) => self.counters.malformed_events += 1,
        }
    }

    fn count_made(&mut self, stack_key: u64, bytes: u64) {
        let made = self.made.entry(stack_key).or_default();
        made.bytes += bytes;
        made.mappings += 1;
    }

    /// Moves what each repaired event (by its `timestamp_ns`) made and still holds on its
    /// partial stack to the whole stack its unwind repair found.
    pub fn repair(&mut self, by_event: &HashMap<u64, Repair>) {
        if by_event.is_empty() {
            return;
        }
        let moved = self.regions.rekey(|made_ns, key| {
            by_event
                .get(&made_ns)
                .filter(|repair| repair.partial == key)
                .map(|repair| repair.whole)
        });
        for (made_ns, bytes) in moved {
            let repair = by_event[&made_ns];
            if let Some(made) = self.made.get_mut(&repair.partial) {
                made.bytes = made.bytes.saturating_sub(bytes);
                made.mappings = made.mappings.saturating_sub(1);
            }
            let made = self.made.entry(repair.whole).or_default();
            made.bytes += bytes;
            made.mappings += 1;
        }
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
        self.reserved = Reservations::default();
        released
    }

    /// Every tracked region as (start, end, stack key), by address.
    pub fn spans(&self) -> Vec<(u64, u64, u64)> {
        self.regions.spans().collect()
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
            // PROT_READ | PROT_WRITE, as an ordinary mapping asks.
            prot: 3,
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
        tracker.consume(&record(&at(10, event(MapEventKind::Map, 0x10000, 8192, 1))));
        tracker.consume(&record(&at(20, event(MapEventKind::Map, 0x20000, 100, 1))));
        tracker.consume(&record(&event(MapEventKind::Unmap, 0x10000, 4096, 0)));
        tracker.consume(&record(&event(MapEventKind::Unmap, 0x90000, 4096, 0)));
        assert_eq!(tracker.counters().untracked_unmaps, 1);
        let totals: HashMap<u64, StackTotals> = tracker.totals().collect();
        assert_eq!(totals[&1].live_bytes, 8192);
        assert_eq!(totals[&1].live_allocations, 2);
        assert_eq!(totals[&1].total_bytes, 12288);
        tracker.repair(&HashMap::from([(
            20,
            Repair {
                partial: 1,
                whole: 7,
            },
        )]));
        let totals: HashMap<u64, StackTotals> = tracker.totals().collect();
        assert_eq!(totals[&1].live_bytes, 4096);
        assert_eq!(totals[&7].live_bytes, 4096);
        assert_eq!(totals[&1].total_bytes + totals[&7].total_bytes, 12288);
        assert_eq!(tracker.release_all(), (2, 8192));
        assert_eq!(tracker.live().count(), 0);
    }

    /// The event as made at `timestamp_ns`, by which a repair names it.
    fn at(timestamp_ns: u64, event: MapEvent) -> MapEvent {
        MapEvent {
            timestamp_ns,
            ..event
        }
    }

    fn with_prot(kind: MapEventKind, addr: u64, len: u64, prot: u32, stack_key: u64) -> MapEvent {
        MapEvent {
            prot,
            ..event(kind, addr, len, stack_key)
        }
    }

    fn live_of(tracker: &MappingTracker, stack: u64) -> u64 {
        tracker.held_by_stack().get(&stack).map_or(0, |h| h.bytes)
    }

    fn feed(tracker: &mut MappingTracker, event: MapEvent) {
        tracker.consume(&record(&event));
    }

    const RW: u32 = 3;
    const RX: u32 = 5;

    #[test]
    fn commits_inside_reservations_count_once_on_the_opener() {
        let mut tracker = MappingTracker::default();
        // A 1 MiB reservation, then two commits that overlap by 64 KiB.
        feed(
            &mut tracker,
            with_prot(MapEventKind::Map, 0x100000, 0x100000, 0, 0),
        );
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x100000, 0x40000, RW, 1),
        );
        feed(
            &mut tracker,
            at(
                13,
                with_prot(MapEventKind::Protect, 0x130000, 0x20000, RW, 2),
            ),
        );
        // Outside any reservation (a file mapping, or memory never reserved): nothing.
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x900000, 0x10000, RW, 3),
        );
        // A flip to read-execute changes nothing.
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x100000, 0x10000, RX, 4),
        );
        assert_eq!(live_of(&tracker, 1), 0x40000);
        assert_eq!(live_of(&tracker, 2), 0x10000);
        // Its unwind repair names the event, whose range starts on held pages.
        tracker.repair(&HashMap::from([(
            13,
            Repair {
                partial: 2,
                whole: 7,
            },
        )]));
        assert_eq!(live_of(&tracker, 7), 0x10000);
        assert_eq!(live_of(&tracker, 3), 0);
        // Closing part of the first commit releases it; reopening counts on the new opener.
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x110000, 0x10000, 0, 0),
        );
        assert_eq!(live_of(&tracker, 1), 0x30000);
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x110000, 0x8000, RW, 5),
        );
        assert_eq!(live_of(&tracker, 5), 0x8000);
        // munmap of the whole reservation releases everything, and is no untracked unmap.
        feed(
            &mut tracker,
            event(MapEventKind::Unmap, 0x100000, 0x100000, 0),
        );
        assert!(tracker.held_by_stack().is_empty());
        assert_eq!(tracker.counters().untracked_unmaps, 0);
        // Nothing is reserved any more: a later commit there counts nothing.
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x100000, 0x1000, RW, 6),
        );
        assert_eq!(live_of(&tracker, 6), 0);
        let totals: HashMap<u64, StackTotals> = tracker.totals().collect();
        assert_eq!(totals[&1].total_bytes, 0x40000);
        assert_eq!(totals[&7].total_allocations, 1);
        assert_eq!(totals[&2].total_allocations, 0);
    }

    /// A range committed, then committed again from its last page on by another stack: both
    /// events name the same start, and each repair moves only the pages its own event made
    /// (with start-named repairs one of them was left on its partial stack).
    #[test]
    fn repairs_of_two_commits_at_one_start_move_their_own_pages() {
        let mut tracker = MappingTracker::default();
        feed(
            &mut tracker,
            with_prot(MapEventKind::Map, 0x100000, 0x100000, 0, 0),
        );
        feed(
            &mut tracker,
            at(1, with_prot(MapEventKind::Protect, 0x140000, 0x1000, RW, 9)),
        );
        feed(
            &mut tracker,
            at(2, with_prot(MapEventKind::Protect, 0x140000, 0x2000, RW, 9)),
        );
        assert_eq!(live_of(&tracker, 9), 0x2000);
        let repair = |whole| Repair { partial: 9, whole };
        tracker.repair(&HashMap::from([(2, repair(22)), (1, repair(11))]));
        assert_eq!(live_of(&tracker, 9), 0);
        assert_eq!(live_of(&tracker, 11), 0x1000);
        assert_eq!(live_of(&tracker, 22), 0x1000);
        let totals: HashMap<u64, StackTotals> = tracker.totals().collect();
        assert_eq!(totals[&11].total_bytes, 0x1000);
        assert_eq!(totals[&22].total_allocations, 1);
        assert_eq!(totals[&9].total_bytes, 0);
    }

    #[test]
    fn writable_mappings_are_not_recounted_and_fixed_reservations_release() {
        let mut tracker = MappingTracker::with_reservations({
            let mut r = Reservations::default();
            r.add(0x400000, 0x500000);
            r
        });
        feed(
            &mut tracker,
            with_prot(MapEventKind::Map, 0x10000, 0x4000, RW, 1),
        );
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x10000, 0x4000, RW, 2),
        );
        assert_eq!(live_of(&tracker, 2), 0);
        // Closed, it becomes a reservation: reopened, it counts on the opener.
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x10000, 0x4000, 0, 0),
        );
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x10000, 0x1000, RW, 2),
        );
        assert_eq!(live_of(&tracker, 1), 0);
        assert_eq!(live_of(&tracker, 2), 0x1000);
        // A reservation known from attach, committed, then replaced by a MAP_FIXED PROT_NONE
        // mapping (V8's decommit).
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x400000, 0x20000, RW, 3),
        );
        assert_eq!(live_of(&tracker, 3), 0x20000);
        feed(
            &mut tracker,
            with_prot(MapEventKind::Map, 0x400000, 0x10000, 0, 0),
        );
        assert_eq!(live_of(&tracker, 3), 0x10000);
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x400000, 0x20000, RW, 4),
        );
        assert_eq!(live_of(&tracker, 4), 0x10000);
        // A moved reservation stays a reservation.
        feed(
            &mut tracker,
            MapEvent {
                old_addr: 0x480000,
                old_len: 0x10000,
                ..event(MapEventKind::Remap, 0x800000, 0x10000, 0)
            },
        );
        feed(
            &mut tracker,
            with_prot(MapEventKind::Protect, 0x800000, 0x10000, RW, 5),
        );
        assert_eq!(live_of(&tracker, 5), 0x10000);
    }
}
