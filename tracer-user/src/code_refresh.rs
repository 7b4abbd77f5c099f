//! Keeps the target's code known while tracing, on a thread of its own.
//!
//! Rereading the mappings and the perf map, and asking a JVM for its perf map, all read or
//! talk to what the target controls. None of it may run on the thread that handles SIGINT,
//! SIGTERM and `--duration`: a target that answers slowly, or never, would hold the end of the
//! trace and the probes with it. So the session only pokes this thread, and at the end gives
//! it a bounded time for one last refresh.
//!
//! The target code is locked only for reading files, which are capped in size
//! (`process::root`); the JVM handshake runs with no lock held.

use std::{
    sync::{
        Arc, Mutex, MutexGuard,
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    identities::{FrameKinds, IdentityNames},
    jit::{self, PerfMaps, Runtime, hotspot::frames::HotspotFrames, v8::V8Frames},
    process::{TargetProcess, address_space::AddressSpace},
    symbolize::NameSource,
};

/// What is known of the target's code: its address space, and the names its runtime gives
/// to code no file describes. Shared by the refresher, the unwinder, the exit watcher and the
/// report, behind one lock.
#[derive(Debug, Default)]
pub struct TargetCode {
    pub space: AddressSpace,
    /// Java frames from HotSpot's own metadata, asked before the perf map.
    pub hotspot: HotspotFrames,
    /// JavaScript frames from V8's own metadata, asked before the perf map.
    pub v8: V8Frames,
    /// The runtime's perf map (Node.js, the JVM).
    pub jit: PerfMaps,
    /// Names of frames identified by their slots, taken when their stacks were new.
    pub identities: IdentityNames,
}

impl TargetCode {
    /// What is known of a target's code; `runtime_frames`: whether the runtimes' own metadata
    /// is read (`--runtime-frames`).
    pub fn new(runtime_frames: bool) -> Self {
        Self {
            hotspot: HotspotFrames::new(runtime_frames),
            v8: V8Frames::new(runtime_frames),
            ..Self::default()
        }
    }

    /// Every runtime name source, in the order they are believed: names taken when a stack
    /// was new, then the runtimes' own metadata, then their perf maps.
    pub fn runtime_names(&self) -> impl NameSource + '_ {
        (&self.identities, self.metadata_names())
    }

    /// The runtimes' own metadata, then their perf maps: what names a frame while it is new.
    pub fn metadata_names(&self) -> impl NameSource + '_ {
        ((&self.hotspot, &self.v8), &self.jit)
    }

    /// What the runtimes say of their frames, for the unwind rules.
    pub fn frame_kinds(&self) -> impl FrameKinds + '_ {
        (&self.hotspot, self.v8.kinds(&self.space))
    }

    /// Rereads the mappings and the perf map. Errors (the target exited) keep what is known.
    pub fn refresh(&mut self, target: &TargetProcess) {
        self.jit.refresh(target);
        self.hotspot.refresh(target);
        self.v8.refresh(target);
        self.space.refresh(target);
    }
}

enum Request {
    Refresh,
    /// The trace has ended: one last refresh (and perf map request) for the report unless the
    /// code may no longer be the traced program's, then exit.
    Final {
        reread: bool,
    },
}

/// The thread that refreshes the target's code, and how to reach it.
pub struct CodeRefresher {
    requests: SyncSender<Request>,
    finished: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl CodeRefresher {
    pub fn start(target: TargetProcess, code: Arc<Mutex<TargetCode>>) -> std::io::Result<Self> {
        // One request waiting is enough: a refresh reads everything that is new.
        let (requests, incoming) = mpsc::sync_channel(1);
        let (done, finished) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("code-refresh".into())
            .spawn(move || {
                let mut runtime = Runtime::default();
                while let Ok(request) = incoming.recv() {
                    match request {
                        Request::Refresh => refresh(&target, &code, &mut runtime, None),
                        Request::Final { reread } => {
                            if reread && target.is_alive() {
                                let timeout = Some(jit::FINAL_ATTACH_TIMEOUT);
                                refresh(&target, &code, &mut runtime, timeout);
                            }
                            runtime.clean_up(&target);
                            let _ = done.send(());
                            return;
                        }
                    }
                }
            })?;
        Ok(Self {
            requests,
            finished,
            thread: Some(thread),
        })
    }

    /// Asks for a refresh, unless one is already waiting; never blocks.
    pub fn poke(&self) {
        match self.requests.try_send(Request::Refresh) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => log::debug!("the code refresher has stopped"),
        }
    }

    /// One last refresh for the report (with `reread`; without, only the clean-up), waited for
    /// at most `wait`; false if it did not end in time (the thread is then left to finish, or
    /// to die with the process).
    pub fn finish(&mut self, wait: Duration, reread: bool) -> bool {
        let deadline = Instant::now() + wait;
        let mut request = Request::Final { reread };
        // A refresh may still be waiting in the channel: retry until there is room.
        loop {
            match self.requests.try_send(request) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    request = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        match self
            .finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(()) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }
}

/// Rereads mappings and perf map, and asks a JVM for its perf map when one is due, with the
/// lock released while it answers.
fn refresh(
    target: &TargetProcess,
    code: &Mutex<TargetCode>,
    runtime: &mut Runtime,
    final_timeout: Option<Duration>,
) {
    let due = {
        let mut code = lock(code);
        code.refresh(target);
        runtime.tick(target, &code.space)
    };
    let ask = final_timeout.is_some() || due;
    if ask && runtime.ask_jvm(target, final_timeout.unwrap_or(jit::ATTACH_TIMEOUT)) {
        let mut code = lock(code);
        code.jit.reread_next();
        code.jit.refresh(target);
    }
}

/// A panic elsewhere while the lock was held leaves the target code as it was, which is still
/// the best knowledge there is.
pub fn lock(code: &Mutex<TargetCode>) -> MutexGuard<'_, TargetCode> {
    code.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The target code, waiting at most `wait` for a refresh that holds it; `None` if it does not
/// let go in time (a target's file system that does not answer).
pub fn lock_within(code: &Mutex<TargetCode>, wait: Duration) -> Option<MutexGuard<'_, TargetCode>> {
    let deadline = Instant::now() + wait;
    loop {
        match code.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}
