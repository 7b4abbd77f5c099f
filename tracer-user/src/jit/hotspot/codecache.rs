//! From a pc to the CodeBlob that holds it, through the code cache's own bookkeeping.
//!
//! HotSpot keeps generated code in one to three `CodeHeap`s (`CodeCache::_heaps`). Each heap is
//! cut into segments of `1 << _log2_segment_size` bytes, and its segment map (`_segmap`) has one
//! byte per segment: `0xFF` for a free segment, 0 for the first segment of a block, and for any
//! other segment how many segments to step back towards the block's start (JDK 17 caps a step
//! at 0xFE, so a long block takes several steps). A block starts with a `HeapBlock` header
//! (its length in segments and whether it is used); the CodeBlob follows it. This is
//! `CodeHeap::find_start` in OpenJDK's `src/hotspot/share/memory/heap.cpp`.
//!
//! The target runs on while it is read, and its memory may be crafted: every walk is bounded,
//! every index is checked against the heap, and a blob is accepted only if the pc lies inside
//! both its block and its own size.

use std::{collections::HashMap, ops::Range, sync::Arc};

use super::{
    HotspotError,
    memory::{Memory, MemoryError, TargetAddr},
    vmstructs::{Field, VmStructs},
};

/// The most code heaps believed (JDK 17 has one, or three with segmented code cache).
const MAX_HEAPS: u64 = 16;
/// The most steps back through a segment map. A real walk takes one step per 254 segments of
/// its block; 4096 steps cover a 128 MiB blob with 128-byte segments.
const MAX_HOPS: usize = 4096;
/// Segment-map bytes read first, walking back: most blobs are under 254 segments and need one
/// step. A walk that leaves the window reads the next with [`SEGMAP_WINDOW`] bytes.
const SEGMAP_FIRST_WINDOW: u64 = 256;
const SEGMAP_WINDOW: u64 = 4096;
/// The longest CodeBlob name taken (`nmethod`, `Interpreter`, stub names).
const MAX_BLOB_NAME: usize = 128;
/// The most bytes read at a blob's start; the header of an nmethod is a few hundred.
const MAX_BLOB_IMAGE: u64 = 4096;
/// A free segment in the map (`CodeHeap::free_sentinel`).
const FREE_SEGMENT: u8 = 0xFF;

/// Offsets of everything read on the way from a pc to its blob, from the VM's tables.
#[derive(Clone, Debug)]
pub struct CodeCacheLayout {
    /// `CodeCache::_heaps`, a static `GrowableArray<CodeHeap*>*`.
    heaps: TargetAddr,
    array_len: Field,
    array_data: Field,
    /// Offsets of the `VirtualSpace`s embedded in a `CodeHeap`.
    heap_memory: u64,
    heap_segmap: u64,
    log2_segment_size: Field,
    space_low: Field,
    space_high: Field,
    /// `sizeof(HeapBlock)`: the CodeBlob follows the header.
    block_size: u64,
    block_length: Field,
    block_used: Field,
    blob: BlobLayout,
}

/// Where a blob's instructions are. JDK 17 keeps absolute pointers (`_code_begin`,
/// `_code_end`); from JDK 23 a blob keeps offsets from its own start (`_code_offset`, and
/// `_data_offset` where the code ends).
#[derive(Clone, Copy, Debug)]
enum CodeBounds {
    Pointers { begin: Field, end: Field },
    Offsets { begin: Field, end: Field },
}

/// How a blob's kind is told. From JDK 23 a blob has `_kind`, with the values exported as
/// constants (`CodeBlobKind::Nmethod`); before, only its name tells.
#[derive(Clone, Copy, Debug)]
enum KindSource {
    Name,
    Field { kind: Field, nmethod: u64 },
}

/// An nmethod's verified entry: a pointer (JDK 17) or an offset from its code (JDK 23+).
#[derive(Clone, Copy, Debug)]
enum VerifiedEntry {
    Pointer(Field),
    CodeOffset(Field),
}

#[derive(Clone, Debug)]
struct BlobLayout {
    name: Field,
    size: Field,
    frame_size: Field,
    code: CodeBounds,
    kind: KindSource,
    method: Field,
    compile_id: Field,
    comp_level: Field,
    entry_bci: Field,
    verified_entry: VerifiedEntry,
    /// Bytes to read at a blob's start to cover every field above.
    image_len: u64,
}

impl BlobLayout {
    fn new(vm: &VmStructs) -> Result<Self, HotspotError> {
        let code = match vm.field("CodeBlob", "_code_begin") {
            Ok(begin) => CodeBounds::Pointers {
                begin,
                end: vm.field("CodeBlob", "_code_end")?,
            },
            Err(_) => CodeBounds::Offsets {
                begin: vm.field("CodeBlob", "_code_offset")?,
                end: vm.field("CodeBlob", "_data_offset")?,
            },
        };
        let kind = match (
            vm.field("CodeBlob", "_kind"),
            vm.int_constants.get("CodeBlobKind::Nmethod"),
        ) {
            (Ok(kind), Some(&nmethod)) => KindSource::Field {
                kind,
                nmethod: u64::from(nmethod as u32),
            },
            _ => KindSource::Name,
        };
        let verified_entry = match vm.field("nmethod", "_verified_entry_point") {
            Ok(field) => VerifiedEntry::Pointer(field),
            Err(_) => VerifiedEntry::CodeOffset(vm.field("nmethod", "_verified_entry_offset")?),
        };
        let mut layout = Self {
            name: vm.field("CodeBlob", "_name")?,
            size: vm.field("CodeBlob", "_size")?,
            frame_size: vm.field("CodeBlob", "_frame_size")?,
            code,
            kind,
            method: vm.field("nmethod", "_method")?,
            compile_id: vm.field("nmethod", "_compile_id")?,
            comp_level: vm.field("nmethod", "_comp_level")?,
            entry_bci: vm.field("nmethod", "_entry_bci")?,
            verified_entry,
            image_len: 0,
        };
        let (CodeBounds::Pointers { begin, end } | CodeBounds::Offsets { begin, end }) = code;
        let mut fields = vec![
            layout.name,
            layout.size,
            layout.frame_size,
            begin,
            end,
            layout.method,
            layout.compile_id,
            layout.comp_level,
            layout.entry_bci,
        ];
        let (VerifiedEntry::Pointer(entry) | VerifiedEntry::CodeOffset(entry)) = verified_entry;
        fields.push(entry);
        if let KindSource::Field { kind, .. } = kind {
            fields.push(kind);
        }
        layout.image_len = fields.iter().map(|field| field.end()).max().unwrap_or(0);
        if layout.image_len > MAX_BLOB_IMAGE {
            return Err(HotspotError::BadTable {
                table: "gHotSpotVMStructs",
                detail: format!(
                    "CodeBlob fields reach {} bytes into the blob",
                    layout.image_len
                ),
            });
        }
        Ok(layout)
    }

    /// The code bounds of the blob at `start` whose copy is `image`.
    fn code(&self, start: TargetAddr, image: &[u8]) -> Option<(u64, u64)> {
        match self.code {
            CodeBounds::Pointers { begin, end } => Some((begin.get(image)?, end.get(image)?)),
            CodeBounds::Offsets { begin, end } => {
                let offset = |field: Field| {
                    let value = field.get_i64(image)?;
                    start.0.checked_add(u64::try_from(value).ok()?)
                };
                Some((offset(begin)?, offset(end)?))
            }
        }
    }
}

impl CodeCacheLayout {
    pub fn new(vm: &VmStructs) -> Result<Self, HotspotError> {
        let header = vm.offset("HeapBlock", "_header")?;
        let shift = |field: Field| Field {
            offset: field.offset + header,
            ..field
        };
        let blob = BlobLayout::new(vm)?;
        Ok(Self {
            heaps: vm.static_address("CodeCache", "_heaps")?,
            array_len: vm.field("GrowableArrayBase", "_len")?,
            array_data: vm.field("GrowableArray<int>", "_data")?,
            heap_memory: vm.offset("CodeHeap", "_memory")?,
            heap_segmap: vm.offset("CodeHeap", "_segmap")?,
            log2_segment_size: vm.field("CodeHeap", "_log2_segment_size")?,
            space_low: vm.field("VirtualSpace", "_low")?,
            space_high: vm.field("VirtualSpace", "_high")?,
            block_size: vm.size_of("HeapBlock")?,
            block_length: shift(vm.field("HeapBlock::Header", "_length")?),
            block_used: shift(vm.field("HeapBlock::Header", "_used")?),
            blob,
        })
    }

    /// Reads the heaps as they are now. Heaps grow (their committed end moves up), so a pc
    /// found in none of them is worth a new read.
    pub fn read_heaps(&self, memory: &impl Memory) -> Result<Vec<CodeHeap>, HotspotError> {
        let mem = |what: &'static str| move |cause| HotspotError::Memory { what, cause };
        let array = memory
            .read_addr(self.heaps)
            .map_err(mem("CodeCache::_heaps"))?;
        if array.is_null() {
            return Ok(Vec::new());
        }
        let len = self
            .array_len
            .read(memory, array)
            .map_err(mem("CodeCache::_heaps length"))?;
        if len as i64 > MAX_HEAPS as i64 || (len as i64) < 0 {
            return Err(HotspotError::Corrupt {
                what: "CodeCache::_heaps",
                detail: format!("{} heaps", len as i64),
            });
        }
        let data = TargetAddr(
            self.array_data
                .read(memory, array)
                .map_err(mem("CodeCache::_heaps data"))?,
        );
        let mut heaps = Vec::new();
        for index in 0..len {
            let slot = data
                .offset(index * 8)
                .map_err(mem("CodeCache::_heaps data"))?;
            let heap = memory.read_addr(slot).map_err(mem("CodeHeap pointer"))?;
            heaps.push(self.read_heap(memory, heap)?);
        }
        Ok(heaps)
    }

    fn read_heap(&self, memory: &impl Memory, heap: TargetAddr) -> Result<CodeHeap, HotspotError> {
        let mem = |cause| HotspotError::Memory {
            what: "CodeHeap",
            cause,
        };
        let space = |offset: u64| -> Result<Range<u64>, HotspotError> {
            let base = heap.offset(offset).map_err(mem)?;
            let low = self.space_low.read(memory, base).map_err(mem)?;
            let high = self.space_high.read(memory, base).map_err(mem)?;
            Ok(low..high)
        };
        let code = space(self.heap_memory)?;
        let segmap = space(self.heap_segmap)?;
        let log2 = self.log2_segment_size.read(memory, heap).map_err(mem)? as i64;
        let corrupt = |detail: String| HotspotError::Corrupt {
            what: "CodeHeap",
            detail,
        };
        if !(3..=20).contains(&log2) {
            return Err(corrupt(format!("segment size 2^{log2}")));
        }
        if code.start > code.end || segmap.start > segmap.end {
            return Err(corrupt(format!(
                "bounds {:#x}-{:#x}, map {:#x}-{:#x}",
                code.start, code.end, segmap.start, segmap.end
            )));
        }
        Ok(CodeHeap {
            address: heap,
            code,
            segmap,
            log2_segment_size: log2 as u32,
        })
    }

    /// The blob holding `pc` in one of `heaps`, or `None` where the pc is in no heap, in a
    /// free block, or outside the blob its block holds.
    pub fn find_blob(
        &self,
        memory: &impl Memory,
        heaps: &[CodeHeap],
        names: &mut BlobNames,
        pc: TargetAddr,
    ) -> Result<Option<CodeBlob>, HotspotError> {
        let Some(heap) = heaps.iter().find(|heap| heap.code.contains(&pc.0)) else {
            return Ok(None);
        };
        let Some(block) = heap.block_start(memory, pc)? else {
            return Ok(None);
        };
        let mem = |cause| HotspotError::Memory {
            what: "HeapBlock",
            cause,
        };
        let mut header = vec![0u8; self.block_size.min(MAX_BLOB_IMAGE) as usize];
        memory.read(block, &mut header).map_err(mem)?;
        let length = self.block_length.get(&header).unwrap_or(0);
        if self.block_used.get(&header) == Some(0) {
            return Ok(None);
        }
        let block_end = length
            .checked_shl(heap.log2_segment_size)
            .and_then(|bytes| block.0.checked_add(bytes))
            .filter(|&end| end <= heap.code.end);
        let Some(block_end) = block_end.filter(|&end| pc.0 < end) else {
            return Ok(None);
        };
        let start = block.offset(self.block_size).map_err(mem)?;
        self.read_blob(memory, names, start, block_end)
            .map(|blob| blob.filter(|blob| blob.contains(pc)))
    }

    /// Reads the blob at `start`, whose block ends at `limit`.
    fn read_blob(
        &self,
        memory: &impl Memory,
        names: &mut BlobNames,
        start: TargetAddr,
        limit: u64,
    ) -> Result<Option<CodeBlob>, HotspotError> {
        let layout = &self.blob;
        let available = limit.saturating_sub(start.0).min(layout.image_len);
        let mut image = vec![0u8; available as usize];
        memory
            .read(start, &mut image)
            .map_err(|cause| HotspotError::Memory {
                what: "CodeBlob",
                cause,
            })?;
        let get = |field: Field| field.get(&image);
        let (Some(name), Some(size), Some(frame_size), Some((code_begin, code_end))) = (
            get(layout.name),
            get(layout.size),
            get(layout.frame_size),
            layout.code(start, &image),
        ) else {
            return Ok(None);
        };
        let size = size as i64;
        let end = start.0.checked_add(size as u64).filter(|_| size > 0);
        let Some(end) = end.filter(|&end| end <= limit) else {
            return Ok(None);
        };
        if !(start.0 <= code_begin && code_begin <= code_end && code_end <= end) {
            return Ok(None);
        }
        let name = names.get(memory, TargetAddr(name))?;
        let kind = match layout.kind {
            KindSource::Name => BlobKind::from_name(&name),
            KindSource::Field { kind, nmethod } => match get(kind) {
                Some(value) if value == nmethod => BlobKind::Nmethod,
                Some(_) if BlobKind::from_name(&name) == BlobKind::Interpreter => {
                    BlobKind::Interpreter
                }
                Some(_) => BlobKind::Stub,
                None => return Ok(None),
            },
        };
        let nmethod = if kind == BlobKind::Nmethod {
            let verified = match layout.verified_entry {
                VerifiedEntry::Pointer(field) => get(field),
                VerifiedEntry::CodeOffset(field) => {
                    get(field).and_then(|offset| code_begin.checked_add(offset))
                }
            };
            let (Some(method), Some(compile_id), Some(level), Some(bci), Some(verified)) = (
                get(layout.method),
                get(layout.compile_id),
                get(layout.comp_level),
                get(layout.entry_bci),
                verified,
            ) else {
                return Ok(None);
            };
            Some(NmethodInfo {
                method: TargetAddr(method),
                compile_id: CompileId(compile_id as u32),
                comp_level: level as i64 as i32,
                entry_bci: bci as i64 as i32,
                verified_entry: TargetAddr(verified),
            })
        } else {
            None
        };
        Ok(Some(CodeBlob {
            start,
            end: TargetAddr(end),
            name,
            kind,
            code: TargetAddr(code_begin)..TargetAddr(code_end),
            frame_size_words: frame_size as i64 as i32,
            nmethod,
        }))
    }
}

/// One code heap as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeHeap {
    pub address: TargetAddr,
    /// Committed code: `_memory.low .. _memory.high`.
    pub code: Range<u64>,
    /// The segment map, one byte per segment: `_segmap.low .. _segmap.high`.
    pub segmap: Range<u64>,
    pub log2_segment_size: u32,
}

impl CodeHeap {
    /// The start of the block holding `pc` (already known to be inside the heap), by walking
    /// the segment map back; `None` for a free segment or a map that leads nowhere.
    pub fn block_start(
        &self,
        memory: &impl Memory,
        pc: TargetAddr,
    ) -> Result<Option<TargetAddr>, HotspotError> {
        let segments = self.segmap.end - self.segmap.start;
        let mut index = (pc.0 - self.code.start) >> self.log2_segment_size;
        if index >= segments {
            return Ok(None);
        }
        // A window of the map ending at `index`, re-read when the walk leaves it.
        let mut window: Vec<u8> = Vec::new();
        let mut window_start = 0u64;
        for _ in 0..MAX_HOPS {
            if window.is_empty() || index < window_start {
                let size = if window.is_empty() {
                    SEGMAP_FIRST_WINDOW
                } else {
                    SEGMAP_WINDOW
                };
                window_start = index.saturating_sub(size - 1);
                window = vec![0; (index - window_start + 1) as usize];
                memory
                    .read(TargetAddr(self.segmap.start + window_start), &mut window)
                    .map_err(|cause| HotspotError::Memory {
                        what: "CodeHeap segment map",
                        cause,
                    })?;
            }
            let step = window[(index - window_start) as usize];
            match step {
                FREE_SEGMENT => return Ok(None),
                0 => {
                    return Ok(Some(TargetAddr(
                        self.code.start + (index << self.log2_segment_size),
                    )));
                }
                step => match index.checked_sub(u64::from(step)) {
                    Some(next) => index = next,
                    None => return Ok(None),
                },
            }
        }
        Err(HotspotError::Corrupt {
            what: "CodeHeap segment map",
            detail: format!("no block start within {MAX_HOPS} steps back from {pc}"),
        })
    }
}

/// What a blob is, from its name: HotSpot 17 has no kind field, and names its compiled methods
/// `nmethod`, the wrappers that call native methods `native nmethod` (also nmethods, with the
/// native method as their `Method*`), and the template interpreter's code `Interpreter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobKind {
    Nmethod,
    Interpreter,
    /// Adapters, runtime stubs, buffer blobs: named but not Java methods.
    Stub,
}

impl BlobKind {
    fn from_name(name: &str) -> Self {
        match name {
            "nmethod" | "native nmethod" => Self::Nmethod,
            "Interpreter" => Self::Interpreter,
            _ => Self::Stub,
        }
    }
}

/// An nmethod's compile id: unique over the JVM's life, so with the blob's start it keys a
/// cache that code freed and replaced at the same address cannot fool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompileId(pub u32);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NmethodInfo {
    /// The compiled method (`Method*`).
    pub method: TargetAddr,
    pub compile_id: CompileId,
    pub comp_level: i32,
    /// -1 for a normal compile, the bytecode index of the loop for an on-stack-replacement one.
    pub entry_bci: i32,
    pub verified_entry: TargetAddr,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeBlob {
    pub start: TargetAddr,
    pub end: TargetAddr,
    pub name: Arc<str>,
    pub kind: BlobKind,
    /// The instructions: `_code_begin .. _code_end`, what a perf map lists.
    pub code: Range<TargetAddr>,
    /// The frame's size in words, return address included (`CodeBlob::_frame_size`).
    pub frame_size_words: i32,
    pub nmethod: Option<NmethodInfo>,
}

/// A key for caches of blobs: the start, with the compile id for nmethods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobKey {
    pub start: TargetAddr,
    pub compile_id: Option<CompileId>,
}

impl CodeBlob {
    pub fn contains(&self, pc: TargetAddr) -> bool {
        (self.start..self.end).contains(&pc)
    }

    pub fn key(&self) -> BlobKey {
        BlobKey {
            start: self.start,
            compile_id: self.nmethod.as_ref().map(|n| n.compile_id),
        }
    }
}

/// Blob names by address. They are string literals in libjvm.so, so an address always names
/// the same string; the cap on entries is against a target that crafts a new one per blob.
#[derive(Debug, Default)]
pub struct BlobNames {
    by_address: HashMap<TargetAddr, Arc<str>>,
}

const MAX_BLOB_NAMES: usize = 4096;

impl BlobNames {
    fn get(&mut self, memory: &impl Memory, addr: TargetAddr) -> Result<Arc<str>, HotspotError> {
        if let Some(name) = self.by_address.get(&addr) {
            return Ok(name.clone());
        }
        let name: Arc<str> = match memory.read_c_string(addr, MAX_BLOB_NAME) {
            Ok(name) => Arc::from(name),
            Err(MemoryError::NotUtf8 { .. }) => Arc::from("[unnamed]"),
            Err(cause) => {
                return Err(HotspotError::Memory {
                    what: "CodeBlob name",
                    cause,
                });
            }
        };
        if self.by_address.len() < MAX_BLOB_NAMES {
            self.by_address.insert(addr, name.clone());
        }
        Ok(name)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::jit::hotspot::{memory::FakeMemory, vmstructs::tests::FakeJvm};

    pub const HEAPS_VAR: u64 = 0x6000;
    pub const ARRAY: u64 = 0x6100;
    pub const HEAP: u64 = 0x6200;
    pub const SEGMAP: u64 = 0x10_0000;
    pub const CODE: u64 = 0x20_0000;
    pub const SEGMENTS: u64 = 1024;
    pub const LOG2: u64 = 7;
    pub const NAMES: u64 = 0x7000;

    /// Declares the fields a code cache needs, JDK 17's way (a made-up but consistent layout).
    pub fn declare(jvm: &mut FakeJvm) {
        jvm.type_entry("HeapBlock", None, 16);
        jvm.type_entry("HeapBlock::Header", None, 16);
        jvm.type_entry("CodeBlob", None, 64);
        jvm.type_entry("CompiledMethod", Some("CodeBlob"), 120);
        jvm.type_entry("nmethod", Some("CompiledMethod"), 200);
        jvm.field("HeapBlock", "_header", "HeapBlock::Header", 0);
        jvm.field("HeapBlock::Header", "_length", "size_t", 0);
        jvm.field("HeapBlock::Header", "_used", "bool", 8);
        jvm.field("CodeBlob", "_name", "const char*", 8);
        jvm.field("CodeBlob", "_size", "int", 16);
        jvm.field("CodeBlob", "_frame_size", "int", 20);
        jvm.field("CodeBlob", "_code_begin", "address", 24);
        jvm.field("CodeBlob", "_code_end", "address", 32);
        jvm.field("CompiledMethod", "_method", "Method*", 64);
        jvm.field("nmethod", "_entry_bci", "int", 120);
        jvm.field("nmethod", "_compile_id", "int", 124);
        jvm.field("nmethod", "_comp_level", "int", 128);
        jvm.field("nmethod", "_verified_entry_point", "address", 136);
        jvm.static_field(
            "CodeCache",
            "_heaps",
            "GrowableArray<CodeHeap*>*",
            HEAPS_VAR,
        );
        jvm.field("GrowableArrayBase", "_len", "int", 0);
        jvm.field("GrowableArray<int>", "_data", "int*", 8);
        jvm.field("CodeHeap", "_memory", "VirtualSpace", 0);
        jvm.field("CodeHeap", "_segmap", "VirtualSpace", 32);
        jvm.field("CodeHeap", "_log2_segment_size", "int", 64);
        jvm.field("VirtualSpace", "_low", "char*", 16);
        jvm.field("VirtualSpace", "_high", "char*", 24);
    }

    /// One heap of 1024 segments of 128 bytes at `CODE`, all free, its map at `SEGMAP`.
    pub fn heap_images(memory: &mut FakeMemory) {
        let mut heaps = vec![0u8; 8];
        heaps.copy_from_slice(&ARRAY.to_le_bytes());
        memory.map(TargetAddr(HEAPS_VAR), heaps);
        let mut array = vec![0u8; 24];
        array[0..4].copy_from_slice(&1u32.to_le_bytes());
        array[8..16].copy_from_slice(&(ARRAY + 16).to_le_bytes());
        array[16..24].copy_from_slice(&HEAP.to_le_bytes());
        memory.map(TargetAddr(ARRAY), array);
        let mut heap = vec![0u8; 72];
        let code_end = CODE + (SEGMENTS << LOG2);
        heap[16..24].copy_from_slice(&CODE.to_le_bytes());
        heap[24..32].copy_from_slice(&code_end.to_le_bytes());
        heap[48..56].copy_from_slice(&SEGMAP.to_le_bytes());
        heap[56..64].copy_from_slice(&(SEGMAP + SEGMENTS).to_le_bytes());
        heap[64..68].copy_from_slice(&(LOG2 as u32).to_le_bytes());
        memory.map(TargetAddr(HEAP), heap);
        memory.map(TargetAddr(SEGMAP), vec![FREE_SEGMENT; SEGMENTS as usize]);
        memory.map(TargetAddr(CODE), vec![0; (SEGMENTS << LOG2) as usize]);
        memory.map(
            TargetAddr(NAMES),
            b"nmethod\0Interpreter\0StubRoutines (1)\0".to_vec(),
        );
    }

    /// Places a used block of `segments` segments at segment `first`, marks the map as JDK 17
    /// does (steps of up to 0xFE, then restarting at 1), and writes a blob header.
    pub fn place_blob(
        memory: &mut FakeMemory,
        first: u64,
        segments: u64,
        name: u64,
        method: u64,
        compile_id: u32,
    ) -> (TargetAddr, Range<TargetAddr>) {
        let mut map = Vec::new();
        let mut step = 0u64;
        for _ in 0..segments {
            map.push(step as u8);
            step = if step == 0xFE { 1 } else { step + 1 };
        }
        memory.write(TargetAddr(SEGMAP + first), &map);
        let block = CODE + (first << LOG2);
        memory.write_u64(TargetAddr(block), segments);
        memory.write(TargetAddr(block + 8), &[1]);
        let blob = block + 16;
        let size = (segments << LOG2) - 16;
        let code = (blob + 200)..(blob + size - 8);
        memory.write_u64(TargetAddr(blob + 8), name);
        memory.write(TargetAddr(blob + 16), &(size as u32).to_le_bytes());
        memory.write(TargetAddr(blob + 20), &6u32.to_le_bytes());
        memory.write_u64(TargetAddr(blob + 24), code.start);
        memory.write_u64(TargetAddr(blob + 32), code.end);
        memory.write_u64(TargetAddr(blob + 64), method);
        memory.write(TargetAddr(blob + 120), &(-1i32).to_le_bytes());
        memory.write(TargetAddr(blob + 124), &compile_id.to_le_bytes());
        memory.write(TargetAddr(blob + 128), &4u32.to_le_bytes());
        memory.write_u64(TargetAddr(blob + 136), code.start + 16);
        (
            TargetAddr(blob),
            TargetAddr(code.start)..TargetAddr(code.end),
        )
    }

    pub fn setup() -> (FakeMemory, CodeCacheLayout) {
        let mut jvm = FakeJvm::new();
        declare(&mut jvm);
        let (mut memory, symbols) = jvm.build();
        heap_images(&mut memory);
        let vm = VmStructs::read(&memory, &symbols).unwrap();
        let layout = CodeCacheLayout::new(&vm).unwrap();
        (memory, layout)
    }

    #[test]
    fn finds_blobs_through_the_segment_map() {
        let (mut memory, layout) = setup();
        // A small nmethod, a long interpreter (several 0xFE steps) and a free gap between.
        let (small, small_code) = place_blob(&mut memory, 0, 4, NAMES, 0xabc0, 42);
        let (long, long_code) = place_blob(&mut memory, 10, 900, NAMES + 8, 0, 0);
        let heaps = layout.read_heaps(&memory).unwrap();
        assert_eq!(heaps.len(), 1);
        assert_eq!(heaps[0].log2_segment_size, 7);
        let mut names = BlobNames::default();
        let mut find = |pc: u64| {
            layout
                .find_blob(&memory, &heaps, &mut names, TargetAddr(pc))
                .unwrap()
        };

        let blob = find(small_code.start.0 + 5).expect("the nmethod");
        assert_eq!(blob.start, small);
        assert_eq!(blob.kind, BlobKind::Nmethod);
        assert_eq!(blob.code, small_code);
        assert_eq!(blob.frame_size_words, 6);
        let nmethod = blob.nmethod.clone().expect("nmethod fields");
        assert_eq!(nmethod.method, TargetAddr(0xabc0));
        assert_eq!(nmethod.compile_id, CompileId(42));
        assert_eq!(nmethod.entry_bci, -1);
        assert_eq!(
            blob.key(),
            BlobKey {
                start: small,
                compile_id: Some(CompileId(42))
            }
        );

        let far = long_code.end.0 - 1;
        let blob = find(far).expect("the interpreter");
        assert_eq!((blob.start, blob.kind), (long, BlobKind::Interpreter));
        assert_eq!(&*blob.name, "Interpreter");
        assert!(blob.nmethod.is_none());

        // Free segments, outside every heap, and a block's header before its blob.
        assert!(find(CODE + (6 << LOG2)).is_none());
        assert!(find(CODE - 1).is_none());
        assert!(find(CODE + (SEGMENTS << LOG2)).is_none());
        assert!(find(CODE + (10 << LOG2) + 4).is_none());
    }

    #[test]
    fn reads_the_jdk23_layout_of_offsets_and_kinds() {
        // From JDK 23 a blob keeps its code bounds as offsets from its start, says its kind
        // in `_kind`, and an nmethod keeps its verified entry as an offset from its code.
        let mut jvm = FakeJvm::new();
        jvm.type_entry("HeapBlock", None, 16);
        jvm.type_entry("HeapBlock::Header", None, 16);
        jvm.type_entry("CodeBlob", None, 64);
        jvm.type_entry("nmethod", Some("CodeBlob"), 200);
        jvm.type_entry("CodeBlobKind", None, 1);
        jvm.type_entry("uint32_t", None, 4);
        jvm.field("HeapBlock", "_header", "HeapBlock::Header", 0);
        jvm.field("HeapBlock::Header", "_length", "uint32_t", 0);
        jvm.field("HeapBlock::Header", "_used", "bool", 4);
        jvm.field("CodeBlob", "_name", "const char*", 8);
        jvm.field("CodeBlob", "_size", "int", 16);
        jvm.field("CodeBlob", "_frame_size", "int", 20);
        jvm.field("CodeBlob", "_code_offset", "int", 24);
        jvm.field("CodeBlob", "_data_offset", "int", 28);
        jvm.field("CodeBlob", "_kind", "CodeBlobKind", 32);
        jvm.field("nmethod", "_method", "Method*", 64);
        jvm.field("nmethod", "_entry_bci", "int", 120);
        jvm.field("nmethod", "_compile_id", "int", 124);
        jvm.field("nmethod", "_comp_level", "int", 128);
        jvm.field("nmethod", "_verified_entry_offset", "u2", 132);
        jvm.ints.push(("CodeBlobKind::Nmethod".into(), 1));
        for (type_name, field, type_string, offset) in [
            ("GrowableArrayBase", "_len", "int", 0),
            ("GrowableArray<int>", "_data", "int*", 8),
            ("CodeHeap", "_memory", "VirtualSpace", 0),
            ("CodeHeap", "_segmap", "VirtualSpace", 32),
            ("CodeHeap", "_log2_segment_size", "int", 64),
            ("VirtualSpace", "_low", "char*", 16),
            ("VirtualSpace", "_high", "char*", 24),
        ] {
            jvm.field(type_name, field, type_string, offset);
        }
        jvm.static_field(
            "CodeCache",
            "_heaps",
            "GrowableArray<CodeHeap*>*",
            HEAPS_VAR,
        );
        let (mut memory, symbols) = jvm.build();
        heap_images(&mut memory);
        let vm = VmStructs::read(&memory, &symbols).unwrap();
        let layout = CodeCacheLayout::new(&vm).unwrap();

        // Two blocks of 4 segments: an nmethod (kind 1, named anything) and a stub (kind 3,
        // named `nmethod` to show that the kind wins over the name).
        let mut place = |first: u64, kind: u8| {
            memory.write(TargetAddr(SEGMAP + first), &[0, 1, 2, 3]);
            let block = CODE + (first << LOG2);
            memory.write(TargetAddr(block), &4u32.to_le_bytes());
            memory.write(TargetAddr(block + 4), &[1]);
            let blob = block + 16;
            memory.write_u64(TargetAddr(blob + 8), NAMES);
            memory.write(TargetAddr(blob + 16), &(4u32 * 128 - 16).to_le_bytes());
            memory.write(TargetAddr(blob + 20), &4u32.to_le_bytes());
            memory.write(TargetAddr(blob + 24), &160u32.to_le_bytes());
            memory.write(TargetAddr(blob + 28), &400u32.to_le_bytes());
            memory.write(TargetAddr(blob + 32), &[kind]);
            memory.write_u64(TargetAddr(blob + 64), 0xfeed0);
            memory.write(TargetAddr(blob + 124), &9u32.to_le_bytes());
            memory.write(TargetAddr(blob + 132), &32u16.to_le_bytes());
            blob
        };
        let nmethod = place(0, 1);
        let stub = place(4, 3);
        let heaps = layout.read_heaps(&memory).unwrap();
        let mut names = BlobNames::default();
        let blob = layout
            .find_blob(&memory, &heaps, &mut names, TargetAddr(nmethod + 200))
            .unwrap()
            .expect("the nmethod");
        assert_eq!(blob.kind, BlobKind::Nmethod);
        assert_eq!(
            blob.code,
            TargetAddr(nmethod + 160)..TargetAddr(nmethod + 400)
        );
        let info = blob.nmethod.expect("nmethod fields");
        assert_eq!(info.verified_entry, TargetAddr(nmethod + 160 + 32));
        assert_eq!(info.compile_id, CompileId(9));
        let blob = layout
            .find_blob(&memory, &heaps, &mut names, TargetAddr(stub + 200))
            .unwrap()
            .expect("the stub");
        assert_eq!(blob.kind, BlobKind::Stub);
        assert!(blob.nmethod.is_none());
        // A pc in the blob's header is in the blob but not in its code.
        assert!(
            layout
                .find_blob(&memory, &heaps, &mut names, TargetAddr(stub + 8))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn a_segment_map_that_steps_before_the_heap_ends_the_walk() {
        let (mut memory, layout) = setup();
        memory.write(TargetAddr(SEGMAP), &[5, 5, 5]);
        let heaps = layout.read_heaps(&memory).unwrap();
        let found = heaps[0].block_start(&memory, TargetAddr(CODE + (2 << LOG2)));
        assert!(matches!(found, Ok(None)));
    }

    #[test]
    fn a_segment_map_of_endless_small_steps_is_bounded() {
        let (mut memory, layout) = setup();
        // Every segment says "one back" and none starts a block: the walk must stop at its cap
        // or at the heap's start, never loop.
        memory.write(TargetAddr(SEGMAP), &vec![1u8; SEGMENTS as usize]);
        let heaps = layout.read_heaps(&memory).unwrap();
        let pc = TargetAddr(CODE + ((SEGMENTS - 1) << LOG2));
        let found = heaps[0].block_start(&memory, pc);
        assert!(matches!(found, Ok(None)), "{found:?}");

        // With a heap far bigger than the cap, the cap ends it.
        let mut big = heaps[0].clone();
        let huge = 1u64 << 20;
        memory.map(TargetAddr(0x4000_0000), vec![1u8; huge as usize]);
        big.segmap = 0x4000_0000..0x4000_0000 + huge;
        big.code = 0x8000_0000..0x8000_0000 + (huge << LOG2);
        let err = big
            .block_start(&memory, TargetAddr(big.code.end - 1))
            .unwrap_err();
        assert!(err.to_string().contains("steps back"), "{err}");
    }

    #[test]
    fn a_block_header_or_blob_size_that_lies_is_no_blob() {
        let (mut memory, layout) = setup();
        let (blob, code) = place_blob(&mut memory, 0, 4, NAMES, 0, 1);
        let heaps = layout.read_heaps(&memory).unwrap();
        let mut names = BlobNames::default();
        let pc = TargetAddr(code.start.0);

        // The block claims more segments than the heap has.
        memory.write_u64(TargetAddr(CODE), u64::MAX);
        assert!(
            layout
                .find_blob(&memory, &heaps, &mut names, pc)
                .unwrap()
                .is_none()
        );
        memory.write_u64(TargetAddr(CODE), 4);
        // The blob claims to be bigger than its block.
        memory.write(TargetAddr(blob.0 + 16), &(1u32 << 30).to_le_bytes());
        assert!(
            layout
                .find_blob(&memory, &heaps, &mut names, pc)
                .unwrap()
                .is_none()
        );
        // A block marked free.
        memory.write(TargetAddr(blob.0 + 16), &(4u32 * 128 - 16).to_le_bytes());
        memory.write(TargetAddr(CODE + 8), &[0]);
        assert!(
            layout
                .find_blob(&memory, &heaps, &mut names, pc)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_crafted_heap_list_is_refused() {
        let (mut memory, layout) = setup();
        memory.write(TargetAddr(ARRAY), &1_000_000u32.to_le_bytes());
        let err = layout.read_heaps(&memory).unwrap_err();
        assert!(err.to_string().contains("heaps"), "{err}");
        memory.write(TargetAddr(ARRAY), &1u32.to_le_bytes());
        memory.write(TargetAddr(HEAP + 64), &63u32.to_le_bytes());
        let err = layout.read_heaps(&memory).unwrap_err();
        assert!(err.to_string().contains("segment size"), "{err}");
    }
}
