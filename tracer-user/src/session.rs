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
use tracer_common::{
    AllocInfo, LOST_STACK, MapEvent, MapEventKind, StackTotals, TRUNCATED_PENDING,
};

use crate::{
    analysis::{
        age::{self, Live},
        history::{Timeline, add_series},
        memory::parse_smaps_rollup,
    },
    code_refresh::{self, CodeRefresher},
    config::RecordConfig,
    errors::TracerError,
    exit_watch::{self, ChildExit},
    kernel::{Detaching, Probes, loader::elapsed_ms, reader},
    model::{
        Frame, MappingCounters, Origin, ProcessMemory, RECORDING_VERSION, Recording, StackRecord,
    },
    process::TargetProcess,
    regions::{Held, Regions},
    report::{estimate_mark, human_bytes},
    symbolize::{CodeAddress, FrameNamer, Modules},
    target,
    unwind::MissHandler,
};

/// How long the end of a trace waits for the target's code to be reread, and then for the
/// modules to be free for naming: the target may be slow or hostile.
const FINAL_REFRESH_WAIT: Duration = Duration::from_millis(900);

/// What a session produced: whatever was gathered, and the error that ended it early, if any.
pub struct Outcome {
    pub recording: Option<Recording>,
    pub error: Option<TracerError>,
    /// The probes' detach, still under way while the report is written: wait for it before
    /// exiting (dropping it waits too).
    pub detaching: Option<Detaching>,
}

pub fn record(config: &RecordConfig) -> Outcome {
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
    runtime.block_on(record_async(config))
}

async fn record_async(config: &RecordConfig) -> Outcome {
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
    let mut session = match Session::start(config) {
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
                        drain_events(guard.get_inner_mut(), &mut session.mapping);
                        guard.clear_ready();
                    }
                    Err(err) => { error = Some(err.into()); break "an error".to_owned(); }
                }
            }
            ready = session.misses.ring().readable_mut() => {
                if let Ok(mut guard) = ready {
                    guard.clear_ready();
                }
                session.answer_misses();
            }
            _ = sigint.recv() => break "SIGINT".to_owned(),
            _ = sigterm.recv() => break "SIGTERM".to_owned(),
            exit = session.exit.wait() => break format!("the target exiting ({exit})"),
            () = sleep_until(deadline) => break format!("the {:.1} s duration", started.elapsed().as_secs_f64()),
            _ = sample_tick.tick() => {
                drain_events(session.events.get_mut(), &mut session.mapping);
                // With --interval, samples are taken every interval: the progress line reads
                // the totals the sample just read.
                if let Some(totals) = session.take_sample(started)
                    && report_every.is_some()
                {
                    session.print_progress(started, &totals, config.sample_bytes.is_some());
                }
            }
            _ = tick.tick() => session.refresh_code_and_rules(),
        }
    };
    drain_events(session.events.get_mut(), &mut session.mapping);
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

/// Anonymous mappings, as user space rebuilds them from the kernel's events.
#[derive(Default)]
struct MappingState {
    regions: Regions,
    /// Bytes and mappings ever made per stack while traced.
    made: HashMap<u64, (u64, u64)>,
    counters: MappingCounters,
}

struct Session {
    probes: Option<Probes>,
    events: AsyncFd<RingBuf<MapData>>,
    /// Unwind misses from the kernel walk, answered as they come.
    misses: MissHandler,
    exit: ExitSignal,
    target: TargetProcess,
    command: String,
    /// Set for a launched command, which is stopped when tracing ends before it does.
    launched: Option<u32>,
    modules: Arc<Mutex<Modules>>,
    /// Rereads the target's code (mappings, perf maps, a JVM's perf map) off this thread.
    refresher: CodeRefresher,
    mapping: MappingState,
    mapping_unavailable: Option<String>,
    /// Outstanding bytes per stack at every sample, for the trends.
    timeline: Timeline<(Origin, u64)>,
}

impl Session {
    fn start(config: &RecordConfig) -> Result<Self, TracerError> {
        preflight()?;
        let attach_started = Instant::now();
        let mut prepared = target::prepare(&config.target, &config.alloc_libs)?;
        let pid = prepared.process.pid;
        let attached = (|| {
            let mut probes = Probes::load(
                pid,
                config.sizes,
                config.unwind.uses_cfi(),
                config.sample_bytes,
            )?;
            for object in &prepared.objects {
                probes.attach_allocator(&object.kernel_path(), &object.points, pid)?;
            }
            probes.attach_mapping_tracepoints()?;
            Ok(probes)
        })();
        let mut probes = match attached {
            Ok(probes) => probes,
            Err(err) => {
                // Dropping whatever was loaded detaches it; a launched child never runs.
                if let Some(child) = prepared.child.take() {
                    child.abort();
                }
                return Err(err);
            }
        };

        let ring = probes.ebpf.take_map("MAP_EVENTS").ok_or(TracerError::Map {
            map: "MAP_EVENTS",
            source: Box::new(aya::maps::MapError::InvalidName {
                name: "MAP_EVENTS".into(),
            }),
        })?;
        let ring = RingBuf::try_from(ring).map_err(|source| TracerError::Map {
            map: "MAP_EVENTS",
            source: Box::new(source),
        })?;
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let events =
            unsafe { AsyncFd::register(ring) }.map_err(|err| TracerError::Io(err.into()))?;

        let mut misses = MissHandler::new(&mut probes.ebpf)?;

        let modules = Arc::new(Mutex::new(Modules::default()));
        let (exit, launched) = match prepared.child.take() {
            Some(mut child) => {
                let exit = exit_watch::watch_child(prepared.process.clone(), Arc::clone(&modules))?;
                child.release()?;
                (ExitSignal::Launched(exit), Some(pid))
            }
            None => {
                let mut known = modules.lock().expect("modules lock");
                known.refresh(&prepared.process);
                misses.prepare(&known);
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
        let links = match probes.multi_uprobe_links {
            0 => String::new(),
            n => format!(", {n} multi-uprobe links"),
        };
        eprintln!(
            "leakhound: attached to pid {pid} ({}, {} probes{links}) in {:.0} ms",
            prepared.hooked_summary(),
            probes.uprobes_attached + probes.tracepoints_attached,
            elapsed_ms(attach_started)
        );
        let mapping_unavailable = probes.mapping_unavailable.clone();
        let refresher = CodeRefresher::start(prepared.process.clone(), Arc::clone(&modules))
            .map_err(TracerError::Io)?;
        Ok(Self {
            probes: Some(probes),
            events,
            misses,
            exit,
            target: prepared.process,
            command: prepared.command,
            launched,
            modules,
            refresher,
            mapping: MappingState::default(),
            mapping_unavailable,
            timeline: Timeline::default(),
        })
    }

    fn answer_misses(&mut self) {
        if let Some(probes) = self.probes.as_mut() {
            self.misses
                .drain(&mut probes.ebpf, &self.modules, &self.target);
        }
    }

    /// Rereads the target's code (see [`Self::refresh_code`]) and drops unwind rules of JIT
    /// code that the runtime has since replaced.
    fn refresh_code_and_rules(&mut self) {
        self.refresh_code();
        if let Some(probes) = self.probes.as_mut() {
            self.misses
                .forget_stale_jit_rules(&mut probes.ebpf, &self.modules);
        }
    }

    /// Rereads the target's code: its mappings, and its runtime's perf map, on the
    /// refresher's thread.
    fn refresh_code(&mut self) {
        self.refresher.poke();
    }

    /// `estimated`: under byte sampling, where malloc-family figures are estimates.
    fn print_progress(
        &self,
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
        let held = self.mapping.regions.held_by_stack();
        let mapped: u64 = held.values().map(|held| held.bytes).sum();
        let counters = reader::counters(&probes.ebpf).unwrap_or_default();
        let lost = counters.alloc_map_full
            + counters.stack_failed
            + counters.events_lost
            + counters.thread_map_full;
        let estimate = estimate_mark(estimated);
        eprintln!(
            "leakhound: [{:>6.1}s] outstanding {estimate}{} in {estimate}{allocations} allocations + {} mapped, {} stacks, lost {lost}",
            started.elapsed().as_secs_f64(),
            human_bytes(bytes),
            human_bytes(mapped),
            totals.len() + held.len(),
        );
    }

    /// One point of the timeline: every stack's outstanding bytes, and the target's memory.
    /// Samples every stack for the trends; returns the kernel totals it read.
    fn take_sample(&mut self, started: Instant) -> Option<HashMap<u64, StackTotals>> {
        let probes = self.probes.as_ref()?;
        let totals = match reader::stack_totals(&probes.ebpf) {
            Ok(totals) => totals,
            Err(err) => {
                log::debug!("sample skipped: {err}");
                return None;
            }
        };
        let held = self.mapping.regions.held_by_stack();
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

    /// Ages of every live allocation and mapping, from one batched walk of the kernel's
    /// allocation map. Per key: the histogram, and the (bytes, allocations) old enough.
    fn ages(&self, allocs: &[(u64, AllocInfo)], min_age: Option<Duration>) -> Ages {
        let now = reader::ktime_now_ns();
        let min_age_ns = min_age.map_or(0, |d| d.as_nanos() as u64);
        let malloc = allocs.iter().map(|(_, info)| Live {
            key: (Origin::Malloc, info.stack_key),
            bytes: info.weight_bytes,
            count: info.weight_count,
            // An unbiased estimate of its share of the variance: w(w - size) for weight w.
            variance: info.weight_bytes as f64 * info.weight_bytes.saturating_sub(info.size) as f64,
            made_ns: info.timestamp_ns,
        });
        let mmap = self
            .mapping
            .regions
            .live()
            .map(|(stack_key, bytes, made_ns)| Live {
                key: (Origin::Mmap, stack_key),
                bytes,
                count: 1,
                variance: 0.0,
                made_ns,
            });
        age::ages(malloc.chain(mmap), now, min_age_ns)
    }

    /// Reads everything out of the kernel, detaches, then names frames (which can be slow and
    /// needs no probes).
    fn finish(
        mut self,
        started: Instant,
        mut ended_by: String,
        min_age: Option<Duration>,
        sample_bytes: Option<u64>,
    ) -> Result<(Recording, Detaching), TracerError> {
        let mut phase = Instant::now();
        let mut probes = self.probes.take().expect("finish runs once");
        self.misses
            .drain(&mut probes.ebpf, &self.modules, &self.target);
        let mut totals = reader::stack_totals(&probes.ebpf)?;
        let counters = reader::counters(&probes.ebpf)?;
        // Allocations and mappings whose stacks were repaired from a copy count under their
        // whole stacks.
        let live_allocs = reader::live_allocations(&probes.ebpf).map(|(mut allocs, _)| {
            self.misses.repair_allocations(&mut totals, &mut allocs);
            allocs
        });
        for (start, repair) in self.misses.repairs() {
            let bytes = self
                .mapping
                .regions
                .rekey(start, repair.partial, repair.whole);
            if bytes > 0 {
                if let Some(made) = self.mapping.made.get_mut(&repair.partial) {
                    made.0 = made.0.saturating_sub(bytes);
                    made.1 = made.1.saturating_sub(1);
                }
                let made = self.mapping.made.entry(repair.whole).or_default();
                made.0 += bytes;
                made.1 += 1;
            }
        }
        log::info!("report: kernel maps read in {:.1} ms", elapsed_ms(phase));
        phase = Instant::now();
        let held = self.mapping.regions.held_by_stack();
        let traced = started.elapsed();
        let memory = self.memory();
        self.timeline
            .push(traced.as_secs_f64(), memory, sample_values(&totals, &held));
        let (ages, ages_unavailable) = match &live_allocs {
            Ok(allocs) => (Some(self.ages(allocs, min_age)), None),
            Err(err) => (
                None,
                Some(format!("the allocation map could not be read: {err}")),
            ),
        };

        log::info!("report: allocation ages in {:.1} ms", elapsed_ms(phase));
        phase = Instant::now();
        let mut stacks = reader::StackCache::default();
        let mut raw: Vec<(Origin, u64, StackTotals)> = totals
            .into_iter()
            .filter(|(_, t)| live(t.live_bytes) > 0 || t.total_bytes > 0)
            .map(|(key, t)| (Origin::Malloc, key, t))
            .collect();
        for (key, (made_bytes, made_count)) in &self.mapping.made {
            let now = held.get(key).copied().unwrap_or_default();
            raw.push((
                Origin::Mmap,
                *key,
                StackTotals {
                    live_bytes: now.bytes,
                    live_allocations: now.regions,
                    total_bytes: *made_bytes,
                    total_allocations: *made_count,
                },
            ));
        }
        // A stack seen in a sample always has a total now (totals are never deleted), but a
        // stack whose mappings were all unmapped may be missing from `made` after a lost event.
        let present: HashSet<(Origin, u64)> = raw.iter().map(|(o, k, _)| (*o, *k)).collect();
        let mut missing: Vec<(Origin, u64)> = self
            .timeline
            .keys()
            .filter(|key| !present.contains(key))
            .copied()
            .collect();
        missing.sort_unstable();
        raw.extend(
            missing
                .into_iter()
                .map(|(origin, key)| (origin, key, StackTotals::default())),
        );
        let mut addresses: HashMap<u64, Vec<CodeAddress>> = HashMap::new();
        for (_, key, _) in &raw {
            if *key != LOST_STACK && !addresses.contains_key(key) {
                let ips = stacks.get(&probes.ebpf, *key)?;
                // Every frame of a user stack taken at a return or a syscall exit is a
                // return address (the syscall's is where execution resumes).
                addresses.insert(
                    *key,
                    ips.iter()
                        .map(|ip| CodeAddress::ReturnAddress(*ip))
                        .collect(),
                );
            }
        }
        log::info!(
            "report: {} stacks read, code refreshed in {:.1} ms",
            addresses.len(),
            elapsed_ms(phase)
        );
        // The last refresh, and a JVM asked for its perf map now so that code compiled late is
        // named; bounded, since the target may not answer.
        if !self.refresher.finish(FINAL_REFRESH_WAIT) {
            eprintln!(
                "leakhound: the target's code was not reread within {:.1} s; frames of code loaded since the last refresh may be unnamed",
                FINAL_REFRESH_WAIT.as_secs_f64()
            );
        }
        // Everything is read: the report need not wait for the detach.
        let detaching = probes.detach_in_background();

        if let Some(pid) = self.launched
            && TargetProcess::open(pid).is_ok()
        {
            // Tracing ended first (duration or signal): stop the command, as `timeout` would.
            // SAFETY: sends a signal to our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            ended_by.push_str("; the launched command was sent SIGTERM");
        }

        phase = Instant::now();
        let unnamed = Modules::default();
        let held = code_refresh::lock_within(&self.modules, FINAL_REFRESH_WAIT);
        if held.is_none() {
            eprintln!(
                "leakhound: the target's files did not answer within {:.1} s; frames are left unnamed",
                FINAL_REFRESH_WAIT.as_secs_f64()
            );
        }
        let modules: &Modules = held.as_deref().unwrap_or(&unnamed);
        let mut namer = FrameNamer::default();
        let unique: HashSet<CodeAddress> = addresses.values().flatten().copied().collect();
        let unique_count = unique.len();
        namer.name_all(modules, unique);
        log::info!(
            "report: {unique_count} addresses symbolized in {:.1} ms",
            elapsed_ms(phase)
        );
        phase = Instant::now();
        let stacks = raw
            .into_iter()
            .map(|(origin, key, t)| {
                let mut stack = StackRecord {
                    origin,
                    frames: match addresses.get(&key) {
                        Some(addrs) if !addrs.is_empty() => {
                            let mut frames = namer.stack(modules, addrs);
                            // Say where a walk stopped short, so the bytes stay visible.
                            match stacks.truncated(key) {
                                TRUNCATED_PENDING => {
                                    frames.insert(0, Frame::named("[unwind pending]"))
                                }
                                1 => frames.insert(0, Frame::named("[truncated]")),
                                _ => {}
                            }
                            frames
                        }
                        _ => vec![Frame::named("[lost stack]")],
                    },
                    live_bytes: live(t.live_bytes),
                    live_allocations: live(t.live_allocations),
                    total_bytes: t.total_bytes,
                    total_allocations: t.total_allocations,
                    history: self.timeline.series(&(origin, key)),
                    ages: None,
                    live_bytes_variance: None,
                };
                if let Some(ages) = &ages {
                    stack.ages = Some(
                        ages.histograms
                            .get(&(origin, key))
                            .copied()
                            .unwrap_or_default(),
                    );
                    if min_age.is_some() {
                        let (bytes, count) = ages
                            .old_enough
                            .get(&(origin, key))
                            .copied()
                            .unwrap_or_default();
                        stack.live_bytes = bytes;
                        stack.live_allocations = count;
                    }
                    if sample_bytes.is_some() && origin == Origin::Malloc {
                        stack.live_bytes_variance =
                            Some(ages.variance.get(&(origin, key)).copied().unwrap_or(0.0));
                    }
                }
                stack
            })
            .collect();
        let stacks = merge_equal_stacks(stacks);
        log::info!("report: stacks built in {:.1} ms", elapsed_ms(phase));
        let recording = Recording {
            version: RECORDING_VERSION,
            pid: self.target.pid,
            command: self.command,
            duration_secs: traced.as_secs_f64(),
            ended_by,
            counters,
            mapping: self.mapping.counters,
            mapping_unavailable: self.mapping_unavailable,
            samples: self.timeline.samples().to_vec(),
            // Without ages there is nothing to filter by: say so rather than pretend.
            min_age_secs: min_age.filter(|_| ages.is_some()).map(|d| d.as_secs_f64()),
            ages_unavailable,
            sample_bytes,
            stacks,
        };
        Ok((recording, detaching))
    }
}

/// Stacks that differ only in addresses (two call sites on one line, or garbage cut from a
/// frame-pointer walk) read the same to a person, so they are one stack in every report.
fn merge_equal_stacks(stacks: Vec<StackRecord>) -> Vec<StackRecord> {
    let mut merged: Vec<StackRecord> = Vec::with_capacity(stacks.len());
    let mut index: foldhash::HashMap<(Origin, Vec<Frame>), usize> = Default::default();
    for stack in stacks {
        match index.get(&(stack.origin, stack.frames.clone())) {
            Some(&i) => {
                let into = &mut merged[i];
                into.live_bytes += stack.live_bytes;
                into.live_allocations += stack.live_allocations;
                into.total_bytes += stack.total_bytes;
                into.total_allocations += stack.total_allocations;
                // Every history follows the same samples, so they add pointwise.
                add_series(&mut into.history, &stack.history);
                match (&mut into.ages, &stack.ages) {
                    (Some(into), Some(ages)) => into.add(ages),
                    (into @ None, Some(ages)) => *into = Some(*ages),
                    (_, None) => {}
                }
                // Independent samples: variances add.
                if let Some(variance) = stack.live_bytes_variance {
                    *into.live_bytes_variance.get_or_insert(0.0) += variance;
                }
            }
            None => {
                index.insert((stack.origin, stack.frames.clone()), merged.len());
                merged.push(stack);
            }
        }
    }
    merged
}

type Ages = age::Ages<(Origin, u64)>;

/// Outstanding bytes per stack at this moment: malloc totals from the kernel, mappings from
/// the regions user space keeps.
fn sample_values<'a>(
    totals: &'a HashMap<u64, StackTotals>,
    held: &'a HashMap<u64, Held>,
) -> impl Iterator<Item = ((Origin, u64), u64)> + 'a {
    let malloc = totals
        .iter()
        .map(|(key, t)| ((Origin::Malloc, *key), live(t.live_bytes)))
        .filter(|(_, bytes)| *bytes > 0);
    let mmap = held
        .iter()
        .map(|(key, held)| ((Origin::Mmap, *key), held.bytes));
    malloc.chain(mmap)
}

/// A kernel total is a wrapping sum; a reader can see a free before its allocation's add.
fn live(value: u64) -> u64 {
    (value as i64).max(0) as u64
}

fn drain_events(ring: &mut RingBuf<MapData>, state: &mut MappingState) {
    while let Some(item) = ring.next() {
        state.counters.events += 1;
        let Some(event) = parse_event(&item) else {
            state.counters.malformed_events += 1;
            continue;
        };
        match MapEventKind::try_from(event.kind) {
            Ok(MapEventKind::Map) => {
                state
                    .regions
                    .map(event.addr, event.len, event.stack_key, event.timestamp_ns);
                let made = state.made.entry(event.stack_key).or_default();
                made.0 += event.len.div_ceil(4096) * 4096;
                made.1 += 1;
            }
            Ok(MapEventKind::Unmap) => {
                if state.regions.unmap(event.addr, event.len) == 0 {
                    state.counters.untracked_unmaps += 1;
                }
            }
            Ok(MapEventKind::Remap) => {
                state
                    .regions
                    .remap(event.old_addr, event.old_len, event.addr, event.len);
            }
            Err(_) => state.counters.malformed_events += 1,
        }
    }
}

fn parse_event(bytes: &[u8]) -> Option<MapEvent> {
    (bytes.len() >= size_of::<MapEvent>()).then(|| {
        // SAFETY: the buffer holds at least one MapEvent, a plain-old-data type; the read is
        // unaligned because ring buffer records are only 8-byte aligned by convention.
        unsafe { bytes.as_ptr().cast::<MapEvent>().read_unaligned() }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_stacks_add_their_histories_and_ages_pointwise() {
        let stack =
            |bytes: u64, history: Vec<u64>, ages: Option<crate::model::AgeHistogram>| StackRecord {
                origin: Origin::Malloc,
                frames: vec![Frame::named("main"), Frame::named("leak")],
                live_bytes: bytes,
                live_allocations: 1,
                total_bytes: bytes,
                total_allocations: 1,
                history,
                ages,
                live_bytes_variance: None,
            };
        let ages = crate::model::AgeHistogram {
            allocations: [1, 0, 0, 0, 2],
            bytes: [10, 0, 0, 0, 20],
        };
        let merged = merge_equal_stacks(vec![
            stack(30, vec![10, 20, 30], Some(ages)),
            stack(5, vec![0, 5, 5], None),
            stack(7, vec![1, 1, 7], Some(ages)),
        ]);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].live_bytes, 42);
        assert_eq!(merged[0].history, [11, 26, 42]);
        let merged_ages = merged[0].ages.unwrap();
        assert_eq!(merged_ages.allocations, [2, 0, 0, 0, 4]);
        assert_eq!(merged_ages.bytes, [20, 0, 0, 0, 40]);
    }

    #[test]
    fn samples_hold_malloc_totals_and_mapped_bytes() {
        let totals = HashMap::from([
            (
                1,
                StackTotals {
                    live_bytes: 64,
                    ..StackTotals::default()
                },
            ),
            (
                2,
                StackTotals {
                    live_bytes: 0u64.wrapping_sub(8),
                    ..StackTotals::default()
                },
            ),
        ]);
        let held = HashMap::from([(
            1,
            Held {
                bytes: 4096,
                regions: 1,
            },
        )]);
        let mut values: Vec<_> = sample_values(&totals, &held).collect();
        values.sort_unstable();
        assert_eq!(
            values,
            [((Origin::Malloc, 1), 64), ((Origin::Mmap, 1), 4096)]
        );
    }

    #[test]
    fn wrapped_totals_read_as_zero() {
        assert_eq!(live(5), 5);
        assert_eq!(live(0u64.wrapping_sub(3)), 0);
    }

    #[test]
    fn short_records_are_malformed() {
        assert!(parse_event(&[0u8; 8]).is_none());
        let event = MapEvent {
            kind: 1,
            addr: 0x1000,
            len: 4096,
            ..MapEvent::default()
        };
        // SAFETY: MapEvent is plain old data; the slice covers exactly one value.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<MapEvent>())
        };
        assert_eq!(
            parse_event(bytes).map(|e| (e.kind, e.addr, e.len)),
            Some((1, 0x1000, 4096))
        );
    }
}
