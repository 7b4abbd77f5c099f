//! The object file behind one of a target's mappings, for a runtime reader (libjvm, node):
//! opened through `/proc/PID/map_files`, so it is the file the kernel mapped whatever the
//! target did to its path since (in a container, the container's file), only if it is a
//! regular file, and only up to [`elf::MAX_OBJECT_BYTES`]; and the load bias that turns its
//! link-time addresses into the target's.

use std::{fs::File, path::PathBuf};

use object::{Object as _, ObjectSegment as _, ReadCache, ReadRef};

use super::{
    elf,
    maps::Mapping,
    root::{self, RootError},
};

/// Why the file behind a mapping cannot be read.
#[derive(Debug)]
pub enum MappedObjectError {
    /// `map_files` refused it, or it is not a regular file.
    Open(RootError),
    /// Read as an ELF object, it is not one that can be read (or is too large).
    Elf(String),
}

/// The file behind `mapping` in process `pid`, read on demand: a parser reads a handful of
/// ranges, each once, each inside the capped file.
pub fn open(pid: u32, mapping: &Mapping) -> Result<ReadCache<File>, MappedObjectError> {
    let link = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ));
    let file = root::open_regular_link(&link).map_err(MappedObjectError::Open)?;
    let size = file
        .metadata()
        .map_err(|err| MappedObjectError::Elf(err.to_string()))?
        .len();
    if size > elf::MAX_OBJECT_BYTES {
        return Err(MappedObjectError::Elf(format!(
            "{size} bytes, over the {}-byte limit for an object file",
            elf::MAX_OBJECT_BYTES
        )));
    }
    Ok(ReadCache::new(file))
}

/// What is added to a link-time address of the object mapped as `mapping` to get the
/// target's: the load segment holding the mapping's file offset fixes it.
pub fn load_bias<'data>(data: impl ReadRef<'data>, mapping: &Mapping) -> Result<u64, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let segment = file
        .segments()
        .find(|segment| {
            let (offset, size) = segment.file_range();
            (offset..offset.saturating_add(size.max(1))).contains(&mapping.offset)
        })
        .ok_or("no load segment holds the mapped offset")?;
    let (file_offset, _) = segment.file_range();
    let linked = segment
        .address()
        .checked_add(mapping.offset - file_offset)
        .ok_or("segment address overflows")?;
    Ok(mapping.start.wrapping_sub(linked))
}
