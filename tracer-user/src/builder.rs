//! Turns what a trace gathered into a [`Recording`]: pure, so that it is tested without root
//! and a recorded session can be replayed through the same code.
//!
//! The session shell reads the kernel ([`KernelSnapshot`], the stacks), keeps the mappings
//! ([`MappingTracker`]), the repairs ([`RepairLedger`]) and the timeline, and hands the namer
//! in as a function. Everything here is plain data in, plain data out.

use std::collections::{HashMap, HashSet};

use tracer_common::{StackTotals, Truncation};

use crate::{
    analysis::{
        age::{self, Live},
        history::{Timeline, add_series},
    },
    kernel::snapshot::{KernelSnapshot, RawStack},
    mapping_tracker::MappingTracker,
    model::{ExecEnd, Frame, Origin, ProcessMemory, RECORDING_VERSION, Recording, StackRecord},
    regions::Held,
    symbolize::CodeAddress,
    unwind::ledger::RepairLedger,
};

/// A stack in the report before it is named: its origin, key and totals.
pub type StackEntry = (Origin, u64, StackTotals);

/// Per (origin, stack key): ages and what is old enough.
type Ages = age::Ages<(Origin, u64)>;

/// What the builder needs besides the kernel's data.
#[derive(Debug, Default)]
pub struct Trace {
    pub pid: u32,
    pub command: String,
    pub ended_by: String,
    pub traced_secs: f64,
    pub min_age_ns: Option<u64>,
    pub sample_bytes: Option<u64>,
    pub mapping_unavailable: Option<String>,
}

/// The end of a trace, gathered: the kernel's snapshot with repairs applied, the mappings, and
/// the timeline with its last sample.
pub struct Gathered {
    pub snapshot: KernelSnapshot,
    pub mappings: MappingTracker,
    pub timeline: Timeline<(Origin, u64)>,
    pub exec: Option<ExecEnd>,
}

impl Gathered {
    /// Applies the repairs, releases what an exec released (`exec_program`), and takes the
    /// last sample (`memory` at `secs`).
    pub fn new(
        mut snapshot: KernelSnapshot,
        mut mappings: MappingTracker,
        ledger: &RepairLedger,
        mut timeline: Timeline<(Origin, u64)>,
        exec_program: Option<String>,
        last_sample: (f64, Option<ProcessMemory>),
    ) -> Self {
        if let Ok(live) = &mut snapshot.live {
            ledger.apply_to_allocations(&mut snapshot.totals, live);
        }
        ledger.apply_to_mappings(&mut mappings);
        let exec = exec_program.map(|program| {
            let (released_allocations, released_bytes) =
                release_by_exec(&mut snapshot, &mut mappings);
            ExecEnd {
                program,
                released_allocations,
                released_bytes,
            }
        });
        let held = mappings.held_by_stack();
        let (secs, memory) = last_sample;
        timeline.push(secs, memory, sample_values(&snapshot.totals, &held));
        Self {
            snapshot,
            mappings,
            timeline,
            exec,
        }
    }

    /// Every stack the report lists, malloc family and mappings, unnamed: the shell reads the
    /// frames of these keys.
    pub fn stacks(&self) -> Vec<StackEntry> {
        let mut raw: Vec<StackEntry> = self
            .snapshot
            .totals
            .iter()
            .filter(|(_, t)| live(t.live_bytes) > 0 || t.total_bytes > 0)
            .map(|(key, t)| (Origin::Malloc, *key, *t))
            .chain(
                self.mappings
                    .totals()
                    .map(|(key, t)| (Origin::Mmap, key, t)),
            )
            .collect();
        // A stack seen in a sample always has a total now (totals are never deleted), but a
        // stack whose mappings were all unmapped may be missing after a lost event.
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
        // Deterministic order for everything downstream; the reports rank again.
        raw.sort_unstable_by_key(|(origin, key, _)| (*origin, *key));
        raw
    }

    /// Ages of every live allocation and mapping. Per key: the histogram, and the bytes and
    /// allocations old enough.
    fn ages(&self, min_age_ns: Option<u64>) -> Result<Ages, String> {
        let allocs = self
            .snapshot
            .live
            .as_ref()
            .map_err(|err| format!("the allocation map could not be read: {err}"))?;
        let malloc = allocs.iter().map(|(_, info)| Live {
            key: (Origin::Malloc, info.stack_key),
            bytes: info.weight_bytes,
            count: info.weight_count,
            // An unbiased estimate of its share of the variance: w(w - size) for weight w.
            variance: info.weight_bytes as f64 * info.weight_bytes.saturating_sub(info.size) as f64,
            made_ns: info.timestamp_ns,
        });
        let mmap = self
            .mappings
            .live()
            .map(|(stack_key, bytes, made_ns)| Live {
                key: (Origin::Mmap, stack_key),
                bytes,
                count: 1,
                variance: 0.0,
                made_ns,
            });
        Ok(age::ages(
            malloc.chain(mmap),
            self.snapshot.now_ns,
            min_age_ns.unwrap_or(0),
        ))
    }

    /// The recording. `frames` reads a stack's stored walk (by key) and `name` turns its code
    /// addresses into frames, root first.
    pub fn build(
        self,
        trace: Trace,
        frames: &HashMap<u64, RawStack>,
        mut name: impl FnMut(&[CodeAddress]) -> Vec<Frame>,
    ) -> Recording {
        let (ages, ages_unavailable) = match self.ages(trace.min_age_ns) {
            Ok(ages) => (Some(ages), None),
            Err(why) => (None, Some(why)),
        };
        let stacks = self
            .stacks()
            .into_iter()
            .map(|(origin, key, t)| {
                let mut stack = StackRecord {
                    origin,
                    frames: stack_frames(frames.get(&key), &mut name),
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
                    if trace.min_age_ns.is_some() {
                        let (bytes, count) = ages
                            .old_enough
                            .get(&(origin, key))
                            .copied()
                            .unwrap_or_default();
                        stack.live_bytes = bytes;
                        stack.live_allocations = count;
                    }
                    if trace.sample_bytes.is_some() && origin == Origin::Malloc {
                        stack.live_bytes_variance =
                            Some(ages.variance.get(&(origin, key)).copied().unwrap_or(0.0));
                    }
                }
                stack
            })
            .collect();
        Recording {
            version: RECORDING_VERSION,
            pid: trace.pid,
            command: trace.command,
            duration_secs: trace.traced_secs,
            ended_by: trace.ended_by,
            counters: self.snapshot.counters,
            mapping: self.mappings.counters(),
            mapping_unavailable: trace.mapping_unavailable,
            samples: self.timeline.samples().to_vec(),
            // Without ages there is nothing to filter by: say so rather than pretend.
            min_age_secs: trace
                .min_age_ns
                .filter(|_| ages.is_some())
                .map(|ns| ns as f64 / 1e9),
            ages_unavailable,
            sample_bytes: trace.sample_bytes,
            exec: self.exec,
            stacks: merge_equal_stacks(stacks),
            // The session adds the split once the stacks are named.
            regions: None,
            java_heap_histogram: None,
        }
    }
}

/// The frames of one stack, root first, with a marker where the walk stopped short, so the
/// bytes stay visible.
pub fn stack_frames(
    raw: Option<&RawStack>,
    name: &mut impl FnMut(&[CodeAddress]) -> Vec<Frame>,
) -> Vec<Frame> {
    let Some(raw) = raw.filter(|raw| !raw.ips.is_empty()) else {
        return vec![Frame::named("[lost stack]")];
    };
    // Every frame of a user stack taken at a return or a syscall exit is a return address
    // (the syscall's is where execution resumes).
    let addrs: Vec<CodeAddress> = raw
        .ips
        .iter()
        .map(|ip| CodeAddress::of_stack_word(*ip))
        .collect();
    let mut frames = name(&addrs);
    match raw.truncation {
        Truncation::Pending => frames.insert(0, Frame::named(crate::model::UNWIND_PENDING)),
        Truncation::DepthLimit => frames.insert(0, Frame::named("[truncated]")),
        Truncation::Complete => {}
    }
    frames
}

/// Empties every stack at an exec, which released everything the old program held: its
/// blocks (the kernel recorded nothing after the exec, so every live one is the old
/// program's) and its mappings. Returns the allocations and bytes released.
fn release_by_exec(snapshot: &mut KernelSnapshot, mappings: &mut MappingTracker) -> (u64, u64) {
    let (mut allocations, mut bytes) = mappings.release_all();
    for t in snapshot.totals.values_mut() {
        allocations += live(t.live_allocations);
        bytes += live(t.live_bytes);
        t.live_allocations = 0;
        t.live_bytes = 0;
    }
    if let Ok(allocs) = &mut snapshot.live {
        allocs.clear();
    }
    (allocations, bytes)
}

/// Stacks that differ only in addresses (two call sites on one line, or garbage cut from a
/// frame-pointer walk) read the same to a person, so they are one stack in every report.
pub fn merge_equal_stacks(stacks: Vec<StackRecord>) -> Vec<StackRecord> {
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

/// Outstanding bytes per stack at this moment: malloc totals from the kernel, mappings from
/// the regions user space keeps.
pub fn sample_values<'a>(
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
pub fn live(value: u64) -> u64 {
    (value as i64).max(0) as u64
}

#[cfg(test)]
mod tests {
    use tracer_common::{AllocInfo, LOST_STACK, MapEvent, MapEventKind};

    use super::*;
    use crate::{model::AgeHistogram, unwind::ledger::Repair};

    const SEC: u64 = 1_000_000_000;

    fn totals(live_bytes: u64, live_allocations: u64) -> StackTotals {
        StackTotals {
            live_bytes,
            live_allocations,
            total_bytes: live_bytes * 2,
            total_allocations: live_allocations * 2,
        }
    }

    fn block(stack_key: u64, size: u64, made_ns: u64) -> AllocInfo {
        AllocInfo {
            size,
            timestamp_ns: made_ns,
            stack_key,
            weight_bytes: size,
            weight_count: 1,
            ..AllocInfo::default()
        }
    }

    fn mapped(addr: u64, len: u64, stack_key: u64, made_ns: u64) -> Vec<u8> {
        let event = MapEvent {
            kind: MapEventKind::Map as u32,
            // PROT_READ | PROT_WRITE: memory, not a reservation.
            prot: 3,
            addr,
            len,
            stack_key,
            timestamp_ns: made_ns,
            ..MapEvent::default()
        };
        // SAFETY: MapEvent is plain old data; the slice covers exactly one value.
        unsafe {
            std::slice::from_raw_parts((&raw const event).cast::<u8>(), size_of::<MapEvent>())
        }
        .to_vec()
    }

    fn stack(ips: &[u64], truncation: Truncation) -> RawStack {
        RawStack {
            ips: ips.to_vec(),
            truncation,
        }
    }

    /// Names a return address `f<addr - 1>`, as a namer looks it up; root first.
    fn name(addrs: &[CodeAddress]) -> Vec<Frame> {
        addrs
            .iter()
            .rev()
            .map(|addr| Frame::named(format!("f{:x}", addr.lookup_address().unwrap_or(0))))
            .collect()
    }

    /// A trace's end with one of everything: a complete stack, a pending one with one block
    /// repaired to its whole stack, a lost one, a mapping, and blocks of several ages.
    fn gathered(exec: Option<&str>) -> (Gathered, HashMap<u64, RawStack>) {
        let now = 1000 * SEC;
        let snapshot = KernelSnapshot {
            totals: HashMap::from([
                (1, totals(300, 3)),
                (2, totals(128, 2)),
                (LOST_STACK, totals(64, 1)),
                // Everything freed: listed for what it allocated.
                (
                    9,
                    StackTotals {
                        total_bytes: 4096,
                        total_allocations: 1,
                        ..StackTotals::default()
                    },
                ),
            ]),
            live: Ok(vec![
                (0x1000, block(1, 100, now - 2 * SEC)),
                (0x2000, block(1, 100, now - 30 * SEC)),
                (0x3000, block(1, 100, now - 700 * SEC)),
                (0xa000, block(2, 64, now - SEC / 2)),
                (0xb000, block(2, 64, now - SEC / 2)),
                (0xc000, block(LOST_STACK, 64, now - 5 * SEC)),
            ]),
            counters: crate::model::KernelCounters {
                allocations: 10,
                frees: 3,
                ..Default::default()
            },
            now_ns: now,
        };
        let mut mappings = MappingTracker::default();
        mappings.consume(&mapped(0x7000_0000, 3 * 4096, 5, now - 20 * SEC));
        let mut ledger = RepairLedger::default();
        ledger.record(
            0xa000,
            Repair {
                partial: 2,
                whole: 4,
            },
        );
        let mut timeline = Timeline::default();
        timeline.push(1.0, None, [((Origin::Malloc, 1), 100)]);
        let gathered = Gathered::new(
            snapshot,
            mappings,
            &ledger,
            timeline,
            exec.map(str::to_owned),
            (
                2.0,
                Some(ProcessMemory {
                    rss_bytes: 1 << 20,
                    anon_bytes: 1 << 19,
                    cgroup: None,
                }),
            ),
        );
        let frames = HashMap::from([
            (1, stack(&[0x1011, 0x2021, 0x3031], Truncation::Complete)),
            (2, stack(&[0x1011], Truncation::Pending)),
            (4, stack(&[0x1011, 0x4041, 0x3031], Truncation::Complete)),
            (5, stack(&[0x5051, 0x3031], Truncation::DepthLimit)),
            (9, stack(&[0x9091, 0x3031], Truncation::Complete)),
        ]);
        (gathered, frames)
    }

    fn trace(min_age_ns: Option<u64>) -> Trace {
        Trace {
            pid: 42,
            command: "leaky --serve".into(),
            ended_by: "SIGINT".into(),
            traced_secs: 2.0,
            min_age_ns,
            sample_bytes: None,
            mapping_unavailable: None,
        }
    }

    fn find<'a>(recording: &'a Recording, leaf: &str) -> &'a StackRecord {
        recording
            .stacks
            .iter()
            .find(|s| s.frames.last().is_some_and(|f| f.name == leaf))
            .unwrap_or_else(|| panic!("no stack ends at {leaf}: {:#?}", recording.stacks))
    }

    fn find_path<'a>(recording: &'a Recording, path: &[&str]) -> &'a StackRecord {
        recording
            .stacks
            .iter()
            .find(|s| {
                s.frames
                    .iter()
                    .map(|f| f.name.as_str())
                    .eq(path.iter().copied())
            })
            .unwrap_or_else(|| panic!("no stack {path:?}: {:#?}", recording.stacks))
    }

    #[test]
    fn a_snapshot_becomes_the_golden_recording() {
        let (gathered, frames) = gathered(None);
        let recording = gathered.build(trace(None), &frames, name);
        let json = serde_json::to_string_pretty(&recording).expect("serializes") + "\n";
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/golden/built_from_snapshot.leakhound.json");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &json).expect("golden written");
        }
        let expected = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
        assert_eq!(
            expected,
            json,
            "the built recording differs from {}",
            path.display()
        );
    }

    #[test]
    fn repairs_markers_and_lost_stacks_keep_every_byte() {
        let (gathered, frames) = gathered(None);
        let recording = gathered.build(trace(None), &frames, name);
        let live: u64 = recording.stacks.iter().map(|s| s.live_bytes).sum();
        assert_eq!(live, 300 + 128 + 64 + 3 * 4096, "nothing dropped");
        // The repaired block moved to its whole stack; the other stays under the partial one,
        // which says where its walk stopped.
        let whole = find_path(&recording, &["f3030", "f4040", "f1010"]);
        let pending = find_path(&recording, &["[unwind pending]", "f1010"]);
        assert_eq!((whole.live_bytes, pending.live_bytes), (64, 64));
        assert_eq!(whole.total_bytes + pending.total_bytes, 256);
        // What stays under the partial stack is a loss the reports list.
        assert_eq!(recording.unwind_pending(), (pending.live_allocations, 64));
        assert_eq!(find(&recording, "[lost stack]").live_bytes, 64);
        let mapping = find_path(&recording, &["[truncated]", "f3030", "f5050"]);
        assert_eq!(
            (mapping.origin, mapping.live_bytes),
            (Origin::Mmap, 3 * 4096)
        );
        let freed = find(&recording, "f9090");
        assert_eq!((freed.live_bytes, freed.total_bytes), (0, 4096));
        // Ages: stack 1 holds blocks 2 s, 30 s and 700 s old.
        let first = find_path(&recording, &["f3030", "f2020", "f1010"]);
        let ages = first.ages.expect("ages");
        assert_eq!(ages.allocations, [0, 1, 1, 0, 1]);
        assert_eq!(recording.samples.len(), 2);
        assert_eq!(first.history, [100, 300]);
    }

    #[test]
    fn min_age_counts_only_old_enough_blocks() {
        let (gathered, frames) = gathered(None);
        let recording = gathered.build(trace(Some(10 * SEC)), &frames, name);
        let stack = find_path(&recording, &["f3030", "f2020", "f1010"]);
        // Of stack 1's blocks, the 30 s and 700 s old ones count.
        assert_eq!((stack.live_bytes, stack.live_allocations), (200, 2));
        assert_eq!(recording.min_age_secs, Some(10.0));
        // The mapping is 980 s old.
        let mapping = find_path(&recording, &["[truncated]", "f3030", "f5050"]);
        assert_eq!(mapping.live_bytes, 3 * 4096);
    }

    #[test]
    fn an_exec_releases_everything_the_old_program_held() {
        let (gathered, frames) = gathered(Some("/bin/true"));
        let recording = gathered.build(trace(None), &frames, name);
        let exec = recording.exec.clone().expect("exec recorded");
        assert_eq!(exec.released_bytes, 300 + 128 + 64 + 3 * 4096);
        assert_eq!(exec.released_allocations, 3 + 2 + 1 + 1);
        assert!(recording.stacks.iter().all(|s| s.live_bytes == 0));
    }

    #[test]
    fn unreadable_allocations_leave_ages_out_and_say_why() {
        let (mut gathered, frames) = gathered(None);
        gathered.snapshot.live = Err("EPERM".into());
        let recording = gathered.build(trace(Some(SEC)), &frames, name);
        assert!(
            recording
                .ages_unavailable
                .as_deref()
                .is_some_and(|why| why.contains("EPERM"))
        );
        assert_eq!(recording.min_age_secs, None, "no filter without ages");
    }

    #[test]
    fn merged_stacks_add_their_histories_and_ages_pointwise() {
        let stack = |bytes: u64, history: Vec<u64>, ages: Option<AgeHistogram>| StackRecord {
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
        let ages = AgeHistogram {
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
}
