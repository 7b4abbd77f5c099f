//! The state a runtime's frame reader keeps for the one process being traced. Both runtimes'
//! readers need the same rules around it: interior mutability (the unwinder and the namer ask
//! through shared references), a state that starts over when the traced PID changes (an exec),
//! and a reader that is never started under `--runtime-frames off`.

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, MutexGuard, PoisonError},
};

/// What a runtime reader keeps about one target; `Default` is the state of a process not yet
/// looked at.
pub trait TargetState: Default {
    /// The state of a process whose runtime metadata must never be read.
    fn unreadable() -> Self;
}

/// A reader's state with the process it belongs to.
#[derive(Debug, Default)]
pub struct Followed<S> {
    /// The traced process; `None` before the first [`PerTarget::follow`].
    pub pid: Option<u32>,
    state: S,
}

impl<S> Deref for Followed<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.state
    }
}

impl<S> DerefMut for Followed<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.state
    }
}

/// A reader's state behind one lock, following the traced process.
#[derive(Debug, Default)]
pub struct PerTarget<S> {
    state: Mutex<Followed<S>>,
    /// `--runtime-frames off`: the runtime's metadata is never read.
    off: bool,
}

impl<S: TargetState> PerTarget<S> {
    /// `enabled`: whether the runtime's metadata may be read at all.
    pub fn new(enabled: bool) -> Self {
        Self {
            state: Mutex::default(),
            off: !enabled,
        }
    }

    /// The state; a panic elsewhere while it was held leaves caches, not broken invariants,
    /// so a poisoned lock still serves.
    pub fn lock(&self) -> MutexGuard<'_, Followed<S>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows the traced process: a new PID starts over.
    pub fn follow(&mut self, pid: u32) {
        let followed = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if followed.pid != Some(pid) {
            *followed = Followed {
                pid: Some(pid),
                state: if self.off {
                    S::unreadable()
                } else {
                    S::default()
                },
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Seen {
        unreadable: bool,
        reads: u32,
    }

    impl TargetState for Seen {
        fn unreadable() -> Self {
            Self {
                unreadable: true,
                reads: 0,
            }
        }
    }

    #[test]
    fn a_new_pid_starts_over_and_the_same_keeps_what_was_read() {
        let mut per = PerTarget::<Seen>::new(true);
        assert_eq!(per.lock().pid, None);
        per.follow(7);
        per.lock().reads = 3;
        per.follow(7);
        assert_eq!(per.lock().reads, 3);
        per.follow(8);
        let state = per.lock();
        assert_eq!(
            (state.pid, state.reads, state.unreadable),
            (Some(8), 0, false)
        );
    }

    #[test]
    fn runtime_frames_off_reaches_every_new_state() {
        let mut per = PerTarget::<Seen>::new(false);
        per.follow(7);
        assert!(per.lock().unreadable);
        per.follow(8);
        assert!(per.lock().unreadable);
    }
}
