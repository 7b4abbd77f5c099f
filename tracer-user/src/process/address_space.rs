//! The target's address space as leakhound keeps it: its executable mappings and the files
//! behind them, opened safely (through `/proc/PID/map_files`, else inside the target's root)
//! and held for the session. Naming frames and unwinding both look addresses up here; names
//! for code with no file (JIT code) come from elsewhere (`symbolize::NameSource`).

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    path::{Path, PathBuf},
};

use super::{
    TargetProcess,
    root::{self, RootError, TargetRoot},
};

#[derive(Debug)]
struct ModuleRange {
    end: u64,
    offset: u64,
    /// Key into `AddressSpace::files`.
    file_key: FileKey,
}

/// A mapped file: its inode, and its path as the target names it.
pub type FileKey = (u64, PathBuf);

/// Executable memory that no file backs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pseudo {
    /// Anonymous executable memory: JIT code, a real frame with no file.
    Anonymous,
    /// A kernel-provided range, named as `/proc/PID/maps` names it (`[vdso]`, `[vsyscall]`).
    Named(String),
}

impl Pseudo {
    /// How a frame in it is named when nothing names it better.
    pub fn name(&self) -> &str {
        match self {
            Self::Anonymous => "[anon]",
            Self::Named(name) => name,
        }
    }
}

/// The target's executable mappings, accumulated over the session: a range stays known after
/// it is unmapped, since live allocations may still point at code that was there. Each mapped
/// file is held open, so frames are named after the target exits, after the file was replaced
/// on disk, and across mount namespaces.
#[derive(Debug, Default)]
pub struct AddressSpace {
    by_start: BTreeMap<u64, ModuleRange>,
    /// Open files by key; `None` when the file could not be opened.
    files: HashMap<FileKey, Option<File>>,
    pseudo: BTreeMap<u64, (u64, Pseudo)>,
}

impl AddressSpace {
    /// Rereads the target's mappings. Errors (the target exited) keep what is known.
    pub fn refresh(&mut self, target: &TargetProcess) {
        let Ok(maps) = target.maps() else { return };
        let root = TargetRoot::open(target.pid).ok();
        for mapping in maps.into_iter().filter(|m| m.executable) {
            if let Some(name) = mapping.pseudo.clone() {
                self.pseudo
                    .insert(mapping.start, (mapping.end, Pseudo::Named(name)));
                continue;
            }
            let Some(path) = mapping.path.clone() else {
                self.pseudo
                    .insert(mapping.start, (mapping.end, Pseudo::Anonymous));
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

    /// Whether an address lies in executable memory of the target that it has mapped.
    pub fn is_code(&self, addr: u64) -> bool {
        self.file_offset(addr).is_some() || self.pseudo(addr).is_some()
    }

    /// Every mapped file that could be opened, with its key.
    pub fn open_files(&self) -> impl Iterator<Item = (&FileKey, &File)> {
        self.files
            .iter()
            .filter_map(|(key, file)| Some((key, file.as_ref()?)))
    }

    /// Every file the target has mapped executable, as the target names it.
    pub fn mapped_files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(|(_, path)| path.as_path())
    }

    /// Where an address is: in a mapped file (which one, opened, and at what offset), in
    /// anonymous executable memory, or nowhere known.
    pub fn locate(&self, addr: u64) -> Location<'_> {
        if let Some((key, file_offset)) = self.file_offset(addr)
            && let Some(file) = self.file(key)
        {
            return Location::File {
                key,
                file,
                file_offset,
            };
        }
        match self.pseudo(addr) {
            Some(Pseudo::Anonymous) => Location::Anonymous,
            _ => Location::Unknown,
        }
    }

    /// The mapped file an address is in, and its offset in that file.
    pub fn file_offset(&self, addr: u64) -> Option<(&FileKey, u64)> {
        let (start, range) = self.by_start.range(..=addr).next_back()?;
        (addr < range.end).then(|| (&range.file_key, addr - start + range.offset))
    }

    /// The open file behind a key, if it could be opened.
    pub fn file(&self, key: &FileKey) -> Option<&File> {
        self.files.get(key)?.as_ref()
    }

    /// The unbacked range an address is in.
    pub fn pseudo(&self, addr: u64) -> Option<&Pseudo> {
        let (_, (end, pseudo)) = self.pseudo.range(..=addr).next_back()?;
        (addr < *end).then_some(pseudo)
    }
}

/// See [`AddressSpace::locate`].
pub enum Location<'a> {
    File {
        /// The file's inode and path as the target names it.
        key: &'a FileKey,
        file: &'a File,
        file_offset: u64,
    },
    Anonymous,
    Unknown,
}
