//! Finding libjvm.so in a target: its mapping, the file behind it (opened through
//! `/proc/PID/map_files`, so a target cannot point leakhound at another file), the exported
//! `gHotSpotVM*` variables in its dynamic symbol table, and the load bias that turns their
//! link-time addresses into the target's.

use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use super::{
    HotspotError,
    memory::TargetAddr,
    vmstructs::{SYMBOLS, TableSymbols},
};
use crate::process::{elf, maps::Mapping, root};

/// The library's file name; a JVM built statically into its launcher is not supported.
pub const LIBJVM: &str = "libjvm.so";

/// libjvm as one target maps it.
#[derive(Clone, Debug)]
pub struct Libjvm {
    /// The path the target mapped, for messages.
    pub path: PathBuf,
    /// Added to a link-time address to get the target's address.
    pub bias: u64,
    pub symbols: TableSymbols,
}

/// The mapping of libjvm.so at file offset 0, if the target maps it.
pub fn find_mapping(maps: &[Mapping]) -> Option<&Mapping> {
    maps.iter().find(|mapping| {
        mapping.offset == 0
            && mapping
                .path
                .as_deref()
                .and_then(Path::file_name)
                .is_some_and(|name| name == LIBJVM)
    })
}

impl Libjvm {
    /// Reads libjvm's symbols from the file behind `mapping` in process `pid`.
    pub fn open(pid: u32, mapping: &Mapping) -> Result<Self, HotspotError> {
        let path = mapping.path.clone().unwrap_or_default();
        let link = PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            mapping.start, mapping.end
        ));
        let file = root::open_regular_link(&link).map_err(|source| HotspotError::Open {
            path: path.clone(),
            source,
        })?;
        let data = elf::read_object(&file, &path).map_err(|source| HotspotError::Elf {
            path: path.clone(),
            detail: source.to_string(),
        })?;
        Self::from_elf(&data, mapping)
            .map_err(|detail| HotspotError::Elf {
                path: path.clone(),
                detail,
            })
            .map(|(bias, symbols)| Self {
                path,
                bias,
                symbols,
            })
    }

    /// The bias and the table symbols of an ELF image mapped as `mapping`.
    pub fn from_elf(data: &[u8], mapping: &Mapping) -> Result<(u64, TableSymbols), String> {
        let file = object::File::parse(data).map_err(|e| e.to_string())?;
        // The load segment holding the mapping's file offset fixes the bias.
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
        let bias = mapping.start.wrapping_sub(linked);
        let mut symbols = TableSymbols::default();
        for symbol in file.dynamic_symbols() {
            let Ok(name) = symbol.name() else { continue };
            let name = name.split('@').next().unwrap_or(name);
            if symbol.is_undefined() || !SYMBOLS.contains(&name) {
                continue;
            }
            symbols.insert(name, TargetAddr(symbol.address().wrapping_add(bias)));
        }
        Ok((bias, symbols))
    }
}
