//! Address ranges that a runtime's own structures say it owns: glibc's arenas (their
//! `heap_info` headers), V8's heap pages (their page headers) and a JVM's Java heap and code
//! heaps (HotSpot's vmStructs).
//!
//! Everything is read from the target's memory, which it controls: each range is checked
//! against the mappings it claims, and lengths are capped.

use crate::jit::hotspot::{HotspotError, HotspotVm, Memory, TargetAddr, vmstructs::VmStructs};

use super::{kind::RegionKind, smaps::Vma};

/// A range that a runtime owns, with the kind and label it gets in the split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnedRange {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
    pub label: &'static str,
}

/// The first `N` words at `addr` of the target, or `None` where they cannot be read: the
/// header of a runtime's region, which the caller checks before believing anything.
fn header_words<const N: usize>(memory: &impl Memory, addr: u64) -> Option<[u64; N]> {
    let mut words = [0u64; N];
    let mut bytes = vec![0u8; N * 8];
    memory.read(TargetAddr(addr), &mut bytes).ok()?;
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(words)
}

/// glibc's non-main arenas live in heaps of `HEAP_MAX_SIZE` (64 MiB on 64-bit), aligned to
/// it, each starting with a `heap_info`: `ar_ptr`, `prev`, `size`, `mprotect_size`.
const HEAP_MAX: u64 = 64 << 20;

/// The glibc arena heaps among `vmas`: a writable anonymous mapping aligned to 64 MiB whose
/// first words read as a `heap_info` (sizes within the heap; the arena inside this heap, or
/// a previous heap that is itself aligned).
pub fn glibc_arenas(vmas: &[Vma], memory: &impl Memory) -> Vec<OwnedRange> {
    let mut arenas = Vec::new();
    for vma in vmas {
        if !vma.anonymous
            || vma.pseudo.is_some()
            || &vma.perms[..2] != b"rw"
            || !vma.start.is_multiple_of(HEAP_MAX)
        {
            continue;
        }
        let Some([ar_ptr, prev, size, mprotect_size]) = header_words(memory, vma.start) else {
            continue;
        };
        let sizes_fit = size > 0 && size <= HEAP_MAX && mprotect_size <= HEAP_MAX;
        let own_arena = (vma.start + 32..vma.start + 256).contains(&ar_ptr);
        let continues = prev != 0 && prev.is_multiple_of(HEAP_MAX) && ar_ptr != 0;
        if sizes_fit && (own_arena || continues) {
            arenas.push(OwnedRange {
                start: vma.start,
                end: vma.start + HEAP_MAX,
                kind: RegionKind::Malloc,
                label: "malloc arenas",
            });
        }
    }
    arenas
}

/// V8 puts its heap in pages (`MemoryChunk`s) of 256 KiB aligned to it, larger ones for
/// large objects, each mapped on its own.
const V8_PAGE: u64 = 256 << 10;

/// Page starts read at most per sample: those of 16 GiB of anonymous memory.
const MAX_V8_CANDIDATES: usize = 65_536;

/// The most header a V8 page has before its object area (0x1148 bytes in Node 20).
const MAX_V8_HEADER: u64 = 64 << 10;

/// Pages naming one heap that make it believed: a lone page-like header is not a heap.
const MIN_V8_PAGES: usize = 2;

/// V8's heap pages among `vmas`, so that a Node process attached after its start has the heap
/// it built before named `v8-heap` rather than `other`. Each page starts with V8's chunk
/// header (V8 11, Node 20): `size_`, flags, `heap_`, `area_start_`, `area_end_`. An aligned
/// start in a readable anonymous mapping is a page when its size is whole 4 KiB pages of at
/// least 64 KiB and lies in the mapping, its object area starts after a header of less than
/// 64 KiB and ends within it, and at least two pages name the same heap.
pub fn v8_pages(vmas: &[Vma], memory: &impl Memory) -> Vec<OwnedRange> {
    let mut pages: Vec<(u64, u64, u64)> = Vec::new();
    let mut read = 0usize;
    'mappings: for vma in vmas {
        if !vma.anonymous || vma.pseudo.is_some() || vma.perms[0] != b'r' {
            continue;
        }
        let mut page = vma.start.next_multiple_of(V8_PAGE);
        while page < vma.end {
            if read == MAX_V8_CANDIDATES {
                log::debug!("rss split: V8 pages looked for in the first {read} places only");
                break 'mappings;
            }
            read += 1;
            let header = header_words::<5>(memory, page).map(
                |[size, _flags, heap, area_start, area_end]| (size, heap, area_start, area_end),
            );
            match header {
                Some((size, heap, area_start, area_end))
                    if size.is_multiple_of(4096)
                        && size >= 64 << 10
                        && page.checked_add(size).is_some_and(|end| end <= vma.end)
                        && heap != 0
                        && heap.is_multiple_of(8)
                        && area_start > page
                        && area_start - page < MAX_V8_HEADER
                        && area_end > area_start
                        && area_end <= page + size =>
                {
                    pages.push((page, page + size, heap));
                    page = (page + size).next_multiple_of(V8_PAGE);
                }
                _ => page += V8_PAGE,
            }
        }
    }
    let mut per_heap: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    for (_, _, heap) in &pages {
        *per_heap.entry(*heap).or_default() += 1;
    }
    pages
        .into_iter()
        .filter(|(_, _, heap)| per_heap[heap] >= MIN_V8_PAGES)
        .map(|(start, end, _)| OwnedRange {
            start,
            end,
            kind: RegionKind::V8Heap,
            label: "V8 heap pages",
        })
        .collect()
}

/// The most a Java heap's reservation is believed to be (the largest -Xmx is far below).
const MAX_JAVA_HEAP: u64 = 1 << 46;

/// The Java heap's reservation (`Universe::_collectedHeap->_reserved`) and the committed part
/// of every code heap, as the JVM's tables describe them.
pub fn hotspot_ranges<M: Memory>(vm: &mut HotspotVm<M>) -> Result<Vec<OwnedRange>, HotspotError> {
    let mut ranges = Vec::new();
    let structs = &vm.structs;
    let heap_slot = structs.static_address("Universe", "_collectedHeap")?;
    let reserved = structs.offset("CollectedHeap", "_reserved")?;
    let start_at = structs.offset("MemRegion", "_start")?;
    let words_at = structs.offset("MemRegion", "_word_size")?;
    let memory = vm.memory();
    let read = |addr: TargetAddr, what: &'static str| {
        memory
            .read_u64(addr)
            .map_err(|cause| HotspotError::Memory { what, cause })
    };
    let heap = TargetAddr(read(heap_slot, "Universe::_collectedHeap")?);
    if !heap.is_null() {
        let region = heap
            .offset(reserved)
            .map_err(|cause| HotspotError::Memory {
                what: "CollectedHeap::_reserved",
                cause,
            })?;
        let at = |offset| {
            region.offset(offset).map_err(|cause| HotspotError::Memory {
                what: "MemRegion",
                cause,
            })
        };
        let start = read(at(start_at)?, "MemRegion::_start")?;
        let words = read(at(words_at)?, "MemRegion::_word_size")?;
        let bytes = words.saturating_mul(8);
        if bytes == 0 || bytes > MAX_JAVA_HEAP || start.checked_add(bytes).is_none() {
            return Err(HotspotError::Corrupt {
                what: "Java heap reservation",
                detail: format!("{bytes} bytes at {start:#x}"),
            });
        }
        ranges.push(OwnedRange {
            start,
            end: start + bytes,
            kind: RegionKind::JavaHeap,
            label: "Java heap",
        });
    }
    vm.refresh_heaps()?;
    for heap in vm.heaps() {
        if heap.code.end > heap.code.start {
            ranges.push(OwnedRange {
                start: heap.code.start,
                end: heap.code.end,
                kind: RegionKind::CodeCache,
                label: "code heaps",
            });
        }
    }
    Ok(ranges)
}

/// The largest compressed class space HotSpot allows (`CompressedClassSpaceSize` is at most
/// 3 GiB); a flag read above it is not believed.
const MAX_CLASS_SPACE: u64 = 4 << 30;

/// The compressed class space, where HotSpot keeps its `Klass` structures (part of
/// metaspace), read from the JVM's own tables, so that a JVM attached after its start has it
/// named rather than `other`. It is reserved right after the CDS archive when there is one
/// (the archive's end is `MetaspaceObj::_shared_metaspace_top`), else at the class-pointer
/// encoding base (`CompressedKlassPointers::_narrow_klass._base`), and is
/// `CompressedClassSpaceSize` long. A zero base (zero-based encoding without CDS) says
/// nothing of where it is: `None`.
pub fn class_space(
    structs: &VmStructs,
    memory: &impl Memory,
) -> Result<Option<OwnedRange>, HotspotError> {
    let read = |addr: TargetAddr, what: &'static str| {
        memory
            .read_u64(addr)
            .map_err(|cause| HotspotError::Memory { what, cause })
    };
    let base = read(
        structs.static_address("CompressedKlassPointers", "_narrow_klass._base")?,
        "CompressedKlassPointers::_narrow_klass._base",
    )?;
    if base == 0 {
        return Ok(None);
    }
    let archive_top = match structs.static_address("MetaspaceObj", "_shared_metaspace_top") {
        Ok(slot) => read(slot, "MetaspaceObj::_shared_metaspace_top")?,
        Err(_) => 0,
    };
    let flags = crate::jit::hotspot::flags::FlagLayout::new(structs)?;
    let Some(size) = flags.u64_flag(memory, "CompressedClassSpaceSize")? else {
        return Ok(None);
    };
    // The archive sits at the base; an archive end elsewhere is not this layout.
    let start = if (base..base.saturating_add(MAX_CLASS_SPACE)).contains(&archive_top) {
        archive_top
    } else {
        base
    };
    if size == 0 || size > MAX_CLASS_SPACE || start.checked_add(size).is_none() {
        return Err(HotspotError::Corrupt {
            what: "compressed class space",
            detail: format!("{size} bytes at {start:#x}"),
        });
    }
    Ok(Some(OwnedRange {
        start,
        end: start + size,
        kind: RegionKind::JavaMetaspace,
        label: "class space",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::hotspot::memory::FakeMemory;

    fn vma(start: u64, len: u64, perms: &[u8; 4]) -> Vma {
        Vma {
            start,
            end: start + len,
            perms: *perms,
            anonymous: true,
            ..Vma::default()
        }
    }

    #[test]
    fn arenas_are_recognised_by_their_headers() {
        let first = 0x7f00_0000_0000u64;
        let second = first + HEAP_MAX;
        let fake = first + 4 * HEAP_MAX;
        let mut memory = FakeMemory::new();
        let header = |ar: u64, prev: u64, size: u64| {
            [ar, prev, size, size]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        memory.map(TargetAddr(first), header(first + 48, 0, 0x21000));
        memory.map(TargetAddr(second), header(first + 48, first, 0x8000));
        // Aligned, but its first words are data: not an arena.
        memory.map(TargetAddr(fake), header(0x4141, 0x4242, 1 << 40));
        let vmas = [
            vma(first, 0x21000, b"rw-p"),
            vma(first + 0x21000, HEAP_MAX - 0x21000, b"---p"),
            vma(second, 0x8000, b"rw-p"),
            vma(fake, 0x1000, b"rw-p"),
            vma(first + 7 * HEAP_MAX, 0x1000, b"rw-p"), // unreadable
        ];
        let arenas = glibc_arenas(&vmas, &memory);
        assert_eq!(
            arenas.iter().map(|a| a.start).collect::<Vec<_>>(),
            [first, second]
        );
    }

    #[test]
    fn v8_pages_are_recognised_by_their_headers() {
        let base = 0x2c3f_0000_0000u64;
        let header = |page: u64, size: u64, heap: u64| {
            [size, 4, heap, page + 0x1148, page + size]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let mut memory = FakeMemory::new();
        let heap = 0x33a8_b150;
        // Two regular pages of one heap, and a large page of 1 MiB.
        memory.map(TargetAddr(base), header(base, V8_PAGE, heap));
        let second = base + 4 * V8_PAGE;
        memory.map(TargetAddr(second), header(second, V8_PAGE, heap));
        let large = base + 8 * V8_PAGE;
        memory.map(TargetAddr(large), header(large, 4 * V8_PAGE, heap));
        // A page-like header of another heap, alone: not believed.
        let lone = base + 16 * V8_PAGE;
        memory.map(TargetAddr(lone), header(lone, V8_PAGE, 0x4000_0000));
        // A size that runs past its mapping, and an object area outside the page.
        let long = base + 20 * V8_PAGE;
        memory.map(TargetAddr(long), header(long, 8 * V8_PAGE, heap));
        let outside = base + 24 * V8_PAGE;
        let mut bad_area = header(outside, V8_PAGE, heap);
        bad_area[24..32].copy_from_slice(&(outside + V8_PAGE + 8).to_le_bytes());
        memory.map(TargetAddr(outside), bad_area);
        let vmas = [
            vma(base, V8_PAGE, b"rw-p"),
            vma(second, V8_PAGE, b"rw-p"),
            vma(large, 4 * V8_PAGE, b"rw-p"),
            vma(lone, V8_PAGE, b"rw-p"),
            vma(long, V8_PAGE, b"rw-p"),
            vma(outside, V8_PAGE, b"rw-p"),
            // Unreadable memory and inaccessible mappings are passed over.
            vma(base + 28 * V8_PAGE, V8_PAGE, b"rw-p"),
            vma(base + 32 * V8_PAGE, V8_PAGE, b"---p"),
        ];
        let pages = v8_pages(&vmas, &memory);
        assert_eq!(
            pages.iter().map(|p| (p.start, p.end)).collect::<Vec<_>>(),
            [
                (base, base + V8_PAGE),
                (second, second + V8_PAGE),
                (large, large + 4 * V8_PAGE)
            ]
        );
        assert!(pages.iter().all(|p| p.kind == RegionKind::V8Heap));
    }

    /// A JVM whose class-pointer base is `base`, CDS archive ends at `top` and
    /// `CompressedClassSpaceSize` is `size`.
    fn jvm_with_class_space(base: u64, top: u64, size: u64) -> (VmStructs, FakeMemory) {
        use crate::jit::hotspot::vmstructs::tests::FakeJvm;
        let mut jvm = FakeJvm::new();
        jvm.static_field(
            "CompressedKlassPointers",
            "_narrow_klass._base",
            "address",
            0x9100,
        );
        jvm.static_field("MetaspaceObj", "_shared_metaspace_top", "void*", 0x9108);
        jvm.type_entry("JVMFlag", None, 16);
        jvm.field("JVMFlag", "_addr", "", 0);
        jvm.field("JVMFlag", "_name", "const char*", 8);
        jvm.static_field("JVMFlag", "flags", "JVMFlag*", 0x9000);
        jvm.static_field("JVMFlag", "numFlags", "size_t", 0x9008);
        let (mut memory, symbols) = jvm.build();
        memory.map(TargetAddr(0x9000), vec![0; 0x200]);
        memory.write_u64(TargetAddr(0x9000), 0xa000);
        memory.write_u64(TargetAddr(0x9008), 1);
        memory.write_u64(TargetAddr(0x9100), base);
        memory.write_u64(TargetAddr(0x9108), top);
        let mut table = 0xb000u64.to_le_bytes().to_vec();
        table.extend_from_slice(&0xc000u64.to_le_bytes());
        memory.map(TargetAddr(0xa000), table);
        memory.map(TargetAddr(0xb000), size.to_le_bytes().to_vec());
        memory.map(TargetAddr(0xc000), b"CompressedClassSpaceSize\0".to_vec());
        let structs = VmStructs::read(&memory, &symbols).unwrap();
        (structs, memory)
    }

    #[test]
    fn the_class_space_follows_the_cds_archive() {
        let (structs, memory) = jvm_with_class_space(0x8_0000_0000, 0x8_00c0_0000, 1 << 30);
        let range = class_space(&structs, &memory).unwrap().unwrap();
        assert_eq!((range.start, range.end), (0x8_00c0_0000, 0x8_40c0_0000));
        assert_eq!(range.kind, RegionKind::JavaMetaspace);
        // No archive: the space starts at the base.
        let (structs, memory) = jvm_with_class_space(0x7f00_0000_0000, 0, 1 << 30);
        let range = class_space(&structs, &memory).unwrap().unwrap();
        assert_eq!(range.start, 0x7f00_0000_0000);
        // Zero-based encoding says nothing of where the space is.
        let (structs, memory) = jvm_with_class_space(0, 0, 1 << 30);
        assert_eq!(class_space(&structs, &memory).unwrap(), None);
        // A crafted size is refused.
        let (structs, memory) = jvm_with_class_space(0x8_0000_0000, 0, 1 << 40);
        assert!(class_space(&structs, &memory).is_err());
    }
}
