//! Which method or function a runtime's frame runs, read from the frame itself.
//!
//! All interpreted Java methods run in HotSpot's one template interpreter, and every
//! JavaScript function that V8 has not compiled runs in its shared interpreter entry, so a
//! return address there says nothing of the method. The frame says it: HotSpot keeps the
//! `Method*` and the bytecode pointer in fixed slots below the frame pointer, V8 the
//! `JSFunction`. The kernel walk reads them at the allocation, while they are true, and keeps an
//! identity word in place of the return address; user space's walk of a stack copy makes the
//! same word with the same function, so both give a stack one key.

/// What a frame's slots identify, set on the unwind rule of its return address by user space,
/// which knows what code the address is in. The kernel reads the `u32`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameIdentity {
    /// An ordinary frame: its return address names it.
    None = 0,
    /// A frame of HotSpot's interpreter: its `Method*` and bytecode index.
    JvmInterpreted = 1,
    /// A V8 JavaScript frame: its function's `SharedFunctionInfo`.
    V8Js = 2,
}

impl TryFrom<u32> for FrameIdentity {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            0 => Ok(Self::None),
            1 => Ok(Self::JvmInterpreted),
            2 => Ok(Self::V8Js),
            other => Err(other),
        }
    }
}

/// Where an interpreted HotSpot frame keeps its method, from HotSpot's own description.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JvmFrameLayout {
    /// Byte offset of the `Method*` slot from the frame pointer.
    pub method_at: i32,
    /// Byte offset of the bytecode pointer slot from the frame pointer.
    pub bcp_at: i32,
    /// `Method::_constMethod`.
    pub const_method_at: u32,
    /// Where a `ConstMethod`'s bytecodes start: its size (`sizeof(ConstMethod)`).
    pub bytecodes_at: u32,
    /// 1 once user space has filled it in.
    pub valid: u32,
    pub _pad: u32,
}

/// Where a V8 JavaScript frame keeps its function, from the `v8dbg_*` constants that `node`
/// exports.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V8FrameLayout {
    /// Byte offset of the `JSFunction` slot from the frame pointer.
    pub function_at: i32,
    /// Byte offset of the context slot from the frame pointer: a frame that holds a Smi there
    /// is a typed frame (a stub's, an exit frame), not a JavaScript one.
    pub context_at: i32,
    /// `JSFunction`'s `SharedFunctionInfo` field.
    pub shared_at: u32,
    /// `HeapObject`'s map field.
    pub map_at: u32,
    /// `Map`'s 16-bit instance type.
    pub instance_type_at: u32,
    /// The instance type of a `SharedFunctionInfo`.
    pub sfi_type: u32,
    /// A field of the `SharedFunctionInfo` whose low 16 bits are kept beside it, so that user
    /// space can tell the same object from another one that the GC put at its address; -1 for
    /// none.
    pub check_at: i32,
    /// 1 once user space has filled it in.
    pub valid: u32,
}

/// Every runtime layout, in one array-map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeLayout {
    pub jvm: JvmFrameLayout,
    pub v8: V8FrameLayout,
}

/// The tag bit of an identity word: no user-space code address has it.
const IDENTITY_BIT: u64 = 1 << 63;
const KIND_SHIFT: u32 = 60;
const KIND_MASK: u64 = 0b111;
const DATA_SHIFT: u32 = 44;
const POINTER_BITS: u32 = 44;
/// Pointers are 8-aligned and below 2^47: 44 bits hold them shifted.
const POINTER_LIMIT: u64 = 1 << (POINTER_BITS + 3);

/// A word of a stored stack, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StackWord {
    /// A return address (the innermost: where execution resumes).
    Pc(u64),
    /// A frame identified by its own slots: the object (untagged, 8-aligned) and 16 bits of
    /// data (the bytecode index of a Java frame; a check value of a V8 one).
    Identity {
        kind: FrameIdentity,
        ptr: u64,
        data: u16,
    },
}

impl StackWord {
    /// Decodes a stored word; a word with the tag and a kind this build does not know is a
    /// return address no code has, and stays a `Pc`.
    pub fn decode(word: u64) -> Self {
        if word & IDENTITY_BIT == 0 {
            return Self::Pc(word);
        }
        match FrameIdentity::try_from(((word >> KIND_SHIFT) & KIND_MASK) as u32) {
            Ok(kind) if kind != FrameIdentity::None => Self::Identity {
                kind,
                ptr: (word & ((1 << POINTER_BITS) - 1)) << 3,
                data: (word >> DATA_SHIFT) as u16,
            },
            _ => Self::Pc(word),
        }
    }

    /// The word for an identified frame; `None` for a pointer that cannot be one (unaligned,
    /// null, or beyond user space).
    #[inline(always)]
    pub fn identity(kind: FrameIdentity, ptr: u64, data: u16) -> Option<u64> {
        if ptr == 0 || ptr & 7 != 0 || ptr >= POINTER_LIMIT || kind == FrameIdentity::None {
            return None;
        }
        Some(
            IDENTITY_BIT
                | ((kind as u64) << KIND_SHIFT)
                | ((data as u64) << DATA_SHIFT)
                | (ptr >> 3),
        )
    }
}

/// A bytecode index that does not fit the word's 16 bits, or could not be worked out.
pub const UNKNOWN_BCI: u16 = u16::MAX;

/// The identity word of the frame whose frame pointer is `bp`, under `layout`; `read` reads a
/// word of the target's memory. The kernel walk and user space's walk of a stack copy both
/// call this, so that they store the same word. `None` where a read fails or a check does not
/// hold: the frame then keeps its return address.
#[inline(always)]
pub fn identity_word(
    kind: FrameIdentity,
    layout: &RuntimeLayout,
    bp: u64,
    mut read: impl FnMut(u64) -> Option<u64>,
) -> Option<u64> {
    match kind {
        FrameIdentity::None => None,
        FrameIdentity::JvmInterpreted => {
            let jvm = &layout.jvm;
            if jvm.valid == 0 {
                return None;
            }
            let method = read(bp.wrapping_add(jvm.method_at as i64 as u64))?;
            if method == 0 || method & 7 != 0 {
                return None;
            }
            let bcp = read(bp.wrapping_add(jvm.bcp_at as i64 as u64))?;
            let const_method = read(method.wrapping_add(jvm.const_method_at as u64))?;
            let bci = bcp
                .wrapping_sub(const_method)
                .wrapping_sub(jvm.bytecodes_at as u64);
            let bci = if bci < UNKNOWN_BCI as u64 {
                bci as u16
            } else {
                UNKNOWN_BCI
            };
            StackWord::identity(kind, method, bci)
        }
        FrameIdentity::V8Js => {
            let v8 = &layout.v8;
            if v8.valid == 0 {
                return None;
            }
            // A Smi (low bit clear) in the context slot marks a typed frame.
            let context = read(bp.wrapping_add(v8.context_at as i64 as u64))?;
            if context & 1 == 0 {
                return None;
            }
            let function = read(bp.wrapping_add(v8.function_at as i64 as u64))?;
            if function & 3 != 1 {
                return None;
            }
            let shared = read((function - 1).wrapping_add(v8.shared_at as u64))?;
            if shared & 3 != 1 {
                return None;
            }
            let map = read((shared - 1).wrapping_add(v8.map_at as u64))?;
            if map & 3 != 1 {
                return None;
            }
            let instance_type = read((map - 1).wrapping_add(v8.instance_type_at as u64))?;
            if instance_type & 0xffff != v8.sfi_type as u64 {
                return None;
            }
            let check = if v8.check_at < 0 {
                0
            } else {
                read((shared - 1).wrapping_add(v8.check_at as u64))? as u16
            };
            StackWord::identity(kind, shared - 1, check)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_words_round_trip_and_never_look_like_code() {
        let word = StackWord::identity(FrameIdentity::JvmInterpreted, 0x7f12_3456_7898, 42)
            .expect("an aligned user pointer");
        assert!(word & IDENTITY_BIT != 0);
        assert_eq!(
            StackWord::decode(word),
            StackWord::Identity {
                kind: FrameIdentity::JvmInterpreted,
                ptr: 0x7f12_3456_7898,
                data: 42
            }
        );
        assert_eq!(
            StackWord::decode(0x7f00_0000_1234),
            StackWord::Pc(0x7f00_0000_1234)
        );
        assert_eq!(
            StackWord::identity(FrameIdentity::V8Js, 0x7f12_3456_7891, 0),
            None
        );
        assert_eq!(StackWord::identity(FrameIdentity::V8Js, 1 << 47, 0), None);
        // A tagged word of an unknown kind stays what it is.
        assert_eq!(
            StackWord::decode(IDENTITY_BIT | (7 << KIND_SHIFT)),
            StackWord::Pc(IDENTITY_BIT | (7 << KIND_SHIFT))
        );
    }

    /// A fake memory of (address, word) pairs.
    fn reader(words: &[(u64, u64)]) -> impl FnMut(u64) -> Option<u64> + '_ {
        move |at| words.iter().find(|(a, _)| *a == at).map(|(_, w)| *w)
    }

    #[test]
    fn an_interpreted_java_frame_gives_its_method_and_bytecode_index() {
        let layout = RuntimeLayout {
            jvm: JvmFrameLayout {
                method_at: -24,
                bcp_at: -64,
                const_method_at: 8,
                bytecodes_at: 56,
                valid: 1,
                _pad: 0,
            },
            ..RuntimeLayout::default()
        };
        let (bp, method, const_method) = (0x7ffd_1000, 0x7f00_2000, 0x7f00_3000);
        let memory = [
            (bp - 24, method),
            (bp - 64, const_method + 56 + 17),
            (method + 8, const_method),
        ];
        let word = identity_word(FrameIdentity::JvmInterpreted, &layout, bp, reader(&memory));
        assert_eq!(
            word.map(StackWord::decode),
            Some(StackWord::Identity {
                kind: FrameIdentity::JvmInterpreted,
                ptr: method,
                data: 17
            })
        );
        // Before the layout is known nothing is read.
        assert_eq!(
            identity_word(
                FrameIdentity::JvmInterpreted,
                &RuntimeLayout::default(),
                bp,
                reader(&memory)
            ),
            None
        );
    }

    #[test]
    fn a_v8_frame_gives_its_shared_function_info_after_the_checks() {
        let layout = RuntimeLayout {
            v8: V8FrameLayout {
                function_at: -16,
                context_at: -8,
                shared_at: 24,
                map_at: 0,
                instance_type_at: 12,
                sfi_type: 0xb4,
                check_at: 40,
                valid: 1,
            },
            ..RuntimeLayout::default()
        };
        let bp = 0x7ffd_1000;
        let (function, shared, map) = (0x2000_0001, 0x3000_0001, 0x4000_0001);
        let memory = [
            (bp - 8, 0x5000_0001),
            (bp - 16, function),
            (function - 1 + 24, shared),
            (shared - 1, map),
            (map - 1 + 12, 0xdead_0000_00b4),
            (shared - 1 + 40, 0x1_2345),
        ];
        assert_eq!(
            identity_word(FrameIdentity::V8Js, &layout, bp, reader(&memory)).map(StackWord::decode),
            Some(StackWord::Identity {
                kind: FrameIdentity::V8Js,
                ptr: shared - 1,
                data: 0x2345
            })
        );
        // A typed frame (a Smi marker in the context slot) keeps its return address.
        let mut typed = memory;
        typed[0] = (bp - 8, 0x22 << 32);
        assert_eq!(
            identity_word(FrameIdentity::V8Js, &layout, bp, reader(&typed)),
            None
        );
        // Something else than a SharedFunctionInfo where one should be.
        let mut other = memory;
        other[4] = (map - 1 + 12, 0xb5);
        assert_eq!(
            identity_word(FrameIdentity::V8Js, &layout, bp, reader(&other)),
            None
        );
    }
}
