//! V8's postmortem metadata: the `v8dbg_*` data symbols that a `node` binary (or libnode.so)
//! exports for debuggers, each an `int` holding an offset, a type number or a tag. They are
//! constants written at build time, so they are read from the mapped file rather than from the
//! target's memory; those that are zero live in `.bss` and have no bytes in the file.
//!
//! The same file's static symbol table, when the binary is not stripped, gives the range of
//! V8's embedded builtins (`Builtins_*`), where the interpreter's frames return to.

use std::{collections::HashMap, ops::Range};

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, ReadRef, SectionKind};

/// The constants leakhound needs, by their name without the `v8dbg_` prefix.
pub const NEEDED: &[&str] = &[
    "SystemPointerSize",
    "TaggedSize",
    "HeapObjectTag",
    "HeapObjectTagMask",
    "SmiTagMask",
    "SmiShiftSize",
    "off_fp_function",
    "off_fp_context",
    "class_HeapObject__map__Map",
    "class_Map__instance_type__uint16_t",
    "class_JSFunction__shared__SharedFunctionInfo",
    "class_SharedFunctionInfo__name_or_scope_info__Object",
    "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
    "class_SharedFunctionInfo__function_data__Object",
    "class_UncompiledData__start_position__int32_t",
    "class_UncompiledData__inferred_name__String",
    "type_UncompiledDataWithoutPreparseData__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_TYPE",
    "type_UncompiledDataWithPreparseData__UNCOMPILED_DATA_WITH_PREPARSE_DATA_TYPE",
    "type_UncompiledDataWithoutPreparseDataWithJob__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_WITH_JOB_TYPE",
    "type_UncompiledDataWithPreparseDataAndJob__UNCOMPILED_DATA_WITH_PREPARSE_DATA_AND_JOB_TYPE",
    "class_Script__name__Object",
    "class_Script__source__Object",
    "class_Script__line_ends__Object",
    "class_String__length__int32_t",
    "class_SeqOneByteString__chars__char",
    "class_SeqTwoByteString__chars__char",
    "class_ConsString__first__String",
    "class_ConsString__second__String",
    "class_ThinString__actual__String",
    "class_SlicedString__parent__String",
    "class_SlicedString__offset__SMI",
    "class_ExternalString__resource__Object",
    "class_FixedArrayBase__length__SMI",
    "class_FixedArray__data__uintptr_t",
    "type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE",
    "type_ScopeInfo__SCOPE_INFO_TYPE",
    "type_Script__SCRIPT_TYPE",
    "type_FixedArray__FIXED_ARRAY_TYPE",
    "FirstNonstringType",
    "StringRepresentationMask",
    "StringEncodingMask",
    "OneByteStringTag",
    "SeqStringTag",
    "ConsStringTag",
    "ExternalStringTag",
    "SlicedStringTag",
    "ThinStringTag",
    "scopeinfo_idx_ncontextlocals",
    "scopeinfo_idx_first_vars",
];

/// Constants that older V8 versions lack; their absence only loses what they serve.
const OPTIONAL: &[&str] = &[
    "class_UncompiledData__start_position__int32_t",
    "class_UncompiledData__inferred_name__String",
    "type_UncompiledDataWithoutPreparseData__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_TYPE",
    "type_UncompiledDataWithPreparseData__UNCOMPILED_DATA_WITH_PREPARSE_DATA_TYPE",
    "type_UncompiledDataWithoutPreparseDataWithJob__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_WITH_JOB_TYPE",
    "type_UncompiledDataWithPreparseDataAndJob__UNCOMPILED_DATA_WITH_PREPARSE_DATA_AND_JOB_TYPE",
    "class_ExternalString__resource__Object",
    "class_Script__line_ends__Object",
];

/// The `v8dbg_*` values of one V8 build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Postmortem {
    values: HashMap<&'static str, i64>,
}

impl Postmortem {
    /// A value, if the build exports it.
    pub fn get(&self, name: &str) -> Option<i64> {
        self.values.get(name).copied()
    }

    /// The names in [`NEEDED`] that this build does not export (optional ones aside).
    pub fn missing(&self) -> Vec<&'static str> {
        NEEDED
            .iter()
            .copied()
            .filter(|name| !self.values.contains_key(name) && !OPTIONAL.contains(name))
            .collect()
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(&'static str, i64)]) -> Self {
        Self {
            values: pairs.iter().copied().collect(),
        }
    }

    /// These values, and `base`'s where these have none.
    #[cfg(test)]
    pub fn merged_over(&self, base: &Self) -> Self {
        let mut values = base.values.clone();
        values.extend(self.values.iter().map(|(k, v)| (*k, *v)));
        Self { values }
    }
}

/// What one V8 binary says of itself.
#[derive(Clone, Debug, Default)]
pub struct V8Binary {
    pub constants: Postmortem,
    /// Link-time range of the embedded builtins, from `.symtab` (`None` when stripped).
    pub builtins: Option<Range<u64>>,
    /// How many `v8dbg_*` symbols the file exports at all (0: a V8 built without them).
    pub exported: usize,
}

/// Reads the constants and the builtins' range from an ELF image.
pub fn read_binary<'data>(data: impl ReadRef<'data>) -> Result<V8Binary, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let mut binary = V8Binary::default();
    for symbol in file.dynamic_symbols() {
        let Ok(name) = symbol.name() else { continue };
        let Some(short) = name.strip_prefix("v8dbg_") else {
            continue;
        };
        if symbol.is_undefined() {
            continue;
        }
        binary.exported += 1;
        let Some(&needed) = NEEDED.iter().find(|&&n| n == short) else {
            continue;
        };
        let Some(index) = symbol.section_index() else {
            continue;
        };
        let section = file.section_by_index(index).map_err(|e| e.to_string())?;
        let value = if section.kind() == SectionKind::UninitializedData {
            // `.bss`: a constant that is zero.
            0
        } else {
            let bytes = section
                .data_range(symbol.address(), 4)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("v8dbg_{short} lies outside its section"))?;
            i64::from(i32::from_le_bytes(
                bytes.try_into().map_err(|_| "short read")?,
            ))
        };
        binary.constants.values.insert(needed, value);
    }
    binary.builtins = builtins_range(&file);
    Ok(binary)
}

/// The span of the `Builtins_*` functions: V8 embeds all its builtins in one blob.
fn builtins_range<'data, R: ReadRef<'data>>(file: &object::File<'data, R>) -> Option<Range<u64>> {
    let mut range: Option<Range<u64>> = None;
    for symbol in file.symbols() {
        let Ok(name) = symbol.name() else { continue };
        if !name.starts_with("Builtins_") || symbol.address() == 0 {
            continue;
        }
        let start = symbol.address();
        let end = start.saturating_add(symbol.size().max(1));
        range = Some(match range {
            Some(r) => r.start.min(start)..r.end.max(end),
            None => start..end,
        });
    }
    range
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_v8_exports_nothing() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let binary = read_binary(&exe[..]).unwrap();
        assert_eq!(binary.exported, 0);
        assert!(binary.builtins.is_none());
        assert_eq!(
            binary.constants.missing().len(),
            NEEDED.len() - OPTIONAL.len()
        );
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        assert!(read_binary(&b"#!/bin/sh\n"[..]).is_err());
    }

    /// The Debian node on the build machine, when there is one: its constants are those of V8
    /// 11 and later without pointer compression.
    #[test]
    fn reads_the_installed_node() {
        let Ok(node) = std::fs::read("/usr/bin/node") else {
            eprintln!("no /usr/bin/node: skipped");
            return;
        };
        let binary = read_binary(&node[..]).unwrap();
        if binary.exported == 0 {
            eprintln!("/usr/bin/node exports no v8dbg_ symbols: skipped");
            return;
        }
        let c = &binary.constants;
        assert_eq!(c.missing(), Vec::<&str>::new());
        assert_eq!(c.get("SystemPointerSize"), Some(8));
        assert_eq!(c.get("off_fp_function"), Some(-16));
        assert_eq!(c.get("off_fp_context"), Some(-8));
        // In .bss: zero, with no bytes in the file.
        assert_eq!(c.get("class_HeapObject__map__Map"), Some(0));
        assert_eq!(c.get("SeqStringTag"), Some(0));
        assert!(binary.builtins.is_some_and(|r| r.end - r.start > 1 << 20));
    }
}
