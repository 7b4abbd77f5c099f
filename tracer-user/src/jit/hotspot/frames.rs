//! Java frames named from HotSpot's own metadata, for the symbolizer: a name source that is
//! asked before the perf map, since the runtime's own description of its code wins.
//!
//! The JVM is read lazily, at the first address in anonymous executable memory that needs a
//! name or an unwind rule (only JIT runtimes have such addresses); a process that maps no
//! libjvm.so is looked at again only every 10 s. The frames at a return address are named
//! when the kernel first asks for its unwind rule, close to the allocation, and kept: they
//! outlive the JVM, and later code at the same address does not rename them. Addresses named
//! only at report time are remembered by code range, a later blob over a range replacing it.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use tracer_common::{FrameIdentity, RuntimeLayout, StackWord, UNKNOWN_BCI};

use super::{
    HotspotError, HotspotVm, ProcessMemory, TargetAddr,
    codecache::{BlobKey, BlobKind, CodeBlob},
    names::MethodName,
};
use crate::{
    jit::{
        per_target::{Followed, PerTarget, TargetState},
        perf_map::JIT_MODULE,
    },
    model::{Frame, FrameData},
    process::TargetProcess,
};

/// The most code ranges remembered; past it the oldest knowledge is dropped (a JVM that
/// compiles without end must not grow leakhound without end).
const MAX_REMEMBERED: usize = 1 << 18;

#[derive(Debug, Default)]
enum Reader {
    /// Not tried yet.
    #[default]
    Untried,
    Attached(Box<HotspotVm<ProcessMemory>>),
    /// No libjvm.so mapped when last looked: a launched command may map it later, so it is
    /// looked for again after [`NOT_JVM_RECHECK`], not at every address.
    NotJvm(Instant),
    /// A JVM whose metadata could not be read: tried again after [`RETRY_AFTER`] (a JVM read
    /// while its library's initializers still run has tables of zeros), at most
    /// [`ATTEMPTS`] times in all.
    Failed {
        at: Instant,
        attempts: u32,
    },
    /// Gone, or failed every attempt: not tried again.
    Unavailable,
}

const RETRY_AFTER: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 3;

/// How long a process without libjvm.so is left alone before its mappings are read again.
const NOT_JVM_RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    reader: Reader,
    /// Code ranges named so far: start → (end, blob, frame).
    named: BTreeMap<u64, (u64, BlobKey, Frame)>,
    /// Whether the JVM runs with -XX:+PreserveFramePointer, once read from its flags.
    keeps_frame_pointers: Option<bool>,
    /// The Java frames at each return address of compiled code, named when a stack through it
    /// was first walked (close to the allocation, while that code was there): they outlive
    /// the JVM, and code that HotSpot later puts at the same address does not rename them.
    captured: HashMap<u64, Vec<Frame>>,
}

/// The most return addresses whose frames are kept.
const MAX_CAPTURED: usize = 1 << 18;

/// HotSpot-named Java frames of one target. Interior mutability: the symbolizer names frames
/// through a shared reference to the modules.
#[derive(Debug, Default)]
pub struct HotspotFrames {
    state: PerTarget<State>,
}

impl TargetState for State {
    fn unreadable() -> Self {
        Self {
            reader: Reader::Unavailable,
            ..Self::default()
        }
    }
}

impl State {
    fn attach_if_due(&mut self, pid: u32) {
        let due = match self.reader {
            Reader::Untried => true,
            Reader::NotJvm(at) => at.elapsed() >= NOT_JVM_RECHECK,
            Reader::Failed { at, .. } => at.elapsed() >= RETRY_AFTER,
            Reader::Attached(_) | Reader::Unavailable => false,
        };
        if due {
            let attempts = match self.reader {
                Reader::Failed { attempts, .. } => attempts,
                _ => 0,
            };
            self.reader = attach(pid, attempts);
        }
    }
}

/// The largest compiled frame believed, in words: HotSpot's own frames are at most a few
/// hundred words; anything near the stack's whole span is a misread.
const MAX_FRAME_WORDS: i32 = 1 << 16;

impl HotspotFrames {
    /// The size in bytes of the compiled Java frame (an nmethod's, native wrappers included)
    /// whose code holds `pc`, with the blob's key: the caller's stack pointer is the frame's `sp` plus this, the
    /// return address is the word below it and the caller's `rbp` the word below that
    /// (HotSpot's `frame::sender_for_compiled_frame`). `None` outside compiled Java code, where
    /// frame pointers serve (the interpreter and stubs keep `rbp`), and in a JVM that keeps
    /// frame pointers in compiled code too (-XX:+PreserveFramePointer).
    ///
    /// Only for a pc at a call (a return address minus one): there the frame is complete,
    /// while in a method's prologue or epilogue it is not.
    pub fn compiled_frame(&self, pc: u64) -> Option<(u64, BlobKey)> {
        let mut state = self.state.lock();
        let pid = state.pid?;
        state.attach_if_due(pid);
        let state: &mut State = &mut state;
        let Reader::Attached(vm) = &mut state.reader else {
            return None;
        };
        let blob = vm
            .find_blob(TargetAddr(pc))
            .inspect_err(|err| log::debug!("HotSpot blob of pid {pid} at {pc:#x}: {err}"))
            .ok()??;
        let in_code = blob.code.contains(&TargetAddr(pc));
        if in_code
            && !state.captured.contains_key(&pc)
            && let Some(frames) = blob_frames(vm, &blob, pc)
        {
            if state.captured.len() >= MAX_CAPTURED {
                state.captured.clear();
            }
            state.captured.insert(pc, frames);
        }
        // With frame pointers kept, the frame-pointer rule is exact and, unlike a frame size,
        // stays right when HotSpot frees code and puts other code at the same address.
        let keeps = *state.keeps_frame_pointers.get_or_insert_with(|| {
            vm.bool_flag("PreserveFramePointer")
                .inspect_err(|err| log::debug!("PreserveFramePointer of pid {pid}: {err}"))
                .ok()
                .flatten()
                .unwrap_or(false)
        });
        if keeps {
            return None;
        }
        let words = blob.frame_size_words;
        (blob.nmethod.is_some() && in_code && (2..=MAX_FRAME_WORDS).contains(&words))
            .then(|| (u64::from(words.unsigned_abs()) * 8, blob.key()))
    }

    /// The blob whose code holds `pc` now, by its key; `None` when there is none, or the JVM
    /// cannot be read. A rule derived from a blob is stale once this changes.
    pub fn blob_key(&self, pc: u64) -> Option<BlobKey> {
        let mut state = self.state.lock();
        let Reader::Attached(vm) = &mut state.reader else {
            return None;
        };
        let blob = vm.find_blob(TargetAddr(pc)).ok()??;
        blob.code.contains(&TargetAddr(pc)).then(|| blob.key())
    }

    /// Java frames of a target; `enabled`: whether its metadata may be read at all.
    pub fn new(enabled: bool) -> Self {
        Self {
            state: PerTarget::new(enabled),
        }
    }

    /// Remembers the target; nothing is read until a frame needs a name.
    pub fn refresh(&mut self, target: &TargetProcess) {
        self.state.follow(target.pid);
    }

    /// The Java frames at `addr` (a pc, or a return address minus one), outermost first: as
    /// named when a stack through it was first walked, else as the code cache holds it now,
    /// else as it held it when last asked. `None` outside compiled Java code.
    pub fn lookup(&self, addr: u64) -> Option<Vec<Frame>> {
        let mut state = self.state.lock();
        let pid = state.pid?;
        let state: &mut State = &mut state;
        if let Some(frames) = state.captured.get(&addr) {
            return Some(frames.clone());
        }
        state.attach_if_due(pid);
        if let Reader::Attached(vm) = &mut state.reader {
            match vm.resolve(TargetAddr(addr)) {
                Ok(Some(resolved)) if resolved.blob.nmethod.is_none() => {
                    // Stubs, adapters and the interpreter, by the blob's own name (the name a
                    // perf map gives them too).
                    let named = stub_frame(&resolved.blob);
                    let code = &resolved.blob.code;
                    remember(
                        &mut state.named,
                        code.start.0,
                        code.end.0,
                        resolved.blob.key(),
                        named.clone(),
                    );
                    return Some(vec![named]);
                }
                Ok(Some(resolved)) => {
                    let Some(Ok(method)) = &resolved.method else {
                        // A method that cannot be named: the perf map may know it.
                        return None;
                    };
                    let outer = frame(method, None, false);
                    let code = &resolved.blob.code;
                    remember(
                        &mut state.named,
                        code.start.0,
                        code.end.0,
                        resolved.blob.key(),
                        outer.clone(),
                    );
                    return Some(java_frames(vm, &resolved.blob, addr).unwrap_or(vec![outer]));
                }
                // No blob holds the pc now: the code was freed since. Nothing newer claims the
                // range, so what was named there before is the best name.
                Ok(None) => {}
                Err(err) => {
                    // The JVM exited, or its memory says something implausible: what was
                    // named before still serves.
                    log::debug!("HotSpot metadata of pid {pid} at {addr:#x}: {err}");
                }
            }
        }
        let (_, (end, _, frame)) = state.named.range(..=addr).next_back()?;
        (addr < *end).then(|| vec![frame.clone()])
    }
}

/// Reads the JVM's metadata; `failed` attempts were made before. The first failure is
/// reported, once.
/// The report frames at `pc` in `blob`: an nmethod's Java frames ([`java_frames`]), or the
/// name of a stub, adapter or the interpreter.
fn blob_frames(vm: &mut HotspotVm<ProcessMemory>, blob: &CodeBlob, pc: u64) -> Option<Vec<Frame>> {
    if blob.nmethod.is_some() {
        java_frames(vm, blob, pc)
    } else {
        Some(vec![stub_frame(blob)])
    }
}

/// A frame named by its blob: `Interpreter`, `StubRoutines (1)`, `I2C/C2I adapters`.
fn stub_frame(blob: &CodeBlob) -> Frame {
    let mut frame = FrameData::named(&*blob.name);
    frame.module = Some(JIT_MODULE.to_owned());
    frame.into()
}

/// The report frames at `pc` in the nmethod `blob`: its method and the methods inlined there,
/// each with its line; `None` when not even the method can be named.
fn java_frames(vm: &mut HotspotVm<ProcessMemory>, blob: &CodeBlob, pc: u64) -> Option<Vec<Frame>> {
    match vm.java_frames(blob, TargetAddr(pc)) {
        Ok(frames) if !frames.is_empty() => Some(
            frames
                .iter()
                .map(|java| frame(&java.name, java.line, java.inlined))
                .collect(),
        ),
        Ok(_) => None,
        Err(err) => {
            log::debug!("Java frames at {pc:#x}: {err}");
            None
        }
    }
}

/// A report frame for a Java method.
fn frame(method: &MethodName, line: Option<u32>, inlined: bool) -> Frame {
    FrameData {
        name: method.qualified(),
        module: Some(JIT_MODULE.to_owned()),
        file: method.source_file.clone(),
        line,
        inlined,
    }
    .into()
}

fn attach(pid: u32, failed: u32) -> Reader {
    match HotspotVm::attach(pid) {
        Ok(vm) => {
            log::debug!(
                "HotSpot metadata of pid {pid}: {} fields, {} types",
                vm.structs.fields.len(),
                vm.structs.types.len()
            );
            Reader::Attached(Box::new(vm))
        }
        Err(HotspotError::NoLibjvm) => Reader::NotJvm(Instant::now()),
        // The process is gone.
        Err(HotspotError::Maps(_)) => Reader::Unavailable,
        // Gone while it was read: nothing to say.
        Err(_) if !TargetProcess::open(pid).is_ok_and(|target| target.is_alive()) => {
            Reader::Unavailable
        }
        Err(err) => {
            if failed == 0 {
                eprintln!(
                    "leakhound: cannot read HotSpot's metadata in pid {pid}: {err}; Java frames are named from the perf map only{}",
                    frame_pointer_hint(pid)
                );
            } else {
                log::debug!(
                    "HotSpot metadata of pid {pid}, attempt {}: {err}",
                    failed + 1
                );
            }
            if failed + 1 >= ATTEMPTS {
                Reader::Unavailable
            } else {
                Reader::Failed {
                    at: Instant::now(),
                    attempts: failed + 1,
                }
            }
        }
    }
}

/// Without its metadata, compiled Java frames unwind only by frame pointers: what a JVM
/// without -XX:+PreserveFramePointer loses then.
fn frame_pointer_hint(pid: u32) -> &'static str {
    let read = |what| std::fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
    if crate::jit::jvm_flag(&read("cmdline"), &read("environ"), "PreserveFramePointer")
        == Some(true)
    {
        ""
    } else {
        "; without -XX:+PreserveFramePointer, stacks may also stop at the first compiled Java method"
    }
}

/// Records a named range, dropping every range it overlaps (code freed and reused).
fn remember(
    named: &mut BTreeMap<u64, (u64, BlobKey, Frame)>,
    start: u64,
    end: u64,
    key: BlobKey,
    frame: Frame,
) {
    if let Some((_, (old_end, old_key, _))) = named.get_key_value(&start)
        && (*old_end, *old_key) == (end, key)
    {
        return;
    }
    let overlapping: Vec<u64> = named
        .range(..end)
        .rev()
        .take_while(|(_, (old_end, _, _))| *old_end > start)
        .map(|(start, _)| *start)
        .collect();
    for old in overlapping {
        named.remove(&old);
    }
    if named.len() >= MAX_REMEMBERED {
        named.pop_first();
    }
    named.insert(start, (end, key, frame));
}

impl HotspotFrames {
    /// The state, with the JVM's metadata read if it is due.
    fn attached(&self) -> std::sync::MutexGuard<'_, Followed<State>> {
        let mut state = self.state.lock();
        if let Some(pid) = state.pid {
            state.attach_if_due(pid);
        }
        state
    }

    /// Whether `pc` is in HotSpot's template interpreter, where every interpreted method runs.
    pub fn in_interpreter(&self, pc: u64) -> bool {
        let mut state = self.attached();
        let Reader::Attached(vm) = &mut state.reader else {
            return false;
        };
        matches!(
            vm.find_blob(TargetAddr(pc)),
            Ok(Some(blob)) if blob.kind == BlobKind::Interpreter && blob.code.contains(&TargetAddr(pc))
        )
    }

    /// The frame of the interpreted method at `method`, at bytecode index `bci`.
    fn interpreted(&self, method: u64, bci: u16) -> Option<Vec<Frame>> {
        let mut state = self.attached();
        let Reader::Attached(vm) = &mut state.reader else {
            return None;
        };
        let bci = (bci != UNKNOWN_BCI).then_some(bci);
        match vm.interpreted_frame(TargetAddr(method), bci) {
            Ok(java) => Some(vec![frame(&java.name, java.line, false)]),
            Err(err) => {
                log::debug!("interpreted method at {method:#x}: {err}");
                None
            }
        }
    }
}

/// Names Java frames for the namer. Its code is in anonymous executable memory, which the
/// address space already counts as code, so it claims no address of its own.
impl crate::symbolize::NameSource for HotspotFrames {
    fn frames(&self, addr: u64) -> Option<Vec<Frame>> {
        self.lookup(addr)
    }

    fn covers(&self, _: u64) -> bool {
        false
    }

    fn identified(&self, word: u64) -> Option<Vec<Frame>> {
        match StackWord::decode(word) {
            StackWord::Identity {
                kind: FrameIdentity::JvmInterpreted,
                ptr,
                data,
            } => self.interpreted(ptr, data),
            _ => None,
        }
    }
}

/// Interpreted frames identify themselves by their `Method*` and bytecode pointer.
impl crate::identities::FrameKinds for HotspotFrames {
    fn identity_at(&self, pc: u64) -> FrameIdentity {
        if self.in_interpreter(pc) {
            FrameIdentity::JvmInterpreted
        } else {
            FrameIdentity::None
        }
    }

    fn fill_layout(&self, layout: &mut RuntimeLayout) {
        let state = self.state.lock();
        if let Reader::Attached(vm) = &state.reader
            && let Some(jvm) = vm.interpreter_layout()
        {
            layout.jvm = jvm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::hotspot::codecache::CompileId;

    fn key(start: u64, id: u32) -> BlobKey {
        BlobKey {
            start: TargetAddr(start),
            compile_id: Some(CompileId(id)),
        }
    }

    #[test]
    fn a_new_blob_over_old_code_replaces_its_name() {
        let mut named = BTreeMap::new();
        remember(&mut named, 100, 200, key(90, 1), Frame::named("a.A.old"));
        remember(&mut named, 300, 400, key(290, 2), Frame::named("b.B.kept"));
        remember(&mut named, 150, 250, key(140, 3), Frame::named("c.C.new"));
        let names: Vec<&str> = named.values().map(|(_, _, f)| f.name.as_str()).collect();
        assert_eq!(names, ["c.C.new", "b.B.kept"]);
    }

    #[test]
    fn a_process_that_is_not_a_jvm_is_looked_at_once() {
        let mut frames = HotspotFrames::default();
        frames.refresh(&TargetProcess {
            pid: std::process::id(),
        });
        assert!(frames.lookup(0x1000).is_none());
        assert!(matches!(frames.state.lock().reader, Reader::NotJvm(_)));
    }
}
