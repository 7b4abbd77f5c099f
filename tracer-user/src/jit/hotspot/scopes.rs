//! What a pc in compiled code stands for in Java terms: the chain of methods the JIT inlined
//! into one another at that pc, each with its bytecode index and source line.
//!
//! An nmethod records a `PcDesc` for every pc where Java state must be known (calls and
//! safepoints), sorted by offset from the code's start. A `PcDesc` points into the nmethod's
//! scopes data, where each scope is `sender offset, method index, bci` as compressed integers;
//! the method index is into the nmethod's metadata array, and the sender is the scope of the
//! caller it was inlined into (0: none). A return address is where the call's `PcDesc` is.
//! Source lines come from the method's compressed line-number table, right after its
//! bytecodes. (OpenJDK: `code/pcDesc.hpp`, `code/scopeDesc.cpp`, `code/nmethod.hpp`,
//! `oops/constMethod.hpp`, `code/compressedStream.cpp`.)
//!
//! Only the layout and encoding of JDK 17 are read: from JDK 21 the compressed integers and
//! the place of the scopes changed, and without the fields this reader knows a blob simply
//! gets no scopes (its own method still names it).

use super::{
    HotspotError,
    codecache::CodeBlob,
    memory::{Memory, TargetAddr},
    vmstructs::{Field, VmStructs},
};

/// The deepest inlining believed (HotSpot's MaxInlineLevel is 15, plus recursion).
const MAX_SCOPES: usize = 64;
/// The most `PcDesc`s read for one nmethod (a large method has a few thousand).
const MAX_PC_DESCS: u64 = 1 << 16;
/// The longest line-number table read (two bytes per line is typical).
const MAX_LINE_TABLE: usize = 64 << 10;
/// A compressed integer takes at most 5 bytes; a scope header is three of them.
const SCOPE_HEADER_BYTES: usize = 15;

/// One Java frame at a pc: a method, where in it, and whether it was inlined into the next
/// one out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub method: TargetAddr,
    /// The bytecode index; -1 (`InvocationEntryBci`) at the method's entry.
    pub bci: i32,
}

#[derive(Clone, Debug)]
pub struct ScopeLayout {
    regions: RegionLayout,
    pc_desc_size: u64,
    pc_offset: Field,
    scope_decode_offset: Field,
    invocation_entry_bci: i32,
    lines: LineLayout,
}

/// Where an nmethod keeps its `PcDesc`s, scope records and metadata.
#[derive(Clone, Debug)]
enum RegionLayout {
    /// Up to JDK 22: all inside the blob, at offsets from its start (`CompiledMethod`).
    InBlob {
        scopes_pcs_offset: Field,
        dependencies_offset: Field,
        metadata_offset: Field,
        scopes_data_begin: Field,
    },
    /// JDK 25: `PcDesc`s and scope records in the nmethod's immutable data, at offsets from
    /// it (records right after the `PcDesc`s); metadata in the blob's mutable data, after its
    /// relocations (`nmethod::metadata_begin`).
    Outside {
        immutable_data: Field,
        immutable_data_size: Field,
        scopes_pcs_offset: Field,
        scopes_data_offset: Field,
        mutable_data: Field,
        mutable_data_size: Field,
        relocation_size: Field,
    },
}

/// An nmethod's regions, as addresses: `PcDesc`s, scope records, metadata slots.
struct Regions {
    pcs: std::ops::Range<u64>,
    scopes_data: std::ops::Range<u64>,
    metadata: std::ops::Range<u64>,
}

/// The most bytes of scope records or metadata believed (far more than any method has).
const MAX_REGION: u64 = 16 << 20;

impl RegionLayout {
    fn new(vm: &VmStructs) -> Result<Self, HotspotError> {
        if let Ok(immutable_data) = vm.field("nmethod", "_immutable_data") {
            return Ok(Self::Outside {
                immutable_data,
                immutable_data_size: vm.field("nmethod", "_immutable_data_size")?,
                scopes_pcs_offset: vm.field("nmethod", "_scopes_pcs_offset")?,
                scopes_data_offset: vm.field("nmethod", "_scopes_data_offset")?,
                mutable_data: vm.field("CodeBlob", "_mutable_data")?,
                mutable_data_size: vm.field("CodeBlob", "_mutable_data_size")?,
                relocation_size: vm.field("CodeBlob", "_relocation_size")?,
            });
        }
        Ok(Self::InBlob {
            scopes_pcs_offset: vm.field("nmethod", "_scopes_pcs_offset")?,
            dependencies_offset: vm.field("nmethod", "_dependencies_offset")?,
            metadata_offset: vm.field("nmethod", "_metadata_offset")?,
            scopes_data_begin: vm.field("CompiledMethod", "_scopes_data_begin")?,
        })
    }

    fn fields(&self) -> Vec<Field> {
        match self {
            Self::InBlob {
                scopes_pcs_offset,
                dependencies_offset,
                metadata_offset,
                scopes_data_begin,
            } => vec![
                *scopes_pcs_offset,
                *dependencies_offset,
                *metadata_offset,
                *scopes_data_begin,
            ],
            Self::Outside {
                immutable_data,
                immutable_data_size,
                scopes_pcs_offset,
                scopes_data_offset,
                mutable_data,
                mutable_data_size,
                relocation_size,
            } => vec![
                *immutable_data,
                *immutable_data_size,
                *scopes_pcs_offset,
                *scopes_data_offset,
                *mutable_data,
                *mutable_data_size,
                *relocation_size,
            ],
        }
    }

    /// The regions of the nmethod `blob` whose header is `header`; every bound is checked.
    fn regions(&self, header: &[u8], blob: &CodeBlob) -> Result<Regions, HotspotError> {
        let corrupt = |detail: String| HotspotError::Corrupt {
            what: "nmethod scopes",
            detail,
        };
        let value = |field: &Field| -> Result<i64, HotspotError> {
            field
                .get_i64(header)
                .ok_or_else(|| corrupt("a header field out of its bytes".to_owned()))
        };
        let offset = |base: u64, field: &Field, limit: u64| -> Result<u64, HotspotError> {
            let offset = value(field)?;
            u64::try_from(offset)
                .ok()
                .filter(|&offset| offset <= limit)
                .and_then(|offset| base.checked_add(offset))
                .ok_or_else(|| corrupt(format!("offset {offset} outside its region")))
        };
        match self {
            Self::InBlob {
                scopes_pcs_offset,
                dependencies_offset,
                metadata_offset,
                scopes_data_begin,
            } => {
                let size = blob.end.0 - blob.start.0;
                let pcs = offset(blob.start.0, scopes_pcs_offset, size)?
                    ..offset(blob.start.0, dependencies_offset, size)?;
                let metadata = offset(blob.start.0, metadata_offset, size)?;
                let scopes_data = scopes_data_begin.get(header).unwrap_or(0);
                if !(metadata..=pcs.start).contains(&scopes_data) || pcs.start > pcs.end {
                    return Err(corrupt(format!(
                        "scopes at {scopes_data:#x}, pcs {:#x}-{:#x}",
                        pcs.start, pcs.end
                    )));
                }
                Ok(Regions {
                    scopes_data: scopes_data..pcs.start,
                    metadata: metadata..scopes_data,
                    pcs,
                })
            }
            Self::Outside {
                immutable_data,
                immutable_data_size,
                scopes_pcs_offset,
                scopes_data_offset,
                mutable_data,
                mutable_data_size,
                relocation_size,
            } => {
                let immutable = immutable_data.get(header).unwrap_or(0);
                let immutable_size = u64::try_from(value(immutable_data_size)?)
                    .ok()
                    .filter(|&size| size <= MAX_REGION)
                    .ok_or_else(|| corrupt("immutable data size".to_owned()))?;
                let pcs = offset(immutable, scopes_pcs_offset, immutable_size)?
                    ..offset(immutable, scopes_data_offset, immutable_size)?;
                let mutable = mutable_data.get(header).unwrap_or(0);
                let mutable_size = u64::try_from(value(mutable_data_size)?)
                    .ok()
                    .filter(|&size| size <= MAX_REGION)
                    .ok_or_else(|| corrupt("mutable data size".to_owned()))?;
                let metadata = offset(mutable, relocation_size, mutable_size)?;
                if immutable == 0 || mutable == 0 || pcs.start > pcs.end {
                    return Err(corrupt(format!(
                        "immutable data at {immutable:#x}, pcs {:#x}-{:#x}",
                        pcs.start, pcs.end
                    )));
                }
                Ok(Regions {
                    scopes_data: pcs.end..immutable + immutable_size,
                    pcs,
                    metadata: metadata..mutable + mutable_size,
                })
            }
        }
    }
}

/// Where a method's line-number table is: after its bytecodes in its `ConstMethod`, when a
/// flag says it has one. JDK 17 keeps the flags in a `u2` (`ConstMethod::_flags`), JDK 21 and
/// later in `ConstMethodFlags` (`ConstMethod::_flags._flags`), whose constants are named for
/// that type; those JDKs also write the table's numbers with an excluded zero byte
/// (`UNSIGNED5`, every byte one more).
#[derive(Clone, Debug)]
pub struct LineLayout {
    const_method: Field,
    const_method_size: u64,
    code_size: Field,
    flags: Field,
    has_line_table: u64,
    excluded_bytes: u32,
}

impl LineLayout {
    pub fn new(vm: &VmStructs) -> Result<Self, HotspotError> {
        let (flags, constant, excluded_bytes) = match vm.field("ConstMethod", "_flags") {
            Ok(flags) => (flags, "ConstMethod::_has_linenumber_table", 0),
            Err(_) => (
                vm.field("ConstMethod", "_flags._flags")?,
                "ConstMethodFlags::_misc_has_linenumber_table",
                1,
            ),
        };
        Ok(Self {
            const_method: vm.field("Method", "_constMethod")?,
            const_method_size: vm.size_of("ConstMethod")?,
            code_size: vm.field("ConstMethod", "_code_size")?,
            flags,
            has_line_table: vm
                .int_constants
                .get(constant)
                .map(|&bit| u64::from(bit as u32))
                .ok_or_else(|| HotspotError::MissingType {
                    type_name: constant.to_owned(),
                })?,
            excluded_bytes,
        })
    }
}

impl ScopeLayout {
    /// The layout, if this JVM is one whose scopes this reader knows (JDK 17's); `None` for
    /// others.
    pub fn new(vm: &VmStructs) -> Option<Self> {
        let layout = || -> Result<Self, HotspotError> {
            Ok(Self {
                regions: RegionLayout::new(vm)?,
                pc_desc_size: vm.size_of("PcDesc")?,
                pc_offset: vm.field("PcDesc", "_pc_offset")?,
                scope_decode_offset: vm.field("PcDesc", "_scope_decode_offset")?,
                invocation_entry_bci: vm
                    .int_constants
                    .get("InvocationEntryBci")
                    .copied()
                    .unwrap_or(-1),
                lines: LineLayout::new(vm)?,
            })
        };
        layout()
            .inspect_err(|err| log::debug!("no inlining information: {err}"))
            .ok()
            .filter(|layout| (8..=64).contains(&layout.pc_desc_size))
    }

    /// The scopes at `pc` in the nmethod `blob`, innermost first (the last is the nmethod's
    /// own method). `pc` is a return address minus one, or an instruction's address: the
    /// `PcDesc` taken is the first past it, which for a call is the one at its return address.
    pub fn scopes(
        &self,
        memory: &impl Memory,
        blob: &CodeBlob,
        pc: TargetAddr,
    ) -> Result<Vec<Scope>, HotspotError> {
        let corrupt = |detail: String| HotspotError::Corrupt {
            what: "nmethod scopes",
            detail,
        };
        let mem = |cause| HotspotError::Memory {
            what: "nmethod scopes",
            cause,
        };
        let Some(nmethod) = &blob.nmethod else {
            return Ok(Vec::new());
        };
        // The fields are inside the nmethod's header, which the code cache walk already checked
        // to lie inside its block.
        let fields = self.regions.fields();
        let needed = fields.iter().map(|field| field.end()).max().unwrap_or(0);
        let mut header = vec![0u8; needed as usize];
        memory.read(blob.start, &mut header).map_err(mem)?;
        let Regions {
            pcs,
            scopes_data,
            metadata,
        } = self.regions.regions(&header, blob)?;
        let count = (pcs.end - pcs.start) / self.pc_desc_size;
        if count > MAX_PC_DESCS {
            return Err(corrupt(format!("{count} PcDescs")));
        }
        let table = memory
            .read_vec(TargetAddr(pcs.start), (count * self.pc_desc_size) as usize)
            .map_err(mem)?;
        let offset = pc.0.wrapping_sub(blob.code.start.0) as i64;
        let decode = table
            .chunks_exact(self.pc_desc_size as usize)
            .filter_map(|desc| {
                Some((
                    self.pc_offset.get_i64(desc)?,
                    self.scope_decode_offset.get_i64(desc)?,
                ))
            })
            .find(|&(pc_offset, _)| pc_offset > offset)
            .map(|(_, decode)| decode);
        let Some(mut decode) = decode else {
            return Ok(vec![Scope {
                method: nmethod.method,
                bci: self.invocation_entry_bci,
            }]);
        };
        let data_len = scopes_data.end - scopes_data.start;
        let mut scopes = Vec::new();
        // 0 is DebugInformationRecorder::serialized_null: no (more) scopes.
        while decode != 0 {
            if scopes.len() >= MAX_SCOPES {
                return Err(corrupt(format!("more than {MAX_SCOPES} inlined scopes")));
            }
            let start = u64::try_from(decode)
                .ok()
                .filter(|&start| start < data_len)
                .ok_or_else(|| corrupt(format!("scope at {decode} of {data_len}")))?;
            let mut bytes = [0u8; SCOPE_HEADER_BYTES];
            let readable = (data_len - start).min(SCOPE_HEADER_BYTES as u64) as usize;
            memory
                .read(
                    TargetAddr(scopes_data.start + start),
                    &mut bytes[..readable],
                )
                .map_err(mem)?;
            let mut stream =
                Unsigned5::with_excluded(&bytes[..readable], self.lines.excluded_bytes);
            let (Some(sender), Some(index), Some(bci)) =
                (stream.read(), stream.read(), stream.read())
            else {
                return Err(corrupt(format!("scope at {decode} is cut short")));
            };
            if index == 0 {
                return Err(corrupt(format!("scope at {decode} has method index 0")));
            }
            let slot = TargetAddr(metadata.start)
                .offset(u64::from(index - 1) * 8)
                .map_err(mem)?;
            if slot.0 + 8 > metadata.end {
                return Err(corrupt(format!("method index {index}")));
            }
            let method = memory.read_addr(slot).map_err(mem)?;
            scopes.push(Scope {
                method,
                bci: (bci as i32).wrapping_add(self.invocation_entry_bci),
            });
            // A scope's sender was written before it: offsets only go down, so the walk ends.
            if i64::from(sender) >= decode {
                return Err(corrupt(format!("scope at {decode} has sender {sender}")));
            }
            decode = i64::from(sender);
        }
        Ok(scopes)
    }

    /// See [`LineLayout::line`].
    pub fn line(
        &self,
        memory: &impl Memory,
        method: TargetAddr,
        bci: i32,
    ) -> Result<Option<u32>, HotspotError> {
        self.lines.line(memory, method, bci)
    }
}

impl LineLayout {
    /// The source line of `bci` in the method at `method`, from its line-number table;
    /// `None` when it has none (or the bci is at the entry, -1, where line 0 would be a lie).
    pub fn line(
        &self,
        memory: &impl Memory,
        method: TargetAddr,
        bci: i32,
    ) -> Result<Option<u32>, HotspotError> {
        let mem = |cause| HotspotError::Memory {
            what: "line numbers",
            cause,
        };
        let const_method = TargetAddr(self.const_method.read(memory, method).map_err(mem)?);
        let flags = self.flags.read(memory, const_method).map_err(mem)?;
        let code_size = self.code_size.read(memory, const_method).map_err(mem)?;
        let bci = bci.max(0) as u64;
        if flags & self.has_line_table == 0 || bci >= code_size {
            return Ok(None);
        }
        let table = const_method
            .offset(self.const_method_size + code_size)
            .map_err(mem)?;
        let mut bytes = Vec::new();
        let mut piece = [0u8; 256];
        loop {
            let at = table.offset(bytes.len() as u64).map_err(mem)?;
            let got = memory.read_partial(at, &mut piece);
            if got == 0 || bytes.len() + got > MAX_LINE_TABLE {
                return Err(HotspotError::Corrupt {
                    what: "line numbers",
                    detail: format!("no end of the table at {table}"),
                });
            }
            bytes.extend_from_slice(&piece[..got]);
            // Pairs are decoded again from the start of what was read: tables are short.
            let mut reader = LineTable::default();
            let mut best: Option<(u64, u32)> = None;
            let mut stream = Unsigned5::with_excluded(&bytes, self.excluded_bytes);
            let mut ended = false;
            while let Some(pair) = reader.next(&mut stream) {
                match pair {
                    LinePair::End => {
                        ended = true;
                        break;
                    }
                    LinePair::Pair { bci: at, line } if at == bci => return Ok(Some(line)),
                    LinePair::Pair { bci: at, line } => {
                        if at < bci && best.is_none_or(|(best_bci, _)| at >= best_bci) {
                            best = Some((at, line));
                        }
                    }
                }
            }
            if ended {
                return Ok(best.map(|(_, line)| line));
            }
        }
    }
}

/// HotSpot's compressed integers up to JDK 20 (`CompressedReadStream::read_int`): a byte below
/// 192 ends the number; up to five bytes, each above the first worth 64 times more.
pub struct Unsigned5<'a> {
    bytes: &'a [u8],
    at: usize,
    /// What each byte of a number was written plus: 0 up to JDK 20, 1 from JDK 21 (whose
    /// `UNSIGNED5` never writes a zero byte).
    excluded: u32,
}

impl<'a> Unsigned5<'a> {
    const L: u32 = 192;

    pub fn new(bytes: &'a [u8]) -> Self {
        Self::with_excluded(bytes, 0)
    }

    pub fn with_excluded(bytes: &'a [u8], excluded: u32) -> Self {
        Self {
            bytes,
            at: 0,
            excluded,
        }
    }

    /// The next byte of a number, less the excluded bytes.
    fn digit(&mut self) -> Option<u32> {
        u32::from(self.byte()?).checked_sub(self.excluded)
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// The next number; `None` when the bytes end inside it.
    pub fn read(&mut self) -> Option<u32> {
        let first = self.digit()?;
        if first < Self::L {
            return Some(first);
        }
        let mut sum = first;
        let mut shift = 6;
        for i in 1..=4 {
            let byte = self.digit()?;
            sum = sum.wrapping_add(byte << shift);
            if byte < Self::L || i == 4 {
                return Some(sum);
            }
            shift += 6;
        }
        Some(sum)
    }

    /// A signed number, zigzag-encoded (`read_signed_int`).
    pub fn next_signed(&mut self) -> Option<i32> {
        let value = self.read()?;
        Some(((value >> 1) as i32) ^ -((value & 1) as i32))
    }
}

/// One step of a compressed line-number table.
enum LinePair {
    Pair { bci: u64, line: u32 },
    End,
}

/// The running (bci, line) of a compressed line-number table: a byte `bci_delta << 3 |
/// line_delta`, or 0xFF then both deltas as signed compressed integers; 0 ends the table.
#[derive(Default)]
struct LineTable {
    bci: i64,
    line: i64,
}

impl LineTable {
    fn next(&mut self, stream: &mut Unsigned5<'_>) -> Option<LinePair> {
        let byte = stream.byte()?;
        match byte {
            0 => return Some(LinePair::End),
            0xFF => {
                self.bci += i64::from(stream.next_signed()?);
                self.line += i64::from(stream.next_signed()?);
            }
            _ => {
                self.bci += i64::from(byte >> 3);
                self.line += i64::from(byte & 7);
            }
        }
        Some(LinePair::Pair {
            bci: u64::try_from(self.bci).unwrap_or(u64::MAX),
            line: u32::try_from(self.line).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::hotspot::{
        codecache::{BlobNames, CodeCacheLayout, tests as cc},
        memory::FakeMemory,
        names::tests as nm,
        vmstructs::tests::FakeJvm,
    };

    const OUTER: u64 = 0x60_0000;
    const INNER: u64 = 0x60_1000;

    /// An nmethod of `OUTER` whose code has two call sites: at offset 50, `INNER` (bci 5)
    /// inlined into `OUTER` (bci 10); at offset 100, `OUTER` alone (bci 10).
    fn setup() -> (
        FakeMemory,
        CodeCacheLayout,
        ScopeLayout,
        CodeBlob,
        TargetAddr,
    ) {
        let mut jvm = FakeJvm::new();
        cc::declare(&mut jvm);
        nm::declare(&mut jvm);
        jvm.type_entry("PcDesc", None, 16);
        jvm.type_entry("ConstMethod", None, 48);
        jvm.field("nmethod", "_scopes_pcs_offset", "int", 144);
        jvm.field("nmethod", "_dependencies_offset", "int", 148);
        jvm.field("nmethod", "_metadata_offset", "int", 152);
        jvm.field("CompiledMethod", "_scopes_data_begin", "address", 72);
        jvm.field("PcDesc", "_pc_offset", "int", 0);
        jvm.field("PcDesc", "_scope_decode_offset", "int", 4);
        jvm.field("ConstMethod", "_code_size", "u2", 32);
        jvm.field("ConstMethod", "_flags", "u2", 28);
        jvm.ints
            .push(("ConstMethod::_has_linenumber_table".into(), 1));
        let (mut memory, symbols) = jvm.build();
        cc::heap_images(&mut memory);
        let (blob, code) = cc::place_blob(&mut memory, 0, 8, cc::NAMES, OUTER, 5);
        let b = blob.0;
        // The code ends at +600; metadata, scopes and PcDescs follow it.
        memory.write_u64(TargetAddr(b + 32), b + 600);
        memory.write(TargetAddr(b + 144), &680u32.to_le_bytes());
        memory.write(TargetAddr(b + 148), &712u32.to_le_bytes());
        memory.write(TargetAddr(b + 152), &600u32.to_le_bytes());
        memory.write_u64(TargetAddr(b + 72), b + 640);
        memory.write_u64(TargetAddr(b + 600), OUTER);
        memory.write_u64(TargetAddr(b + 608), INNER);
        // Offset 0 is never a scope; at 1 the outer scope (no sender, method 1, bci 10), at 4
        // the inner one (sender 1, method 2, bci 5); a bci is written plus one.
        memory.write(TargetAddr(b + 640), &[0, 0, 1, 11, 1, 2, 6]);
        memory.write(TargetAddr(b + 680), &50u32.to_le_bytes());
        memory.write(TargetAddr(b + 684), &4u32.to_le_bytes());
        memory.write(TargetAddr(b + 696), &100u32.to_le_bytes());
        memory.write(TargetAddr(b + 700), &1u32.to_le_bytes());
        let vm = VmStructs::read(&memory, &symbols).unwrap();
        let layout = CodeCacheLayout::new(&vm).unwrap();
        let scopes = ScopeLayout::new(&vm).expect("JDK 17's scope fields");
        let heaps = layout.read_heaps(&memory).unwrap();
        let found = layout
            .find_blob(&memory, &heaps, &mut BlobNames::default(), code.start)
            .unwrap()
            .expect("the nmethod");
        (memory, layout, scopes, found, code.start)
    }

    #[test]
    fn scopes_at_a_call_are_the_inlined_chain() {
        let (memory, _, layout, blob, code) = setup();
        let at = |offset: u64| layout.scopes(&memory, &blob, TargetAddr(code.0 + offset));
        let scope = |method, bci| Scope {
            method: TargetAddr(method),
            bci,
        };
        // A return address at +50 is looked up at +49.
        assert_eq!(at(49).unwrap(), [scope(INNER, 5), scope(OUTER, 10)]);
        assert_eq!(at(60).unwrap(), [scope(OUTER, 10)]);
        // Past the last PcDesc: the method itself, at its entry.
        assert_eq!(at(150).unwrap(), [scope(OUTER, -1)]);
    }

    #[test]
    fn crafted_scope_records_are_errors() {
        let (mut memory, _, layout, blob, code) = setup();
        let b = blob.start.0;
        let pc = TargetAddr(code.0 + 49);
        // A scope that names itself as its sender: a loop.
        memory.write(TargetAddr(b + 644), &[4]);
        let err = layout.scopes(&memory, &blob, pc).unwrap_err();
        assert!(err.to_string().contains("sender"), "{err}");
        memory.write(TargetAddr(b + 644), &[1]);
        // Method index 0.
        memory.write(TargetAddr(b + 645), &[0]);
        let err = layout.scopes(&memory, &blob, pc).unwrap_err();
        assert!(err.to_string().contains("index 0"), "{err}");
        memory.write(TargetAddr(b + 645), &[2]);
        // A decode offset past the scopes.
        memory.write(TargetAddr(b + 684), &1000u32.to_le_bytes());
        let err = layout.scopes(&memory, &blob, pc).unwrap_err();
        assert!(err.to_string().contains("scope at 1000"), "{err}");
        memory.write(TargetAddr(b + 684), &4u32.to_le_bytes());
        // PcDescs said to run far past the blob.
        memory.write(TargetAddr(b + 148), &u32::MAX.to_le_bytes());
        let err = layout.scopes(&memory, &blob, pc).unwrap_err();
        assert!(err.to_string().contains("outside its region"), "{err}");
    }

    /// Encodes as HotSpot 17's CompressedWriteStream::write_int does.
    fn encode(mut value: u32, out: &mut Vec<u8>) {
        const L: u32 = 192;
        const H: u32 = 64;
        for _ in 0..4 {
            if value < L {
                out.push(value as u8);
                return;
            }
            out.push((L + (value - L) % H) as u8);
            value = (value - L) / H;
        }
        out.push(value as u8);
    }

    #[test]
    fn compressed_integers_round_trip() {
        for value in [
            0,
            1,
            191,
            192,
            255,
            256,
            4095,
            12_287,
            12_288,
            1 << 20,
            u32::MAX,
        ] {
            let mut bytes = Vec::new();
            encode(value, &mut bytes);
            assert_eq!(Unsigned5::new(&bytes).read(), Some(value), "{value}");
        }
        // Cut short inside a number.
        assert_eq!(Unsigned5::new(&[200]).read(), None);
        // Zigzag.
        for (raw, signed) in [(0, 0), (1, -1), (2, 1), (3, -2)] {
            let mut bytes = Vec::new();
            encode(raw, &mut bytes);
            assert_eq!(Unsigned5::new(&bytes).next_signed(), Some(signed));
        }
    }

    #[test]
    fn numbers_from_jdk_21_on_exclude_the_zero_byte() {
        // UNSIGNED5 writes every byte one more: 10 is 11; 200 is 201 then 1 (200 = 192 + 8,
        // and nothing left for the second byte).
        assert_eq!(Unsigned5::with_excluded(&[11], 1).read(), Some(10));
        assert_eq!(Unsigned5::with_excluded(&[201, 1], 1).read(), Some(200));
        // A zero byte is never written, and reads as nothing.
        assert_eq!(Unsigned5::with_excluded(&[0], 1).read(), None);
    }

    #[test]
    fn line_tables_decode_short_and_escaped_pairs() {
        // (bci 0, line 20) and (bci 4, line 21) in one byte each (bci delta << 3 | line
        // delta), then (bci 300, line 400) escaped, then the end.
        let mut bytes = vec![4, 4 << 3 | 1, 0xFF];
        encode(296 << 1, &mut bytes);
        encode(379 << 1, &mut bytes);
        bytes.push(0);
        // Start from line 16 so that the first short pair reaches line 20.
        let mut table = LineTable { bci: 0, line: 16 };
        let mut stream = Unsigned5::new(&bytes);
        let mut pairs = Vec::new();
        while let Some(LinePair::Pair { bci, line }) = table.next(&mut stream) {
            pairs.push((bci, line));
        }
        assert_eq!(pairs, [(0, 20), (4, 21), (300, 400)]);
    }
}
