//! Anonymous mappings that are still mapped, by address, with the stack that made them.
//!
//! The kernel reports mmap, munmap and mremap; this interval map applies them, including an
//! munmap of part of a mapping (which shrinks or splits it) and a MAP_FIXED mapping over an
//! old one (which replaces that part).

use std::collections::{BTreeMap, HashMap};

const PAGE: u64 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    end: u64,
    stack_key: u64,
    /// `bpf_ktime_get_ns` when it was mapped; a moved or split mapping keeps its age.
    made_ns: u64,
}

// Clone: continuous mode renders a profile mid-trace from a copy (src/push).
#[derive(Clone, Debug, Default)]
pub struct Regions {
    by_start: BTreeMap<u64, Region>,
}

/// Bytes and region count that one stack holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub bytes: u64,
    pub regions: u64,
}

fn page_up(len: u64) -> u64 {
    len.div_ceil(PAGE).saturating_mul(PAGE)
}

impl Regions {
    pub fn map(&mut self, addr: u64, len: u64, stack_key: u64, made_ns: u64) {
        let end = addr.saturating_add(page_up(len));
        self.remove_range(addr, end);
        if end > addr {
            self.by_start.insert(
                addr,
                Region {
                    end,
                    stack_key,
                    made_ns,
                },
            );
        }
    }

    /// Removes `addr..addr+len`; returns the bytes that were tracked in it.
    pub fn unmap(&mut self, addr: u64, len: u64) -> u64 {
        self.remove_range(addr, addr.saturating_add(page_up(len)))
    }

    /// Moves or resizes a mapping. The result keeps the stack of the mapping it came from; a
    /// remap of untracked memory stays untracked.
    pub fn remap(&mut self, old_addr: u64, old_len: u64, new_addr: u64, new_len: u64) -> bool {
        let Some(region) = self.region_at(old_addr) else {
            return false;
        };
        self.unmap(old_addr, old_len);
        self.map(new_addr, new_len, region.stack_key, region.made_ns);
        true
    }

    /// Moves pieces to another stack (unwind repairs): `to` gives, for a piece's `made_ns`
    /// and stack, the stack it moves to, if any. Returns the bytes moved per `made_ns`.
    pub fn rekey(&mut self, to: impl Fn(u64, u64) -> Option<u64>) -> HashMap<u64, u64> {
        let mut moved: HashMap<u64, u64> = HashMap::new();
        for (start, region) in &mut self.by_start {
            if let Some(key) = to(region.made_ns, region.stack_key) {
                region.stack_key = key;
                *moved.entry(region.made_ns).or_default() += region.end - start;
            }
        }
        moved
    }

    /// The untracked parts of [start, end), in address order.
    pub fn gaps(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut at = start;
        for (s, e) in self.pieces(start, end) {
            if s > at {
                gaps.push((at, s));
            }
            at = e;
        }
        if at < end {
            gaps.push((at, end));
        }
        gaps
    }

    /// The tracked parts of [start, end), in address order.
    pub fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        if end <= start {
            return Vec::new();
        }
        let first = self
            .by_start
            .range(..=start)
            .next_back()
            .filter(|(_, region)| region.end > start)
            .map_or(start, |(s, _)| *s);
        self.by_start
            .range(first..end)
            .map(|(s, region)| ((*s).max(start), region.end.min(end)))
            .filter(|(s, e)| s < e)
            .collect()
    }

    pub fn stack_at(&self, addr: u64) -> Option<u64> {
        self.region_at(addr).map(|region| region.stack_key)
    }

    fn region_at(&self, addr: u64) -> Option<Region> {
        let (_, region) = self.by_start.range(..=addr).next_back()?;
        (addr < region.end).then_some(*region)
    }

    /// Every live region as (stack key, bytes, when it was mapped).
    pub fn live(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.by_start
            .iter()
            .map(|(start, region)| (region.stack_key, region.end - start, region.made_ns))
    }

    /// Every live region as (start, end, stack key), by address.
    pub fn spans(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.by_start
            .iter()
            .map(|(start, region)| (*start, region.end, region.stack_key))
    }

    pub fn held_by_stack(&self) -> HashMap<u64, Held> {
        let mut held: HashMap<u64, Held> = HashMap::new();
        for (start, region) in &self.by_start {
            let entry = held.entry(region.stack_key).or_default();
            entry.bytes += region.end - start;
            entry.regions += 1;
        }
        held
    }

    fn remove_range(&mut self, start: u64, end: u64) -> u64 {
        if end <= start {
            return 0;
        }
        // Regions that overlap [start, end): the one that begins before `start` and reaches
        // into it, and every one that begins inside.
        let mut overlapping: Vec<u64> = self.by_start.range(start..end).map(|(s, _)| *s).collect();
        if let Some((s, region)) = self.by_start.range(..start).next_back()
            && region.end > start
        {
            overlapping.push(*s);
        }
        let mut removed = 0;
        for s in overlapping {
            let region = self.by_start.remove(&s).expect("key just listed");
            let cut_start = s.max(start);
            let cut_end = region.end.min(end);
            removed += cut_end - cut_start;
            if s < cut_start {
                self.by_start.insert(
                    s,
                    Region {
                        end: cut_start,
                        ..region
                    },
                );
            }
            if cut_end < region.end {
                self.by_start.insert(cut_end, region);
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(regions: &Regions, stack: u64) -> Held {
        regions
            .held_by_stack()
            .get(&stack)
            .copied()
            .unwrap_or_default()
    }

    #[test]
    fn partial_unmap_shrinks_and_splits() {
        let mut regions = Regions::default();
        regions.map(0x10000, 0x10000, 1, 5);
        assert_eq!(regions.unmap(0x1c000, 0x4000), 0x4000); // tail
        assert_eq!(
            held(&regions, 1),
            Held {
                bytes: 0xc000,
                regions: 1
            }
        );
        assert_eq!(regions.unmap(0x12000, 0x1000), 0x1000); // middle: splits in two
        assert_eq!(
            held(&regions, 1),
            Held {
                bytes: 0xb000,
                regions: 2
            }
        );
        assert!(regions.live().all(|(_, _, made)| made == 5));
        assert_eq!(regions.unmap(0x10000, 0x1000), 0x1000); // head
        assert_eq!(
            held(&regions, 1),
            Held {
                bytes: 0xa000,
                regions: 2
            }
        );
    }

    #[test]
    fn unmap_across_regions_and_untracked_memory() {
        let mut regions = Regions::default();
        regions.map(0x10000, 0x2000, 1, 0);
        regions.map(0x20000, 0x2000, 2, 0);
        assert_eq!(regions.unmap(0x0, 0x100000), 0x4000);
        assert!(regions.held_by_stack().is_empty());
        assert_eq!(regions.unmap(0x50000, 0x1000), 0);
    }

    #[test]
    fn lengths_round_up_to_pages_and_fixed_maps_replace() {
        let mut regions = Regions::default();
        regions.map(0x10000, 100, 1, 0);
        assert_eq!(held(&regions, 1).bytes, PAGE);
        regions.map(0x10000, 0x3000, 2, 0);
        assert_eq!(held(&regions, 1).bytes, 0);
        assert_eq!(held(&regions, 2).bytes, 0x3000);
    }

    #[test]
    fn gaps_and_pieces_split_a_range() {
        let mut regions = Regions::default();
        regions.map(0x10000, 0x2000, 1, 0);
        regions.map(0x14000, 0x1000, 2, 0);
        assert_eq!(
            regions.pieces(0x11000, 0x16000),
            [(0x11000, 0x12000), (0x14000, 0x15000)]
        );
        assert_eq!(
            regions.gaps(0x11000, 0x16000),
            [(0x12000, 0x14000), (0x15000, 0x16000)]
        );
        assert_eq!(regions.gaps(0x10000, 0x12000), []);
        assert_eq!(regions.gaps(0x30000, 0x31000), [(0x30000, 0x31000)]);
    }

    #[test]
    fn remap_keeps_the_origin_stack_and_age() {
        let mut regions = Regions::default();
        regions.map(0x10000, 0x2000, 7, 9);
        assert!(regions.remap(0x10000, 0x2000, 0x40000, 0x8000));
        assert_eq!(
            held(&regions, 7),
            Held {
                bytes: 0x8000,
                regions: 1
            }
        );
        assert!(!regions.remap(0x90000, 0x1000, 0xa0000, 0x2000));
        assert_eq!(regions.stack_at(0x47fff), Some(7));
        assert_eq!(regions.live().collect::<Vec<_>>(), [(7, 0x8000, 9)]);
        assert_eq!(regions.stack_at(0x48000), None);
    }
}
