//! Where a Go heap is, from the runtime's own arena index: `runtime.mheap_.allArenas`, the
//! index of every 64 MiB heap arena the runtime has mapped. Memory mapped before the attach
//! has no traced stack, so without this a running Go service's heap would be `other`.
//!
//! The field's offset inside `runtime.mheap` changes between Go releases, so it is read from
//! the executable's DWARF (Go writes it unless linked with `-w`). The slice itself is read from
//! the target's memory at every sample: its length is capped, and every arena it names is
//! only claimed where the target really has a mapping (the split gives owners parts of
//! mappings, never memory that is not mapped).

use std::io::Read;

use gimli::{EndianSlice, LittleEndian, SectionId};
use object::{CompressionFormat, Object, ObjectSection, ObjectSymbol};

use crate::jit::hotspot::{Memory, TargetAddr};

/// `heapArenaBytes` on 64-bit Linux (`runtime/malloc.go`): 64 MiB.
pub const ARENA_BYTES: u64 = 64 << 20;
/// `arenaBaseOffset` on amd64 (`runtime/malloc.go`): arena indices count from the bottom of
/// the 48-bit address space's upper half, so that both halves index from 0.
const ARENA_BASE_OFFSET: u64 = 0xffff_8000_0000_0000;
/// The most arenas believed: 4 TiB of heap. A longer slice is a misread.
const MAX_ARENAS: u64 = 1 << 16;
/// The most DWARF bytes decompressed to find one field (a large Go service has tens of MiB).
const MAX_DWARF_BYTES: u64 = 256 << 20;
/// The longest the search for the field may take: it runs at a sample, and the last sample
/// is on the way to the report, which a crafted or huge executable must not hold up.
const MAX_SEARCH: std::time::Duration = std::time::Duration::from_secs(1);

/// Where `runtime.mheap_.allArenas` (a slice header: pointer, length, capacity) is in the
/// target's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaIndex {
    pub slice: u64,
}

/// Finds the arena index of a Go executable; `Ok(None)` for a program that is not Go. `bias`:
/// where the executable is loaded, minus its link address.
pub fn index_in<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    bias: u64,
) -> Result<Option<ArenaIndex>, String> {
    if !super::is_go(file) {
        return Ok(None);
    }
    let mheap = file
        .symbols()
        .find(|s| s.name() == Ok("runtime.mheap_"))
        .ok_or("its executable has no runtime.mheap_ symbol (stripped?)")?
        .address()
        .wrapping_add(bias);
    let offset = member_offset(file, "runtime.mheap", "allArenas")?;
    Ok(Some(ArenaIndex {
        slice: mheap.wrapping_add(offset),
    }))
}

/// The byte offset of `member` in the structure type `structure`, from the DWARF.
fn member_offset<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    structure: &str,
    member: &str,
) -> Result<u64, String> {
    let sections = gimli::DwarfSections::load(|id| debug_section(file, id))?;
    let dwarf = sections.borrow(|data| EndianSlice::new(data, LittleEndian));
    // Units are read without `Dwarf::unit`, which would parse each unit's line program too:
    // only type entries are needed, whose names are inline or in .debug_str.
    let name_of =
        |entry: &gimli::DebuggingInformationEntry<_>| match entry.attr_value(gimli::DW_AT_name)? {
            gimli::AttributeValue::String(name) => Some(name),
            gimli::AttributeValue::DebugStrRef(offset) => dwarf.debug_str.get_str(offset).ok(),
            _ => None,
        };
    let dwarf_error = |err: gimli::Error| format!("its DWARF does not read: {err}");
    let deadline = std::time::Instant::now() + MAX_SEARCH;
    let late = || {
        (std::time::Instant::now() > deadline).then(|| {
            format!(
                "{structure} not found in its DWARF within {MAX_SEARCH:?}; not looked for again"
            )
        })
    };
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(dwarf_error)? {
        if let Some(err) = late() {
            return Err(err);
        }
        let abbreviations = dwarf.abbreviations(&header).map_err(dwarf_error)?;
        let mut tree = header
            .entries_tree(&abbreviations, None)
            .map_err(dwarf_error)?;
        let mut types = tree.root().map_err(dwarf_error)?.children();
        while let Some(node) = types.next().map_err(dwarf_error)? {
            if let Some(err) = late() {
                return Err(err);
            }
            let entry = node.entry();
            if entry.tag() != gimli::DW_TAG_structure_type
                || name_of(entry).is_none_or(|name| name.slice() != structure.as_bytes())
            {
                continue;
            }
            let mut members = node.children();
            while let Some(field) = members.next().map_err(dwarf_error)? {
                let entry = field.entry();
                if entry.tag() == gimli::DW_TAG_member
                    && name_of(entry).is_some_and(|name| name.slice() == member.as_bytes())
                {
                    return entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|value| value.udata_value())
                        .ok_or_else(|| format!("{structure}.{member} has no constant offset"));
                }
            }
            return Err(format!("{structure} has no field {member}"));
        }
    }
    Err(format!(
        "its DWARF has no {structure} (linked with -w, or not a Go runtime leakhound knows)"
    ))
}

/// The DWARF section `id` of `file`, decompressed (the Go linker compresses them); empty when
/// absent. Only the sections a type lookup needs are read.
fn debug_section<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    id: SectionId,
) -> Result<Vec<u8>, String> {
    if !matches!(
        id,
        SectionId::DebugInfo | SectionId::DebugAbbrev | SectionId::DebugStr
    ) {
        return Ok(Vec::new());
    }
    let Some(section) = file.section_by_name(id.name()) else {
        return Ok(Vec::new());
    };
    let what = id.name();
    let compressed = section
        .compressed_data()
        .map_err(|err| format!("{what} does not read: {err}"))?;
    if compressed.uncompressed_size > MAX_DWARF_BYTES {
        return Err(format!(
            "{what} says it is {} bytes, over the limit of {MAX_DWARF_BYTES}",
            compressed.uncompressed_size
        ));
    }
    match compressed.format {
        CompressionFormat::None => Ok(compressed.data.to_vec()),
        CompressionFormat::Zlib => {
            let mut out = Vec::with_capacity(compressed.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(compressed.data)
                .take(compressed.uncompressed_size)
                .read_to_end(&mut out)
                .map_err(|err| format!("{what} does not decompress: {err}"))?;
            Ok(out)
        }
        other => Err(format!("{what} is compressed as {other:?}, not read")),
    }
}

/// The heap arenas the runtime has mapped now, as address ranges, adjacent ones merged.
pub fn read(memory: &impl Memory, index: ArenaIndex) -> Result<Vec<(u64, u64)>, String> {
    let word = |at: u64| {
        memory
            .read_u64(TargetAddr(at))
            .map_err(|err| format!("runtime.mheap_.allArenas: {err}"))
    };
    let (ptr, len, cap) = (
        word(index.slice)?,
        word(index.slice.wrapping_add(8))?,
        word(index.slice.wrapping_add(16))?,
    );
    if len > cap || len > MAX_ARENAS {
        return Err(format!(
            "runtime.mheap_.allArenas reads as {len} arenas of {cap}: not believed"
        ));
    }
    let mut bytes = vec![0u8; len as usize * 8];
    memory
        .read(TargetAddr(ptr), &mut bytes)
        .map_err(|err| format!("the arena index at {ptr:#x}: {err}"))?;
    let mut starts: Vec<u64> = bytes
        .chunks_exact(8)
        .filter_map(|w| {
            let index = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            let start = index
                .checked_mul(ARENA_BYTES)?
                .wrapping_add(ARENA_BASE_OFFSET);
            // User space ends at 2^47 on x86-64 (2^56 with 5-level paging).
            (start < 1 << 56).then_some(start)
        })
        .collect();
    starts.sort_unstable();
    starts.dedup();
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for start in starts {
        match ranges.last_mut() {
            Some((_, end)) if *end == start => *end += ARENA_BYTES,
            _ => ranges.push((start, start + ARENA_BYTES)),
        }
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::hotspot::memory::FakeMemory;

    fn words(words: &[u64]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// The index of the arena at `start`, as the runtime computes it.
    fn index_of(start: u64) -> u64 {
        start.wrapping_sub(ARENA_BASE_OFFSET) / ARENA_BYTES
    }

    #[test]
    fn arenas_are_read_from_the_index_and_merged() {
        let heap = 0xc0_0000_0000u64;
        let list = 0x1000u64;
        let mut memory = FakeMemory::new();
        memory.map(TargetAddr(0x500), words(&[list, 3, 4]));
        memory.map(
            TargetAddr(list),
            words(&[
                index_of(heap + ARENA_BYTES),
                index_of(heap),
                index_of(heap + 8 * ARENA_BYTES),
            ]),
        );
        let ranges = read(&memory, ArenaIndex { slice: 0x500 }).unwrap();
        assert_eq!(
            ranges,
            [
                (heap, heap + 2 * ARENA_BYTES),
                (heap + 8 * ARENA_BYTES, heap + 9 * ARENA_BYTES)
            ]
        );
    }

    #[test]
    fn a_crafted_index_is_refused_or_bounded() {
        let mut memory = FakeMemory::new();
        // Longer than its capacity, and absurdly long.
        memory.map(TargetAddr(0x500), words(&[0x1000, 5, 4]));
        memory.map(TargetAddr(0x600), words(&[0x1000, 1 << 40, 1 << 40]));
        // Indices past user space and ones whose address overflows are dropped.
        memory.map(TargetAddr(0x700), words(&[0x1000, 2, 2]));
        memory.map(TargetAddr(0x1000), words(&[u64::MAX, 1 << 60]));
        assert!(read(&memory, ArenaIndex { slice: 0x500 }).is_err());
        assert!(read(&memory, ArenaIndex { slice: 0x600 }).is_err());
        assert_eq!(read(&memory, ArenaIndex { slice: 0x700 }).unwrap(), []);
        // Unreadable.
        assert!(read(&memory, ArenaIndex { slice: 0x9000 }).is_err());
    }
}
