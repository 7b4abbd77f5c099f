//! ELF facts that attaching needs: whether a file is dynamically linked, and the file offsets
//! of the allocation functions it defines.

use std::{collections::BTreeMap, fs, path::Path};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};
use tracer_common::{AllocKind, MapEventKind};

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
        by_offset
            .entry(vaddr - seg_addr + seg_offset)
            .or_insert(HookPoint {
                name: function,
                hook,
                file_offset: 0,
            });
    }
    Ok(by_offset
        .into_iter()
        .map(|(file_offset, point)| HookPoint {
            file_offset,
            ..point
        })
        .collect())
}
