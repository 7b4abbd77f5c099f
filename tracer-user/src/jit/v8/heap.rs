//! V8's heap objects as read from a target's memory: tagged words, object types and strings.
//!
//! The layout comes from the binary's `v8dbg_*` constants ([`super::postmortem`]). Everything
//! read here is the target's to craft and changes while it is read (the target runs on, and
//! V8's collector moves objects): every object's type is checked before a field of it is
//! followed, every string and array is capped, and a chain of strings is followed only so deep.

use super::{V8Error, postmortem::Postmortem};
use crate::jit::hotspot::memory::{Memory, MemoryError, TargetAddr};

/// The longest function or file name read, in code units.
pub const MAX_NAME_UNITS: usize = 4096;
/// The longest script source read to find its lines, in code units.
pub const MAX_SOURCE_UNITS: usize = 32 << 20;
/// How deep a chain of cons, thin and sliced strings is followed.
const MAX_STRING_DEPTH: u32 = 64;
/// `kUncachedExternalStringMask`: an external string without its data pointer cached in the
/// object (not among the postmortem constants; one bit of the instance type since V8 6).
const UNCACHED_EXTERNAL_STRING: u16 = 1 << 4;

/// Offsets and tags of one V8 build, from its postmortem constants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V8Layout {
    pub heap_object_tag: u64,
    pub heap_object_tag_mask: u64,
    pub smi_tag_mask: u64,
    /// A Smi's value is the word shifted right by this (32 on x86-64 without compression).
    pub smi_shift: u32,
    pub fp_function: i32,
    pub fp_context: i32,
    pub map: u64,
    pub map_instance_type: u64,
    pub function_shared: u64,
    pub sfi_name_or_scope_info: u64,
    pub sfi_script_or_debug_info: u64,
    pub sfi_function_data: u64,
    pub uncompiled_start_position: Option<u64>,
    pub uncompiled_inferred_name: Option<u64>,
    /// The instance types of UncompiledData (a function not compiled, or whose bytecode was
    /// flushed); empty when the build does not say.
    pub uncompiled_types: Vec<u16>,
    pub script_name: u64,
    pub script_source: u64,
    pub script_line_ends: Option<u64>,
    pub string_length: u64,
    pub seq_one_byte_chars: u64,
    pub seq_two_byte_chars: u64,
    pub cons_first: u64,
    pub cons_second: u64,
    pub thin_actual: u64,
    pub sliced_parent: u64,
    pub sliced_offset: u64,
    pub external_resource: Option<u64>,
    pub fixed_array_length: u64,
    pub fixed_array_data: u64,
    pub type_sfi: u16,
    pub type_scope_info: u16,
    pub type_script: u16,
    pub type_fixed_array: u16,
    pub first_nonstring_type: u16,
    pub string_representation_mask: u16,
    pub string_encoding_mask: u16,
    pub one_byte_string_tag: u16,
    pub seq_string_tag: u16,
    pub cons_string_tag: u16,
    pub external_string_tag: u16,
    pub sliced_string_tag: u16,
    pub thin_string_tag: u16,
    pub scope_info_context_locals: u64,
    pub scope_info_first_vars: u64,
}

impl V8Layout {
    /// The layout, or why this V8 cannot be read: constants missing, or a heap layout this
    /// reader does not follow (pointer compression, which needs the heap's cage base).
    pub fn from_postmortem(c: &Postmortem) -> Result<Self, V8Error> {
        let missing = c.missing();
        if !missing.is_empty() {
            return Err(V8Error::MissingConstants(missing.join(", ")));
        }
        let get = |name: &str| c.get(name).unwrap_or(0);
        if get("SystemPointerSize") != 8 {
            return Err(V8Error::Unsupported(format!(
                "{}-byte pointers",
                get("SystemPointerSize")
            )));
        }
        if get("TaggedSize") != 8 {
            return Err(V8Error::Unsupported(format!(
                "pointer compression ({}-byte tagged values)",
                get("TaggedSize")
            )));
        }
        let off = |name: &str| -> Result<u64, V8Error> {
            u64::try_from(get(name))
                .ok()
                .filter(|&v| v < 1 << 16)
                .ok_or_else(|| V8Error::Unsupported(format!("v8dbg_{name} = {}", get(name))))
        };
        let opt = |name: &str| c.get(name).and_then(|v| u64::try_from(v).ok());
        let ty = |name: &str| -> Result<u16, V8Error> {
            u16::try_from(get(name))
                .map_err(|_| V8Error::Unsupported(format!("v8dbg_{name} = {}", get(name))))
        };
        let mask = |name: &str| get(name) as u16;
        let fp = |name: &str| -> Result<i32, V8Error> {
            i32::try_from(get(name))
                .ok()
                .filter(|v| (-4096..0).contains(v) && v % 8 == 0)
                .ok_or_else(|| V8Error::Unsupported(format!("v8dbg_{name} = {}", get(name))))
        };
        let smi_shift = u32::try_from(get("SmiShiftSize") + 1)
            .ok()
            .filter(|s| (1..64).contains(s))
            .ok_or_else(|| V8Error::Unsupported("the Smi shift".into()))?;
        Ok(Self {
            heap_object_tag: get("HeapObjectTag") as u64,
            heap_object_tag_mask: get("HeapObjectTagMask") as u64,
            smi_tag_mask: get("SmiTagMask") as u64,
            smi_shift,
            fp_function: fp("off_fp_function")?,
            fp_context: fp("off_fp_context")?,
            map: off("class_HeapObject__map__Map")?,
            map_instance_type: off("class_Map__instance_type__uint16_t")?,
            function_shared: off("class_JSFunction__shared__SharedFunctionInfo")?,
            sfi_name_or_scope_info: off("class_SharedFunctionInfo__name_or_scope_info__Object")?,
            sfi_script_or_debug_info: off(
                "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
            )?,
            sfi_function_data: off("class_SharedFunctionInfo__function_data__Object")?,
            uncompiled_start_position: opt("class_UncompiledData__start_position__int32_t"),
            uncompiled_inferred_name: opt("class_UncompiledData__inferred_name__String"),
            uncompiled_types: [
                "type_UncompiledDataWithoutPreparseData__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_TYPE",
                "type_UncompiledDataWithPreparseData__UNCOMPILED_DATA_WITH_PREPARSE_DATA_TYPE",
                "type_UncompiledDataWithoutPreparseDataWithJob__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_WITH_JOB_TYPE",
                "type_UncompiledDataWithPreparseDataAndJob__UNCOMPILED_DATA_WITH_PREPARSE_DATA_AND_JOB_TYPE",
            ]
            .iter()
            .filter_map(|name| c.get(name).and_then(|v| u16::try_from(v).ok()))
            .collect(),
            script_name: off("class_Script__name__Object")?,
            script_source: off("class_Script__source__Object")?,
            script_line_ends: opt("class_Script__line_ends__Object"),
            string_length: off("class_String__length__int32_t")?,
            seq_one_byte_chars: off("class_SeqOneByteString__chars__char")?,
            seq_two_byte_chars: off("class_SeqTwoByteString__chars__char")?,
            cons_first: off("class_ConsString__first__String")?,
            cons_second: off("class_ConsString__second__String")?,
            thin_actual: off("class_ThinString__actual__String")?,
            sliced_parent: off("class_SlicedString__parent__String")?,
            sliced_offset: off("class_SlicedString__offset__SMI")?,
            external_resource: opt("class_ExternalString__resource__Object"),
            fixed_array_length: off("class_FixedArrayBase__length__SMI")?,
            fixed_array_data: off("class_FixedArray__data__uintptr_t")?,
            type_sfi: ty("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE")?,
            type_scope_info: ty("type_ScopeInfo__SCOPE_INFO_TYPE")?,
            type_script: ty("type_Script__SCRIPT_TYPE")?,
            type_fixed_array: ty("type_FixedArray__FIXED_ARRAY_TYPE")?,
            first_nonstring_type: ty("FirstNonstringType")?,
            string_representation_mask: mask("StringRepresentationMask"),
            string_encoding_mask: mask("StringEncodingMask"),
            one_byte_string_tag: mask("OneByteStringTag"),
            seq_string_tag: mask("SeqStringTag"),
            cons_string_tag: mask("ConsStringTag"),
            external_string_tag: mask("ExternalStringTag"),
            sliced_string_tag: mask("SlicedStringTag"),
            thin_string_tag: mask("ThinStringTag"),
            scope_info_context_locals: off("scopeinfo_idx_ncontextlocals")?,
            scope_info_first_vars: off("scopeinfo_idx_first_vars")?,
        })
    }
}

/// Pieces of a string's contents, as V8 stores them.
pub enum Piece<'a> {
    OneByte(&'a [u8]),
    TwoByte(&'a [u16]),
}

/// Typed reads of a V8 heap in a target's memory.
pub struct Heap<'a, M> {
    pub memory: &'a M,
    pub layout: &'a V8Layout,
}

impl<M: Memory> Heap<'_, M> {
    pub fn is_heap_object(&self, word: u64) -> bool {
        word & self.layout.heap_object_tag_mask == self.layout.heap_object_tag
    }

    pub fn smi(&self, word: u64) -> Option<i64> {
        (word & self.layout.smi_tag_mask == 0).then_some((word as i64) >> self.layout.smi_shift)
    }

    /// The untagged address of the heap object a tagged word points to.
    pub fn object(&self, word: u64) -> Result<TargetAddr, V8Error> {
        if !self.is_heap_object(word) {
            return Err(V8Error::Corrupt(format!("{word:#x} is not a heap object")));
        }
        Ok(TargetAddr(word - self.layout.heap_object_tag))
    }

    /// The tagged word in the field at `offset` of the object at `obj` (untagged).
    pub fn field(&self, obj: TargetAddr, offset: u64) -> Result<u64, V8Error> {
        Ok(self.memory.read_u64(obj.offset(offset)?)?)
    }

    /// The instance type of the object at `obj`, read through its map.
    pub fn instance_type(&self, obj: TargetAddr) -> Result<u16, V8Error> {
        let map = self.object(self.field(obj, self.layout.map)?)?;
        Ok(self
            .memory
            .read_u16(map.offset(self.layout.map_instance_type)?)?)
    }

    /// The object a field points to with its type, or `None` when the field holds a Smi.
    pub fn typed_field(
        &self,
        obj: TargetAddr,
        offset: u64,
    ) -> Result<Option<(TargetAddr, u16)>, V8Error> {
        let word = self.field(obj, offset)?;
        if !self.is_heap_object(word) {
            return Ok(None);
        }
        let target = self.object(word)?;
        Ok(Some((target, self.instance_type(target)?)))
    }

    pub fn is_string_type(&self, instance_type: u16) -> bool {
        instance_type < self.layout.first_nonstring_type
    }

    /// A string as Rust text, at most `cap` code units (longer is an error).
    pub fn string(&self, obj: TargetAddr, cap: usize) -> Result<String, V8Error> {
        let mut units: Vec<u16> = Vec::new();
        self.visit_string(obj, cap, &mut |piece| match piece {
            Piece::OneByte(bytes) => units.extend(bytes.iter().map(|&b| u16::from(b))),
            Piece::TwoByte(chars) => units.extend_from_slice(chars),
        })?;
        Ok(String::from_utf16_lossy(&units))
    }

    /// Hands the contents of the string at `obj` to `visit` in order, in pieces; at most `cap`
    /// code units in all (longer is an error).
    pub fn visit_string(
        &self,
        obj: TargetAddr,
        cap: usize,
        visit: &mut dyn FnMut(Piece<'_>),
    ) -> Result<(), V8Error> {
        let length = self.string_length(obj)?;
        if length > cap {
            return Err(V8Error::Corrupt(format!(
                "a string of {length} code units, over the {cap} read"
            )));
        }
        self.visit_range(obj, 0, length, visit, 0)
    }

    fn string_length(&self, obj: TargetAddr) -> Result<usize, V8Error> {
        let length = self
            .memory
            .read_u32(obj.offset(self.layout.string_length)?)?;
        usize::try_from(length as i32).map_err(|_| V8Error::Corrupt("a negative length".into()))
    }

    /// Code units `start..start + len` of the string at `obj`.
    fn visit_range(
        &self,
        obj: TargetAddr,
        start: usize,
        len: usize,
        visit: &mut dyn FnMut(Piece<'_>),
        depth: u32,
    ) -> Result<(), V8Error> {
        if depth > MAX_STRING_DEPTH {
            return Err(V8Error::Corrupt("a string nested too deep".into()));
        }
        if len == 0 {
            return Ok(());
        }
        let l = self.layout;
        let ty = self.instance_type(obj)?;
        if !self.is_string_type(ty) {
            return Err(V8Error::Corrupt(format!("type {ty} is not a string")));
        }
        let length = self.string_length(obj)?;
        if start.checked_add(len).is_none_or(|end| end > length) {
            return Err(V8Error::Corrupt("a string range past its end".into()));
        }
        let one_byte = ty & l.string_encoding_mask == l.one_byte_string_tag;
        let representation = ty & l.string_representation_mask;
        let chars = if representation == l.seq_string_tag {
            obj.offset(if one_byte {
                l.seq_one_byte_chars
            } else {
                l.seq_two_byte_chars
            })?
        } else if representation == l.external_string_tag {
            let resource = l
                .external_resource
                .ok_or_else(|| V8Error::Unsupported("external strings".into()))?;
            if ty & UNCACHED_EXTERNAL_STRING != 0 {
                return Err(V8Error::Unsupported("uncached external strings".into()));
            }
            // The data pointer cached after the resource (`ExternalString::resource_data`).
            TargetAddr(self.memory.read_u64(obj.offset(resource + 8)?)?)
        } else if representation == l.cons_string_tag {
            let first = self.object(self.field(obj, l.cons_first)?)?;
            let second = self.object(self.field(obj, l.cons_second)?)?;
            let first_len = self.string_length(first)?;
            if start < first_len {
                let take = len.min(first_len - start);
                self.visit_range(first, start, take, visit, depth + 1)?;
                if take < len {
                    self.visit_range(second, 0, len - take, visit, depth + 1)?;
                }
            } else {
                self.visit_range(second, start - first_len, len, visit, depth + 1)?;
            }
            return Ok(());
        } else if representation == l.thin_string_tag {
            let actual = self.object(self.field(obj, l.thin_actual)?)?;
            return self.visit_range(actual, start, len, visit, depth + 1);
        } else if representation == l.sliced_string_tag {
            let parent = self.object(self.field(obj, l.sliced_parent)?)?;
            let offset = self
                .smi(self.field(obj, l.sliced_offset)?)
                .and_then(|o| usize::try_from(o).ok())
                .ok_or_else(|| V8Error::Corrupt("a sliced string's offset".into()))?;
            return self.visit_range(parent, offset + start, len, visit, depth + 1);
        } else {
            return Err(V8Error::Corrupt(format!("string representation {ty:#x}")));
        };
        // Contents in bounded pieces: a large source is not read in one allocation.
        const PIECE: usize = 1 << 20;
        let unit = if one_byte { 1 } else { 2 };
        let mut done = 0;
        while done < len {
            let take = (len - done).min(PIECE);
            let at = chars.offset(((start + done) * unit) as u64)?;
            let bytes = self.memory.read_vec(at, take * unit)?;
            if one_byte {
                visit(Piece::OneByte(&bytes));
            } else {
                let units: Vec<u16> = bytes
                    .chunks_exact(2)
                    .map(|p| u16::from_le_bytes([p[0], p[1]]))
                    .collect();
                visit(Piece::TwoByte(&units));
            }
            done += take;
        }
        Ok(())
    }
}

impl From<MemoryError> for V8Error {
    fn from(err: MemoryError) -> Self {
        Self::Memory(err)
    }
}

/// Node 20's constants (V8 11.3, x86-64, no pointer compression), as its binary exports them.
#[cfg(test)]
pub fn node20() -> Postmortem {
    Postmortem::from_pairs(&[
        ("SystemPointerSize", 8),
        ("TaggedSize", 8),
        ("HeapObjectTag", 1),
        ("HeapObjectTagMask", 3),
        ("SmiTagMask", 1),
        ("SmiShiftSize", 31),
        ("off_fp_function", -16),
        ("off_fp_context", -8),
        ("class_HeapObject__map__Map", 0),
        ("class_Map__instance_type__uint16_t", 12),
        ("class_JSFunction__shared__SharedFunctionInfo", 24),
        ("class_SharedFunctionInfo__name_or_scope_info__Object", 16),
        (
            "class_SharedFunctionInfo__script_or_debug_info__HeapObject",
            32,
        ),
        ("class_SharedFunctionInfo__function_data__Object", 8),
        ("class_UncompiledData__start_position__int32_t", 16),
        ("class_UncompiledData__inferred_name__String", 8),
        (
            "type_UncompiledDataWithoutPreparseData__UNCOMPILED_DATA_WITHOUT_PREPARSE_DATA_TYPE",
            222,
        ),
        ("class_Script__name__Object", 16),
        ("class_Script__source__Object", 8),
        ("class_Script__line_ends__Object", 56),
        ("class_String__length__int32_t", 12),
        ("class_SeqOneByteString__chars__char", 16),
        ("class_SeqTwoByteString__chars__char", 16),
        ("class_ConsString__first__String", 16),
        ("class_ConsString__second__String", 24),
        ("class_ThinString__actual__String", 16),
        ("class_SlicedString__parent__String", 16),
        ("class_SlicedString__offset__SMI", 24),
        ("class_ExternalString__resource__Object", 16),
        ("class_FixedArrayBase__length__SMI", 8),
        ("class_FixedArray__data__uintptr_t", 16),
        ("type_SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE", 262),
        ("type_ScopeInfo__SCOPE_INFO_TYPE", 261),
        ("type_Script__SCRIPT_TYPE", 167),
        ("type_FixedArray__FIXED_ARRAY_TYPE", 134),
        ("FirstNonstringType", 128),
        ("StringRepresentationMask", 7),
        ("StringEncodingMask", 8),
        ("OneByteStringTag", 8),
        ("SeqStringTag", 0),
        ("ConsStringTag", 1),
        ("ExternalStringTag", 2),
        ("SlicedStringTag", 3),
        ("ThinStringTag", 5),
        ("scopeinfo_idx_ncontextlocals", 2),
        ("scopeinfo_idx_first_vars", 3),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node20_constants_make_a_layout() {
        let layout = V8Layout::from_postmortem(&node20()).unwrap();
        assert_eq!(layout.smi_shift, 32);
        assert_eq!(layout.fp_function, -16);
    }

    #[test]
    fn pointer_compression_is_refused_in_one_line() {
        let mut pairs = node20();
        pairs = Postmortem::from_pairs(&[("TaggedSize", 4)]).merged_over(&pairs);
        let err = V8Layout::from_postmortem(&pairs).unwrap_err().to_string();
        assert!(err.contains("pointer compression"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn missing_constants_are_named() {
        let err = V8Layout::from_postmortem(&Postmortem::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("off_fp_function"), "{err}");
    }
}
