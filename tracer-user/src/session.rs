//! One recording session: prepare the target, load and attach, gather until told to stop,
//! then read everything out, detach, and name the frames.

use std::{
    collections::{HashMap, HashSet},
    os::fd::OwnedFd,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::oneshot,
};
use tracer_common::StackTotals;

use crate::{
    analysis::{history::Timeline, memory::parse_smaps_rollup},
    builder::{Gathered, Trace, live, sample_values},
    code_refresh::{self, CodeRefresher, TargetCode},
    config::RecordConfig,
    errors::TracerError,
    events::{Event, Events, ProbeLoad},
    exec_watch::ExecWatch,
    exit_watch::{self, ChildExit},
    kernel::{
        Detaching, Probes,
        loader::elapsed_ms,
        probe_cost, reader,
        snapshot::{self, KernelSnapshot},
    },
    mapping_tracker::MappingTracker,
    model::{Origin, ProcessMemory, Recording},
    process::TargetProcess,
    symbolize::{CodeAddress, FrameNamer, NameSource},
    target,
    unwind::MissHandler,
};

/// How long the end of a trace waits for the target's code to be reread, and then for the
/// target code to be free for naming: the target may be slow or hostile.
const FINAL_REFRESH_WAIT: Duration = Duration::from_millis(900);

/// What a session produced: whatever was gathered, and the error that ended it early, if any.
pub struct Outcome {
    pub recording: Option<Recording>,
    pub error: Option<TracerError>,
    /// The probes' detach, still under way while the report is written: wait for it before
    /// exiting (dropping it waits too).
    pub detaching: Option<Detaching>,
}

/// Runs one session; what it says while it runs (attach, progress, notices) goes to `events`.
pub fn record(config: &RecordConfig, events: Events) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            return Outcome {
                recording: None,
                error: Some(err.into()),
                detaching: None,
            };
        }
    };
    runtime.block_on(record_async(config, events))
}

async fn record_async(config: &RecordConfig, events: Events) -> Outcome {
    // Handlers go in first, so a Ctrl-C during attach still ends in an orderly detach.
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(sigint), Ok(sigterm)) => (sigint, sigterm),
        (Err(err), _) | (_, Err(err)) => {
            return Outcome {
                recording: None,
                error: Some(err.into()),
                detaching: None,
            };
        }
    };
    let mut session = match Session::start(config, events) {
        Ok(session) => session,
        Err(error) => {
            return Outcome {
                recording: None,
                error: Some(error),
                detaching: None,
            };
        }
    };

    let started = Instant::now();
    let deadline = config.duration.map(|d| tokio::time::Instant::now() + d);
    let report_every = config.interval;
    // Mappings (and perf maps) are reread every second, so frames of code loaded later get names.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Samples for the trends, one interval after attach and every interval after; a late
    // tick is taken late, not made up in a burst.
    let mut sample_tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started + config.sample_every),
        config.sample_every,
    );
    sample_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut error = None;

    let ended_by = loop {
        tokio::select! {
            guard = session.events.readable_mut() => {
                match guard {
                    Ok(mut guard) => {
                        drain_events(guard.get_inner_mut(), &mut session.mappings);
                        guard.clear_ready();
                    }
                    Err(err) => { error = Some(err.into()); break "an error".to_owned(); }
                }
            }
            () = kernel_log_ready(&mut session.kernel_log) => {}
            ready = session.misses.ring().readable_mut() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                session.answer_misses();
            }
            _ = sigint.recv() => break "SIGINT".to_owned(),
            _ = sigterm.recv() => break "SIGTERM".to_owned(),
            exit = session.exit.wait() => break format!("the target exiting ({exit})"),
            () = session.exec_watch.exec() => break session.exec_ended(),
            () = sleep_until(deadline) => break format!("the {:.1} s duration", started.elapsed().as_secs_f64()),
            _ = sample_tick.tick() => {
                drain_events(session.events.get_mut(), &mut session.mappings);
                // With --interval, samples are taken every interval: the progress line reads
                // the totals the sample just read.
                if let Some(totals) = session.take_sample(started)
                    && report_every.is_some()
                {
                    session.send_progress(started, &totals, config.sample_bytes.is_some());
                }
            }
            _ = tick.tick() => {
                // Checked first, so that the code of a program the target exec'd is not read.
                if session.exec_seen() {
                    break session.exec_ended();
                }
                session.refresh_code_and_rules();
            }
        }
    };
    drain_events(session.events.get_mut(), &mut session.mappings);
    let recording = session.finish(started, ended_by, config.min_age, config.sample_bytes);
    match recording {
        Ok((recording, detaching)) => Outcome {
            recording: Some(recording),
            error,
            detaching: Some(detaching),
        },
        Err(err) => Outcome {
            recording: None,
            error: Some(err),
            detaching: None,
        },
    }
}

/// Passes what the kernel programs logged on to leakhound's log; never completes without a
/// kernel log.
async fn kernel_log_ready(log: &mut Option<AsyncFd<KernelLog>>) {
    match log {
        Some(log) => {
            if let Ok(mut guard) = log.readable_mut().await {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}

type KernelLog = aya_log::EbpfLogger<&'static dyn log::Log>;

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// How the session learns that the target exited.
enum ExitSignal {
    Attached(AsyncFd<OwnedFd>),
    Launched(oneshot::Receiver<ChildExit>),
    Gone,
}

impl ExitSignal {
    async fn wait(&mut self) -> String {
        match self {
            Self::Attached(fd) => {
                let _ = fd.readable().await;
                *self = Self::Gone;
                "exited".to_owned()
            }
            Self::Launched(rx) => {
                let exit = rx.await;
                *self = Self::Gone;
                exit.map_or_else(|_| "exited".to_owned(), |exit| exit.to_string())
            }
            Self::Gone => std::future::pending().await,
        }
    }
}

struct Session {
    probes: Option<Probes>,
    events: AsyncFd<RingBuf<MapData>>,
    /// Unwind misses from the kernel walk, answered as they come.
    misses: MissHandler,
    exec_watch: ExecWatch,
    /// The program the target exec'd, once it has: that ended the trace.
    exec_program: Option<String>,
    exit: ExitSignal,
    target: TargetProcess,
    command: String,
    /// Set for a launched command, which is stopped when tracing ends before it does.
    launched: Option<u32>,
    code: Arc<Mutex<TargetCode>>,
    /// The kernel programs' log, with `--log-kernel`.
    kernel_log: Option<AsyncFd<KernelLog>>,
    /// Where attach, progress and notices go.
    said: Events,
    /// Rereads the target's code (mappings, perf maps, a JVM's perf map) off this thread.
    refresher: CodeRefresher,
    mappings: MappingTracker,
    mapping_unavailable: Option<String>,
    /// Outstanding bytes per stack at every sample, for the trends.
    timeline: Timeline<(Origin, u64)>,
    /// Nanoseconds per allocation call and per free in probes, measured at attach.
    cost_per_call: Option<(f64, f64)>,
    /// The probe hits at the last progress line: when, allocation entries, free entries.
    last_hits: Option<(Instant, u64, u64)>,
}

impl Session {
    fn start(config: &RecordConfig, said: Events) -> Result<Self, TracerError> {
        preflight()?;
        let attach_started = Instant::now();
        let mut prepared = target::prepare(&config.target, &config.alloc_libs)?;
        let pid = prepared.process.pid;
        let attached = (|| {
            // A launched command's own first exec starts the trace; any other ends it.
            let execs_before_trace = u32::from(prepared.child.is_some());
            let mut probes = Probes::load(
                pid,
                config.sizes,
                config.unwind.uses_cfi(),
                config.sample_bytes,
                execs_before_trace,
            )?;
            // Before the target's probes, so that nothing of the target runs meanwhile.
            let costs = probes
                .measure_probe_costs()
                .inspect_err(|err| log::warn!("the cost of a probe was not measured: {err}"))
                .ok();
            for object in &prepared.objects {
                probes.attach_allocator(&object.kernel_path(), &object.points)?;
            }
            probes.attach_tracepoints()?;
            Ok((probes, costs))
        })();
        let (mut probes, costs) = match attached {
            Ok(attached) => attached,
            Err(err) => {
                // Dropping whatever was loaded detaches it; a launched child never runs.
                if let Some(child) = prepared.child.take() {
                    child.abort();
                }
                return Err(err);
            }
        };

        let rings = probes.take_rings().expect("the rings are taken once");
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let events = unsafe { AsyncFd::register(rings.map_events) }
            .map_err(|err| TracerError::Io(err.into()))?;

        let kernel_log = match probes.kernel_log.take() {
            // SAFETY: the logger owns its ring buffer's descriptor and keeps it open while
            // registered.
            Some(logger) => Some(
                unsafe { AsyncFd::register(logger) }.map_err(|err| TracerError::Io(err.into()))?,
            ),
            None => None,
        };
        let mut misses = MissHandler::new(rings.unwind_misses)?;
        let exec_watch = ExecWatch::new(rings.lifecycle_events)?;

        let code = Arc::new(Mutex::new(TargetCode::default()));
        let (exit, launched) = match prepared.child.take() {
            Some(mut child) => {
                let exit = exit_watch::watch_child(prepared.process.clone(), Arc::clone(&code))?;
                child.release()?;
                (ExitSignal::Launched(exit), Some(pid))
            }
            None => {
                let mut known = code_refresh::lock(&code);
                known.refresh(&prepared.process);
                misses.prepare(&known.space);
                drop(known);
                let fd = exit_watch::pidfd(pid).map_err(|_| TracerError::ProcessExited { pid })?;
                // SAFETY: the pidfd is owned here and stays open while registered.
                (
                    ExitSignal::Attached(
                        unsafe { AsyncFd::register(fd) }
                            .map_err(|err| TracerError::Io(err.into()))?,
                    ),
                    None,
                )
            }
        };
        said.send(Event::Attached {
            pid,
            hooked: prepared.hooked_summary(),
            probes: probes.uprobes_attached + probes.tracepoints_attached,
            multi_uprobe_links: probes.multi_uprobe_links,
            millis: elapsed_ms(attach_started),
        });
        let mut cost_per_call = None;
        if let Some(costs) = &costs {
            for object in &prepared.objects {
                let shown = object.shown.file_name().unwrap_or(object.shown.as_os_str());
                let shown = crate::names::shown(&shown.to_string_lossy()).into_owned();
                for notice in probe_cost::cost_notices(&shown, &object.points, costs) {
                    said.notice(notice);
                }
            }
            let objects: Vec<&[_]> = prepared.objects.iter().map(|o| &o.points[..]).collect();
            let (alloc_ns, free_ns) = probe_cost::cost_per_call(&objects, costs);
            // With sessions, the calls that sampling passes over (nearly all) have no return
            // trap; counting it would make the floor no floor.
            let alloc_ns = if probes.sessions() {
                (alloc_ns - costs.return_ns).max(0.0)
            } else {
                alloc_ns
            };
            cost_per_call = Some((alloc_ns, free_ns));
        }
        let mapping_unavailable = probes.mapping_unavailable.clone();
        let refresher = CodeRefresher::start(prepared.process.clone(), Arc::clone(&code))
            .map_err(TracerError::Io)?;
        Ok(Self {
            probes: Some(probes),
            events,
            misses,
            exec_watch,
            exec_program: None,
            exit,
            target: prepared.process,
            command: prepared.command,
            launched,
            code,
            refresher,
            kernel_log,
            said,
            mappings: MappingTracker::default(),
            mapping_unavailable,
            timeline: Timeline::default(),
            cost_per_call,
            last_hits: None,
        })
    }

    fn answer_misses(&mut self) {
        if let Some(probes) = self.probes.as_mut() {
            self.misses
                .drain(&mut probes.maps, &self.code, &self.target);
        }
    }

    /// Whether the target has exec'd (the kernel's mark; one map read).
    fn exec_seen(&mut self) -> bool {
        match &self.probes {
            Some(probes) => self.exec_watch.ended(&probes.maps),
            None => false,
        }
    }

    /// Says that the target exec'd and what it runs now; returns why tracing ended.
    fn exec_ended(&mut self) -> String {
        let program = std::fs::read_link(self.target.exe_link()).map_or_else(
            |_| "another program".to_owned(),
            |path| path.display().to_string(),
        );
        self.said.notice(format!(
            "pid {} exec'd {}: tracing ends here (leakhound does not follow an exec); what the old program held was released by the exec",
            self.target.pid,
            // The target names its program: data, escaped like every name.
            crate::names::shown(&program)
        ));
        self.exec_program = Some(program);
        "exec".to_owned()
    }

    /// Rereads the target's code (see [`Self::refresh_code`]) and drops unwind rules of JIT
    /// code that the runtime has since replaced.
    fn refresh_code_and_rules(&mut self) {
        self.refresh_code();
        if let Some(probes) = self.probes.as_mut() {
            self.misses
                .forget_stale_jit_rules(&mut probes.maps, &self.code);
        }
    }

    /// Rereads the target's code: its mappings, and its runtime's perf map, on the
    /// refresher's thread.
    fn refresh_code(&mut self) {
        self.refresher.poke();
    }

    /// `estimated`: under byte sampling, where malloc-family figures are estimates.
    fn send_progress(
        &mut self,
        started: Instant,
        totals: &HashMap<u64, StackTotals>,
        estimated: bool,
    ) {
        let Some(probes) = &self.probes else { return };
        let (mut bytes, mut allocations) = (0u64, 0u64);
        for totals in totals.values() {
            bytes += live(totals.live_bytes);
            allocations += live(totals.live_allocations);
        }
        let held = self.mappings.held_by_stack();
        let mapped: u64 = held.values().map(|held| held.bytes).sum();
        let counters = reader::counters(&probes.maps).unwrap_or_default();
        let lost = counters.alloc_map_full
            + counters.stack_failed
            + counters.events_lost
            + counters.thread_map_full;
        let now = Instant::now();
        let hits = reader::probe_hits(&probes.maps).ok();
        let since = self.last_hits.unwrap_or((started, 0, 0));
        let load = hits
            .zip(self.cost_per_call)
            .map(|((allocs, frees), (alloc_ns, free_ns))| {
                let secs = now.duration_since(since.0).as_secs_f64().max(1e-3);
                let alloc_calls_per_sec = allocs.saturating_sub(since.1) as f64 / secs;
                let frees_per_sec = frees.saturating_sub(since.2) as f64 / secs;
                ProbeLoad {
                    alloc_calls_per_sec,
                    frees_per_sec,
                    share_of_cpu: (alloc_calls_per_sec * alloc_ns + frees_per_sec * free_ns) / 1e9,
                }
            });
        if let Some((allocs, frees)) = hits {
            self.last_hits = Some((now, allocs, frees));
        }
        self.said.send(Event::Progress {
            load,
            secs: started.elapsed().as_secs_f64(),
            bytes,
            allocations,
            estimated,
            mapped_bytes: mapped,
            stacks: totals.len() + held.len(),
            lost,
        });
    }

    /// One point of the timeline: every stack's outstanding bytes, and the target's memory.
    /// Samples every stack for the trends; returns the kernel totals it read.
    fn take_sample(&mut self, started: Instant) -> Option<HashMap<u64, StackTotals>> {
        let probes = self.probes.as_ref()?;
        let totals = match reader::stack_totals(&probes.maps) {
            Ok(totals) => totals,
            Err(err) => {
                log::debug!("sample skipped: {err}");
                return None;
            }
        };
        let held = self.mappings.held_by_stack();
        let memory = self.memory();
        self.timeline.offer(
            started.elapsed().as_secs_f64(),
            memory,
            sample_values(&totals, &held),
        );
        Some(totals)
    }

    /// `/proc/PID/smaps_rollup`; none once the target has exited (a zombie's is empty).
    fn memory(&self) -> Option<ProcessMemory> {
        let text =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.target.pid)).ok()?;
        parse_smaps_rollup(&text)
    }

    /// Reads everything out of the kernel, detaches, then names frames (which can be slow and
    /// needs no probes), and builds the recording from plain data (`crate::builder`).
    fn finish(
        mut self,
        started: Instant,
        mut ended_by: String,
        min_age: Option<Duration>,
        sample_bytes: Option<u64>,
    ) -> Result<(Recording, Detaching), TracerError> {
        let mut phase = Instant::now();
        if self.exec_program.is_none() && self.exec_seen() {
            // The target exec'd just as the trace ended some other way (a signal, or the new
            // program exiting at once): the kernel stopped recording at the exec all the same.
            ended_by = self.exec_ended();
        }
        let mut probes = self.probes.take().expect("finish runs once");
        self.misses
            .drain(&mut probes.maps, &self.code, &self.target);
        let snapshot = KernelSnapshot::read(&probes.maps)?;
        let traced = started.elapsed();
        let exec_program = self.exec_program.take();
        // After an exec, /proc describes the new program, which was not traced.
        let memory = if exec_program.is_some() {
            None
        } else {
            self.memory()
        };
        let gathered = Gathered::new(
            snapshot,
            std::mem::take(&mut self.mappings),
            self.misses.ledger(),
            std::mem::take(&mut self.timeline),
            exec_program,
            (traced.as_secs_f64(), memory),
        );
        log::info!("report: kernel maps read in {:.1} ms", elapsed_ms(phase));
        phase = Instant::now();
        let frames = snapshot::read_stacks(
            &probes.maps,
            gathered.stacks().into_iter().map(|(_, key, _)| key),
        );
        log::info!(
            "report: {} stacks read in {:.1} ms",
            frames.len(),
            elapsed_ms(phase)
        );
        // The last refresh (none after an exec: the new program's code would name the old
        // one's frames), and a JVM asked for its perf map now so that code compiled late is
        // named; bounded, since the target may not answer.
        if !self
            .refresher
            .finish(FINAL_REFRESH_WAIT, gathered.exec.is_none())
        {
            self.said.notice(format!(
                "the target's code was not reread within {:.1} s; frames of code loaded since the last refresh may be unnamed",
                FINAL_REFRESH_WAIT.as_secs_f64()
            ));
        }
        // Everything is read: the report need not wait for the detach.
        let detaching = probes.detach_in_background();

        if let Some(pid) = self.launched
            && TargetProcess::open(pid).is_ok()
        {
            // Tracing ended first (duration or signal): stop the command, as `timeout` would,
            // with a SIGCONT after, so that a command paused by job control gets it too.
            // SAFETY: sends signals to our own child.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
                libc::kill(pid as libc::pid_t, libc::SIGCONT);
            }
            ended_by.push_str("; the launched command was sent SIGTERM");
        }

        phase = Instant::now();
        let unnamed = TargetCode::default();
        let held = code_refresh::lock_within(&self.code, FINAL_REFRESH_WAIT);
        if held.is_none() {
            self.said.notice(format!(
                "the target's files did not answer within {:.1} s; frames are left unnamed",
                FINAL_REFRESH_WAIT.as_secs_f64()
            ));
        }
        let code: &TargetCode = held.as_deref().unwrap_or(&unnamed);
        // HotSpot's own metadata names Java frames before a perf map does.
        let names = (&code.hotspot, &code.jit);
        let (space, jit): (_, &dyn NameSource) = (&code.space, &names);
        let mut namer = FrameNamer::default();
        let unique: HashSet<CodeAddress> = frames
            .values()
            .flat_map(|raw| raw.ips.iter().map(|ip| CodeAddress::ReturnAddress(*ip)))
            .collect();
        let unique_count = unique.len();
        namer.name_all(space, jit, unique);
        log::info!(
            "report: {unique_count} addresses symbolized in {:.1} ms",
            elapsed_ms(phase)
        );
        phase = Instant::now();
        let trace = Trace {
            pid: self.target.pid,
            command: self.command,
            ended_by,
            traced_secs: traced.as_secs_f64(),
            min_age_ns: min_age.map(|d| d.as_nanos() as u64),
            sample_bytes,
            mapping_unavailable: self.mapping_unavailable,
        };
        let recording = gathered.build(trace, &frames, |addrs| namer.stack(space, jit, addrs));
        log::info!(
            "report: ages and stacks built in {:.1} ms",
            elapsed_ms(phase)
        );
        Ok((recording, detaching))
    }
}

/// Feeds every record waiting in the mapping ring buffer to the tracker.
fn drain_events(ring: &mut RingBuf<MapData>, mappings: &mut MappingTracker) {
    while let Some(item) = ring.next() {
        mappings.consume(&item);
    }
}

/// Checks that fail fast with a clear cause, before anything is loaded.
fn preflight() -> Result<(), TracerError> {
    if !Path::new("/sys/bus/event_source/devices/uprobe").exists() {
        return Err(TracerError::NoUprobes {
            missing: "/sys/bus/event_source/devices/uprobe",
        });
    }
    if !has_tracing_privileges() {
        return Err(TracerError::PermissionDenied {
            what: "leakhound needs root, or CAP_BPF and CAP_PERFMON, to load its probes".into(),
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        // The programs use no CO-RE relocations, so a kernel without BTF still works.
        log::debug!("no kernel BTF at /sys/kernel/btf/vmlinux; continuing");
    }
    Ok(())
}

fn has_tracing_privileges() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Some(effective) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
    else {
        return false;
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}
