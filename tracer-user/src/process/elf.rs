//! ELF facts that attaching needs: whether a file is dynamically linked or a Go program, and
//! the file offsets of the allocation functions it defines.

use std::{collections::BTreeMap, fs::File, path::Path};

use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, SymbolKind};
use tracer_common::{AllocKind, MapEventKind, entry_args};

use super::{
    probe_offset::{self, ArgsRead, EntryPoint},
    root,
};
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
    /// One probe after a mapping wrapper's system call, at the branch on its result
    /// ([`super::syscall_return`]); the cookie is the [`MapEventKind`]. Placed where the
    /// syscall tracepoints are not attached.
    MapDone(MapEventKind),
    /// Entry and return probes, as [`Hook::Map`], on a `munmap`, `mremap` or `mprotect` that
    /// is no wrapper of that shape: tcmalloc replaces `munmap` and `mremap` with its own,
    /// which make the system call through libc's `syscall()`. Placed where the syscall
    /// tracepoints are not attached.
    MapCall(MapEventKind),
}

impl Hook {
    /// The arguments that the hook's entry program reads (tracer-ebpf's `try_alloc_enter`,
    /// `try_free_enter` and `try_call_enter`): the registers a moved probe must find intact.
    pub fn args_read(self) -> ArgsRead {
        ArgsRead(match self {
            Hook::Alloc(AllocKind::Malloc | AllocKind::Valloc | AllocKind::Pvalloc) => 0b1,
            Hook::Alloc(AllocKind::Calloc | AllocKind::Realloc) => 0b11,
            Hook::Alloc(AllocKind::Reallocarray) => 0b111,
            Hook::Alloc(AllocKind::PosixMemalign) => 0b101,
            Hook::Alloc(AllocKind::Memalign) => 0b10,
            Hook::Free => 0b1,
            Hook::Map(_) => 0b1111,
            // Placed by the shape of the syscall, not moved from the entry.
            Hook::MapDone(_) => 0,
            // munmap(addr, len); mremap(old, old_len, new_len, ...); mprotect(addr, len, prot).
            Hook::MapCall(MapEventKind::Unmap) => 0b11,
            Hook::MapCall(_) => 0b111,
        })
    }

    /// Whether the hook is probed when stacks are walked with CFI rules (`cfi`) or frame
    /// pointers, and with the syscall tracepoints attached (`tracepoints`) or not.
    ///
    /// Without the tracepoints, the wrappers' calls are seen after their system call
    /// ([`Hook::MapDone`]). With them, the tracepoints see `munmap`, `mremap` and `mprotect`;
    /// with CFI rules, `sys_exit_mprotect` walks a commit's stack from the syscall's own
    /// registers through libc's frameless wrapper (tracer-ebpf's `syscall_user_stack`), so its
    /// uprobe, whose first instruction (`mov $0xa,%eax`) the kernel single-steps, is left out.
    /// A frame-pointer walk from there would skip the wrapper's caller, so `--unwind fp` keeps
    /// it.
    ///
    /// A [`Hook::MapCall`] `mprotect` (one of another shape than glibc's) stands for both.
    pub fn probed(self, cfi: bool, tracepoints: bool) -> bool {
        match self {
            Hook::Map(MapEventKind::Protect) => tracepoints && !cfi,
            Hook::MapCall(MapEventKind::Protect) => !tracepoints || !cfi,
            Hook::MapDone(_) | Hook::MapCall(_) => !tracepoints,
            _ => true,
        }
    }

    /// The kind the programs find in the low half of the attach cookie.
    fn kind(self) -> u32 {
        match self {
            Hook::Alloc(kind) => kind as u32,
            Hook::Free => 0,
            Hook::Map(kind) | Hook::MapDone(kind) | Hook::MapCall(kind) => kind as u32,
        }
    }
}

/// The malloc family, by the names a C library exports, and jemalloc's own API (Rust's
/// jemallocator allocates with `mallocx` and frees with `sdallocx`). An allocator built with a
/// symbol prefix ([`KNOWN_PREFIXES`], `--alloc-lib PATH:PREFIX`) exports them with it.
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
    // mallocx(size, flags) and rallocx(ptr, size, flags) take their size where malloc and
    // realloc do; the flags (alignment, zeroing) do not change the size.
    ("mallocx", Hook::Alloc(AllocKind::Malloc)),
    ("rallocx", Hook::Alloc(AllocKind::Realloc)),
    ("free", Hook::Free),
    ("cfree", Hook::Free),
    ("free_sized", Hook::Free),
    ("free_aligned_sized", Hook::Free),
    ("dallocx", Hook::Free),
    ("sdallocx", Hook::Free),
];

/// libc's mapping wrappers, hooked in an object that defines an unprefixed `malloc` (libc, or
/// a statically linked executable). Aliases (`mmap` and `mmap64`) share one probe.
///
/// `mmap` is hooked at its entry and return, so that the stack is walked at the return,
/// whose first frame is its caller. `munmap`, `mremap` and `mprotect` are seen after their
/// system call ([`Hook::MapDone`]), or by the syscall tracepoints where those are attached;
/// probes at their entries would cost a single-step each (`mov $0xb,%eax` and
/// `sub $0x58,%rsp` come first in glibc). `mprotect` keeps its entry probe where the
/// tracepoints see it and stacks are walked with frame pointers (see [`Hook::probed`]).
pub const MAPPING_FUNCTIONS: &[(&str, Hook)] = &[
    ("mmap", Hook::Map(MapEventKind::Map)),
    ("mmap64", Hook::Map(MapEventKind::Map)),
    ("mprotect", Hook::Map(MapEventKind::Protect)),
    ("munmap", Hook::MapDone(MapEventKind::Unmap)),
    ("mremap", Hook::MapDone(MapEventKind::Remap)),
    ("mprotect", Hook::MapDone(MapEventKind::Protect)),
];

/// The x86-64 system call a wrapper of this kind makes.
fn syscall_number(kind: MapEventKind) -> u32 {
    match kind {
        MapEventKind::Map => 9,
        MapEventKind::Protect => 10,
        MapEventKind::Unmap => 11,
        MapEventKind::Remap => 25,
    }
}

/// C++'s operator new and delete (Itanium names), hooked only where the object also defines
/// `malloc`: jemalloc, tcmalloc and mimalloc implement them without calling `malloc`, so
/// `new` would be invisible otherwise. libstdc++'s own, which do call `malloc`, are left to
/// it. Every `new` takes its size first.
pub const CXX_OPERATORS: &[(&str, Hook)] = &[
    ("_Znwm", Hook::Alloc(AllocKind::Malloc)),
    ("_Znam", Hook::Alloc(AllocKind::Malloc)),
    ("_ZnwmRKSt9nothrow_t", Hook::Alloc(AllocKind::Malloc)),
    ("_ZnamRKSt9nothrow_t", Hook::Alloc(AllocKind::Malloc)),
    ("_ZnwmSt11align_val_t", Hook::Alloc(AllocKind::Malloc)),
    ("_ZnamSt11align_val_t", Hook::Alloc(AllocKind::Malloc)),
    (
        "_ZnwmSt11align_val_tRKSt9nothrow_t",
        Hook::Alloc(AllocKind::Malloc),
    ),
    (
        "_ZnamSt11align_val_tRKSt9nothrow_t",
        Hook::Alloc(AllocKind::Malloc),
    ),
    ("_ZdlPv", Hook::Free),
    ("_ZdaPv", Hook::Free),
    ("_ZdlPvm", Hook::Free),
    ("_ZdaPvm", Hook::Free),
    ("_ZdlPvSt11align_val_t", Hook::Free),
    ("_ZdaPvSt11align_val_t", Hook::Free),
    ("_ZdlPvmSt11align_val_t", Hook::Free),
    ("_ZdaPvmSt11align_val_t", Hook::Free),
    ("_ZdlPvRKSt9nothrow_t", Hook::Free),
    ("_ZdaPvRKSt9nothrow_t", Hook::Free),
];

/// Symbol prefixes of allocators built so that they do not replace `malloc`: jemalloc's
/// `--with-jemalloc-prefix=je_`, Rust's jemallocator (`_rjem_`), mimalloc's own API (`mi_`)
/// and tcmalloc's (`tc_`, aliases of its `malloc` where it also overrides).
pub const KNOWN_PREFIXES: &[&str] = &["je_", "_rjem_", "mi_", "tc_"];

/// A function to probe: its name, what the probe does, and where it is in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookPoint {
    /// The symbol, prefix included (`je_malloc`).
    pub name: String,
    pub hook: Hook,
    /// Where the probes go. The function's entry, except where the kernel would single-step
    /// its first instructions: then a later, equivalent point ([`probe_offset`]).
    pub file_offset: u64,
    /// Bytes past the function's entry that `file_offset` is.
    pub skip: u64,
    /// Where the arguments are at `file_offset` (tracer_common::entry_args codes).
    pub args: [u8; entry_args::MOVABLE],
    /// Whether the kernel emulates the probed instruction; false: it single-steps it, at
    /// the cost of a second trap per call.
    pub emulated: bool,
}

impl HookPoint {
    /// The attach cookie of its programs: the kind, and where the arguments are.
    pub fn cookie(&self) -> u64 {
        entry_args::cookie(self.hook.kind(), self.args)
    }

    pub fn allocates(&self) -> bool {
        matches!(self.hook, Hook::Alloc(_))
    }
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

/// Whether an ELF file is a Go program: the Go linker always writes `.go.buildinfo` (and
/// `.gopclntab`, which even a stripped Go binary keeps, since the runtime needs it).
pub fn is_go(data: &[u8]) -> bool {
    object::File::parse(data).is_ok_and(|file| {
        file.sections()
            .any(|s| matches!(s.name(), Ok(".go.buildinfo" | ".gopclntab")))
    })
}

/// The hook points of the allocators a file defines, read from its dynamic symbols and its
/// `.symtab` (a statically linked executable has only the latter). An allocator is a prefix
/// `P` (the empty one, [`KNOWN_PREFIXES`], or `extra_prefix`) with `Pmalloc` defined; its
/// whole family is hooked, and with the empty prefix also the mapping wrappers and C++'s
/// operators. One probe per distinct address: glibc's `aligned_alloc` and `memalign`, and
/// tcmalloc's `free`, `cfree`, `tc_free` and `operator delete`, are one function, and two
/// probes at one address would both fire for one call.
pub fn hook_points(
    file: &File,
    shown: &Path,
    extra_prefix: Option<&str>,
) -> Result<Vec<HookPoint>, TracerError> {
    let data = read_object(file, shown)?;
    hook_points_in(&data, extra_prefix).map_err(|source| TracerError::ReadElf {
        path: shown.into(),
        source: source.into(),
    })
}

/// The largest object file read whole. Debian's largest shared objects are tens of MiB; a
/// target can map a sparse file of any size, which would otherwise be read into memory.
pub const MAX_OBJECT_BYTES: u64 = 1 << 30;

/// Reads an object file the target mapped, refusing one over [`MAX_OBJECT_BYTES`].
pub fn read_object(file: &File, shown: &Path) -> Result<Vec<u8>, TracerError> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| TracerError::ReadElf {
        path: shown.into(),
        source,
    };
    let size = file.metadata().map_err(|e| error(e.into()))?.len();
    if size > MAX_OBJECT_BYTES {
        return Err(error(
            format!("{size} bytes, over the {MAX_OBJECT_BYTES}-byte limit for an object file")
                .into(),
        ));
    }
    let (data, _) = root::read_capped(file, 0, MAX_OBJECT_BYTES).map_err(|e| error(e.into()))?;
    Ok(data)
}

/// [`hook_points`] over a file's bytes.
pub fn hook_points_in(
    data: &[u8],
    extra_prefix: Option<&str>,
) -> Result<Vec<HookPoint>, object::Error> {
    let file = object::File::parse(data)?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|segment| {
            let (file_offset, _) = segment.file_range();
            (segment.address(), segment.size(), file_offset)
        })
        .collect();
    // Defined global functions by name: (address, size). Local symbols are left out, so that a
    // library's private helper that happens to be called `free` is never taken for it.
    let mut defined: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.kind() != SymbolKind::Text
            || symbol.is_undefined()
            || symbol.is_local()
            || symbol.address() == 0
        {
            continue;
        }
        if let Ok(name) = symbol.name() {
            // A versioned .symtab name (`malloc@@GLIBC_2.2.5`) means the same function.
            let name = name.split('@').next().unwrap_or(name);
            defined
                .entry(name)
                .or_insert((symbol.address(), symbol.size()));
        }
    }

    let mut wanted: Vec<(String, Hook)> = Vec::new();
    let prefixes = std::iter::once("")
        .chain(KNOWN_PREFIXES.iter().copied())
        .chain(extra_prefix);
    for prefix in prefixes {
        if !defined.contains_key(format!("{prefix}malloc").as_str())
            || wanted
                .iter()
                .any(|(name, _)| name == &format!("{prefix}malloc"))
        {
            continue;
        }
        wanted.extend(
            ALLOCATOR_FUNCTIONS
                .iter()
                .map(|(name, hook)| (format!("{prefix}{name}"), *hook)),
        );
        if prefix.is_empty() {
            wanted.extend(
                MAPPING_FUNCTIONS
                    .iter()
                    .chain(CXX_OPERATORS)
                    .map(|(name, hook)| ((*name).to_owned(), *hook)),
            );
        }
    }

    let mut by_offset = BTreeMap::new();
    for (name, hook) in wanted {
        let Some(&(vaddr, size)) = defined.get(name.as_str()) else {
            continue;
        };
        // The target's file: its segment fields may be crafted to overflow.
        let Some(&(seg_addr, _, seg_offset)) = segments.iter().find(|(addr, size, _)| {
            addr.checked_add(*size)
                .is_some_and(|end| (*addr..end).contains(&vaddr))
        }) else {
            continue;
        };
        let Some(start) = (vaddr - seg_addr).checked_add(seg_offset) else {
            continue;
        };
        let mut hook = hook;
        if let Hook::MapDone(kind) = hook {
            // mprotect's stack is walked from the probe: its return address must be on top.
            match function_code(data, start, size)
                .and_then(|code| {
                    super::syscall_return::syscall_return_point(code, vaddr, syscall_number(kind))
                })
                .filter(|point| point.frameless || kind != MapEventKind::Protect)
            {
                Some(point) => {
                    by_offset
                        .entry(start + point.skip)
                        .or_insert_with(|| HookPoint {
                            name,
                            hook,
                            file_offset: start + point.skip,
                            skip: point.skip,
                            args: [entry_args::IN_PLACE; entry_args::MOVABLE],
                            emulated: true,
                        });
                    continue;
                }
                None => {
                    log::debug!("no probe point after {name}'s system call: probed at its entry");
                    hook = Hook::MapCall(kind);
                    // mprotect's entry hook for frame-pointer walks at the tracepoints is at
                    // the same offset; the entry and return probes serve that too.
                    if by_offset
                        .get(&start)
                        .is_some_and(|point: &HookPoint| point.hook == Hook::Map(kind))
                    {
                        by_offset.remove(&start);
                    }
                }
            }
        }
        by_offset.entry(start).or_insert_with(|| {
            let point = entry_point(data, start, size, vaddr, hook.args_read());
            if point.skip > 0 {
                log::debug!(
                    "probe offset: {name} at +{} (file offset {start:#x}, arguments in {:?})",
                    point.skip,
                    point.args
                );
            }
            HookPoint {
                name,
                hook,
                file_offset: start + point.skip,
                skip: point.skip,
                args: point.args,
                emulated: point.emulated,
            }
        });
    }
    Ok(by_offset.into_values().collect())
}

/// The longest function whose code is decoded to place its probes. The largest exported
/// function of Debian's glibc, jemalloc, tcmalloc and mimalloc is 15 KiB; a symbol size is the
/// target's to write, and decoding a whole crafted file as one function would hold up the
/// attach for seconds. A longer function keeps its entry.
const MAX_FUNCTION_BYTES: usize = 64 << 10;

/// A function's bytes in the file: `None` when the symbol has no size, is over
/// [`MAX_FUNCTION_BYTES`], or its bytes are not all in the file.
fn function_code(data: &[u8], file_offset: u64, size: u64) -> Option<&[u8]> {
    let start = usize::try_from(file_offset).ok()?;
    let size = usize::try_from(size)
        .ok()
        .filter(|&size| size > 0 && size <= MAX_FUNCTION_BYTES)?;
    data.get(start..start.checked_add(size)?)
}

/// [`probe_offset::entry_probe_point`] over the function's bytes in the file; the entry,
/// taken as single-stepped, when the symbol has no size or its bytes are not all in the file.
fn entry_point(data: &[u8], file_offset: u64, size: u64, vaddr: u64, read: ArgsRead) -> EntryPoint {
    match function_code(data, file_offset, size) {
        Some(code) => probe_offset::entry_probe_point(code, vaddr, read),
        _ => EntryPoint {
            skip: 0,
            args: [entry_args::IN_PLACE; entry_args::MOVABLE],
            emulated: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    /// The mapping wrappers hooked: `mmap` always (its stack is taken at its return); the
    /// others after their system call where the syscall tracepoints are off, and where they
    /// are on, only `mprotect`'s entry where stacks are walked by frame pointers.
    #[test]
    fn mapping_wrappers_are_hooked_only_for_their_stacks() {
        let hooked = |cfi: bool, tracepoints: bool| -> Vec<(&str, Hook)> {
            MAPPING_FUNCTIONS
                .iter()
                .filter(|(_, hook)| hook.probed(cfi, tracepoints))
                .map(|(name, hook)| (*name, *hook))
                .collect()
        };
        let map = Hook::Map(MapEventKind::Map);
        let done = [
            ("munmap", Hook::MapDone(MapEventKind::Unmap)),
            ("mremap", Hook::MapDone(MapEventKind::Remap)),
            ("mprotect", Hook::MapDone(MapEventKind::Protect)),
        ];
        assert_eq!(hooked(true, true), [("mmap", map), ("mmap64", map)]);
        assert_eq!(
            hooked(false, true),
            [
                ("mmap", map),
                ("mmap64", map),
                ("mprotect", Hook::Map(MapEventKind::Protect))
            ]
        );
        for cfi in [true, false] {
            let mut expected = vec![("mmap", map), ("mmap64", map)];
            expected.extend(done);
            assert_eq!(hooked(cfi, false), expected);
        }
        assert!(
            Hook::Free.probed(true, false) && Hook::Alloc(AllocKind::Malloc).probed(true, true)
        );
        // An mprotect of another shape, probed at its entry and return, is wherever either
        // glibc's probe after the syscall or its entry probe would be.
        let other_shape = Hook::MapCall(MapEventKind::Protect);
        for cfi in [true, false] {
            for tracepoints in [true, false] {
                assert_eq!(
                    other_shape.probed(cfi, tracepoints),
                    Hook::MapDone(MapEventKind::Protect).probed(cfi, tracepoints)
                        || Hook::Map(MapEventKind::Protect).probed(cfi, tracepoints)
                );
            }
        }
    }

    #[test]
    fn a_function_is_decoded_only_within_the_file_and_the_bound() {
        let data = vec![0x90; MAX_FUNCTION_BYTES + 16];
        assert_eq!(function_code(&data, 16, 32).map(<[u8]>::len), Some(32));
        assert!(function_code(&data, 0, MAX_FUNCTION_BYTES as u64).is_some());
        assert!(function_code(&data, 0, MAX_FUNCTION_BYTES as u64 + 1).is_none());
        assert!(function_code(&data, 0, 0).is_none());
        assert!(function_code(&data, u64::MAX, 8).is_none());
        assert!(function_code(&data, 8, u64::MAX).is_none());
    }

    /// On the real libc: on Debian 12's glibc 2.36, `free` (`test %rdi,%rdi; je ...`) moves by
    /// 3 bytes onto the `je`, and `malloc` (`push %r12`) stays at its entry.
    #[test]
    fn probe_offsets_on_the_real_libc() {
        let path = Path::new(LIBC);
        if !path.exists() {
            eprintln!("skipped: no {LIBC}");
            return;
        }
        let data = std::fs::read(path).expect("libc");
        let file = object::File::parse(&*data).expect("libc parses");
        let starts: BTreeMap<&str, u64> = file
            .dynamic_symbols()
            .filter_map(|symbol| Some((symbol.name().ok()?, symbol.address())))
            .collect();
        let points =
            hook_points(&File::open(path).expect("libc"), path, None).expect("hook points");
        assert!(points.iter().any(|p| p.name == "malloc"));
        let after_syscall = points
            .iter()
            .filter(|p| matches!(p.hook, Hook::MapDone(_)))
            .count();
        assert_eq!(
            after_syscall, 3,
            "munmap, mremap and mprotect after their syscall"
        );
        for point in &points {
            // glibc's text segment is mapped at its file offset.
            let start = starts[point.name.as_str()];
            let skip = point.file_offset - start;
            assert_eq!(skip, point.skip, "{}", point.name);
            if point.name == "free" {
                let entry = &data[start as usize..start as usize + 3];
                if entry == [0x48, 0x85, 0xff] && data[start as usize + 3] == 0x0f {
                    assert_eq!(skip, 3, "free starts with test %rdi,%rdi; jcc");
                }
            }
            if let Hook::MapDone(kind) = point.hook {
                // mov $N,%eax; syscall; cmp $-4095,%rax: the probe on the jae after them.
                if kind != MapEventKind::Remap {
                    assert_eq!(skip, 13, "{}", point.name);
                }
                assert!(point.emulated);
            }
            if point.name == "malloc" && data[start as usize] == 0x41 {
                assert_eq!(skip, 0, "malloc starts with push %r12, emulated");
                assert!(point.emulated);
            }
        }
    }
}
