//! Loads the embedded eBPF object, sized from the user's options, and attaches it. What goes
//! where is one table ([`super::attach`]); [`Probes::attach_table`] is the one path that places
//! its rows, with multi-uprobe links where the kernel has them, else one perf event per probe.
//! Every link belongs to [`Probes`] from the moment it exists: dropping it detaches them all,
//! which is how a normal exit, a signal and a failed attach all leave the kernel as it was.
//! (Links are file descriptors, so even a killed leakhound loses them when they close.)

use std::{num::NonZeroU32, path::Path, time::Instant};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapError},
    programs::{
        ProgramError, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};

use aya_log::EbpfLogger;
use tracer_common::{lifecycle, sampling};

use super::{
    attach::{self, Attachment, Mechanism, Placed, Site},
    faults::Faults,
    maps::{KernelMaps, Rings},
    multi_uprobe::MultiUprobePrograms,
    oom_format::OomRecord,
};
use crate::{errors::TracerError, kernel::tracefs, process::elf::HookPoint};

/// Map sizes chosen at load time.
#[derive(Clone, Copy, Debug)]
pub struct MapSizes {
    /// Live allocations tracked at once.
    pub max_allocs: u32,
    /// Distinct stacks.
    pub max_stacks: u32,
    /// Threads with an allocation call in flight.
    pub max_threads: u32,
    /// Bytes of the ring buffer for mapping events (a power of two, at least a page).
    pub event_buffer: u32,
    /// Bytes of stack sent with an unwind request (`--stack-copy`).
    pub stack_copy: u64,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            max_allocs: 1 << 20,
            max_stacks: 1 << 17,
            max_threads: 1 << 14,
            event_buffer: 1 << 20,
            stack_copy: tracer_common::STACK_COPY_BYTES as u64,
        }
    }
}

/// How the live blocks are split between the kernel's slot table and its allocation map
/// (tracer-ebpf's `blocks`): together they hold `--max-allocs` blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockTable {
    /// log2 of the slot count, 0 for no table.
    pub slot_bits: u32,
    /// Entries of the allocation map.
    pub map_entries: u32,
}

impl BlockTable {
    /// A slot for every sixteenth block, a power of two (64 Ki slots, 3.5 MiB, by default);
    /// none below 4,096 blocks, where a full map is what a user asked for.
    pub fn for_max_allocs(max_allocs: u32) -> Self {
        if max_allocs < 4096 {
            return Self {
                slot_bits: 0,
                map_entries: max_allocs,
            };
        }
        let slot_bits = (max_allocs / 16).ilog2();
        Self {
            slot_bits,
            map_entries: max_allocs - (1 << slot_bits),
        }
    }

    /// Entries of the slot array: at least one, which an array map needs.
    pub fn slots(self) -> u32 {
        if self.slot_bits == 0 {
            1
        } else {
            1 << self.slot_bits
        }
    }
}

/// Sizes of the per-stack totals (tracer-ebpf's `totals`) and the thread slots (its
/// `threads`), from the user's map sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedMaps {
    /// Entries of the totals array: one per stack, one for LOST_STACK, and room for the few
    /// entries left unused when two CPUs give the same new stack one at once.
    pub totals_slots: u32,
    /// Entries of the stack-to-index map: one per stack, and LOST_STACK's.
    pub stack_index: u32,
    /// log2 of the thread slots: the largest power of two up to `--max-threads`.
    pub thread_slot_bits: u32,
}

impl IndexedMaps {
    pub fn for_sizes(sizes: &MapSizes) -> Self {
        let stacks = sizes.max_stacks.saturating_add(1);
        Self {
            totals_slots: stacks.saturating_add((stacks / 64).max(64)),
            stack_index: stacks,
            thread_slot_bits: sizes.max_threads.max(2).ilog2().min(24),
        }
    }
}

/// The loaded and attached programs.
pub struct Probes {
    pub ebpf: Ebpf,
    /// The maps user space reads and writes, taken out of `ebpf` once loaded.
    pub maps: KernelMaps,
    /// The ring buffers, until their readers take them ([`Probes::take_rings`]).
    rings: Option<Rings>,
    /// The kernel programs' own log (aya-log), when `leakhound::kernel` logs at debug.
    pub kernel_log: Option<EbpfLogger<&'static dyn log::Log>>,
    pub uprobes_attached: usize,
    /// How many multi-uprobe links carry them (0: one perf event per probe).
    pub multi_uprobe_links: usize,
    pub tracepoints_attached: usize,
    /// Why mapping syscalls are not tracked, if they are not. (The target's exec is then not
    /// noticed either: the same tracefs finds both.)
    pub mapping_unavailable: Option<String>,
    /// Every probe placed so far, for the attach statistics.
    pub placed: Vec<Placed>,
    /// How uprobes are attached: multi-uprobe links while the kernel takes them.
    uprobes: Uprobes,
    /// The traced process, as the root PID namespace sees it.
    tgid: u32,
    /// Whether the mapping syscalls are seen at their tracepoints (else libc's wrappers are
    /// probed after their syscall): which programs are loaded and attached.
    syscall_tracepoints: bool,
    faults: Faults,
    /// Every attached link, owned here rather than by its program so that they can be closed
    /// together (see the `Drop` impl).
    links: Vec<AttachedLink>,
}

/// A uprobe or tracepoint link: dropping it detaches it.
type AttachedLink = Box<dyn Send>;

/// The mechanism for uprobes ([`Mechanism`] names them in the statistics).
enum Uprobes {
    /// The programs loaded a second time for multi-uprobe links.
    MultiLink(MultiUprobePrograms),
    /// aya's own programs, one perf event per probe.
    PerfEvent,
}

impl Probes {
    /// Detaches everything on a thread of its own, so that the report is written while the
    /// kernel waits out the grace periods (see the `Drop` impl). Joining the handle, or
    /// dropping it, waits for the detach to end.
    pub fn detach_in_background(self) -> Detaching {
        let thread = std::thread::Builder::new()
            .name("detach".into())
            .spawn(move || drop(self));
        // Without a thread, `self` was dropped, so detached, by the failed spawn.
        Detaching(thread.ok())
    }
}

/// A detach under way; see [`Probes::detach_in_background`].
pub struct Detaching(Option<std::thread::JoinHandle<()>>);

impl Detaching {
    /// Waits until every probe is detached.
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Detaching {
    fn drop(&mut self) {
        self.join();
    }
}

impl Drop for Probes {
    /// Closes every link at once, each on its own thread. Closing a link waits for RCU grace
    /// periods: one per multi-uprobe link, but one per probe for perf-event uprobes, under the
    /// kernel's event mutex (about 75 ms each: 3.2 s for 29 probes one after another, 2.2 s in
    /// parallel). Multi-uprobe links and the tracepoints close in about 300 ms.
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.links);
        let started = Instant::now();
        let count = links.len();
        std::thread::scope(|scope| {
            for link in links {
                let spawned = std::thread::Builder::new()
                    .name("detach".into())
                    .spawn_scoped(scope, move || drop(link));
                // Without a thread, the link was dropped (so closed) by the failed spawn.
                drop(spawned);
            }
        });
        log::info!("closed {count} links in {:.1} ms", elapsed_ms(started));
    }
}

const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

impl Probes {
    /// Loads every program for the process `tgid` (as the root PID namespace sees it).
    /// `cfi`: walk stacks with CFI rules (`--unwind auto|dwarf`) rather than frame pointers.
    /// `sample_bytes`: the mean bytes between recorded allocations; none records them all.
    /// `execs_before_trace`: execs of the target that start the trace rather than end it (1
    /// for a launched command, whose first exec starts it).
    pub fn load(
        tgid: u32,
        sizes: MapSizes,
        cfi: bool,
        sample_bytes: Option<u64>,
        execs_before_trace: u32,
        syscall_tracepoints: bool,
    ) -> Result<Self, TracerError> {
        raise_memlock_limit();
        let (pidns_dev, pidns_ino) = own_pid_namespace();
        let unwind_dwarf = u32::from(cfi);
        let sample_bytes = sample_bytes.unwrap_or(0);
        let log_level = kernel_log_level();
        let blocks = BlockTable::for_max_allocs(sizes.max_allocs);
        let indexed = IndexedMaps::for_sizes(&sizes);
        let oom = tracefs::with_tracefs(|| OomRecord::read(Path::new(tracefs::TRACEFS)))
            .unwrap_or_default();
        let mut loader = EbpfLoader::new();
        loader
            .override_global("TARGET_TGID", &tgid, true)
            .override_global("PIDNS_DEV", &pidns_dev, true)
            .override_global("PIDNS_INO", &pidns_ino, true)
            .override_global("UNWIND_DWARF", &unwind_dwarf, true)
            .override_global("STACK_COPY_LIMIT", &sizes.stack_copy, true)
            .override_global("SAMPLE_BYTES", &sample_bytes, true)
            .override_global("EXECS_BEFORE_TRACE", &execs_before_trace, true)
            .override_global("OOM_PID_AT", &oom.pid, true)
            .override_global("OOM_ANON_RSS_AT", &oom.anon_rss, true)
            .override_global("OOM_FILE_RSS_AT", &oom.file_rss, true)
            .override_global("OOM_SHMEM_RSS_AT", &oom.shmem_rss, true)
            // aya-log's level in the kernel: nothing unless the kernel's log is asked for.
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .override_global("SLOT_BITS", &blocks.slot_bits, true)
            .map_max_entries("ALLOCS", blocks.map_entries)
            .map_max_entries("BLOCK_SLOTS", blocks.slots())
            .override_global("TOTALS_SLOTS", &indexed.totals_slots, true)
            .override_global("THREAD_SLOT_BITS", &indexed.thread_slot_bits, true)
            .map_max_entries("STACKS", sizes.max_stacks)
            .map_max_entries("STACK_TOTALS", indexed.totals_slots)
            .map_max_entries("STACK_INDEX", indexed.stack_index)
            .map_max_entries("THREAD_SLOTS", 1 << indexed.thread_slot_bits)
            .map_max_entries("THREADS", sizes.max_threads)
            .map_max_entries("MAP_ARGS", sizes.max_threads)
            .map_max_entries("MAP_EVENTS", sizes.event_buffer);
        let mut ebpf = loader.load(OBJECT).map_err(|err| {
            if TracerError::is_permission(&err) {
                TracerError::PermissionDenied {
                    what: "the kernel refused to create BPF maps".into(),
                }
            } else {
                TracerError::Load(Box::new(err))
            }
        })?;

        if sample_bytes != 0 {
            write_sample_curve(&mut ebpf)?;
        }
        // Only the programs this session places are loaded: each walking program takes a
        // few hundred milliseconds to verify.
        for name in attach::tracepoint_programs(syscall_tracepoints) {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| verifier_error(name, source))?;
        }
        let faults = Faults::injected();
        let multi = faults.multi_uprobe_links().and_then(|()| {
            // Sessions save the return trap of a call that byte sampling passes over;
            // without sampling no call is passed over.
            let session = (sample_bytes != 0).then_some(attach::ALLOC_SESSION);
            let names = attach::uprobe_programs(syscall_tracepoints);
            MultiUprobePrograms::load(&ebpf, OBJECT, &names, session)
        });
        let uprobes = match multi {
            Ok(multi) => Uprobes::MultiLink(multi),
            Err(err) => {
                log::info!("multi-uprobe links are not available, one perf event per probe: {err}");
                Uprobes::PerfEvent
            }
        };
        let (mut maps, rings) = KernelMaps::take(&mut ebpf)?;
        if pidns_ino == 0 {
            // leakhound sees root-namespace PIDs: the OOM program needs nothing more to know
            // its victim (in a PID namespace of its own, it learns the target's).
            maps.lifecycle
                .set(lifecycle::TARGET_ROOT_TGID, u64::from(tgid), 0)
                .map_err(|source| TracerError::Map {
                    map: "LIFECYCLE",
                    source: Box::new(source),
                })?;
        }
        let kernel_log = if log_level == 0 {
            None
        } else {
            EbpfLogger::init(&mut ebpf)
                .inspect_err(|err| log::warn!("the kernel side's log is not available: {err}"))
                .ok()
        };
        let mut probes = Self {
            ebpf,
            maps,
            rings: Some(rings),
            kernel_log,
            uprobes_attached: 0,
            multi_uprobe_links: 0,
            tracepoints_attached: 0,
            mapping_unavailable: None,
            placed: Vec::new(),
            uprobes,
            tgid,
            faults,
            links: Vec::new(),
            syscall_tracepoints,
        };
        if let Uprobes::PerfEvent = probes.uprobes {
            probes.load_perf_programs()?;
        }
        Ok(probes)
    }

    /// The ring buffers, for the readers that wait on them; once.
    pub fn take_rings(&mut self) -> Option<Rings> {
        self.rings.take()
    }

    /// Loads the uprobe programs that aya attaches, one perf event per probe.
    fn load_perf_programs(&mut self) -> Result<(), TracerError> {
        for name in attach::uprobe_programs(self.syscall_tracepoints) {
            let program: &mut UProbe = program(&mut self.ebpf, name)?;
            program
                .load()
                .map_err(|source| verifier_error(name, source))?;
        }
        Ok(())
    }

    /// Attaches the allocator hooks in `library` (a path this process can open, such as one
    /// under `/proc/PID/root`) for the traced process.
    pub fn attach_allocator(
        &mut self,
        library: &Path,
        points: &[HookPoint],
    ) -> Result<(), TracerError> {
        self.attach_table(&attach::uprobe_table(library, points, self.sessions()))
    }

    /// Whether allocation functions are attached as uprobe sessions (Linux 6.12+, with byte
    /// sampling): a call that sampling passes over then has no return trap.
    pub fn sessions(&self) -> bool {
        matches!(&self.uprobes, Uprobes::MultiLink(multi) if multi.has(attach::ALLOC_SESSION))
    }

    /// Attaches `points` in `library` for the process `pid`, runs `measure`, and detaches
    /// them again (on a thread of their own, as at exit: the kernel's grace periods are not
    /// waited for here). For probes that leakhound places on itself (kernel::probe_cost).
    pub fn with_temporary_hooks<T>(
        &mut self,
        library: &Path,
        points: &[HookPoint],
        pid: u32,
        measure: impl FnOnce() -> T,
    ) -> Result<T, TracerError> {
        let before = (
            self.links.len(),
            self.uprobes_attached,
            self.multi_uprobe_links,
            self.placed.len(),
        );
        // Scoped to `pid`, and out of reach of the faults injected into the target's attach.
        let tgid = std::mem::replace(&mut self.tgid, pid);
        let faults = std::mem::take(&mut self.faults);
        let attached = self.attach_allocator(library, points);
        (self.tgid, self.faults) = (tgid, faults);
        let measured = attached.map(|()| measure());
        let temporary = self.links.split_off(before.0);
        (self.uprobes_attached, self.multi_uprobe_links) = (before.1, before.2);
        self.placed.truncate(before.3);
        let spawned = std::thread::Builder::new()
            .name("detach".into())
            .spawn(move || drop(temporary));
        // Without a thread, the links were dropped (so detached) by the failed spawn.
        drop(spawned);
        measured
    }

    /// Attaches the tracepoints: the target's exec and its threads' exits, and with
    /// `syscalls` the mapping syscalls. Without tracefs none is available: an exec is not
    /// noticed, and where the syscalls were to be seen there, mapping tracking is off and the
    /// report says so; malloc tracking depends on neither.
    pub fn attach_tracepoints(&mut self) -> Result<(), TracerError> {
        let syscalls = self.syscall_tracepoints;
        let rows: Vec<Attachment<'static>> = if syscalls {
            attach::SYSCALL_TRACEPOINTS
                .iter()
                .chain(&attach::TRACEPOINTS)
                .copied()
                .collect()
        } else {
            attach::TRACEPOINTS.to_vec()
        };
        match tracefs::with_tracefs(|| {
            self.attach_table(&rows)
                .and_then(|()| self.attach_oom_notice())
        }) {
            Ok(attached) => attached,
            Err(why) if syscalls => {
                log::warn!(
                    "anonymous mmap tracking is off, and an exec will not be noticed: {why}"
                );
                self.mapping_unavailable = Some(why);
                Ok(())
            }
            Err(why) => {
                log::warn!("an exec will not be noticed: {why}");
                Ok(())
            }
        }
    }

    /// Places every row of `table`: the one attach path. Each link goes into `self.links` as
    /// soon as it exists, so whatever way this returns, dropping `self` detaches it all.
    fn attach_table(&mut self, table: &[Attachment<'_>]) -> Result<(), TracerError> {
        if let Uprobes::MultiLink(_) = self.uprobes {
            match self.attach_multi(table)? {
                Ok(()) => {
                    return self.attach_rows(table, |site| matches!(site, Site::Tracepoint { .. }));
                }
                Err(err) => {
                    log::info!(
                        "multi-uprobe links refused ({err}); one perf event per probe from now on"
                    );
                    self.uprobes = Uprobes::PerfEvent;
                    self.load_perf_programs()?;
                }
            }
        }
        self.attach_rows(&attach::without_sessions(table), |_| true)
    }

    /// Places the rows whose site `wanted` picks, one link each.
    fn attach_rows(
        &mut self,
        table: &[Attachment<'_>],
        wanted: impl Fn(&Site<'_>) -> bool,
    ) -> Result<(), TracerError> {
        for row in table.iter().filter(|row| wanted(&row.site)) {
            self.faults.check(self.uprobes_attached, || {
                format!("{} ({})", row.what, row.program)
            })?;
            let (link, mechanism) = match row.site {
                Site::Uprobe {
                    library, offset, ..
                } => {
                    let scope = UProbeScope::OneProcess(
                        NonZeroU32::new(self.tgid)
                            .ok_or(TracerError::NoSuchProcess { pid: self.tgid })?,
                    );
                    let program: &mut UProbe = program(&mut self.ebpf, row.program)?;
                    let location = UProbeAttachPoint {
                        location: UProbeAttachLocation::AbsoluteOffset(offset),
                        cookie: Some(row.cookie),
                    };
                    let link = program
                        .attach(location, library, scope)
                        .and_then(|id| program.take_link(id))
                        .map_err(|source| {
                            attach_error(
                                format!("{} in {}", row.what, library.display()),
                                source,
                                self.tgid,
                            )
                        })?;
                    self.uprobes_attached += 1;
                    (Box::new(link) as AttachedLink, Mechanism::PerfEvent)
                }
                Site::Tracepoint { category, event } => {
                    let program: &mut TracePoint = program(&mut self.ebpf, row.program)?;
                    let link = program
                        .attach(category, event)
                        .and_then(|id| program.take_link(id))
                        .map_err(|source| TracerError::Attach {
                            what: format!("tracepoint {category}/{event}"),
                            source: Box::new(source),
                        })?;
                    self.tracepoints_attached += 1;
                    (Box::new(link) as AttachedLink, Mechanism::Tracepoint)
                }
            };
            self.links.push(link);
            self.placed.push(Placed::new(row, mechanism));
        }
        Ok(())
    }

    /// Attaches the OOM killer's tracepoint, which a kernel may lack: without it the trace
    /// goes on, and the report cannot say that an OOM kill ended it.
    fn attach_oom_notice(&mut self) -> Result<(), TracerError> {
        let row = &attach::OOM_TRACEPOINT;
        let Site::Tracepoint { category, event } = row.site else {
            return Ok(());
        };
        let program: &mut TracePoint = program(&mut self.ebpf, row.program)?;
        match program
            .attach(category, event)
            .and_then(|id| program.take_link(id))
        {
            Ok(link) => {
                self.links.push(Box::new(link));
                self.tracepoints_attached += 1;
                self.placed.push(Placed::new(row, Mechanism::Tracepoint));
            }
            Err(err) => log::info!("an OOM kill of the target will not be noticed: {err}"),
        }
        Ok(())
    }

    /// Places the uprobe rows of `table` with one multi-uprobe link per program, library and
    /// flavor. A kernel refusal (the inner error) leaves none of this table's links attached,
    /// and the caller attaches through perf events instead.
    fn attach_multi(
        &mut self,
        table: &[Attachment<'_>],
    ) -> Result<Result<(), std::io::Error>, TracerError> {
        let Uprobes::MultiLink(multi) = &self.uprobes else {
            return Ok(Err(std::io::Error::other("not loaded")));
        };
        let mut links: Vec<AttachedLink> = Vec::new();
        let mut placed = Vec::new();
        let mut attached = self.uprobes_attached;
        for group in attach::uprobe_groups(table) {
            let what = || format!("{} in {}", group.program, group.library.display());
            if let Err(err) = self.faults.check(attached, what) {
                // Links made so far are kept, as a real failure part-way would leave them.
                self.multi_uprobe_links += links.len();
                self.links.extend(links);
                self.uprobes_attached = attached;
                return Err(err);
            }
            match multi.attach(&group, self.tgid) {
                Ok(link) => {
                    links.push(Box::new(link));
                    attached += group.offsets.len();
                    placed.extend(
                        table
                            .iter()
                            .filter(|row| group.holds(row))
                            .map(|row| Placed::new(row, Mechanism::MultiUprobeLink)),
                    );
                }
                Err(err) => {
                    if !Path::new(&format!("/proc/{}", self.tgid)).exists() {
                        return Err(TracerError::ProcessExited { pid: self.tgid });
                    }
                    // Dropping `links` detaches what this table got so far.
                    return Ok(Err(err));
                }
            }
        }
        self.multi_uprobe_links += links.len();
        self.links.extend(links);
        self.placed.extend(placed);
        self.uprobes_attached = attached;
        Ok(Ok(()))
    }
}

/// Fills the kernel's table of sampling probabilities (see tracer_common::sampling).
fn write_sample_curve(ebpf: &mut Ebpf) -> Result<(), TracerError> {
    let map_error = |source| TracerError::Map {
        map: "SAMPLE_CURVE",
        source: Box::new(source),
    };
    let map = ebpf.map_mut("SAMPLE_CURVE").ok_or_else(|| {
        map_error(MapError::InvalidName {
            name: "SAMPLE_CURVE".into(),
        })
    })?;
    let mut curve: Array<_, u32> = Array::try_from(map).map_err(map_error)?;
    for step in 0..sampling::CURVE_LEN {
        curve
            .set(step, sampling::curve_point(step), 0)
            .map_err(map_error)?;
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, TracerError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| {
        TracerError::Load(Box::new(aya::EbpfError::ProgramError(
            ProgramError::NotLoaded,
        )))
    })?;
    program.try_into().map_err(|source| TracerError::Attach {
        what: name.into(),
        source: Box::new(source),
    })
}

fn verifier_error(program: &str, source: ProgramError) -> TracerError {
    // The verifier answers EACCES for many rejections too: its log tells them apart.
    if let ProgramError::LoadError { verifier_log, .. } = &source {
        log::debug!("verifier log of {program}:\n{verifier_log}");
    }
    if TracerError::is_permission(&source) {
        return TracerError::PermissionDenied {
            what: format!("the kernel refused to load program {program}"),
        };
    }
    let verifier_log = match &source {
        ProgramError::LoadError { verifier_log, .. } => verifier_log.to_string(),
        _ => String::new(),
    };
    TracerError::Verifier {
        program: program.into(),
        source: Box::new(source),
        verifier_log,
    }
}

fn attach_error(what: String, source: ProgramError, pid: u32) -> TracerError {
    if TracerError::is_permission(&source) {
        return TracerError::PermissionDenied {
            what: format!("cannot attach {what}"),
        };
    }
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        return TracerError::ProcessExited { pid };
    }
    TracerError::Attach {
        what,
        source: Box::new(source),
    }
}

/// The inode number of the initial PID namespace (PROC_PID_INIT_INO in the kernel).
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// Leakhound's own PID namespace as the kernel's `bpf_get_ns_current_pid_tgid` wants it
/// (a kernel-encoded device number and an inode), or zeros in the initial namespace, where
/// the plain tgid is already the right one and the cheaper check is used.
fn own_pid_namespace() -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata("/proc/self/ns/pid") else {
        return (0, 0);
    };
    if meta.ino() == INITIAL_PID_NAMESPACE {
        return (0, 0);
    }
    // The kernel compares against its internal dev_t: major << 20 | minor.
    let dev = meta.dev();
    let kernel_dev = (u64::from(libc::major(dev)) << 20) | u64::from(libc::minor(dev));
    log::debug!(
        "in a non-initial PID namespace (inode {}); filtering by it",
        meta.ino()
    );
    (kernel_dev, meta.ino())
}

/// Kernels since 5.11 charge BPF memory to the memory cgroup and ignore RLIMIT_MEMLOCK. On
/// older ones a low limit makes map creation fail, so raise it when allowed; where it cannot
/// be raised (a missing capability) the load may still work, so this is never fatal.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How long loading and attaching took, for the attach line and the benchmark.
/// aya-log's level for the kernel programs: all of it when `leakhound::kernel` logs at debug
/// (`--log-kernel`, or `RUST_LOG=leakhound::kernel=debug`), else 0, which turns every log site
/// in the kernel into a load and a branch.
fn kernel_log_level() -> u8 {
    if log::log_enabled!(target: "leakhound::kernel", log::Level::Debug) {
        aya_log::Level::Trace as u8
    } else {
        0
    }
}

pub fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_table_and_the_map_together_hold_max_allocs() {
        for max_allocs in [4096, 100_000, 131_072, 1 << 20, u32::MAX] {
            let table = BlockTable::for_max_allocs(max_allocs);
            assert_eq!(
                table.slots() + table.map_entries,
                max_allocs,
                "{max_allocs}"
            );
            assert!(table.slots().is_power_of_two());
            assert!(table.slots() <= max_allocs / 16, "{max_allocs}");
            assert!((1..=31).contains(&table.slot_bits));
        }
        assert_eq!(BlockTable::for_max_allocs(1 << 20).slots(), 65_536);
        assert_eq!(BlockTable::for_max_allocs(131_072).slots(), 8_192);
        // A small maximum is the map alone: what it holds is exactly what the user gave.
        let small = BlockTable::for_max_allocs(16);
        assert_eq!(
            (small.slot_bits, small.map_entries, small.slots()),
            (0, 16, 1)
        );
    }

    #[test]
    fn every_stack_and_lost_stack_have_totals_and_threads_have_slots() {
        for (max_stacks, max_threads) in [
            (1, 1),
            (16_384, 16_384),
            (1 << 17, 1000),
            (u32::MAX, u32::MAX),
        ] {
            let sizes = MapSizes {
                max_stacks,
                max_threads,
                ..MapSizes::default()
            };
            let maps = IndexedMaps::for_sizes(&sizes);
            // The index map holds every stack the stack map can and LOST_STACK; the array
            // has room for all of them and for entries lost to races.
            assert_eq!(maps.stack_index, max_stacks.saturating_add(1));
            assert!(maps.totals_slots >= maps.stack_index.saturating_add(64));
            let slots = 1u64 << maps.thread_slot_bits;
            assert!(
                slots <= u64::from(max_threads.max(2)) && (1..=24).contains(&maps.thread_slot_bits)
            );
        }
        assert_eq!(
            IndexedMaps::for_sizes(&MapSizes::default()).thread_slot_bits,
            14
        );
    }
}
