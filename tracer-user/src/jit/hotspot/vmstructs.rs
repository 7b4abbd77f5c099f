//! HotSpot's description of itself: the `gHotSpotVMStructs`, `gHotSpotVMTypes`,
//! `gHotSpotVMIntConstants` and `gHotSpotVMLongConstants` tables that libjvm.so exports for
//! debuggers (the serviceability agent reads the same), parsed into field offsets, static
//! field addresses, type sizes and constants.
//!
//! No layout is assumed: even the layout of a table entry comes from the exported
//! `gHotSpotVM*Entry*Offset` and `*ArrayStride` variables, which the JVM fills in when it
//! loads. The tables end with an entry whose name is NULL; every count, stride and string is
//! capped, so a crafted table ends the read with an error instead of a long walk.
//!
//! Source of the format: OpenJDK `src/hotspot/share/runtime/vmStructs.hpp`.

use std::{collections::HashMap, sync::Arc};

use super::{
    HotspotError,
    memory::{Memory, TargetAddr},
};

/// The most entries read from one table. JDK 17's largest table has about 3,000.
pub const MAX_ENTRIES: usize = 20_000;
/// The longest name or type string taken (`GrowableArray<CodeHeap*>*` is 25 bytes).
pub const MAX_NAME: usize = 256;
/// The largest entry stride believed; real ones are 24 to 48 bytes.
const MAX_STRIDE: u64 = 512;
/// Entries read in one system call.
const BATCH: usize = 64;

/// Addresses of the exported variables that describe the tables, in the target.
#[derive(Clone, Debug, Default)]
pub struct TableSymbols {
    by_name: HashMap<String, TargetAddr>,
}

/// Every exported variable the reader needs; a libjvm without one of them is refused.
pub const SYMBOLS: &[&str] = &[
    "gHotSpotVMStructs",
    "gHotSpotVMStructEntryTypeNameOffset",
    "gHotSpotVMStructEntryFieldNameOffset",
    "gHotSpotVMStructEntryTypeStringOffset",
    "gHotSpotVMStructEntryIsStaticOffset",
    "gHotSpotVMStructEntryOffsetOffset",
    "gHotSpotVMStructEntryAddressOffset",
    "gHotSpotVMStructEntryArrayStride",
    "gHotSpotVMTypes",
    "gHotSpotVMTypeEntryTypeNameOffset",
    "gHotSpotVMTypeEntrySuperclassNameOffset",
    "gHotSpotVMTypeEntryIsOopTypeOffset",
    "gHotSpotVMTypeEntryIsIntegerTypeOffset",
    "gHotSpotVMTypeEntryIsUnsignedOffset",
    "gHotSpotVMTypeEntrySizeOffset",
    "gHotSpotVMTypeEntryArrayStride",
    "gHotSpotVMIntConstants",
    "gHotSpotVMIntConstantEntryNameOffset",
    "gHotSpotVMIntConstantEntryValueOffset",
    "gHotSpotVMIntConstantEntryArrayStride",
    "gHotSpotVMLongConstants",
    "gHotSpotVMLongConstantEntryNameOffset",
    "gHotSpotVMLongConstantEntryValueOffset",
    "gHotSpotVMLongConstantEntryArrayStride",
];

impl TableSymbols {
    pub fn insert(&mut self, name: &str, addr: TargetAddr) {
        self.by_name.insert(name.to_owned(), addr);
    }

    pub fn get(&self, name: &'static str) -> Result<TargetAddr, HotspotError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or(HotspotError::MissingSymbol { name })
    }

    /// The names of [`SYMBOLS`] that are missing.
    pub fn missing(&self) -> Vec<&'static str> {
        SYMBOLS
            .iter()
            .copied()
            .filter(|name| !self.by_name.contains_key(*name))
            .collect()
    }
}

/// Where one field of an entry sits, and how wide it is.
#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: usize,
    width: usize,
}

impl Slot {
    fn get(self, entry: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        bytes[..self.width].copy_from_slice(&entry[self.offset..self.offset + self.width]);
        u64::from_le_bytes(bytes)
    }
}

/// The layout of one table's entries, read from the target.
#[derive(Clone, Debug)]
struct EntryLayout {
    stride: usize,
    /// The slot whose NULL ends the table comes first.
    slots: Vec<Slot>,
}

impl EntryLayout {
    /// Reads the offset variables named in `fields` (with each field's width) and the stride.
    fn read(
        memory: &impl Memory,
        symbols: &TableSymbols,
        table: &'static str,
        stride: &'static str,
        fields: &[(&'static str, usize)],
    ) -> Result<Self, HotspotError> {
        let read = |name: &'static str| -> Result<u64, HotspotError> {
            let addr = symbols.get(name)?;
            memory
                .read_u64(addr)
                .map_err(|cause| HotspotError::Memory { what: name, cause })
        };
        let stride_value = read(stride)?;
        if !(8..=MAX_STRIDE).contains(&stride_value) {
            return Err(HotspotError::BadTable {
                table,
                detail: format!("entry stride {stride_value} is not between 8 and {MAX_STRIDE}"),
            });
        }
        let mut slots = Vec::with_capacity(fields.len());
        for &(name, width) in fields {
            let offset = read(name)?;
            if offset.saturating_add(width as u64) > stride_value {
                return Err(HotspotError::BadTable {
                    table,
                    detail: format!("{name} = {offset} leaves the {stride_value}-byte entry"),
                });
            }
            slots.push(Slot {
                offset: offset as usize,
                width,
            });
        }
        Ok(Self {
            stride: stride_value as usize,
            slots,
        })
    }
}

/// One table's raw entries: each a vector of slot values, in the order the layout names them.
fn read_entries(
    memory: &impl Memory,
    symbols: &TableSymbols,
    table: &'static str,
    layout: &EntryLayout,
) -> Result<Vec<Vec<u64>>, HotspotError> {
    let pointer = symbols.get(table)?;
    let base = memory
        .read_addr(pointer)
        .map_err(|cause| HotspotError::Memory { what: table, cause })?;
    if base.is_null() {
        return Err(HotspotError::BadTable {
            table,
            detail: "the table pointer is NULL".to_owned(),
        });
    }
    let mut entries = Vec::new();
    let mut batch = vec![0u8; layout.stride * BATCH];
    loop {
        let at = base
            .offset((entries.len() * layout.stride) as u64)
            .map_err(|cause| HotspotError::Memory { what: table, cause })?;
        // The table may end near the end of a mapping: take whole entries as far as readable.
        let got = memory.read_partial(at, &mut batch) / layout.stride;
        if got == 0 {
            return Err(HotspotError::BadTable {
                table,
                detail: format!(
                    "entry {} at {at} is unreadable before the table's end",
                    entries.len()
                ),
            });
        }
        for entry in batch.chunks_exact(layout.stride).take(got) {
            let values: Vec<u64> = layout.slots.iter().map(|slot| slot.get(entry)).collect();
            if values[0] == 0 {
                return Ok(entries);
            }
            if entries.len() >= MAX_ENTRIES {
                return Err(HotspotError::BadTable {
                    table,
                    detail: format!("no end within {MAX_ENTRIES} entries"),
                });
            }
            entries.push(values);
        }
    }
}

/// Strings of the tables, read once per address: the compiler merges equal literals, so the
/// same type name is pointed at by hundreds of entries.
struct Strings<'a, M> {
    memory: &'a M,
    table: &'static str,
    seen: HashMap<u64, Arc<str>>,
}

impl<M: Memory> Strings<'_, M> {
    fn get(&mut self, addr: u64) -> Result<Option<Arc<str>>, HotspotError> {
        if addr == 0 {
            return Ok(None);
        }
        if let Some(known) = self.seen.get(&addr) {
            return Ok(Some(known.clone()));
        }
        let text = self
            .memory
            .read_c_string(TargetAddr(addr), MAX_NAME)
            .map_err(|cause| HotspotError::Memory {
                what: self.table,
                cause,
            })?;
        let text: Arc<str> = Arc::from(text);
        self.seen.insert(addr, text.clone());
        Ok(Some(text))
    }
}

/// Where a field is: at an offset in every instance, or at one address (a static field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldPlace {
    Instance { offset: u64 },
    Static { address: TargetAddr },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldEntry {
    /// The field's C++ type as the table spells it (`int`, `Method*`, `address`); may be empty.
    pub type_string: Arc<str>,
    pub place: FieldPlace,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeEntry {
    pub superclass: Option<Arc<str>>,
    pub size: u64,
    pub is_oop: bool,
    pub is_integer: bool,
    pub is_unsigned: bool,
}

/// A field resolved for reading out of a copy of the structure: where, how wide, and whether
/// it is sign-extended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u64,
    pub width: u8,
    pub signed: bool,
}

impl Field {
    /// The bytes past the start of the structure that reading this field needs.
    pub fn end(self) -> u64 {
        self.offset + u64::from(self.width)
    }

    /// The field's value in `image`, a copy of the structure; `None` when the image is short.
    pub fn get(self, image: &[u8]) -> Option<u64> {
        let start = usize::try_from(self.offset).ok()?;
        let bytes = image.get(start..start.checked_add(usize::from(self.width))?)?;
        let mut value = [0u8; 8];
        value[..bytes.len()].copy_from_slice(bytes);
        let raw = u64::from_le_bytes(value);
        if self.signed && self.width < 8 {
            let shift = 64 - 8 * u32::from(self.width);
            Some((((raw << shift) as i64) >> shift) as u64)
        } else {
            Some(raw)
        }
    }

    /// The field as a signed value.
    pub fn get_i64(self, image: &[u8]) -> Option<i64> {
        self.get(image).map(|value| value as i64)
    }

    /// Reads the field of the structure at `base` from the target.
    pub fn read(self, memory: &impl Memory, base: TargetAddr) -> Result<u64, super::MemoryError> {
        let mut image = [0u8; 8];
        let at = base.offset(self.offset)?;
        memory.read(at, &mut image[..usize::from(self.width)])?;
        let shifted = Field { offset: 0, ..self };
        Ok(shifted.get(&image).unwrap_or_default())
    }
}

/// The deepest superclass chain followed when a field is looked up on a subclass.
const MAX_SUPERCLASSES: usize = 32;

/// The parsed tables.
#[derive(Clone, Debug, Default)]
pub struct VmStructs {
    pub fields: HashMap<(Arc<str>, Arc<str>), FieldEntry>,
    pub types: HashMap<Arc<str>, TypeEntry>,
    pub int_constants: HashMap<Arc<str>, i32>,
    pub long_constants: HashMap<Arc<str>, u64>,
}

impl VmStructs {
    /// Reads all four tables from the target.
    pub fn read(memory: &impl Memory, symbols: &TableSymbols) -> Result<Self, HotspotError> {
        let missing = symbols.missing();
        if !missing.is_empty() {
            return Err(HotspotError::MissingSymbol { name: missing[0] });
        }
        let mut parsed = Self::default();
        parsed.read_structs(memory, symbols)?;
        parsed.read_types(memory, symbols)?;
        parsed.read_constants(memory, symbols)?;
        Ok(parsed)
    }

    fn read_structs(
        &mut self,
        memory: &impl Memory,
        symbols: &TableSymbols,
    ) -> Result<(), HotspotError> {
        const TABLE: &str = "gHotSpotVMStructs";
        let layout = EntryLayout::read(
            memory,
            symbols,
            TABLE,
            "gHotSpotVMStructEntryArrayStride",
            &[
                ("gHotSpotVMStructEntryTypeNameOffset", 8),
                ("gHotSpotVMStructEntryFieldNameOffset", 8),
                ("gHotSpotVMStructEntryTypeStringOffset", 8),
                ("gHotSpotVMStructEntryIsStaticOffset", 4),
                ("gHotSpotVMStructEntryOffsetOffset", 8),
                ("gHotSpotVMStructEntryAddressOffset", 8),
            ],
        )?;
        let mut strings = Strings {
            memory,
            table: TABLE,
            seen: HashMap::new(),
        };
        for entry in read_entries(memory, symbols, TABLE, &layout)? {
            let (Some(type_name), Some(field)) = (strings.get(entry[0])?, strings.get(entry[1])?)
            else {
                continue;
            };
            let type_string = strings.get(entry[2])?.unwrap_or_else(|| Arc::from(""));
            let place = if entry[3] as u32 != 0 {
                FieldPlace::Static {
                    address: TargetAddr(entry[5]),
                }
            } else {
                FieldPlace::Instance { offset: entry[4] }
            };
            self.fields
                .insert((type_name, field), FieldEntry { type_string, place });
        }
        Ok(())
    }

    fn read_types(
        &mut self,
        memory: &impl Memory,
        symbols: &TableSymbols,
    ) -> Result<(), HotspotError> {
        const TABLE: &str = "gHotSpotVMTypes";
        let layout = EntryLayout::read(
            memory,
            symbols,
            TABLE,
            "gHotSpotVMTypeEntryArrayStride",
            &[
                ("gHotSpotVMTypeEntryTypeNameOffset", 8),
                ("gHotSpotVMTypeEntrySuperclassNameOffset", 8),
                ("gHotSpotVMTypeEntryIsOopTypeOffset", 4),
                ("gHotSpotVMTypeEntryIsIntegerTypeOffset", 4),
                ("gHotSpotVMTypeEntryIsUnsignedOffset", 4),
                ("gHotSpotVMTypeEntrySizeOffset", 8),
            ],
        )?;
        let mut strings = Strings {
            memory,
            table: TABLE,
            seen: HashMap::new(),
        };
        for entry in read_entries(memory, symbols, TABLE, &layout)? {
            let Some(name) = strings.get(entry[0])? else {
                continue;
            };
            let superclass = strings.get(entry[1])?;
            self.types.insert(
                name,
                TypeEntry {
                    superclass,
                    size: entry[5],
                    is_oop: entry[2] as u32 != 0,
                    is_integer: entry[3] as u32 != 0,
                    is_unsigned: entry[4] as u32 != 0,
                },
            );
        }
        Ok(())
    }

    fn read_constants(
        &mut self,
        memory: &impl Memory,
        symbols: &TableSymbols,
    ) -> Result<(), HotspotError> {
        for (table, stride, name, value, width) in [
            (
                "gHotSpotVMIntConstants",
                "gHotSpotVMIntConstantEntryArrayStride",
                "gHotSpotVMIntConstantEntryNameOffset",
                "gHotSpotVMIntConstantEntryValueOffset",
                4,
            ),
            (
                "gHotSpotVMLongConstants",
                "gHotSpotVMLongConstantEntryArrayStride",
                "gHotSpotVMLongConstantEntryNameOffset",
                "gHotSpotVMLongConstantEntryValueOffset",
                8,
            ),
        ] {
            let layout =
                EntryLayout::read(memory, symbols, table, stride, &[(name, 8), (value, width)])?;
            let mut strings = Strings {
                memory,
                table,
                seen: HashMap::new(),
            };
            for entry in read_entries(memory, symbols, table, &layout)? {
                let Some(name) = strings.get(entry[0])? else {
                    continue;
                };
                if width == 4 {
                    self.int_constants.insert(name, entry[1] as u32 as i32);
                } else {
                    self.long_constants.insert(name, entry[1]);
                }
            }
        }
        Ok(())
    }

    /// The entry of `field` declared on `type_name` itself or, failing that, on the nearest
    /// superclass that declares it (fields move between CodeBlob's subclasses across JDKs).
    pub fn entry(&self, type_name: &str, field: &str) -> Option<&FieldEntry> {
        let mut current: Arc<str> = Arc::from(type_name);
        for _ in 0..MAX_SUPERCLASSES {
            if let Some(entry) = self.fields.get(&(current.clone(), Arc::from(field))) {
                return Some(entry);
            }
            current = self.types.get(&current)?.superclass.clone()?;
        }
        None
    }

    /// An instance field, resolved for reading.
    pub fn field(&self, type_name: &str, field: &str) -> Result<Field, HotspotError> {
        let missing = || HotspotError::MissingField {
            type_name: type_name.to_owned(),
            field: field.to_owned(),
        };
        let entry = self.entry(type_name, field).ok_or_else(missing)?;
        let FieldPlace::Instance { offset } = entry.place else {
            return Err(missing());
        };
        let (width, signed) =
            self.width_of(&entry.type_string)
                .ok_or_else(|| HotspotError::BadTable {
                    table: "gHotSpotVMStructs",
                    detail: format!(
                        "{type_name}::{field} has type `{}` of unknown size",
                        entry.type_string
                    ),
                })?;
        if offset > u64::from(u32::MAX) {
            return Err(HotspotError::BadTable {
                table: "gHotSpotVMStructs",
                detail: format!("{type_name}::{field} is at offset {offset}"),
            });
        }
        Ok(Field {
            offset,
            width,
            signed,
        })
    }

    /// The offset of an instance field whose type is a structure (embedded, not pointed to),
    /// such as `CodeHeap::_memory` (a `VirtualSpace`).
    pub fn offset(&self, type_name: &str, field: &str) -> Result<u64, HotspotError> {
        match self.entry(type_name, field).map(|entry| entry.place) {
            Some(FieldPlace::Instance { offset }) if offset <= u64::from(u32::MAX) => Ok(offset),
            _ => Err(HotspotError::MissingField {
                type_name: type_name.to_owned(),
                field: field.to_owned(),
            }),
        }
    }

    /// The address of a static field.
    pub fn static_address(&self, type_name: &str, field: &str) -> Result<TargetAddr, HotspotError> {
        match self.entry(type_name, field).map(|entry| entry.place) {
            Some(FieldPlace::Static { address }) if !address.is_null() => Ok(address),
            _ => Err(HotspotError::MissingField {
                type_name: type_name.to_owned(),
                field: field.to_owned(),
            }),
        }
    }

    /// The size of a type, capped to something a structure can be.
    pub fn size_of(&self, type_name: &str) -> Result<u64, HotspotError> {
        match self.types.get(type_name) {
            Some(entry) if entry.size > 0 && entry.size <= 1 << 16 => Ok(entry.size),
            Some(entry) => Err(HotspotError::BadTable {
                table: "gHotSpotVMTypes",
                detail: format!("{type_name} is {} bytes", entry.size),
            }),
            None => Err(HotspotError::MissingType {
                type_name: type_name.to_owned(),
            }),
        }
    }

    /// How wide a field of C++ type `type_string` is, and whether it is signed: pointers are a
    /// word; other types take their size from the types table (`int`, `u2`, `address`, `bool`).
    fn width_of(&self, type_string: &str) -> Option<(u8, bool)> {
        if type_string.ends_with('*') {
            return Some((8, false));
        }
        let entry = self.types.get(type_string)?;
        let width = u8::try_from(entry.size)
            .ok()
            .filter(|w| matches!(w, 1 | 2 | 4 | 8))?;
        Some((width, entry.is_integer && !entry.is_unsigned))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::jit::hotspot::memory::FakeMemory;

    /// A synthetic libjvm: the offset variables, the four tables and their strings, laid out
    /// as in JDK 17 (entries of 48, 48, 16 and 16 bytes) at `0x10000` and up.
    pub struct FakeJvm {
        pub memory: FakeMemory,
        strings: Vec<u8>,
        string_at: HashMap<String, u64>,
        pub structs: Vec<(String, String, String, bool, u64, u64)>,
        pub types: Vec<(String, Option<String>, bool, bool, u64)>,
        pub ints: Vec<(String, i32)>,
        pub longs: Vec<(String, u64)>,
    }

    const VARS: u64 = 0x10000;
    const TABLES: u64 = 0x20000;
    const STRINGS: u64 = 0x80000;

    impl Default for FakeJvm {
        fn default() -> Self {
            Self::new()
        }
    }

    impl FakeJvm {
        pub fn new() -> Self {
            Self {
                memory: FakeMemory::new(),
                strings: Vec::new(),
                string_at: HashMap::new(),
                structs: Vec::new(),
                types: vec![
                    ("int".into(), None, true, false, 4),
                    ("u2".into(), None, true, true, 2),
                    ("bool".into(), None, false, false, 1),
                    ("address".into(), None, false, false, 8),
                    ("size_t".into(), None, true, true, 8),
                ],
                ints: Vec::new(),
                longs: Vec::new(),
            }
        }

        pub fn field(&mut self, type_name: &str, field: &str, type_string: &str, offset: u64) {
            self.structs.push((
                type_name.into(),
                field.into(),
                type_string.into(),
                false,
                offset,
                0,
            ));
        }

        pub fn static_field(&mut self, type_name: &str, field: &str, type_string: &str, at: u64) {
            self.structs.push((
                type_name.into(),
                field.into(),
                type_string.into(),
                true,
                0,
                at,
            ));
        }

        pub fn type_entry(&mut self, name: &str, superclass: Option<&str>, size: u64) {
            self.types
                .push((name.into(), superclass.map(Into::into), false, false, size));
        }

        fn string(&mut self, text: &str) -> u64 {
            if let Some(&at) = self.string_at.get(text) {
                return at;
            }
            let at = STRINGS + self.strings.len() as u64;
            self.strings.extend_from_slice(text.as_bytes());
            self.strings.push(0);
            self.string_at.insert(text.to_owned(), at);
            at
        }

        /// Writes everything into memory; `extra` images (code heaps and such) are the caller's.
        pub fn build(mut self) -> (FakeMemory, TableSymbols) {
            let mut vars = vec![0u8; 0x1000];
            let mut var_at = 0u64;
            let mut symbols = TableSymbols::default();
            let mut var = |name: &str, value: u64, symbols: &mut TableSymbols| {
                vars[var_at as usize..var_at as usize + 8].copy_from_slice(&value.to_le_bytes());
                symbols.insert(name, TargetAddr(VARS + var_at));
                var_at += 8;
            };
            for (name, value) in [
                ("gHotSpotVMStructEntryTypeNameOffset", 0),
                ("gHotSpotVMStructEntryFieldNameOffset", 8),
                ("gHotSpotVMStructEntryTypeStringOffset", 16),
                ("gHotSpotVMStructEntryIsStaticOffset", 24),
                ("gHotSpotVMStructEntryOffsetOffset", 32),
                ("gHotSpotVMStructEntryAddressOffset", 40),
                ("gHotSpotVMStructEntryArrayStride", 48),
                ("gHotSpotVMTypeEntryTypeNameOffset", 0),
                ("gHotSpotVMTypeEntrySuperclassNameOffset", 8),
                ("gHotSpotVMTypeEntryIsOopTypeOffset", 16),
                ("gHotSpotVMTypeEntryIsIntegerTypeOffset", 20),
                ("gHotSpotVMTypeEntryIsUnsignedOffset", 24),
                ("gHotSpotVMTypeEntrySizeOffset", 32),
                ("gHotSpotVMTypeEntryArrayStride", 40),
                ("gHotSpotVMIntConstantEntryNameOffset", 0),
                ("gHotSpotVMIntConstantEntryValueOffset", 8),
                ("gHotSpotVMIntConstantEntryArrayStride", 16),
                ("gHotSpotVMLongConstantEntryNameOffset", 0),
                ("gHotSpotVMLongConstantEntryValueOffset", 8),
                ("gHotSpotVMLongConstantEntryArrayStride", 16),
            ] {
                var(name, value, &mut symbols);
            }

            let mut tables = Vec::new();
            let structs = std::mem::take(&mut self.structs);
            let struct_base = TABLES;
            for (type_name, field, type_string, is_static, offset, address) in &structs {
                let mut entry = [0u8; 48];
                entry[0..8].copy_from_slice(&self.string(type_name).to_le_bytes());
                entry[8..16].copy_from_slice(&self.string(field).to_le_bytes());
                entry[16..24].copy_from_slice(&self.string(type_string).to_le_bytes());
                entry[24..28].copy_from_slice(&u32::from(*is_static).to_le_bytes());
                entry[32..40].copy_from_slice(&offset.to_le_bytes());
                entry[40..48].copy_from_slice(&address.to_le_bytes());
                tables.extend_from_slice(&entry);
            }
            tables.extend_from_slice(&[0; 48]);
            let type_base = TABLES + tables.len() as u64;
            for (name, superclass, is_integer, is_unsigned, size) in std::mem::take(&mut self.types)
            {
                let mut entry = [0u8; 40];
                entry[0..8].copy_from_slice(&self.string(&name).to_le_bytes());
                let superclass = superclass.map_or(0, |s| self.string(&s));
                entry[8..16].copy_from_slice(&superclass.to_le_bytes());
                entry[20..24].copy_from_slice(&u32::from(is_integer).to_le_bytes());
                entry[24..28].copy_from_slice(&u32::from(is_unsigned).to_le_bytes());
                entry[32..40].copy_from_slice(&size.to_le_bytes());
                tables.extend_from_slice(&entry);
            }
            tables.extend_from_slice(&[0; 40]);
            let int_base = TABLES + tables.len() as u64;
            for (name, value) in std::mem::take(&mut self.ints) {
                let mut entry = [0u8; 16];
                entry[0..8].copy_from_slice(&self.string(&name).to_le_bytes());
                entry[8..12].copy_from_slice(&value.to_le_bytes());
                tables.extend_from_slice(&entry);
            }
            tables.extend_from_slice(&[0; 16]);
            let long_base = TABLES + tables.len() as u64;
            for (name, value) in std::mem::take(&mut self.longs) {
                let mut entry = [0u8; 16];
                entry[0..8].copy_from_slice(&self.string(&name).to_le_bytes());
                entry[8..16].copy_from_slice(&value.to_le_bytes());
                tables.extend_from_slice(&entry);
            }
            tables.extend_from_slice(&[0; 16]);
            for (name, base) in [
                ("gHotSpotVMStructs", struct_base),
                ("gHotSpotVMTypes", type_base),
                ("gHotSpotVMIntConstants", int_base),
                ("gHotSpotVMLongConstants", long_base),
            ] {
                var(name, base, &mut symbols);
            }
            assert!(TABLES + (tables.len() as u64) < STRINGS, "tables fit");
            let mut memory = self.memory;
            memory.map(TargetAddr(VARS), vars);
            memory.map(TargetAddr(TABLES), tables);
            memory.map(TargetAddr(STRINGS), self.strings);
            (memory, symbols)
        }
    }

    fn small() -> FakeJvm {
        let mut jvm = FakeJvm::new();
        jvm.type_entry("CodeBlob", None, 64);
        jvm.type_entry("CompiledMethod", Some("CodeBlob"), 128);
        jvm.type_entry("nmethod", Some("CompiledMethod"), 256);
        jvm.field("CodeBlob", "_frame_size", "int", 40);
        jvm.field("CompiledMethod", "_method", "Method*", 72);
        jvm.field("nmethod", "_compile_id", "int", 140);
        jvm.static_field("CodeCache", "_heaps", "GrowableArray<CodeHeap*>*", 0x5000);
        jvm.ints
            .push(("frame::interpreter_frame_method_offset".into(), -3));
        jvm.longs.push(("markWord::hash_shift".into(), 8));
        jvm
    }

    #[test]
    fn parses_fields_types_and_constants() {
        let (memory, symbols) = small().build();
        let parsed = VmStructs::read(&memory, &symbols).unwrap();
        assert_eq!(
            parsed.field("nmethod", "_compile_id").unwrap(),
            Field {
                offset: 140,
                width: 4,
                signed: true
            }
        );
        // Found on a superclass, pointer-wide.
        assert_eq!(
            parsed.field("nmethod", "_method").unwrap(),
            Field {
                offset: 72,
                width: 8,
                signed: false
            }
        );
        assert_eq!(parsed.field("nmethod", "_frame_size").unwrap().offset, 40);
        assert_eq!(
            parsed.static_address("CodeCache", "_heaps").unwrap(),
            TargetAddr(0x5000)
        );
        assert!(parsed.field("CodeCache", "_heaps").is_err());
        assert_eq!(parsed.size_of("nmethod").unwrap(), 256);
        assert_eq!(
            parsed.int_constants["frame::interpreter_frame_method_offset"],
            -3
        );
        assert_eq!(parsed.long_constants["markWord::hash_shift"], 8);
        assert!(matches!(
            parsed.field("nmethod", "_nothing"),
            Err(HotspotError::MissingField { .. })
        ));
    }

    #[test]
    fn signed_fields_are_sign_extended() {
        let field = Field {
            offset: 1,
            width: 4,
            signed: true,
        };
        let image = [0, 0xfe, 0xff, 0xff, 0xff];
        assert_eq!(field.get_i64(&image), Some(-2));
        assert_eq!(field.get(&image[..3]), None);
        let unsigned = Field {
            signed: false,
            ..field
        };
        assert_eq!(unsigned.get(&image), Some(0xffff_fffe));
    }

    #[test]
    fn a_stripped_libjvm_is_refused_by_name() {
        let (memory, mut symbols) = small().build();
        symbols.by_name.remove("gHotSpotVMTypes");
        let err = VmStructs::read(&memory, &symbols).unwrap_err();
        assert!(err.to_string().contains("gHotSpotVMTypes"), "{err}");
    }

    #[test]
    fn a_table_without_its_end_is_refused_within_the_cap() {
        let (mut memory, symbols) = small().build();
        // A huge readable table of identical non-NULL entries: the walk stops at the cap.
        let mut endless = Vec::new();
        let name = STRINGS; // Any readable string.
        for _ in 0..MAX_ENTRIES + 100 {
            let mut entry = [0u8; 48];
            entry[0..8].copy_from_slice(&name.to_le_bytes());
            entry[8..16].copy_from_slice(&name.to_le_bytes());
            endless.extend_from_slice(&entry);
        }
        memory.map(TargetAddr(0x1000_0000), endless);
        memory.write_u64(symbols.get("gHotSpotVMStructs").unwrap(), 0x1000_0000);
        let err = VmStructs::read(&memory, &symbols).unwrap_err();
        assert!(err.to_string().contains("no end within"), "{err}");
    }

    #[test]
    fn a_table_running_into_unreadable_memory_is_refused() {
        let (mut memory, symbols) = small().build();
        let mut short = vec![0u8; 48 * 3];
        for entry in short.chunks_exact_mut(48) {
            entry[0..8].copy_from_slice(&STRINGS.to_le_bytes());
            entry[8..16].copy_from_slice(&STRINGS.to_le_bytes());
        }
        memory.map(TargetAddr(0x1000_0000), short);
        memory.write_u64(symbols.get("gHotSpotVMStructs").unwrap(), 0x1000_0000);
        let err = VmStructs::read(&memory, &symbols).unwrap_err();
        assert!(err.to_string().contains("unreadable"), "{err}");
    }

    #[test]
    fn crafted_layouts_are_refused() {
        for (variable, value, says) in [
            ("gHotSpotVMStructEntryArrayStride", 1 << 40, "stride"),
            ("gHotSpotVMStructEntryArrayStride", 0, "stride"),
            ("gHotSpotVMStructEntryOffsetOffset", 45, "leaves"),
            ("gHotSpotVMTypeEntrySizeOffset", u64::MAX, "leaves"),
        ] {
            let (mut memory, symbols) = small().build();
            memory.write_u64(symbols.get(variable).unwrap(), value);
            let err = VmStructs::read(&memory, &symbols).unwrap_err();
            assert!(err.to_string().contains(says), "{variable}: {err}");
        }
    }

    #[test]
    fn unterminated_names_are_refused() {
        let (mut memory, symbols) = small().build();
        memory.map(TargetAddr(0x3000_0000), vec![b'x'; 10_000]);
        let table = memory
            .read_addr(symbols.get("gHotSpotVMStructs").unwrap())
            .unwrap();
        memory.write_u64(table, 0x3000_0000);
        let err = VmStructs::read(&memory, &symbols).unwrap_err();
        assert!(err.to_string().contains("no NUL"), "{err}");
    }

    #[test]
    fn superclass_loops_end() {
        let mut jvm = FakeJvm::new();
        jvm.type_entry("A", Some("B"), 8);
        jvm.type_entry("B", Some("A"), 8);
        let (memory, symbols) = jvm.build();
        let parsed = VmStructs::read(&memory, &symbols).unwrap();
        assert!(parsed.field("A", "_x").is_err());
    }
}
