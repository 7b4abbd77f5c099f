//! Address ranges that a runtime's own structures say it owns: glibc's arenas (their
//! `heap_info` headers) and a JVM's Java heap and code heaps (HotSpot's vmStructs).
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
        let mut words = [0u8; 32];
        if memory.read(TargetAddr(vma.start), &mut words).is_err() {
            continue;
        }
        let word = |i: usize| u64::from_le_bytes(words[i * 8..i * 8 + 8].try_into().unwrap());
        let (ar_ptr, prev, size, mprotect_size) = (word(0), word(1), word(2), word(3));
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
