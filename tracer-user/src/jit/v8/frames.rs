//! JavaScript frames named from V8's own metadata, for the unwinder (which return addresses are
//! JavaScript frames, whose function the kernel walk reads) and for the namer (the function an
//! identity word names).
//!
//! V8 is read lazily, at the first question about a Node process. A process without V8 is
//! looked at again every 10 s (a launched command may exec node later); a V8 whose metadata
//! cannot be read is said once, in one line, and its frames fall back to the perf map.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tracer_common::{FrameIdentity, RuntimeLayout, StackWord};

use super::{V8Error, V8Vm};
use crate::{
    identities::FrameKinds,
    jit::{
        per_target::{Followed, PerTarget, TargetState},
        perf_map::{JIT_MODULE, js_function},
    },
    model::Frame,
    process::{
        TargetProcess,
        address_space::{AddressSpace, Location},
    },
    symbolize::NameSource,
};

/// How long a process without V8 is left alone before it is looked at again.
const NOT_V8_RECHECK: Duration = Duration::from_secs(10);
/// The most functions whose names are kept; past it the cache starts over.
const MAX_NAMED: usize = 1 << 18;

#[derive(Debug, Default)]
enum Reader {
    #[default]
    Untried,
    Attached(Box<V8Vm>),
    NotV8(Instant),
    /// A V8 whose metadata cannot be read (said once), or a process gone.
    Unavailable,
}

#[derive(Debug, Default)]
struct State {
    reader: Reader,
    /// Names by (SFI address, check), read when the identity was first seen: a later read of
    /// the same address may find another function there, which the check mostly catches, so
    /// the first answer, read closest to the allocation, is kept. `None`: it could not be read
    /// then (the object had moved), and is not read again.
    named: HashMap<(u64, u16), Option<Frame>>,
}

impl TargetState for State {
    fn unreadable() -> Self {
        Self {
            reader: Reader::Unavailable,
            ..Self::default()
        }
    }
}

impl Followed<State> {
    fn vm(&mut self) -> Option<&mut V8Vm> {
        let pid = self.pid?;
        let due = match self.reader {
            Reader::Untried => true,
            Reader::NotV8(at) => at.elapsed() >= NOT_V8_RECHECK,
            Reader::Attached(_) | Reader::Unavailable => false,
        };
        if due {
            self.reader = attach(pid);
        }
        match &mut self.reader {
            Reader::Attached(vm) => Some(vm),
            _ => None,
        }
    }
}

fn attach(pid: u32) -> Reader {
    match V8Vm::attach(pid) {
        Ok(vm) => {
            log::debug!(
                "V8 metadata of pid {pid} from {}: builtins {:x?}",
                vm.path.display(),
                vm.builtins
            );
            if vm.builtins.is_none() {
                eprintln!(
                    "leakhound: node (pid {pid}): {} has no symbol table, so V8's builtins cannot be found: functions V8 has not compiled show as the interpreter (start node with --interpreted-frames-native-stack to name them)",
                    vm.path.display()
                );
            }
            Reader::Attached(Box::new(vm))
        }
        Err(V8Error::NoV8) => Reader::NotV8(Instant::now()),
        Err(_) if !TargetProcess::open(pid).is_ok_and(|target| target.is_alive()) => {
            Reader::Unavailable
        }
        Err(err) => {
            let advice = TargetProcess::open(pid)
                .ok()
                .and_then(|target| crate::jit::node_advice(&target))
                .map_or(String::new(), |advice| format!("; {advice}"));
            eprintln!(
                "leakhound: node (pid {pid}): cannot read V8's own metadata: {err}; JavaScript frames are named from its perf map only{advice}"
            );
            Reader::Unavailable
        }
    }
}

/// V8-named JavaScript frames of one target. Interior mutability: the unwinder and the namer
/// ask through shared references to the target's code.
#[derive(Debug, Default)]
pub struct V8Frames {
    state: PerTarget<State>,
}

impl V8Frames {
    fn state(&self) -> std::sync::MutexGuard<'_, Followed<State>> {
        self.state.lock()
    }

    /// JavaScript frames of a target; `enabled`: whether V8's metadata may be read at all.
    pub fn new(enabled: bool) -> Self {
        Self {
            state: PerTarget::new(enabled),
        }
    }

    /// Follows the traced process (a new PID after an exec starts over).
    pub fn refresh(&mut self, target: &TargetProcess) {
        self.state.follow(target.pid);
    }

    /// Whether the code at `pc` runs JavaScript frames: anonymous executable memory of a
    /// process with a readable V8 (`anonymous`), or V8's embedded builtins, whose frames
    /// include the interpreter's. The walk's checks reject the typed frames among them.
    pub fn runs_js(&self, pc: u64, anonymous: bool) -> bool {
        let mut state = self.state();
        let Some(vm) = state.vm() else {
            return false;
        };
        anonymous || vm.builtins.as_ref().is_some_and(|b| b.contains(&pc))
    }

    /// What the frames of the code in `space` identify themselves by.
    pub fn kinds<'a>(&'a self, space: &'a AddressSpace) -> V8Kinds<'a> {
        V8Kinds {
            frames: self,
            space,
        }
    }

    /// The frame of the function whose SFI is at `sfi` (untagged) with check `check`, named
    /// from V8's metadata; read once, when first asked, and kept.
    pub fn name(&self, sfi: u64, check: u16) -> Option<Frame> {
        let mut state = self.state();
        if let Some(frame) = state.named.get(&(sfi, check)) {
            return frame.clone();
        }
        let pid = state.pid?;
        let vm = state.vm()?;
        let frame = match vm.function(sfi, check) {
            Ok(function) => {
                let mut frame = js_function(&function.name, function.file, function.line);
                frame.module = Some(JIT_MODULE.to_owned());
                Some(Frame::from(frame))
            }
            Err(err) => {
                log::debug!("V8 function of pid {pid} at {sfi:#x}: {err}");
                None
            }
        };
        if state.named.len() >= MAX_NAMED {
            state.named.clear();
        }
        state.named.insert((sfi, check), frame.clone());
        frame
    }
}

/// Names the identity words of JavaScript frames; return addresses are the perf map's.
impl NameSource for V8Frames {
    fn frames(&self, _: u64) -> Option<Vec<Frame>> {
        None
    }

    fn covers(&self, _: u64) -> bool {
        false
    }

    fn identified(&self, word: u64) -> Option<Vec<Frame>> {
        match StackWord::decode(word) {
            StackWord::Identity {
                kind: FrameIdentity::V8Js,
                ptr,
                data,
            } => self.name(ptr, data).map(|frame| vec![frame]),
            _ => None,
        }
    }
}

/// V8's frames with the address space they are in, to tell V8's compiled code (anonymous
/// executable memory) from the rest.
pub struct V8Kinds<'a> {
    frames: &'a V8Frames,
    space: &'a AddressSpace,
}

impl FrameKinds for V8Kinds<'_> {
    fn identity_at(&self, pc: u64) -> FrameIdentity {
        let anonymous = matches!(self.space.locate(pc), Location::Anonymous);
        if self.frames.runs_js(pc, anonymous) {
            FrameIdentity::V8Js
        } else {
            FrameIdentity::None
        }
    }

    fn fill_layout(&self, layout: &mut RuntimeLayout) {
        // Read V8 now if it is due, so that the first walk reads frames as the kernel will.
        if let Some(vm) = self.frames.state().vm() {
            layout.v8 = vm.frame_layout;
        }
    }
}
