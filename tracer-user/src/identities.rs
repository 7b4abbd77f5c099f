//! Frames that a runtime identifies by their own slots: interpreted Java methods (their
//! `Method*` and bytecode index) and JavaScript functions (their `SharedFunctionInfo`).
//!
//! A return address into HotSpot's interpreter or into V8's shared entries says nothing of the
//! method, so the kernel walk reads the method from the frame and keeps an identity word in
//! the return address's place (`tracer_common::identity`). Which frames those are is the
//! runtime's to say ([`FrameKinds`], asked when a rule is made for a return address), and so is
//! where the slots are (the layout, from the runtime's own description, written to the kernel
//! before the first rule that needs it).
//!
//! The objects the words point to can go away (a class unloaded) or move (V8's GC), so a new
//! stack with identified frames is announced by the kernel, and its words are named at once
//! and kept ([`IdentityNames`]); the report uses those names.

use std::{collections::HashMap, sync::Mutex};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{FrameIdentity, MAX_STACK_DEPTH, RuntimeLayout, StackWord};

use crate::{
    code_refresh::TargetCode,
    errors::TracerError,
    kernel::maps::KernelMaps,
    model::{Frame, FrameData},
    symbolize::NameSource,
};

/// What a runtime says of the frames of its code.
pub trait FrameKinds {
    /// What the frame whose code holds `pc` (a return address minus one) identifies itself
    /// by; [`FrameIdentity::None`] for an ordinary frame, or an address not the runtime's.
    fn identity_at(&self, pc: u64) -> FrameIdentity;

    /// Fills in the runtime's part of the kernel's layout, once it knows it.
    fn fill_layout(&self, layout: &mut RuntimeLayout);
}

impl<T: FrameKinds + ?Sized> FrameKinds for &T {
    fn identity_at(&self, pc: u64) -> FrameIdentity {
        (**self).identity_at(pc)
    }

    fn fill_layout(&self, layout: &mut RuntimeLayout) {
        (**self).fill_layout(layout);
    }
}

/// Two runtimes' kinds: the first that identifies a frame wins.
impl<A: FrameKinds, B: FrameKinds> FrameKinds for (A, B) {
    fn identity_at(&self, pc: u64) -> FrameIdentity {
        match self.0.identity_at(pc) {
            FrameIdentity::None => self.1.identity_at(pc),
            kind => kind,
        }
    }

    fn fill_layout(&self, layout: &mut RuntimeLayout) {
        self.0.fill_layout(layout);
        self.1.fill_layout(layout);
    }
}

/// No runtime.
impl FrameKinds for () {
    fn identity_at(&self, _: u64) -> FrameIdentity {
        FrameIdentity::None
    }

    fn fill_layout(&self, _: &mut RuntimeLayout) {}
}

/// The most identity words whose names are kept (a service that loads classes without end
/// must not grow leakhound without end); past it the oldest half is not dropped but all is,
/// and later words are named again as they come.
const MAX_NAMED: usize = 1 << 18;

/// Names of identity words, taken when their stacks were new.
#[derive(Debug, Default)]
pub struct IdentityNames {
    names: HashMap<u64, Vec<Frame>>,
}

impl IdentityNames {
    /// Names `word` from `source` now; returns whether it is named. A word of a new stack is
    /// named again even if it was named before: a class unloaded and another method put at
    /// the same address is the runtime's to tell (HotSpot keys its names by the method and its
    /// `ConstMethod*`), and the name it gives now is the one this stack was made with. Where
    /// the runtime cannot name it any more, the earlier name stays.
    pub fn resolve(&mut self, word: u64, source: &dyn NameSource) -> bool {
        let StackWord::Identity { .. } = StackWord::decode(word) else {
            return false;
        };
        let Some(frames) = source.identified(word) else {
            return self.names.contains_key(&word);
        };
        if self.names.len() >= MAX_NAMED {
            self.names.clear();
        }
        self.names.insert(word, frames);
        true
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The names taken when the stacks were new come first: the object a word points to may
/// since have gone or moved.
impl NameSource for IdentityNames {
    fn frames(&self, _: u64) -> Option<Vec<Frame>> {
        None
    }

    fn covers(&self, _: u64) -> bool {
        false
    }

    fn identified(&self, word: u64) -> Option<Vec<Frame>> {
        self.names.get(&word).cloned()
    }
}

/// What an identified frame is called when its runtime cannot name it: where it ran, as a
/// return address there would have been named.
pub fn unnamed(kind: FrameIdentity) -> Frame {
    let name = match kind {
        FrameIdentity::JvmInterpreted => "Interpreter",
        FrameIdentity::V8Js => "[JavaScript]",
        FrameIdentity::None => "[unknown]",
    };
    let mut frame = FrameData::named(name);
    frame.module = Some(crate::jit::perf_map::JIT_MODULE.to_owned());
    frame.into()
}

/// How long naming new stacks waits for the target's code.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Reads the kernel's announcements of new stacks with identified frames, and names their
/// words while the objects are what they were at the allocation.
pub struct IdentityWatch {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl IdentityWatch {
    pub fn new(ring: RingBuf<MapData>) -> Result<Self, TracerError> {
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|err| TracerError::Io(err.into()))?;
        Ok(Self { ring })
    }

    pub fn ring(&mut self) -> &mut AsyncFd<RingBuf<MapData>> {
        &mut self.ring
    }

    /// Names the identified frames of every stack announced since the last call.
    pub fn drain(&mut self, maps: &KernelMaps, code: &Mutex<TargetCode>) {
        let mut keys = Vec::new();
        while let Some(item) = self.ring.get_mut().next() {
            if let Ok(bytes) = <[u8; 8]>::try_from(&item[..item.len().min(8)]) {
                keys.push(u64::from_ne_bytes(bytes));
            }
        }
        if keys.is_empty() {
            return;
        }
        let mut words = Vec::new();
        for key in keys {
            let Ok(stack) = maps.stacks.get(&key, 0) else {
                continue;
            };
            words.extend(
                stack.ips[..(stack.len as usize).min(MAX_STACK_DEPTH)]
                    .iter()
                    .filter(|word| matches!(StackWord::decode(**word), StackWord::Identity { .. })),
            );
        }
        // One stack repeats its callers' words, and a burst of new stacks repeats them all.
        words.sort_unstable();
        words.dedup();
        // The refresher holds the code only while it reads the target's files, which are
        // capped; a file system that does not answer must not hold the trace, so these names
        // are then left to the report.
        let Some(mut code) = crate::code_refresh::lock_within(code, DRAIN_WAIT) else {
            log::debug!(
                "target code busy: {} identified frames named at the report",
                words.len()
            );
            return;
        };
        let code = &mut *code;
        let mut named = 0usize;
        let sources = ((&code.hotspot, &code.v8), &code.jit);
        for word in &words {
            if code.identities.resolve(*word, &sources) {
                named += 1;
            }
        }
        log::debug!("named {named} of {} identified frames", words.len());
    }
}

/// Writes the runtimes' layout to the kernel if it changed since `written`: before the first
/// rule that asks the kernel walk to read a frame's slots.
pub fn publish_layout(written: &mut RuntimeLayout, maps: &mut KernelMaps, kinds: &dyn FrameKinds) {
    let mut layout = RuntimeLayout::default();
    kinds.fill_layout(&mut layout);
    if layout != *written {
        match maps.runtime_layout.set(0, layout, 0) {
            Ok(()) => {
                log::debug!("runtime layout for the kernel walk: {layout:?}");
                *written = layout;
            }
            Err(err) => log::debug!("writing the runtime layout: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Naming;

    impl NameSource for Naming {
        fn frames(&self, _: u64) -> Option<Vec<Frame>> {
            None
        }

        fn covers(&self, _: u64) -> bool {
            false
        }

        fn identified(&self, word: u64) -> Option<Vec<Frame>> {
            match StackWord::decode(word) {
                StackWord::Identity { ptr: 0x1000, .. } => Some(vec![Frame::named("a.B.c")]),
                _ => None,
            }
        }
    }

    #[test]
    fn names_are_taken_once_and_kept() {
        let word = StackWord::identity(FrameIdentity::JvmInterpreted, 0x1000, 3).unwrap();
        let other = StackWord::identity(FrameIdentity::JvmInterpreted, 0x2000, 3).unwrap();
        let mut names = IdentityNames::default();
        assert!(names.resolve(word, &Naming));
        assert!(!names.resolve(other, &Naming), "unknown to the runtime");
        assert!(!names.resolve(0x40_1000, &Naming), "a return address");
        // Kept even when the runtime no longer knows it (the object moved).
        assert!(names.resolve(word, &()));
        assert_eq!(names.identified(word), Some(vec![Frame::named("a.B.c")]));
        // Named again when the runtime names it otherwise now (another method there).
        struct Renamed;
        impl NameSource for Renamed {
            fn frames(&self, _: u64) -> Option<Vec<Frame>> {
                None
            }
            fn covers(&self, _: u64) -> bool {
                false
            }
            fn identified(&self, _: u64) -> Option<Vec<Frame>> {
                Some(vec![Frame::named("d.E.f")])
            }
        }
        assert!(names.resolve(word, &Renamed));
        assert_eq!(names.identified(word), Some(vec![Frame::named("d.E.f")]));
        assert!(names.resolve(word, &Naming));
        assert_eq!(names.identified(word), Some(vec![Frame::named("a.B.c")]));
        assert_eq!(names.len(), 1);
    }
}
