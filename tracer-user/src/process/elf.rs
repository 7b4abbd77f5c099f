//! ELF facts that attaching needs: whether a file is dynamically linked, and the file offsets
//! of the allocation functions it defines.

use std::{collections::BTreeMap, fs, path::Path};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};
use tracer_common::{AllocKind, MapEventKind};

use super::probe_offset;
use crate::errors::TracerError;

/// What a probe on one function does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Entry and return probes; the cookie is the [`AllocKind`].
    Alloc(AllocKind),
    /// An entry probe only.
    Free,
    /// Entry and return probes on libc's mapping wrappers; the cookie is the
    /// [`MapEventKind`].
    Map(MapEventKind),
}

/// The functions leakhound hooks, by the names a C library exports. Aliases (glibc's
/// `aligned_alloc` and `memalign`, `mmap` and `mmap64`) share one address and one probe.
pub const ALLOCATOR_FUNCTIONS: &[(&str, Hook)] = &[
    ("malloc", Hook::Alloc(AllocKind::Malloc)),
    ("calloc", Hook::Alloc(AllocKind::Calloc)),
    ("realloc", Hook::Alloc(AllocKind::Realloc)),
    ("reallocarray", Hook::Alloc(AllocKind::Reallocarray)),
    ("posix_memalign", Hook::Alloc(AllocKind::PosixMemalign)),
    ("aligned_alloc", Hook::Alloc(AllocKind::Memalign)),
    ("memalign", Hook::Alloc(AllocKind::Memalign)),
    ("valloc", Hook::Alloc(AllocKind::Valloc)),
    ("pvalloc", Hook::Alloc(AllocKind::Pvalloc)),
    ("free", Hook::Free),
    ("mmap", Hook::Map(MapEventKind::Map)),
    ("mmap64", Hook::Map(MapEventKind::Map)),
    ("munmap", Hook::Map(MapEventKind::Unmap)),
    ("mremap", Hook::Map(MapEventKind::Remap)),
];

/// A function to probe: its name, what the probe does, and where it is in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookPoint {
    pub name: &'static str,
    pub hook: Hook,
    /// Where the probes go. The function's entry, except for an entry-only hook whose first
    /// instructions the kernel would single-step: then a later, equivalent point
    /// ([`probe_offset`]).
    pub file_offset: u64,
}

/// Whether a 64-bit ELF file names a program interpreter, i.e. is dynamically linked.
pub fn is_dynamic(data: &[u8]) -> Result<bool, object::Error> {
    use object::read::elf::{ElfFile64, ProgramHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(data)?;
    let endian = elf.endian();
    Ok(elf
        .elf_program_headers()
        .iter()
        .any(|header| header.p_type(endian) == object::elf::PT_INTERP))
}

/// The hook points a library defines, one per distinct address. glibc exports `aligned_alloc`
/// as an alias of `memalign`; two probes at one address would both fire for one call.
pub fn hook_points(path: &Path) -> Result<Vec<HookPoint>, TracerError> {
    let data = fs::read(path).map_err(|source| TracerError::ReadElf {
        path: path.into(),
        source: source.into(),
    })?;
    let file = object::File::parse(&*data).map_err(|source| TracerError::ReadElf {
        path: path.into(),
        source: source.into(),
    })?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|segment| {
            let (file_offset, _) = segment.file_range();
            (segment.address(), segment.size(), file_offset)
        })
        .collect();

    let mut by_offset = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.kind() != SymbolKind::Text || symbol.is_undefined() || symbol.address() == 0 {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        let Some(&(function, hook)) = ALLOCATOR_FUNCTIONS.iter().find(|(f, _)| *f == name) else {
            continue;
        };
        let vaddr = symbol.address();
        let Some(&(seg_addr, _, seg_offset)) = segments
            .iter()
            .find(|(addr, size, _)| (*addr..addr + size).contains(&vaddr))
        else {
            continue;
        };
        let start = vaddr - seg_addr + seg_offset;
        by_offset.entry(start).or_insert_with(|| {
            // Return probes need the return address on top of the stack, which holds only at
            // the entry: only an entry-only hook may move.
            let skip = match hook {
                Hook::Free => entry_skip(&data, start, symbol.size(), vaddr),
                Hook::Alloc(_) | Hook::Map(_) => 0,
            };
            if skip > 0 {
                log::debug!("probe offset: {function} at +{skip} (file offset {start:#x})");
            }
            HookPoint {
                name: function,
                hook,
                file_offset: start + skip,
            }
        });
    }
    Ok(by_offset.into_values().collect())
}

/// [`probe_offset::entry_probe_skip`] over the function's bytes in the file; 0 when the
/// symbol has no size or its bytes are not all in the file.
fn entry_skip(data: &[u8], file_offset: u64, size: u64, vaddr: u64) -> u64 {
    let code = usize::try_from(file_offset)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(start, size)| data.get(start..start.checked_add(size)?));
    match code {
        Some(code) if size > 0 => probe_offset::entry_probe_skip(code, vaddr),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    /// On the real libc: every hook with a return probe stays at its entry, and a moved probe
    /// skips only flag-only instructions onto one the kernel emulates. On Debian 12's glibc
    /// 2.36, `free` (`test %rdi,%rdi; je ...`) moves by 3 bytes onto the `je`.
    #[test]
    fn probe_offsets_on_the_real_libc() {
        let path = Path::new(LIBC);
        if !path.exists() {
            eprintln!("skipped: no {LIBC}");
            return;
        }
        let data = fs::read(path).expect("libc");
        let file = object::File::parse(&*data).expect("libc parses");
        let starts: BTreeMap<&str, u64> = file
            .dynamic_symbols()
            .filter_map(|symbol| Some((symbol.name().ok()?, symbol.address())))
            .collect();
        let points = hook_points(path).expect("hook points");
        assert!(points.iter().any(|p| p.name == "malloc"));
        for point in &points {
            // glibc's text segment is mapped at its file offset.
            let start = starts[point.name];
            match point.hook {
                Hook::Alloc(_) | Hook::Map(_) => {
                    assert_eq!(point.file_offset, start, "{} moved", point.name)
                }
                Hook::Free => {
                    let skip = point.file_offset - start;
                    let entry = &data[start as usize..start as usize + 3];
                    if entry == [0x48, 0x85, 0xff] && data[start as usize + 3] == 0x0f {
                        assert_eq!(skip, 3, "free starts with test %rdi,%rdi; jcc");
                    }
                    assert!(skip <= 16, "free moved by {skip}");
                }
            }
        }
    }
}
