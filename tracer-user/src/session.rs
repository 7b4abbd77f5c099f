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
    exec_watch::{Ending, ExecWatch, OomKill},
    exit_watch::{self, ChildExit},
    go_heap::GoHeapSampler,
    identities::IdentityWatch,
    js_heap::JsHeapSampler,
    jvm_heap::JavaHeapSampler,
    kernel::{
        Detaching, Probes,
        loader::elapsed_ms,
        probe_cost, reader,
        snapshot::{self, KernelSnapshot},
    },
    mapping_tracker::MappingTracker,
    model::{Origin, ProcessMemory, Recording},
    oom_kill::{self, OOM_KILL},
    process::cgroup_memory::CgroupMemory,
    process::{TargetProcess, allocators},
    push::Continuous,
    reservations,
    rss::RssSampler,
    stats::Phase,
    symbolize::{CodeAddress, FrameNamer, NameSource},
    target,
    unwind::{DRAIN_BUDGET, MissHandler},
};

/// The longest the end answers the unwind requests still waiting: the report is not held
/// up by a storm of them (each answer takes tens of microseconds; thousands fit).
const FINAL_DRAIN_BUDGET: Duration = Duration::from_secs(5);

/// How long a periodic push waits for the refresher's hold on the target's code.
const PUSH_NAMES_WAIT: Duration = Duration::from_millis(200);

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
    /// Continuous mode's pushes, the final profile queued: wait for them before exiting.
    pub pushing: Option<Continuous>,
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
                pushing: None,
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
                pushing: None,
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
                pushing: None,
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
    // Continuous mode: a profile every period, the first one period after attach.
    let push_every = session
        .push
        .as_ref()
        .map_or(Duration::from_secs(3600), |push| push.config.every);
    let mut push_tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started + push_every),
        push_every,
    );
    push_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

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
            // A backlog the last drain left: its readiness was cleared, so it is asked for
            // here, after a yield to the runtime. A branch that is always ready would keep the
            // loop from ever yielding, and tokio's budget would then hold back the timers and
            // signals: samples and SIGINT would wait for the backlog.
            () = tokio::task::yield_now(), if session.misses_left => session.answer_misses(),
            ready = session.identities.ring().readable_mut() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                session.name_identities();
            }
            _ = sigint.recv() => break "SIGINT".to_owned(),
            _ = sigterm.recv() => break "SIGTERM".to_owned(),
            exit = session.exit.wait() => break format!("the target exiting ({exit})"),
            ending = session.exec_watch.ending() => break session.lifecycle_ended(ending, started),
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
            _ = push_tick.tick(), if session.push.is_some() => {
                drain_events(session.events.get_mut(), &mut session.mappings);
                session.push_now(started, config);
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
    let mut push = session.push.take();
    let recording = session.finish(started, ended_by, config.min_age, config.sample_bytes);
    // The final profile, whatever ended the trace (an OOM kill among others).
    if let (Some(push), Ok((recording, _))) = (push.as_mut(), &recording) {
        push.offer(recording);
    }
    let pushing = push;
    match recording {
        Ok((recording, detaching)) => Outcome {
            recording: Some(recording),
            error,
            detaching: Some(detaching),
            pushing,
        },
        Err(err) => Outcome {
            recording: None,
            error: Some(err),
            detaching: None,
            pushing: None,
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
    /// The last answering stopped at its budget with misses possibly left.
    misses_left: bool,
    /// New stacks with frames identified by their slots, named as they come.
    identities: IdentityWatch,
    exec_watch: ExecWatch,
    /// Continuous mode (`--push`), when asked for.
    push: Option<Continuous>,
    /// The target's memory cgroup, where one can be read: its limit is what an OOM kill
    /// enforced.
    cgroup: Option<CgroupMemory>,
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
    /// The RSS split by owner, read at the same samples.
    rss: RssSampler,
    /// A Go target's heap profile, read at the same samples; looked for at the first sample
    /// (a launched command has exec'd by then).
    go_heap: GoHeap,
    /// A Node target's JavaScript heap through its inspector (`--js-heap`): started at the
    /// first sample, closed at the last.
    js_heap: JsHeap,
    /// With `--jvm-heap-histogram`: a JVM's class histograms, at the first and last sample.
    java_heap: Option<JavaHeapSampler>,
    /// Nanoseconds per allocation call and per free in probes, measured at attach.
    cost_per_call: Option<(f64, f64)>,
    /// The probe hits at the last progress line: when, allocation entries, free entries.
    last_hits: Option<(Instant, u64, u64)>,
}

enum JsHeap {
    Off,
    NotStarted,
    Running(Box<JsHeapSampler>),
}

enum GoHeap {
    NotLooked,
    Reading(Box<GoHeapSampler>),
    /// Not a Go program, or its profile cannot be read (said once).
    None,
}

impl Session {
    fn start(config: &RecordConfig, said: Events) -> Result<Self, TracerError> {
        preflight()?;
        let attach_started = Instant::now();
        let mut prepared = target::prepare(&config.target, &config.alloc_libs)?;
        let syscall_tracepoints = config.syscall_tracepoints
            || prepared.raw_syscalls
            || !allocators::mapping_wrappers_hooked(&prepared.objects);
        for object in &mut prepared.objects {
            object.points.retain(|point| {
                point
                    .hook
                    .probed(config.unwind.uses_cfi(), syscall_tracepoints)
            });
        }
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
                syscall_tracepoints,
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
        let identities = IdentityWatch::new(rings.new_identified)?;
        let exec_watch = ExecWatch::new(rings.lifecycle_events)?;

        let code = Arc::new(Mutex::new(TargetCode::new(config.runtime_frames)));
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
                // Before the first allocation is traced: the first unwind requests then carry
                // their JavaScript frames' functions, read at the allocation.
                misses.publish_layout(&mut probes.maps, &code);
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
        // Attached by PID, the target reserved address space before the probes saw it. Read
        // after they are attached and before any event is applied, so a reservation is
        // either listed here or unmapped by an event that follows; and before the attach is
        // announced, since whoever waits for that line may start the work at once: a commit
        // made before this read would leave its pages out of the reservations and count for
        // nothing (the attached commit test lost 1 to 8 MiB that way on a loaded machine).
        // (A launched command has not exec'd yet: what it maps now is not the program's.)
        let mappings = match launched {
            Some(_) => MappingTracker::default(),
            None => MappingTracker::with_reservations(reservations::reserved_at_attach(pid)),
        };
        said.send(Event::Attached {
            pid,
            hooked: prepared.hooked_summary(),
            probes: probes.uprobes_attached + probes.tracepoints_attached,
            multi_uprobe_links: probes.multi_uprobe_links,
            millis: elapsed_ms(attach_started),
            placed: probes.placed.clone(),
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
            misses_left: false,
            identities,
            exec_watch,
            exec_program: None,
            cgroup: CgroupMemory::of(pid),
            push: match &config.push {
                Some(push) => Some(
                    Continuous::start(push.clone(), pid, &prepared.command)
                        .map_err(TracerError::Io)?,
                ),
                None => None,
            },
            exit,
            target: prepared.process,
            command: prepared.command,
            launched,
            code,
            refresher,
            kernel_log,
            said,
            mappings,
            mapping_unavailable,
            timeline: Timeline::default(),
            rss: RssSampler::new(pid),
            go_heap: GoHeap::NotLooked,
            js_heap: if config.js_heap {
                JsHeap::NotStarted
            } else {
                JsHeap::Off
            },
            java_heap: config.jvm_heap_histogram.then(JavaHeapSampler::default),
            cost_per_call,
            last_hits: None,
        })
    }

    /// Answers waiting unwind misses for at most [`DRAIN_BUDGET`]; a backlog is taken up
    /// again at the loop's next turn.
    fn answer_misses(&mut self) {
        if let Some(probes) = self.probes.as_mut() {
            self.misses_left = self.misses.drain(
                &mut probes.maps,
                &self.code,
                &self.target,
                Some(DRAIN_BUDGET),
            );
        }
    }

    fn name_identities(&mut self) {
        if let Some(probes) = &self.probes {
            self.identities.drain(&probes.maps, &self.code);
        }
    }

    /// Whether the target has exec'd (the kernel's mark; one map read).
    fn exec_seen(&mut self) -> bool {
        match &self.probes {
            Some(probes) => self.exec_watch.ended(&probes.maps),
            None => false,
        }
    }

    /// Continuous mode: the recording so far, rendered and queued for the push thread. Reads
    /// every live allocation (for ages), so it costs what a report does, once a period; what
    /// the kernel records goes on meanwhile.
    fn push_now(&mut self, started: Instant, config: &RecordConfig) {
        let Some(probes) = self.probes.as_ref() else {
            return;
        };
        let snapshot = match KernelSnapshot::read(&probes.maps) {
            Ok(snapshot) => snapshot,
            Err(err) => {
                log::warn!("no profile pushed this period: {err}");
                return;
            }
        };
        let traced = started.elapsed().as_secs_f64();
        let gathered = Gathered::new(
            snapshot,
            self.mappings.clone(),
            self.misses.ledger(),
            self.timeline.clone(),
            None,
            (traced, self.memory()),
        );
        let frames = snapshot::read_stacks(
            &probes.maps,
            gathered.stacks().into_iter().map(|(_, key, _)| key),
        );
        let unnamed = TargetCode::default();
        let held = code_refresh::lock_within(&self.code, PUSH_NAMES_WAIT);
        let code: &TargetCode = held.as_deref().unwrap_or(&unnamed);
        let names = (&code.hotspot, &code.jit);
        let (space, jit): (_, &dyn NameSource) = (&code.space, &names);
        let mut namer = FrameNamer::default();
        let go_heap = match &self.go_heap {
            GoHeap::Reading(sampler) => Some(sampler),
            _ => None,
        };
        let unique: HashSet<CodeAddress> = frames
            .values()
            .flat_map(|raw| raw.ips.iter().map(|ip| CodeAddress::ReturnAddress(*ip)))
            .chain(go_heap.iter().flat_map(|sampler| sampler.addresses()))
            .collect();
        namer.name_all(space, jit, unique);
        let trace = Trace {
            pid: self.target.pid,
            command: self.command.clone(),
            ended_by: "still tracing (a periodic push)".to_owned(),
            traced_secs: traced,
            min_age_ns: config.min_age.map(|d| d.as_nanos() as u64),
            sample_bytes: config.sample_bytes,
            mapping_unavailable: self.mapping_unavailable.clone(),
        };
        let mut recording = gathered.build(trace, &frames, |addrs| namer.stack(space, jit, addrs));
        // The runtimes' own heap profiles as of their last sample; a JVM's class histogram is
        // taken at the first and the last sample only (each one a full GC), so it is not here.
        if let Some(sampler) = go_heap {
            recording
                .stacks
                .extend(sampler.stacks(|addrs| namer.stack(space, jit, addrs)));
        }
        if let JsHeap::Running(sampler) = &self.js_heap {
            recording.stacks.extend(sampler.stacks());
        }
        drop(held);
        if let Some(push) = self.push.as_mut() {
            push.offer(&recording);
        }
    }

    /// What the kernel's lifecycle ring said ended the trace; for an OOM kill, the last sample
    /// is taken now, before the kill takes the target's memory.
    fn lifecycle_ended(&mut self, ending: Ending, started: Instant) -> String {
        match ending {
            Ending::Exec => self.exec_ended(),
            Ending::OomKill(kill) => {
                drain_events(self.events.get_mut(), &mut self.mappings);
                self.take_sample(started);
                self.oom_ended(kill)
            }
        }
    }

    /// Says that the OOM killer chose the target; returns why tracing ended, with the
    /// cgroup's limit and the RSS at the kill.
    fn oom_ended(&mut self, kill: OomKill) -> String {
        let ended_by = oom_kill::ended_by(kill, self.cgroup.as_ref());
        self.said.notice(format!(
            "pid {} was chosen by the OOM killer: tracing ends here, every report is written now",
            self.target.pid
        ));
        ended_by
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
            self.misses.publish_layout(&mut probes.maps, &self.code);
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
        let secs = started.elapsed().as_secs_f64();
        self.timeline
            .offer(secs, memory, sample_values(&totals, &held));
        self.rss.sample(secs, memory, &self.mappings.spans(), false);
        self.sample_go_heap(secs, memory, false);
        self.sample_js_heap(secs, memory);
        if let Some(java_heap) = self.java_heap.as_mut() {
            java_heap.sample(&self.target, secs);
        }
        Some(totals)
    }

    /// Samples a Node target's JavaScript heap (starting the sampler the first time); never
    /// waits for the target.
    fn sample_js_heap(&mut self, secs: f64, memory: Option<ProcessMemory>) {
        if let JsHeap::NotStarted = self.js_heap {
            self.js_heap = match JsHeapSampler::start(self.target.pid) {
                Ok(mut sampler) => {
                    // Samples taken before it started (none, unless the first was the last)
                    // hold nothing.
                    let taken = self.timeline.samples().len().saturating_sub(1);
                    for sample in &self.timeline.samples()[..taken] {
                        sampler.skip(sample.secs);
                    }
                    JsHeap::Running(Box::new(sampler))
                }
                Err(err) => {
                    self.said
                        .notice(format!("--js-heap: its thread cannot start: {err}"));
                    JsHeap::Off
                }
            };
        }
        if let JsHeap::Running(sampler) = &mut self.js_heap {
            sampler.sample(secs, memory);
            for notice in sampler.take_notices() {
                self.said.notice(notice);
            }
        }
    }

    /// Reads a Go target's heap profile into its timeline (looking for it the first time).
    fn sample_go_heap(&mut self, secs: f64, memory: Option<ProcessMemory>, always: bool) {
        if let GoHeap::NotLooked = self.go_heap {
            self.go_heap = match GoHeapSampler::open(&self.target) {
                Ok(Some(sampler)) => GoHeap::Reading(Box::new(sampler)),
                Ok(None) => GoHeap::None,
                Err(why) => {
                    self.said.notice(format!(
                        "the Go heap profile cannot be read: {}",
                        crate::names::shown(&why)
                    ));
                    GoHeap::None
                }
            };
            // The go-heap timeline must line up with the stacks': samples taken before it
            // was found (none, unless the first sample was the last) hold nothing.
            if let GoHeap::Reading(sampler) = &mut self.go_heap {
                let taken = self
                    .timeline
                    .samples()
                    .len()
                    .saturating_sub(usize::from(!always));
                for sample in &self.timeline.samples()[..taken] {
                    sampler.skip(sample.secs);
                }
            }
        }
        if let GoHeap::Reading(sampler) = &mut self.go_heap {
            let was = sampler.unavailable.is_some();
            sampler.sample(secs, memory, always);
            if let Some(why) = sampler.unavailable.as_ref().filter(|_| !was) {
                self.said.notice(format!(
                    "the Go heap profile cannot be read: {why}; go-heap stacks are missing"
                ));
            }
        }
    }

    /// `/proc/PID/smaps_rollup`, with the memory cgroup's usage and limit read beside it;
    /// none once the target has exited (a zombie's is empty).
    fn memory(&self) -> Option<ProcessMemory> {
        let text =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.target.pid)).ok()?;
        let memory = parse_smaps_rollup(&text)?;
        Some(ProcessMemory {
            cgroup: self
                .cgroup
                .as_ref()
                .and_then(|cgroup| cgroup.read().usage()),
            ..memory
        })
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
        } else if !ended_by.starts_with(OOM_KILL)
            && let Some(kill) = self
                .probes
                .as_ref()
                .and_then(|probes| self.exec_watch.oom_killed(&probes.maps))
        {
            // The kill ended the target before its notice was read: it is still why.
            ended_by = self.oom_ended(kill);
        }
        let mut probes = self.probes.take().expect("finish runs once");
        let left = self.misses.drain(
            &mut probes.maps,
            &self.code,
            &self.target,
            Some(FINAL_DRAIN_BUDGET),
        );
        if left {
            self.said.notice(format!(
                "unwind requests were still waiting after {} s of answering them at the end; their allocations stay under partial stacks marked [unwind pending]",
                FINAL_DRAIN_BUDGET.as_secs()
            ));
        }
        self.identities.drain(&probes.maps, &self.code);
        let snapshot = KernelSnapshot::read(&probes.maps)?;
        let traced = started.elapsed();
        let exec_program = self.exec_program.take();
        // After an exec, /proc describes the new program, which was not traced.
        let memory = if exec_program.is_some() {
            None
        } else {
            self.memory()
        };
        if exec_program.is_some() {
            self.rss.skip(traced.as_secs_f64(), true);
            if let GoHeap::Reading(sampler) = &mut self.go_heap {
                sampler.skip(traced.as_secs_f64());
            }
            if let JsHeap::Running(sampler) = &mut self.js_heap {
                sampler.skip(traced.as_secs_f64());
            }
            if let Some(java_heap) = self.java_heap.as_mut() {
                java_heap.skip_last("the target exec'd another program");
            }
        } else {
            self.rss
                .sample(traced.as_secs_f64(), memory, &self.mappings.spans(), true);
            self.sample_go_heap(traced.as_secs_f64(), memory, true);
            if let JsHeap::Running(sampler) = &mut self.js_heap {
                // The last profile, then the profiler stopped and the inspector closed, within
                // one deadline.
                sampler.last_sample(traced.as_secs_f64(), memory);
                for notice in sampler.take_notices() {
                    self.said.notice(notice);
                }
            }
            // Bounded (jvm_heap::END_BUDGET), whatever the JVM does.
            if let Some(java_heap) = self.java_heap.as_mut() {
                java_heap.sample_last(&self.target, traced.as_secs_f64());
            }
        }
        let gathered = Gathered::new(
            snapshot,
            std::mem::take(&mut self.mappings),
            self.misses.ledger(),
            std::mem::take(&mut self.timeline),
            exec_program,
            (traced.as_secs_f64(), memory),
        );
        say_phase(&self.said, "kernel maps read", phase, None);
        phase = Instant::now();
        let frames = snapshot::read_stacks(
            &probes.maps,
            gathered
                .stacks()
                .into_iter()
                .map(|(_, key, _)| key)
                .chain(self.rss.stack_keys()),
        );
        say_phase(&self.said, "stacks read", phase, Some(frames.len()));
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
        // Names taken when stacks were new, then HotSpot's own metadata, before a perf map.
        let names = code.runtime_names();
        let (space, jit): (_, &dyn NameSource) = (&code.space, &names);
        let mut namer = FrameNamer::default();
        let go_heap = match std::mem::replace(&mut self.go_heap, GoHeap::None) {
            GoHeap::Reading(sampler) => Some(sampler),
            _ => None,
        };
        let unique: HashSet<CodeAddress> = frames
            .values()
            .flat_map(|raw| raw.ips.iter().map(|ip| CodeAddress::of_stack_word(*ip)))
            .chain(go_heap.iter().flat_map(|sampler| sampler.addresses()))
            .collect();
        let unique_count = unique.len();
        namer.name_all(space, jit, unique);
        say_phase(
            &self.said,
            "addresses symbolized",
            phase,
            Some(unique_count),
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
        let mut recording = gathered.build(trace, &frames, |addrs| namer.stack(space, jit, addrs));
        if let Some(sampler) = go_heap {
            recording
                .stacks
                .extend(sampler.stacks(|addrs| namer.stack(space, jit, addrs)));
        }
        if let JsHeap::Running(sampler) = std::mem::replace(&mut self.js_heap, JsHeap::Off) {
            recording.stacks.extend(sampler.stacks());
        }
        if let Some(java_heap) = self.java_heap.take() {
            let secs: Vec<f64> = recording.samples.iter().map(|s| s.secs).collect();
            let (stacks, line) = java_heap.finish(&secs);
            if stacks.is_empty() {
                self.said.notice(crate::names::shown(&line).into_owned());
            }
            recording.stacks.extend(stacks);
            recording.java_heap_histogram = Some(line);
        }
        let rss = std::mem::replace(&mut self.rss, RssSampler::new(0));
        if let Some(cost) = rss.cost() {
            log::info!("{}", Event::SampleCost(cost.clone()));
            self.said.send(Event::SampleCost(cost));
        }
        recording.regions = rss.finish(|key| {
            crate::builder::stack_frames(frames.get(&key), &mut |addrs| {
                namer.stack(space, jit, addrs)
            })
        });
        say_phase(&self.said, "ages and stacks built", phase, None);
        Ok((recording, detaching))
    }
}

/// Says that a step of the report, begun at `since`, is done: logged, and an event for the
/// statistics.
fn say_phase(said: &Events, name: &'static str, since: Instant, items: Option<usize>) {
    let event = Event::Phase(Phase {
        name,
        millis: elapsed_ms(since),
        items,
    });
    log::info!("{}", event.to_string().trim_start_matches("leakhound: "));
    said.send(event);
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
