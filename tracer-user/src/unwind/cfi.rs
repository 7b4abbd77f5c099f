//! Unwind rules from `.eh_frame`, one module at a time, cached for the session.

use std::{collections::HashMap, fs::File};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, EhFrameOffset, LittleEndian, RegisterRule,
    UnwindContext, UnwindSection as _, X86_64,
};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ReadRef, read::ReadCache};
use tracer_common::{FrameIdentity, RBP_UNCHANGED, RuleKind, UnwindRule};

use crate::{
    identities::FrameKinds,
    jit::hotspot::{codecache::BlobKey, frames::HotspotFrames},
    process::address_space::{AddressSpace, FileKey, Location},
};

/// The largest `.eh_frame` or `.eh_frame_hdr` read. libjvm.so's `.eh_frame` is about 2 MiB.
const MAX_CFI_SECTION_BYTES: u64 = 64 << 20;

/// The CFI of one mapped file, with what it takes to turn file offsets into the addresses the
/// CFI speaks of.
struct ModuleCfi {
    eh_frame: Vec<u8>,
    eh_frame_addr: u64,
    eh_frame_hdr: Vec<u8>,
    eh_frame_hdr_addr: u64,
    text_addr: u64,
    /// Loadable segments: file offset, size in the file, virtual address.
    segments: Vec<(u64, u64, u64)>,
}

impl ModuleCfi {
    fn read(file: &File) -> Option<Self> {
        Self::parse(&ReadCache::new(file))
    }

    /// The CFI of an ELF image; `None` when it is not one or has no `.eh_frame_hdr`. The
    /// image is the target's file, so anything in it may be crafted.
    fn parse<'data>(data: impl ReadRef<'data>) -> Option<Self> {
        let elf = object::File::parse(data).ok()?;
        let section = |name: &str| {
            let section = elf.section_by_name(name)?;
            // The file is the target's: a section header may claim any size.
            if section.size() > MAX_CFI_SECTION_BYTES {
                log::debug!("{name} of {} bytes: not read", section.size());
                return None;
            }
            Some((section.data().ok()?.to_vec(), section.address()))
        };
        let (eh_frame, eh_frame_addr) = section(".eh_frame")?;
        let (eh_frame_hdr, eh_frame_hdr_addr) = section(".eh_frame_hdr")?;
        if !search_table_fits(&eh_frame_hdr) {
            return None;
        }
        let text_addr = elf
            .section_by_name(".text")
            .map_or(0, |text| text.address());
        let segments = elf
            .segments()
            .map(|segment| {
                let (offset, size) = segment.file_range();
                (offset, size, segment.address())
            })
            .collect();
        Some(Self {
            eh_frame,
            eh_frame_addr,
            eh_frame_hdr,
            eh_frame_hdr_addr,
            text_addr,
            segments,
        })
    }

    fn address_of(&self, file_offset: u64) -> Option<u64> {
        // Segment bounds come from the file: a crafted one may reach past 2^64.
        self.segments
            .iter()
            .find(|(offset, size, _)| file_offset >= *offset && file_offset - offset < *size)
            .and_then(|(offset, _, vaddr)| vaddr.checked_add(file_offset - offset))
    }

    /// The rule in effect at `address` (a virtual address in this file), or `None` when no FDE
    /// covers it.
    fn rule_at(&self, address: u64, ctx: &mut UnwindContext<usize>) -> Option<UnwindRule> {
        let bases = BaseAddresses::default()
            .set_eh_frame_hdr(self.eh_frame_hdr_addr)
            .set_eh_frame(self.eh_frame_addr)
            .set_text(self.text_addr);
        let eh_frame = EhFrame::new(&self.eh_frame, LittleEndian);
        let header = EhFrameHdr::new(&self.eh_frame_hdr, LittleEndian)
            .parse(&bases, 8)
            .ok()?;
        let table = header.table()?;
        // gimli's `unwind_info_for_address` subtracts the section's address from the FDE
        // pointer found in the table without a check, which overflows when a crafted table
        // points below the section (found by fuzz/fuzz_targets/cfi_rules.rs). Its steps,
        // with the subtraction checked:
        let fde_pointer = table.lookup(address, &bases).ok()?.direct().ok()?;
        let section = header.eh_frame_ptr().direct().ok()?;
        let offset = usize::try_from(fde_pointer.checked_sub(section)?).ok()?;
        let fde = eh_frame
            .fde_from_offset(&bases, EhFrameOffset(offset), EhFrame::cie_from_offset)
            .ok()?;
        if !fde.contains(address) {
            return None;
        }
        let row = fde
            .unwind_info_for_address(&eh_frame, &bases, ctx, address)
            .ok()?;
        Some(rule_of(row))
    }
}

/// Whether the binary-search table that `.eh_frame_hdr` announces fits in the section. gimli
/// 0.34 takes the FDE count from the header as it is and computes row offsets from it, which
/// overflows for a crafted count (found by fuzz/fuzz_targets/cfi_rules.rs). Linkers write
/// fixed-size encodings; a header with others is not searched, and the module is then walked
/// by frame pointers like code without CFI.
fn search_table_fits(hdr: &[u8]) -> bool {
    const OMIT: u8 = 0xff;
    // Bytes of a fixed-size pointer encoding (DW_EH_PE_*), by its low four bits.
    let size = |encoding: u8| match encoding & 0x0f {
        0x00 | 0x04 | 0x0c => Some(8),
        0x02 | 0x0a => Some(2),
        0x03 | 0x0b => Some(4),
        _ => None,
    };
    let [
        _version,
        ptr_encoding,
        count_encoding,
        table_encoding,
        rest @ ..,
    ] = hdr
    else {
        return false;
    };
    if *count_encoding == OMIT || *table_encoding == OMIT {
        // No table: gimli does not search one.
        return true;
    }
    let ptr = if *ptr_encoding == OMIT {
        Some(0)
    } else {
        size(*ptr_encoding)
    };
    let (Some(ptr), Some(count), Some(entry)) = (ptr, size(*count_encoding), size(*table_encoding))
    else {
        return false;
    };
    let Some(count_bytes) = rest.get(ptr..ptr + count) else {
        return false;
    };
    let mut le = [0u8; 8];
    le[..count].copy_from_slice(count_bytes);
    let fdes = u64::from_le_bytes(le);
    let table = (rest.len() - ptr - count) as u64;
    fdes.checked_mul(2 * entry as u64)
        .is_some_and(|needed| needed <= table)
}

/// Turns a CFI row into what the kernel walk can apply; anything else ends the walk there.
fn rule_of(row: &gimli::UnwindTableRow<usize>) -> UnwindRule {
    let stop = UnwindRule::stop();
    // The return address must be at CFA - 8, as the call pushed it; `_start` marks it
    // undefined, which ends every walk at the outermost frame.
    if !matches!(row.register(X86_64::RA), Some(RegisterRule::Offset(-8))) {
        return stop;
    }
    let (kind, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => {
            (RuleKind::CfaRsp, *offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => {
            (RuleKind::CfaRbp, *offset)
        }
        _ => return stop,
    };
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue | RegisterRule::Undefined) => RBP_UNCHANGED,
        Some(RegisterRule::Offset(offset)) => match i32::try_from(offset) {
            Ok(offset) if offset != RBP_UNCHANGED => offset,
            _ => return stop,
        },
        Some(_) => return stop,
    };
    let Ok(cfa_offset) = i32::try_from(cfa_offset) else {
        return stop;
    };
    UnwindRule::new(kind, cfa_offset, rbp_offset)
}

/// The rule at each of `file_offsets` in the ELF image `image`, as a session derives it from
/// a mapped file; `None` where no CFI covers an offset. For tests and fuzzing, which hand it
/// arbitrary bytes.
pub fn rules_in_image(image: &[u8], file_offsets: &[u64]) -> Vec<Option<UnwindRule>> {
    let Some(module) = ModuleCfi::parse(image) else {
        return vec![None; file_offsets.len()];
    };
    let mut ctx = UnwindContext::new();
    file_offsets
        .iter()
        .map(|&offset| {
            let address = module.address_of(offset)?;
            module.rule_at(address, &mut ctx)
        })
        .collect()
}

/// Rules by return address for one traced process.
pub struct CfiRules {
    modules: HashMap<FileKey, Option<ModuleCfi>>,
    by_address: HashMap<u64, UnwindRule>,
    /// Rules derived from a compiled Java method's frame size, with the blob they came from:
    /// HotSpot frees code and reuses its addresses, after which such a rule is stale.
    from_jit: HashMap<u64, BlobKey>,
    ctx: UnwindContext<usize>,
}

impl Default for CfiRules {
    fn default() -> Self {
        Self {
            modules: HashMap::new(),
            by_address: HashMap::new(),
            from_jit: HashMap::new(),
            ctx: UnwindContext::new(),
        }
    }
}

impl CfiRules {
    /// The rule for a return address, or `None` when the address is in no known mapping (the
    /// caller may refresh the mappings and ask again). A return address is looked up at
    /// `address - 1`: the call it returns from may be the last instruction of its function.
    ///
    /// A frame that its runtime identifies by its slots (`kinds`) gets a rule that asks the
    /// kernel walk to read them.
    pub fn rule_for(
        &mut self,
        space: &AddressSpace,
        hotspot: &HotspotFrames,
        kinds: &dyn FrameKinds,
        return_address: u64,
    ) -> Option<UnwindRule> {
        if let Some(rule) = self.by_address.get(&return_address) {
            return Some(*rule);
        }
        let rule = match space.locate(return_address.saturating_sub(1)) {
            Location::File {
                key,
                file,
                file_offset,
            } => {
                let module = self
                    .modules
                    .entry(key.clone())
                    .or_insert_with(|| ModuleCfi::read(file));
                match module {
                    Some(module) => module
                        .address_of(file_offset)
                        .and_then(|address| module.rule_at(address, &mut self.ctx))
                        // Code with no CFI (hand-written assembly) may still keep rbp.
                        .unwrap_or(UnwindRule::frame_pointer()),
                    None => UnwindRule::frame_pointer(),
                }
            }
            // JIT code has no CFI. A compiled Java method's frame has a fixed size that HotSpot
            // records, so it unwinds without -XX:+PreserveFramePointer; V8, and HotSpot's
            // interpreter and stubs, keep rbp.
            Location::Anonymous => match hotspot
                .compiled_frame(return_address.saturating_sub(1))
                .and_then(|(bytes, key)| Some((i32::try_from(bytes).ok()?, key)))
            {
                Some((bytes, key)) => {
                    self.from_jit.insert(return_address, key);
                    UnwindRule::new(RuleKind::CfaRsp, bytes, -16)
                }
                None => UnwindRule::frame_pointer(),
            },
            Location::Unknown => return None,
        };
        let rule = match kinds.identity_at(return_address.saturating_sub(1)) {
            FrameIdentity::None => rule,
            _ if rule.kind == RuleKind::Stop as u32 => rule,
            identity => rule.identified(identity),
        };
        self.by_address.insert(return_address, rule);
        Some(rule)
    }

    /// Reads the CFI of every mapped file now, so that the first unwind requests, which come
    /// in a burst as a traced program starts allocating, are answered in microseconds rather
    /// than after parsing a large executable's `.eh_frame`.
    pub fn prepare(&mut self, space: &AddressSpace) {
        for (key, file) in space.open_files() {
            self.modules
                .entry(key.clone())
                .or_insert_with(|| ModuleCfi::read(file));
        }
    }

    /// Forgets every frame-size rule whose return address is no longer in the blob the rule
    /// came from (`current` gives the blob there now); returns those addresses, whose rules the
    /// kernel must forget too. The next walk through one asks again.
    pub fn forget_stale_jit_rules(
        &mut self,
        mut current: impl FnMut(u64) -> Option<BlobKey>,
    ) -> Vec<u64> {
        let stale: Vec<u64> = self
            .from_jit
            .iter()
            .filter(|&(&return_address, key)| {
                current(return_address.saturating_sub(1)) != Some(*key)
            })
            .map(|(&return_address, _)| return_address)
            .collect();
        for return_address in &stale {
            self.from_jit.remove(return_address);
            self.by_address.remove(return_address);
        }
        stale
    }

    /// Whether any rule came from a compiled Java method's frame size.
    pub fn has_jit_rules(&self) -> bool {
        !self.from_jit.is_empty()
    }

    /// A rule for an address in no mapping: the walk ends there.
    pub fn stop() -> UnwindRule {
        UnwindRule::stop()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_size_rules_are_forgotten_when_their_blob_changes() {
        use crate::jit::hotspot::{TargetAddr, codecache::CompileId};
        let key = |id| BlobKey {
            start: TargetAddr(0x1000),
            compile_id: Some(CompileId(id)),
        };
        let mut rules = CfiRules::default();
        for (address, id) in [(0x1100, 1), (0x1200, 1), (0x1300, 2)] {
            rules.from_jit.insert(address, key(id));
            rules.by_address.insert(address, CfiRules::stop());
        }
        // Compile 1 was freed and compile 3 put at its place; 0x1300's code is gone.
        let mut stale = rules.forget_stale_jit_rules(|pc| match pc {
            0x10ff | 0x11ff => Some(key(3)),
            _ => None,
        });
        stale.sort_unstable();
        assert_eq!(stale, [0x1100, 0x1200, 0x1300]);
        assert!(rules.by_address.is_empty() && !rules.has_jit_rules());
        // A rule whose blob is still there stays.
        rules.from_jit.insert(0x1100, key(3));
        rules.by_address.insert(0x1100, CfiRules::stop());
        assert!(rules.forget_stale_jit_rules(|_| Some(key(3))).is_empty());
        assert!(rules.has_jit_rules());
    }

    #[test]
    fn search_tables_must_fit_their_section() {
        // version 1, eh_frame_ptr pcrel|sdata4, count udata4, table datarel|sdata4.
        let header = |count: u32, rows: usize| {
            let mut hdr = vec![1, 0x1b, 0x03, 0x3b, 0, 0, 0, 0];
            hdr.extend_from_slice(&count.to_le_bytes());
            hdr.resize(hdr.len() + rows * 8, 0);
            hdr
        };
        assert!(search_table_fits(&header(3, 3)));
        assert!(!search_table_fits(&header(4, 3)));
        assert!(!search_table_fits(&header(u32::MAX, 3)));
        // A count in 8 bytes that would overflow a row offset.
        let mut huge = vec![1, 0x1b, 0x04, 0x3b, 0, 0, 0, 0];
        huge.extend_from_slice(&(u64::MAX / 4).to_le_bytes());
        assert!(!search_table_fits(&huge));
        assert!(search_table_fits(&[1, 0x1b, 0xff, 0xff]));
        assert!(!search_table_fits(&[1, 0x1b]));
        // uleb128 counts are not searched.
        assert!(!search_table_fits(&[1, 0x1b, 0x01, 0x3b, 0, 0, 0, 0, 1]));
    }

    /// Derives rules from the real libc on this machine: `malloc` is an ordinary function with
    /// CFI, and its rule right after entry says the CFA is rsp + 8 (only the return address).
    #[test]
    fn rules_from_the_real_libc() {
        let path = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
        let Some(path) = path else {
            eprintln!("skipped: no glibc at the usual path");
            return;
        };
        let file = File::open(path).unwrap();
        let module = ModuleCfi::read(&file).expect("libc has .eh_frame and .eh_frame_hdr");
        let data = std::fs::read(path).unwrap();
        let elf = object::File::parse(&*data).unwrap();
        use object::ObjectSymbol as _;
        let malloc = elf
            .dynamic_symbols()
            .find(|s| s.name() == Ok("malloc"))
            .expect("libc exports malloc")
            .address();
        let mut ctx = UnwindContext::new();
        let rule = module
            .rule_at(malloc, &mut ctx)
            .expect("an FDE covers malloc");
        assert_eq!(rule, UnwindRule::new(RuleKind::CfaRsp, 8, RBP_UNCHANGED));
        // The same rule from the image in memory, at malloc's file offset (libc's text
        // segment maps file offsets one to one).
        let offset = elf
            .segments()
            .find_map(|segment| {
                let (file_offset, size) = segment.file_range();
                let start = segment.address();
                (start..start + size)
                    .contains(&malloc)
                    .then(|| malloc - start + file_offset)
            })
            .expect("malloc lies in a segment");
        assert_eq!(rules_in_image(&data, &[offset]), [Some(rule)]);
        assert_eq!(rules_in_image(b"not an ELF file", &[0, 1]), [None, None]);
    }
}
