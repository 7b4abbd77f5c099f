//! A JavaScript function's name and place, from its SharedFunctionInfo (SFI): the name from
//! its ScopeInfo (or the name string an uncompiled function keeps), the file from its Script,
//! and the line of its start from the Script's source.
//!
//! ScopeInfo has no postmortem description of its variable part. Up to V8 12.8 its start and
//! end positions follow the context locals and the function's name: the first string after the
//! locals that is not empty is the name (the function's own, else the one V8 inferred), the
//! first pair of ascending small integers the positions (the reading
//! of the OpenTelemetry profiler, `interpreter/nodev8/v8.go`). From V8 12.8 the positions sit
//! at fixed slots 3 and 4, before the locals, which shows as `scopeinfo_idx_first_vars` >= 5.

use std::collections::HashMap;

use super::{
    V8Error,
    heap::{Heap, MAX_NAME_UNITS, MAX_SOURCE_UNITS, Piece},
};
use crate::jit::hotspot::memory::{Memory, TargetAddr};

/// What names one function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionName {
    /// Empty for an anonymous function.
    pub name: String,
    pub file: Option<String>,
    /// 1-based line of the function's start.
    pub line: Option<u32>,
}

/// How many ScopeInfo slots after the context locals are looked at for the name and positions.
const SCOPE_SLOTS_SCANNED: u64 = 16;
/// `kScopeInfoMaxInlinedLocalNamesSize`: from this many context locals on, their names are in
/// one hash table slot instead of one slot each.
const MAX_INLINED_LOCAL_NAMES: u64 = 75;
/// The most context locals believed.
const MAX_CONTEXT_LOCALS: u64 = 1 << 16;

/// Line starts of a script's source, to turn a position into a line.
#[derive(Clone, Debug, Default)]
pub struct LineEnds {
    /// Positions (in code units) of each line terminator, ascending.
    ends: Vec<u32>,
    /// The source's length, to reject positions past it.
    length: u32,
}

impl LineEnds {
    /// Finds the line terminators in a source as V8 does (`String::CalculateLineEnds`): `\n`,
    /// a `\r` not followed by `\n`, U+2028 and U+2029.
    pub fn scan(pieces: &[Vec<u16>]) -> Self {
        let mut ends = Vec::new();
        let mut at: u32 = 0;
        let mut prev_cr = false;
        for piece in pieces {
            for &unit in piece {
                if prev_cr && unit != u16::from(b'\n') {
                    ends.push(at - 1);
                }
                prev_cr = unit == u16::from(b'\r');
                if unit == u16::from(b'\n') || unit == 0x2028 || unit == 0x2029 {
                    ends.push(at);
                }
                at = at.saturating_add(1);
            }
        }
        if prev_cr {
            ends.push(at - 1);
        }
        Self { ends, length: at }
    }

    /// The 1-based line of `position`, if it lies in the source.
    pub fn line(&self, position: u32) -> Option<u32> {
        (position <= self.length)
            .then(|| u32::try_from(self.ends.partition_point(|&end| end < position) + 1).ok())?
    }
}

/// Names SFIs, caching what scripts say (their names and lines), keyed by the Script's address
/// and its source's length, so that a script moved or replaced at the same address reads again.
#[derive(Debug, Default)]
pub struct Namer {
    scripts: HashMap<(u64, u64), (Option<String>, Option<LineEnds>)>,
}

/// The most scripts whose lines are kept.
const MAX_SCRIPTS: usize = 1 << 12;

impl Namer {
    /// The name and place of the function whose SFI is at `sfi` (untagged).
    pub fn function<M: Memory>(
        &mut self,
        heap: &Heap<'_, M>,
        sfi: TargetAddr,
    ) -> Result<FunctionName, V8Error> {
        let l = heap.layout;
        let ty = heap.instance_type(sfi)?;
        if ty != l.type_sfi {
            return Err(V8Error::Corrupt(format!("type {ty} is not an SFI")));
        }
        let (name, position) = match heap.typed_field(sfi, l.sfi_name_or_scope_info)? {
            Some((scope, ty)) if ty == l.type_scope_info => scope_info(heap, scope)?,
            Some((name, ty)) if heap.is_string_type(ty) => {
                let name = heap.string(name, MAX_NAME_UNITS)?;
                let uncompiled = uncompiled(heap, sfi);
                (
                    if name.is_empty() {
                        uncompiled.inferred_name
                    } else {
                        name
                    },
                    uncompiled.start,
                )
            }
            _ => (String::new(), uncompiled(heap, sfi).start),
        };
        let mut function = FunctionName {
            name,
            ..FunctionName::default()
        };
        if let Some((script, ty)) = heap.typed_field(sfi, l.sfi_script_or_debug_info)?
            && ty == l.type_script
        {
            let (file, lines) = self.script(heap, script)?;
            function.file = file.clone();
            function.line = position.and_then(|p| lines.as_ref()?.line(p));
        }
        Ok(function)
    }

    fn script<M: Memory>(
        &mut self,
        heap: &Heap<'_, M>,
        script: TargetAddr,
    ) -> Result<&(Option<String>, Option<LineEnds>), V8Error> {
        let l = heap.layout;
        let source = heap
            .typed_field(script, l.script_source)?
            .filter(|&(_, ty)| heap.is_string_type(ty));
        let source_len = match source {
            Some((source, _)) => u64::from(heap.memory.read_u32(source.offset(l.string_length)?)?),
            None => u64::MAX,
        };
        let key = (script.0, source_len);
        if !self.scripts.contains_key(&key) {
            let name = match heap.typed_field(script, l.script_name)? {
                Some((name, ty)) if heap.is_string_type(ty) => {
                    Some(heap.string(name, MAX_NAME_UNITS)?)
                }
                _ => None,
            };
            let lines = source.and_then(|(source, _)| {
                source_lines(heap, source)
                    .inspect_err(|err| log::debug!("V8 script source at {source}: {err}"))
                    .ok()
            });
            if self.scripts.len() >= MAX_SCRIPTS {
                self.scripts.clear();
            }
            self.scripts.insert(key, (name, lines));
        }
        Ok(&self.scripts[&key])
    }
}

fn source_lines<M: Memory>(heap: &Heap<'_, M>, source: TargetAddr) -> Result<LineEnds, V8Error> {
    let mut pieces: Vec<Vec<u16>> = Vec::new();
    heap.visit_string(source, MAX_SOURCE_UNITS, &mut |piece| {
        // Only terminators matter: one-byte text is widened a piece at a time.
        pieces.push(match piece {
            Piece::OneByte(bytes) => bytes.iter().map(|&b| u16::from(b)).collect(),
            Piece::TwoByte(units) => units.to_vec(),
        });
    })?;
    Ok(LineEnds::scan(&pieces))
}

/// What a function that is not compiled (or whose bytecode V8 flushed) keeps of itself.
#[derive(Default)]
struct Uncompiled {
    start: Option<u32>,
    /// The name V8 inferred for an anonymous function (`obj.method = function () {}`).
    inferred_name: String,
}

/// The UncompiledData of the SFI at `sfi`, if its function data is one.
fn uncompiled<M: Memory>(heap: &Heap<'_, M>, sfi: TargetAddr) -> Uncompiled {
    let l = heap.layout;
    let Ok(Some((data, ty))) = heap.typed_field(sfi, l.sfi_function_data) else {
        return Uncompiled::default();
    };
    if !l.uncompiled_types.contains(&ty) {
        return Uncompiled::default();
    }
    let start = l
        .uncompiled_start_position
        .and_then(|offset| heap.memory.read_u32(data.offset(offset).ok()?).ok());
    let inferred_name = l
        .uncompiled_inferred_name
        .and_then(|offset| match heap.typed_field(data, offset) {
            Ok(Some((name, ty))) if heap.is_string_type(ty) => {
                heap.string(name, MAX_NAME_UNITS).ok()
            }
            _ => None,
        })
        .unwrap_or_default();
    Uncompiled {
        start,
        inferred_name,
    }
}

/// The function's name and start position from its ScopeInfo.
fn scope_info<M: Memory>(
    heap: &Heap<'_, M>,
    scope: TargetAddr,
) -> Result<(String, Option<u32>), V8Error> {
    let l = heap.layout;
    // Slots follow the map word.
    let slot = |index: u64| -> Result<u64, V8Error> { heap.field(scope, l.map + 8 + index * 8) };
    let locals = heap
        .smi(slot(l.scope_info_context_locals)?)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|&n| n < MAX_CONTEXT_LOCALS)
        .ok_or_else(|| V8Error::Corrupt("a ScopeInfo's context local count".into()))?;
    let fixed_positions = l.scope_info_first_vars >= 5;
    let mut position = None;
    if fixed_positions
        && let (Some(start), Some(end)) = (heap.smi(slot(3)?), heap.smi(slot(4)?))
        && (0..end).contains(&start)
    {
        position = u32::try_from(start).ok();
    }
    let local_slots = if locals < MAX_INLINED_LOCAL_NAMES {
        2 * locals
    } else {
        1 + locals
    };
    let first = l.scope_info_first_vars + local_slots;
    let mut name = None;
    let mut prev: Option<i64> = None;
    for index in first..first + SCOPE_SLOTS_SCANNED {
        let Ok(word) = slot(index) else { break };
        // The function's own name, empty for an anonymous one, then the name V8 inferred
        // for it (`Readable.push` for `Readable.prototype.push = function ...`): the first
        // that is not empty, as V8's own `DebugName`.
        if name.is_none()
            && heap.is_heap_object(word)
            && let Ok(obj) = heap.object(word)
            && heap
                .instance_type(obj)
                .is_ok_and(|ty| heap.is_string_type(ty))
        {
            let text = heap.string(obj, MAX_NAME_UNITS)?;
            if !text.is_empty() {
                name = Some(text);
                if fixed_positions {
                    break;
                }
            }
        }
        let value = heap.smi(word);
        if !fixed_positions
            && let (Some(start), Some(end)) = (prev, value)
            && (0..end).contains(&start)
        {
            position = u32::try_from(start).ok();
            break;
        }
        prev = value;
    }
    Ok((name.unwrap_or_default(), position))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::{
        hotspot::memory::FakeMemory,
        v8::heap::{V8Layout, node20},
    };

    const BASE: u64 = 0x10_0000;

    /// A V8 heap in a byte image: objects are bump-allocated, each a map word and fields.
    struct FakeHeap {
        memory: FakeMemory,
        next: u64,
        maps: HashMap<u16, u64>,
    }

    impl FakeHeap {
        fn new() -> Self {
            let mut memory = FakeMemory::new();
            memory.map(TargetAddr(BASE), vec![0; 1 << 20]);
            Self {
                memory,
                next: BASE,
                maps: HashMap::new(),
            }
        }

        /// A new object of `size` bytes; its untagged address.
        fn alloc(&mut self, size: u64) -> u64 {
            let at = self.next;
            self.next += size.next_multiple_of(8);
            at
        }

        fn map_of(&mut self, ty: u16) -> u64 {
            if let Some(&map) = self.maps.get(&ty) {
                return map;
            }
            let map = self.alloc(16);
            self.memory.write(TargetAddr(map + 12), &ty.to_le_bytes());
            self.maps.insert(ty, map);
            map
        }

        /// An object of type `ty` with these tagged words after its map; tagged address.
        fn object(&mut self, ty: u16, words: &[u64]) -> u64 {
            let map = self.map_of(ty);
            let at = self.alloc(8 + 8 * words.len() as u64);
            self.memory.write_u64(TargetAddr(at), map + 1);
            for (i, word) in words.iter().enumerate() {
                self.memory
                    .write_u64(TargetAddr(at + 8 + 8 * i as u64), *word);
            }
            at + 1
        }

        /// A one-byte sequential string (type 0x28, as V8 11's ONE_BYTE_STRING_TYPE).
        fn string(&mut self, text: &str) -> u64 {
            let map = self.map_of(0x28);
            let at = self.alloc(16 + text.len() as u64);
            self.memory.write_u64(TargetAddr(at), map + 1);
            self.memory
                .write(TargetAddr(at + 12), &(text.len() as u32).to_le_bytes());
            self.memory.write(TargetAddr(at + 16), text.as_bytes());
            at + 1
        }

        /// A cons string of two strings.
        fn cons(&mut self, first: u64, second: u64, len: u32) -> u64 {
            let at = self.object(0x29, &[0, first, second]) - 1;
            self.memory.write(TargetAddr(at + 12), &len.to_le_bytes());
            at + 1
        }
    }

    fn smi(value: i64) -> u64 {
        (value << 32) as u64
    }

    /// An SFI named `name` whose function starts at `start` in a script named `file`.
    fn function(heap: &mut FakeHeap, name: &str, file: &str, source: u64, start: i64) -> u64 {
        let undefined = heap.object(131, &[]);
        function_inferred(heap, name, undefined, file, source, start)
    }

    /// The same, with `inferred` (a tagged string, or undefined) as the name V8 inferred.
    fn function_inferred(
        heap: &mut FakeHeap,
        name: &str,
        inferred: u64,
        file: &str,
        source: u64,
        start: i64,
    ) -> u64 {
        let name = heap.string(name);
        let undefined = inferred;
        // flags, parameter count, 1 context local (name, info), the function's name and its
        // slot, inferred name (undefined), start and end positions.
        let local = heap.string("x");
        let scope = heap.object(
            261,
            &[
                smi(0),
                smi(1),
                smi(1),
                local,
                smi(0),
                name,
                smi(0),
                undefined,
                smi(start),
                smi(start + 20),
            ],
        );
        let file = heap.string(file);
        let script = heap.object(167, &[source, file]);
        heap.object(262, &[0, scope, 0, script])
    }

    fn name(heap: &FakeHeap, sfi: u64) -> Result<FunctionName, V8Error> {
        let layout = V8Layout::from_postmortem(&node20()).unwrap();
        let heap = Heap {
            memory: &heap.memory,
            layout: &layout,
        };
        Namer::default().function(&heap, TargetAddr(sfi - 1))
    }

    #[test]
    fn names_a_function_by_its_scope_info_and_script() {
        let mut heap = FakeHeap::new();
        let source = heap.string("'use strict';\n\nfunction acceptConnection(id) {\n}\n");
        let sfi = function(&mut heap, "acceptConnection", "/srv/leak.js", source, 24);
        assert_eq!(
            name(&heap, sfi).unwrap(),
            FunctionName {
                name: "acceptConnection".into(),
                file: Some("/srv/leak.js".into()),
                line: Some(3),
            }
        );
    }

    #[test]
    fn an_anonymous_function_takes_the_name_v8_inferred() {
        let mut heap = FakeHeap::new();
        let source = heap.string("Readable.prototype.push = function (chunk) {};\n");
        let inferred = heap.string("Readable.push");
        let sfi = function_inferred(&mut heap, "", inferred, "node:stream", source, 25);
        let named = name(&heap, sfi).unwrap();
        assert_eq!(
            (named.name.as_str(), named.line),
            ("Readable.push", Some(1))
        );
    }

    #[test]
    fn reads_a_source_made_of_pieces() {
        let mut heap = FakeHeap::new();
        let first = heap.string("a\nb\n");
        let second = heap.string("c\nfunction f() {}\n");
        let source = heap.cons(first, second, 22);
        let sfi = function(&mut heap, "f", "x.js", source, 6);
        assert_eq!(name(&heap, sfi).unwrap().line, Some(4));
    }

    #[test]
    fn a_string_that_contains_itself_is_refused() {
        let mut heap = FakeHeap::new();
        let a = heap.string("ab");
        let cons = heap.cons(a, a, 4);
        // The cons string's first half is itself: it would be followed for ever.
        heap.memory.write_u64(TargetAddr(cons - 1 + 16), cons);
        let sfi = function(&mut heap, "f", "x.js", cons, 1);
        let named = name(&heap, sfi).unwrap();
        assert_eq!(named.name, "f");
        assert_eq!(
            named.line, None,
            "no lines from a source that cannot be read"
        );
    }

    #[test]
    fn an_object_that_is_not_an_sfi_is_not_named() {
        let mut heap = FakeHeap::new();
        let script = heap.object(167, &[]);
        assert!(name(&heap, script).is_err());
    }

    #[test]
    fn a_position_past_the_source_has_no_line() {
        let mut heap = FakeHeap::new();
        let source = heap.string("short");
        let sfi = function(&mut heap, "", "/srv/app.js", source, 500);
        let named = name(&heap, sfi).unwrap();
        assert_eq!((named.name.as_str(), named.line), ("", None));
    }

    fn units(text: &str) -> Vec<u16> {
        text.encode_utf16().collect()
    }

    #[test]
    fn lines_are_counted_as_v8_counts_them() {
        let lines = LineEnds::scan(&[units("a\nbc\r\nd"), units("\re\u{2028}f")]);
        assert_eq!(lines.line(0), Some(1));
        assert_eq!(lines.line(1), Some(1), "the terminator ends its own line");
        assert_eq!(lines.line(2), Some(2));
        assert_eq!(lines.line(6), Some(3), "\\r\\n is one terminator");
        assert_eq!(lines.line(8), Some(4), "a lone \\r ends a line");
        assert_eq!(lines.line(10), Some(5));
        assert_eq!(lines.line(11), Some(5));
        assert_eq!(lines.line(12), None, "past the source");
    }
}
