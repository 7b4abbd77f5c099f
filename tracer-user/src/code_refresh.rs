//! Keeps the target's code known while tracing, on a thread of its own.
//!
//! Rereading the mappings and the perf map, and asking a JVM for its perf map, all read or
//! talk to what the target controls. None of it may run on the thread that handles SIGINT,
//! SIGTERM and `--duration`: a target that answers slowly, or never, would hold the end of the
//! trace and the probes with it. So the session only pokes this thread, and at the end gives
//! it a bounded time for one last refresh.
//!
//! The modules are locked only for reading files, which are capped in size
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
    jit::{self, Runtime},
    process::TargetProcess,
    symbolize::Modules,
};

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
    pub fn start(target: TargetProcess, modules: Arc<Mutex<Modules>>) -> std::io::Result<Self> {
        // One request waiting is enough: a refresh reads everything that is new.
        let (requests, incoming) = mpsc::sync_channel(1);
        let (done, finished) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("code-refresh".into())
            .spawn(move || {
                let mut runtime = Runtime::default();
                while let Ok(request) = incoming.recv() {
                    match request {
                        Request::Refresh => refresh(&target, &modules, &mut runtime, None),
                        Request::Final { reread } => {
                            if reread && target.is_alive() {
                                let timeout = Some(jit::FINAL_ATTACH_TIMEOUT);
                                refresh(&target, &modules, &mut runtime, timeout);
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
    modules: &Mutex<Modules>,
    runtime: &mut Runtime,
    final_timeout: Option<Duration>,
) {
    let due = {
        let mut modules = lock(modules);
        modules.refresh(target);
        runtime.tick(target, &modules)
    };
    let ask = final_timeout.is_some() || due;
    if ask && runtime.ask_jvm(target, final_timeout.unwrap_or(jit::ATTACH_TIMEOUT)) {
        let mut modules = lock(modules);
        modules.perf_maps.reread_next();
        modules.perf_maps.refresh(target);
    }
}

/// A panic elsewhere while the lock was held leaves the modules as they were, which is still
/// the best knowledge there is.
pub fn lock(modules: &Mutex<Modules>) -> MutexGuard<'_, Modules> {
    modules
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The modules, waiting at most `wait` for a refresh that holds them; `None` if it does not
/// let go in time (a target's file system that does not answer).
pub fn lock_within(modules: &Mutex<Modules>, wait: Duration) -> Option<MutexGuard<'_, Modules>> {
    let deadline = Instant::now() + wait;
    loop {
        match modules.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::sync::TryLockError::WouldBlock) => return None,
        }
    }
}
