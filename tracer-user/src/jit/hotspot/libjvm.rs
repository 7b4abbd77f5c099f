//! Finding libjvm.so in a target: its mapping, the file behind it (opened through
//! `/proc/PID/map_files`, so a target cannot point leakhound at another file), the exported
//! `gHotSpotVM*` variables in its dynamic symbol table, and the load bias that turns their
//! link-time addresses into the target's.

use std::path::{Path, PathBuf};

use object::{Object as _, ObjectSymbol as _, ReadRef};

use super::{
    HotspotError,
    memory::TargetAddr,
    vmstructs::{SYMBOLS, TableSymbols},
};
use crate::process::{
    mapped_object::{self, MappedObjectError},
    maps::Mapping,
};

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
    /// Reads libjvm's symbols from the file behind `mapping` in process `pid`. The file is the
    /// one the kernel mapped (through `map_files`), whatever the target did to its path since.
    pub fn open(pid: u32, mapping: &Mapping) -> Result<Self, HotspotError> {
        let path = mapping.path.clone().unwrap_or_default();
        let elf_error = |detail: String| HotspotError::Elf {
            path: path.clone(),
            detail,
        };
        // Only the headers and the dynamic symbols are read, not the whole 20-odd MiB.
        let cache = mapped_object::open(pid, mapping).map_err(|err| match err {
            MappedObjectError::Open(cause) => HotspotError::Open {
                path: path.clone(),
                cause,
            },
            MappedObjectError::Elf(detail) => elf_error(detail),
        })?;
        let (bias, symbols) = Self::from_elf(&cache, mapping).map_err(elf_error)?;
        Ok(Self {
            path,
            bias,
            symbols,
        })
    }

    /// The bias and the table symbols of an ELF image mapped as `mapping`.
    pub fn from_elf<'data>(
        data: impl ReadRef<'data>,
        mapping: &Mapping,
    ) -> Result<(u64, TableSymbols), String> {
        let bias = mapped_object::load_bias(data, mapping)?;
        let file = object::File::parse(data).map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(path: &str, offset: u64) -> Mapping {
        Mapping {
            start: 0x7f00_0000_0000,
            end: 0x7f00_0010_0000,
            readable: true,
            executable: false,
            offset,
            inode: 1,
            path: Some(PathBuf::from(path)),
            pseudo: None,
            deleted: false,
        }
    }

    #[test]
    fn finds_libjvm_by_file_name_at_offset_zero() {
        let maps = vec![
            mapping("/opt/jdk/lib/server/libjvm.so", 0x1000),
            mapping("/opt/jdk/lib/server/libjvm.so.bak", 0),
            mapping("/opt/jdk/lib/server/libjvm.so", 0),
        ];
        assert!(std::ptr::eq(find_mapping(&maps).unwrap(), &maps[2]));
        assert!(find_mapping(&maps[..2]).is_none());
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let err = Libjvm::from_elf(&b"not an ELF file at all"[..], &mapping("/x/libjvm.so", 0))
            .unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn an_object_without_the_tables_has_no_symbols() {
        // leakhound's own test binary: ELF, but not a JVM.
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let (_, symbols) = Libjvm::from_elf(&exe[..], &mapping("/x/libjvm.so", 0)).unwrap();
        assert_eq!(symbols.missing().len(), SYMBOLS.len());
    }
}
