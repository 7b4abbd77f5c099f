//! The pure split of one sample: every mapping's resident bytes go to the runtime range, the
//! traced stack or the kind that owns them.

use std::collections::HashMap;

use super::{kind::RegionKind, owners::OwnedRange, smaps::Vma};

/// Who holds a part of the memory at a sample: a kind with its label, or a traced stack
/// (named, and so given its kind, only at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RegionKey {
    Kind(RegionKind, &'static str),
    Stack(u64),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub mapped: u64,
    pub resident: u64,
    pub anon: u64,
}

impl Usage {
    fn add_share(&mut self, vma: &Vma, len: u64) {
        // A mapping's pages are not told apart: each part gets its share of the mapping's
        // resident bytes by length (the kernel merges adjacent commits into one mapping).
        let share =
            |bytes: u64| (u128::from(bytes) * u128::from(len) / u128::from(vma.len())) as u64;
        self.mapped += len;
        self.resident += share(vma.rss);
        self.anon += share(vma.anon);
    }
}

/// glibc puts one guard page below a thread stack, the JVM a few pages of zones: an
/// inaccessible anonymous mapping this small right below a writable one marks a stack.
const MAX_GUARD: u64 = 256 << 10;

/// The runtime ranges sorted by start and disjoint: where two overlap, the one earlier in
/// `owned` keeps its claim and the later one is left out. A V8 heap gives thousands of pages,
/// so the split looks ranges up by address rather than trying each.
fn claims(owned: &[OwnedRange]) -> Vec<OwnedRange> {
    let mut kept: std::collections::BTreeMap<u64, OwnedRange> = std::collections::BTreeMap::new();
    for range in owned.iter().filter(|r| r.end > r.start) {
        let before = kept.range(..range.end).next_back();
        if before.is_some_and(|(_, r)| r.end > range.start) {
            continue;
        }
        kept.insert(range.start, *range);
    }
    kept.into_values().collect()
}

/// Splits the mappings of one sample. `owned` are runtime ranges (first claim), `tracked`
/// the traced anonymous regions as (start, end, stack key), sorted by start and disjoint.
pub fn split(
    vmas: &[Vma],
    owned: &[OwnedRange],
    tracked: &[(u64, u64, u64)],
) -> HashMap<RegionKey, Usage> {
    let owned = claims(owned);
    let mut usage: HashMap<RegionKey, Usage> = HashMap::new();
    let mut add = |key: RegionKey, vma: &Vma, len: u64| {
        if len > 0 {
            usage.entry(key).or_default().add_share(vma, len);
        }
    };
    for (i, vma) in vmas.iter().enumerate() {
        if vma.is_empty() {
            continue;
        }
        if !vma.anonymous {
            add(
                RegionKey::Kind(RegionKind::FileBacked, "mapped files"),
                vma,
                vma.len(),
            );
            continue;
        }
        match vma.pseudo.as_deref() {
            Some("[heap]") => {
                add(
                    RegionKey::Kind(RegionKind::Malloc, "brk heap"),
                    vma,
                    vma.len(),
                );
                continue;
            }
            Some("[stack]") => {
                let key = RegionKey::Kind(RegionKind::ThreadStacks, "main thread stack");
                add(key, vma, vma.len());
                continue;
            }
            Some(name) if !name.starts_with("[anon") => {
                // [vdso], [vvar], [vsyscall] and the like: the kernel's pages.
                add(
                    RegionKey::Kind(RegionKind::Other, "kernel pages"),
                    vma,
                    vma.len(),
                );
                continue;
            }
            _ => {}
        }
        if vma.prot_none() && vma.rss == 0 {
            // Reserved address space: no memory, and not "mapped" in any useful sense.
            continue;
        }
        let fallback = if guarded_stack(vmas, i) {
            RegionKey::Kind(
                RegionKind::ThreadStacks,
                "thread stacks (guard-page pattern)",
            )
        } else {
            RegionKey::Kind(RegionKind::Other, "untracked anonymous")
        };
        // Walk the mapping once, giving each part to the first claim on it.
        let mut at = vma.start;
        while at < vma.end {
            // The first range that ends after `at`: it holds `at`, or it is the next one.
            let next = owned.partition_point(|r| r.end <= at);
            if let Some(range) = owned.get(next).filter(|r| r.start <= at) {
                let end = range.end.min(vma.end);
                add(RegionKey::Kind(range.kind, range.label), vma, end - at);
                at = end;
                continue;
            }
            let next_owned = owned.get(next).map_or(u64::MAX, |r| r.start);
            let first = tracked.partition_point(|(_, end, _)| *end <= at);
            match tracked.get(first) {
                Some(&(start, end, stack)) if start <= at => {
                    let end = end.min(vma.end).min(next_owned);
                    add(RegionKey::Stack(stack), vma, end - at);
                    at = end;
                }
                next => {
                    let next_tracked = next.map_or(u64::MAX, |(start, _, _)| *start);
                    let end = vma.end.min(next_owned).min(next_tracked);
                    add(fallback, vma, end - at);
                    at = end;
                }
            }
        }
    }
    usage
}

fn guarded_stack(vmas: &[Vma], i: usize) -> bool {
    let vma = &vmas[i];
    let Some(below) = i.checked_sub(1).map(|j| &vmas[j]) else {
        return false;
    };
    &vma.perms[..2] == b"rw"
        && below.anonymous
        && below.pseudo.is_none()
        && below.prot_none()
        && below.end == vma.start
        && below.len() <= MAX_GUARD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(start: u64, end: u64, perms: &[u8; 4], rss: u64) -> Vma {
        Vma {
            start,
            end,
            perms: *perms,
            anonymous: true,
            pseudo: None,
            rss,
            anon: rss,
        }
    }

    #[test]
    fn overlapping_claims_go_to_the_first_range() {
        let range = |start, end, label| OwnedRange {
            start,
            end,
            kind: RegionKind::V8Heap,
            label,
        };
        let kept = claims(&[
            range(0x10000, 0x20000, "first"),
            range(0x18000, 0x30000, "overlaps the first"),
            range(0x30000, 0x40000, "after"),
            range(0x8000, 0x11000, "overlaps the first from below"),
            range(0x1000, 0x1000, "empty"),
        ]);
        assert_eq!(
            kept.iter().map(|r| r.label).collect::<Vec<_>>(),
            ["first", "after"]
        );
    }

    #[test]
    fn owners_then_stacks_then_patterns() {
        let file = Vma {
            anonymous: false,
            ..vma(0x1000, 0x3000, b"r-xp", 0x2000)
        };
        let heap = Vma {
            pseudo: Some("[heap]".into()),
            ..vma(0x10000, 0x20000, b"rw-p", 0x8000)
        };
        // One mapping: 16 pages owned by the Java heap, then 8 tracked pages, 8 untracked.
        let mixed = vma(0x100000, 0x120000, b"rw-p", 0x20000);
        let guard = vma(0x200000, 0x201000, b"---p", 0);
        let stack = vma(0x201000, 0x210000, b"rw-p", 0x4000);
        let reserved = vma(0x300000, 0x400000, b"---p", 0);
        let vmas = [file, heap, mixed, guard, stack, reserved];
        let owned = [OwnedRange {
            start: 0x0f0000,
            end: 0x110000,
            kind: RegionKind::JavaHeap,
            label: "Java heap",
        }];
        let tracked = [(0x110000, 0x118000, 7)];
        let usage = split(&vmas, &owned, &tracked);
        let get = |key| usage.get(&key).copied().unwrap_or_default();
        assert_eq!(
            get(RegionKey::Kind(RegionKind::FileBacked, "mapped files")).resident,
            0x2000
        );
        assert_eq!(
            get(RegionKey::Kind(RegionKind::Malloc, "brk heap")).resident,
            0x8000
        );
        assert_eq!(
            get(RegionKey::Kind(RegionKind::JavaHeap, "Java heap")),
            Usage {
                mapped: 0x10000,
                resident: 0x10000,
                anon: 0x10000
            }
        );
        assert_eq!(get(RegionKey::Stack(7)).mapped, 0x8000);
        assert_eq!(
            get(RegionKey::Kind(RegionKind::Other, "untracked anonymous")).resident,
            0x8000
        );
        assert_eq!(
            get(RegionKey::Kind(
                RegionKind::ThreadStacks,
                "thread stacks (guard-page pattern)"
            ))
            .resident,
            0x4000
        );
        // Reservations with nothing resident are left out.
        let total: u64 = usage.values().map(|u| u.mapped).sum();
        assert_eq!(total, 0x2000 + 0x10000 + 0x20000 + 0xf000);
    }
}
