//! Names stack frames with blazesym, from the files of the target's address space
//! (`process::address_space`), and with a [`NameSource`] for code that no file describes.
//!
//! Frames are named by file offset from a private copy of each mapped file, which works after
//! the process is gone, after the file was replaced on disk, and across mount namespaces.

use std::{collections::HashMap, fs::File, os::fd::AsRawFd as _, path::Path};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use tracer_common::StackWord;

use crate::{
    model::{Frame, FrameData},
    process::address_space::{AddressSpace, FileKey},
};

/// Names for code that no file describes (JIT code), from what a runtime says of it: its own
/// metadata, or its perf map. The namer asks it for addresses outside every mapped file, and
/// for those whose file has no symbol for them.
pub trait NameSource {
    /// The frames at `addr`, outermost first (a method and the calls inlined into it there).
    fn frames(&self, addr: u64) -> Option<Vec<Frame>>;
    /// Whether it knows the address as code.
    fn covers(&self, addr: u64) -> bool;
    /// The frames of a frame that identified itself by its slots (an identity word of a
    /// stored stack: `tracer_common::StackWord`), for the runtime that knows that kind.
    fn identified(&self, _word: u64) -> Option<Vec<Frame>> {
        None
    }
}

impl<T: NameSource + ?Sized> NameSource for &T {
    fn frames(&self, addr: u64) -> Option<Vec<Frame>> {
        (**self).frames(addr)
    }

    fn covers(&self, addr: u64) -> bool {
        (**self).covers(addr)
    }

    fn identified(&self, word: u64) -> Option<Vec<Frame>> {
        (**self).identified(word)
    }
}

/// No source: names nothing.
impl NameSource for () {
    fn frames(&self, _: u64) -> Option<Vec<Frame>> {
        None
    }

    fn covers(&self, _: u64) -> bool {
        false
    }
}

/// The first source that names an address wins: a runtime's own metadata before its perf map.
impl<A: NameSource, B: NameSource> NameSource for (A, B) {
    fn frames(&self, addr: u64) -> Option<Vec<Frame>> {
        self.0.frames(addr).or_else(|| self.1.frames(addr))
    }

    fn covers(&self, addr: u64) -> bool {
        self.0.covers(addr) || self.1.covers(addr)
    }

    fn identified(&self, word: u64) -> Option<Vec<Frame>> {
        self.0.identified(word).or_else(|| self.1.identified(word))
    }
}

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
    /// A frame that the kernel walk identified by its slots: the identity word stored in its
    /// return address's place.
    Identified(u64),
}

impl CodeAddress {
    /// A word of a stored stack, every frame of which is a return address or an identity.
    pub fn of_stack_word(word: u64) -> Self {
        match StackWord::decode(word) {
            StackWord::Pc(addr) => Self::ReturnAddress(addr),
            StackWord::Identity { .. } => Self::Identified(word),
        }
    }

    /// The address to look a frame up at; `None` for an identified frame, which has none.
    pub fn lookup_address(self) -> Option<u64> {
        match self {
            Self::InstructionPointer(addr) => Some(addr),
            Self::ReturnAddress(addr) => Some(addr.saturating_sub(1)),
            Self::Identified(_) => None,
        }
    }
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
    pub fn name_all(
        &mut self,
        space: &AddressSpace,
        jit: &dyn NameSource,
        addrs: impl IntoIterator<Item = CodeAddress>,
    ) {
        let mut by_file: HashMap<&FileKey, Vec<(CodeAddress, u64)>> = HashMap::new();
        for addr in addrs {
            if self.names.contains_key(&addr) {
                continue;
            }
            let Some(lookup) = addr.lookup_address() else {
                if let StackWord::Identity { kind, .. } = StackWord::decode(word_of(addr)) {
                    let frames = jit
                        .identified(word_of(addr))
                        .unwrap_or_else(|| vec![crate::identities::unnamed(kind)]);
                    self.names.insert(addr, frames);
                }
                continue;
            };
            match space.file_offset(lookup) {
                Some((key, offset)) => by_file.entry(key).or_default().push((addr, offset)),
                None => {
                    // JIT code lives in anonymous memory, or in memory unmapped since.
                    let frames = jit.frames(lookup).unwrap_or_else(|| {
                        vec![Frame::named(
                            space.pseudo(lookup).map_or("[unknown]", |p| p.name()),
                        )]
                    });
                    self.names.insert(addr, frames);
                }
            }
        }
        for (key, addrs) in by_file {
            let display = module_name(&key.1);
            let offsets: Vec<u64> = addrs.iter().map(|(_, offset)| *offset).collect();
            let symbolized = space.file(key).and_then(|file| {
                let copy = private_copy(file)
                    .map_err(|err| log::debug!("copying {}: {err}", key.1.display()))
                    .ok()?;
                let source = Source::Elf(Elf::new(format!("/proc/self/fd/{}", copy.as_raw_fd())));
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
                    .or_else(|| addr.lookup_address().and_then(|at| jit.frames(at)))
                    .unwrap_or_else(|| vec![Frame::named(format!("{display}+{offset:#x}"))]);
                self.names.insert(*addr, frames);
            }
        }
    }

    /// A stack's frames, root first. `addrs` is innermost first, as the kernel gives it; the
    /// walk is cut at the first address outside executable memory, which is where a
    /// frame-pointer walk left real frames and read garbage.
    pub fn stack(
        &self,
        space: &AddressSpace,
        jit: &dyn NameSource,
        addrs: &[CodeAddress],
    ) -> Vec<Frame> {
        let real = addrs
            .iter()
            .position(|addr| {
                addr.lookup_address()
                    .is_some_and(|addr| !space.is_code(addr) && !jit.covers(addr))
            })
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

/// The identity word of an identified frame (0 for any other).
fn word_of(addr: CodeAddress) -> u64 {
    match addr {
        CodeAddress::Identified(word) => word,
        _ => 0,
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
        assert_eq!(
            CodeAddress::ReturnAddress(0x1000).lookup_address(),
            Some(0xfff)
        );
        assert_eq!(
            CodeAddress::InstructionPointer(0x1000).lookup_address(),
            Some(0x1000)
        );
        assert_eq!(CodeAddress::ReturnAddress(0).lookup_address(), Some(0));
        let word =
            StackWord::identity(tracer_common::FrameIdentity::JvmInterpreted, 0x1000, 1).unwrap();
        assert_eq!(
            CodeAddress::of_stack_word(word),
            CodeAddress::Identified(word)
        );
        assert_eq!(CodeAddress::Identified(word).lookup_address(), None);
    }
}
