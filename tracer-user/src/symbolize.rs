//! Names stack frames with blazesym.
//!
//! The target may exit before the report is written, so user space keeps its own table of the
//! target's executable mappings, refreshed while it runs, with an open descriptor for every
//! mapped file. Frames are then named by file offset from `/proc/self/fd/N`, which works after
//! the process is gone, after the file was replaced on disk, and across mount namespaces.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use crate::{
    jit::{PerfMaps, hotspot::frames::HotspotFrames},
    model::{Frame, FrameData},
    process::{
        TargetProcess,
        root::{self, RootError, TargetRoot},
    },
};

/// A copy of a mapped file that only leakhound holds, for blazesym, which maps the file it
/// reads: a target that truncated its own file under that mapping would end leakhound with
/// SIGBUS, and the report with it. Files are capped as every object file is.
fn private_copy(file: &File) -> std::io::Result<File> {
    use std::io::{Seek as _, SeekFrom};
    // SAFETY: the name is a NUL-terminated literal; memfd_create has no other arguments.
    let fd = unsafe { libc::memfd_create(c"leakhound-symbols".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut copy = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut source = file;
    source.seek(SeekFrom::Start(0))?;
    std::io::copy(
        &mut std::io::Read::take(source, crate::process::elf::MAX_OBJECT_BYTES),
        &mut copy,
    )?;
    Ok(copy)
}

/// A code address from a stack walk. Return addresses point after their call instruction,
/// which may already belong to the next line or function, so they are looked up at `addr - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CodeAddress {
    InstructionPointer(u64),
    ReturnAddress(u64),
}

impl CodeAddress {
    pub fn lookup_address(self) -> u64 {
        match self {
            Self::InstructionPointer(addr) => addr,
            Self::ReturnAddress(addr) => addr.saturating_sub(1),
        }
    }
}

#[derive(Debug)]
struct ModuleRange {
    end: u64,
    offset: u64,
    /// Key into `Modules::files`: inode and the path as the target names it.
    file_key: (u64, PathBuf),
}

/// The target's executable mappings, accumulated over the session: a range stays known after
/// it is unmapped, since live allocations may still point at code that was there.
#[derive(Debug, Default)]
pub struct Modules {
    by_start: BTreeMap<u64, ModuleRange>,
    /// Open files by (inode, path); `None` when the file could not be opened.
    files: HashMap<(u64, PathBuf), Option<File>>,
    pseudo: BTreeMap<u64, (u64, String)>,
    /// JIT code named by the runtime's perf map (Node.js, the JVM).
    pub perf_maps: PerfMaps,
    /// Compiled Java methods named from HotSpot's own metadata; asked before the perf map.
    pub hotspot: HotspotFrames,
}

impl Modules {
    /// Rereads the target's mappings and its perf map. Errors (the target exited) keep what is
    /// known.
    pub fn refresh(&mut self, target: &TargetProcess) {
        self.perf_maps.refresh(target);
        self.hotspot.refresh(target);
        let Ok(maps) = target.maps() else { return };
        let root = TargetRoot::open(target.pid).ok();
        for mapping in maps.into_iter().filter(|m| m.executable) {
            if let Some(name) = mapping.pseudo.clone() {
                self.pseudo.insert(mapping.start, (mapping.end, name));
                continue;
            }
            let Some(path) = mapping.path.clone() else {
                // Anonymous executable memory is JIT code: a real frame, with no file.
                self.pseudo
                    .insert(mapping.start, (mapping.end, "[anon]".to_owned()));
                continue;
            };
            let key = (mapping.inode, path.clone());
            if !self.files.contains_key(&key) {
                // map_files reaches the very file that is mapped, even if it was deleted or
                // lives in another mount namespace; the root path is the fallback.
                let by_range = PathBuf::from(format!(
                    "/proc/{}/map_files/{:x}-{:x}",
                    target.pid, mapping.start, mapping.end
                ));
                let file = root::open_regular_link(&by_range)
                    .or_else(|err| match (&err, &root) {
                        // Only without the capability map_files needs: resolved inside the
                        // target's root, so a link it planted cannot reach another file.
                        (RootError::Io { .. }, Some(root)) if !mapping.deleted => {
                            root.open_regular(&path)
                        }
                        _ => Err(err),
                    })
                    .inspect_err(|err| {
                        log::debug!("not reading symbols of {}: {err}", path.display())
                    })
                    .ok();
                self.files.insert(key.clone(), file);
            }
            self.by_start.insert(
                mapping.start,
                ModuleRange {
                    end: mapping.end,
                    offset: mapping.offset,
                    file_key: key,
                },
            );
        }
    }

    /// Whether an address lies in executable memory of the target. A frame-pointer walk
    /// through code without frame pointers reads garbage, which is never in such memory.
    pub fn is_code(&self, addr: u64) -> bool {
        self.file_offset(addr).is_some()
            || self.pseudo_name(addr).is_some()
            || self.perf_maps.covers(addr)
    }

    /// Every file the target has mapped executable, as the target names it.
    /// Every mapped file that could be opened, with its key.
    pub fn open_files(&self) -> impl Iterator<Item = (&(u64, PathBuf), &File)> {
        self.files
            .iter()
            .filter_map(|(key, file)| Some((key, file.as_ref()?)))
    }

    pub fn mapped_files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(|(_, path)| path.as_path())
    }

    /// Where an address is: in a mapped file (which one, opened, and at what offset), in
    /// anonymous executable memory, or nowhere known.
    pub fn locate(&self, addr: u64) -> Location<'_> {
        if let Some((range, file_offset)) = self.file_offset(addr)
            && let Some(Some(file)) = self.files.get(&range.file_key)
        {
            return Location::File {
                key: &range.file_key,
                file,
                file_offset,
            };
        }
        match self.pseudo_name(addr) {
            Some("[anon]") => Location::Anonymous,
            _ => Location::Unknown,
        }
    }

    fn file_offset(&self, addr: u64) -> Option<(&ModuleRange, u64)> {
        let (start, range) = self.by_start.range(..=addr).next_back()?;
        (addr < range.end).then(|| (range, addr - start + range.offset))
    }

    fn pseudo_name(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.pseudo.range(..=addr).next_back()?;
        (addr < *end).then_some(name.as_str())
    }
}

/// See [`Modules::locate`].
pub enum Location<'a> {
    File {
        /// The file's inode and path as the target names it.
        key: &'a (u64, PathBuf),
        file: &'a File,
        file_offset: u64,
    },
    Anonymous,
    Unknown,
}

/// Owns the blazesym symbolizer (which is neither Send nor Sync and caches per file) and a
/// cache of names by address for the session.
pub struct FrameNamer {
    symbolizer: Symbolizer,
    names: HashMap<CodeAddress, Vec<Frame>>,
}

impl Default for FrameNamer {
    fn default() -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_inlined_fns(true)
                .enable_code_info(true)
                // blazesym demangles any name that parses, and a C function named `b` parses
                // as the Itanium code for `bool`: demangle here, only what is mangled.
                .enable_demangling(false)
                .build(),
            names: HashMap::new(),
        }
    }
}

impl FrameNamer {
    /// Names every address not named before, one blazesym call per module.
    pub fn name_all(&mut self, modules: &Modules, addrs: impl IntoIterator<Item = CodeAddress>) {
        let mut by_file: HashMap<&(u64, PathBuf), Vec<(CodeAddress, u64)>> = HashMap::new();
        for addr in addrs {
            if self.names.contains_key(&addr) {
                continue;
            }
            let lookup = addr.lookup_address();
            match modules.file_offset(lookup) {
                Some((range, offset)) => by_file
                    .entry(&range.file_key)
                    .or_default()
                    .push((addr, offset)),
                None => {
                    // JIT code lives in anonymous memory, or in memory unmapped since.
                    let frames = modules.hotspot.lookup(lookup).unwrap_or_else(|| {
                        let frame = modules.perf_maps.lookup(lookup).unwrap_or_else(|| {
                            Frame::named(modules.pseudo_name(lookup).unwrap_or("[unknown]"))
                        });
                        vec![frame]
                    });
                    self.names.insert(addr, frames);
                }
            }
        }
        for (key, addrs) in by_file {
            let display = module_name(&key.1);
            let offsets: Vec<u64> = addrs.iter().map(|(_, offset)| *offset).collect();
            let symbolized = modules
                .files
                .get(key)
                .and_then(Option::as_ref)
                .and_then(|file| {
                    let copy = private_copy(file)
                        .map_err(|err| log::debug!("copying {}: {err}", key.1.display()))
                        .ok()?;
                    let source =
                        Source::Elf(Elf::new(format!("/proc/self/fd/{}", copy.as_raw_fd())));
                    self.symbolizer
                        .symbolize(&source, Input::FileOffset(&offsets))
                        .map_err(|err| log::debug!("symbolizing {}: {err}", key.1.display()))
                        .ok()
                        .map(|syms| {
                            syms.into_iter()
                                .map(|sym| frames_of(sym, &key.1))
                                .collect::<Vec<_>>()
                        })
                });
            for (i, (addr, offset)) in addrs.iter().enumerate() {
                // A runtime may put code in a file mapping of its own; its perf map names it.
                let frames = symbolized
                    .as_ref()
                    .and_then(|all| all.get(i).cloned().flatten())
                    .or_else(|| {
                        let frame = modules.perf_maps.lookup(addr.lookup_address())?;
                        Some(vec![frame])
                    })
                    .unwrap_or_else(|| vec![Frame::named(format!("{display}+{offset:#x}"))]);
                self.names.insert(*addr, frames);
            }
        }
    }

    /// A stack's frames, root first. `addrs` is innermost first, as the kernel gives it; the
    /// walk is cut at the first address outside executable memory, which is where a
    /// frame-pointer walk left real frames and read garbage.
    pub fn stack(&self, modules: &Modules, addrs: &[CodeAddress]) -> Vec<Frame> {
        let real = addrs
            .iter()
            .position(|addr| !modules.is_code(addr.lookup_address()))
            .unwrap_or(addrs.len());
        addrs[..real.max(1)]
            .iter()
            .rev()
            .flat_map(|addr| {
                self.names
                    .get(addr)
                    .cloned()
                    .unwrap_or_else(|| vec![Frame::named("[unknown]")])
            })
            .collect()
    }
}

fn module_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// The frames of one symbolized address, outermost first: the function, then the calls that
/// were inlined into it at that address.
fn frames_of(symbolized: Symbolized<'_>, path: &Path) -> Option<Vec<Frame>> {
    let Symbolized::Sym(sym) = symbolized else {
        return None;
    };
    let module = Some(module_name(path));
    let location = |info: Option<&blazesym::symbolize::CodeInfo<'_>>| {
        info.map(|info| (Some(info.file.to_string_lossy().into_owned()), info.line))
            .unwrap_or((None, None))
    };
    let (file, line) = location(sym.code_info.as_deref());
    let mut frames = vec![Frame::from(FrameData {
        name: demangle(&sym.name),
        module: module.clone(),
        file,
        line,
        inlined: false,
    })];
    for inlined in sym.inlined.iter() {
        let (file, line) = location(inlined.code_info.as_ref());
        // glibc inlines helpers into functions of the same name; one frame says it all.
        let name = demangle(&inlined.name);
        if frames.last().is_some_and(|last| last.name == name) {
            continue;
        }
        frames.push(
            FrameData {
                name,
                module: module.clone(),
                file,
                line,
                inlined: true,
            }
            .into(),
        );
    }
    Some(frames)
}

/// Demangles a Rust (`_R`, or legacy `_ZN...E`) or C++ (`_Z`) symbol; returns anything else
/// as it is. Rust's legacy scheme is a valid Itanium name, so Rust is tried first.
pub fn demangle(name: &str) -> String {
    if !(name.starts_with("_Z") || name.starts_with("_R") || name.starts_with("__Z")) {
        return name.to_owned();
    }
    if let Ok(rust) = rustc_demangle::try_demangle(name) {
        return format!("{rust:#}");
    }
    cpp_demangle::Symbol::new(name)
        .ok()
        .and_then(|symbol| symbol.demangle().ok())
        .unwrap_or_else(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mangled_names_are_demangled() {
        assert_eq!(demangle("b"), "b");
        assert_eq!(demangle("malloc"), "malloc");
        assert_eq!(demangle("_Znwm"), "operator new(unsigned long)");
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("_Zgarbage"), "_Zgarbage");
    }

    #[test]
    fn return_addresses_are_looked_up_one_byte_back() {
        assert_eq!(CodeAddress::ReturnAddress(0x1000).lookup_address(), 0xfff);
        assert_eq!(
            CodeAddress::InstructionPointer(0x1000).lookup_address(),
            0x1000
        );
        assert_eq!(CodeAddress::ReturnAddress(0).lookup_address(), 0);
    }
}
