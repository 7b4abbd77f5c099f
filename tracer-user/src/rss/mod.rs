//! Where the RSS goes: the target's resident memory split by what owns it.
//!
//! At every sample leakhound reads `/proc/PID/smaps` ([`smaps`]) and gives each mapping, or
//! each part of one, to an owner ([`split`]): a range a runtime's own structures claim
//! ([`owners`]: glibc's arenas, HotSpot's Java heap and code heaps), else the traced stack
//! that mapped or committed it (named at the end, which gives its [`kind`]: V8's heap, Go's,
//! thread stacks, metaspace, or the program's own), else a kind read off the mapping itself
//! (files, the brk heap, a guarded thread stack), else `other`: not explained.

pub mod kind;
pub mod owners;
pub mod smaps;
pub mod split;
pub mod text;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::{
    analysis::{
        history::Timeline,
        trend::{TrendClass, trend},
    },
    go_heap::{
        self,
        arenas::{self, ArenaIndex},
    },
    jit::hotspot::{HotspotVm, ProcessMemory as TargetMemory},
    model::{Frame, ProcessMemory},
    process::TargetProcess,
    stats::SampleCost,
};

pub use kind::RegionKind;
use owners::OwnedRange;
use split::{RegionKey, Usage};

/// One kind (and label) of memory at the end of the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionRow {
    pub kind: RegionKind,
    /// Which part of the kind: `brk heap`, `Java heap`, the function that committed it.
    pub label: String,
    pub mapped_bytes: u64,
    pub resident_bytes: u64,
    pub anon_bytes: u64,
    /// Resident bytes at the last sample minus the first (of the samples taken while the
    /// target lived).
    pub growth_resident_bytes: i64,
    /// Mapped bytes, the same way: memory committed during the trace, rather than pages of
    /// memory committed before being touched.
    #[serde(default)]
    pub growth_mapped_bytes: i64,
    pub trend: TrendClass,
}

/// The RSS split of a recording.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RegionSplit {
    /// When the last split was read (seconds since attach).
    pub at_secs: f64,
    /// The resident bytes of every mapping read (the RSS, as smaps adds it up).
    pub rss_bytes: u64,
    /// Resident growth from the first split to the last.
    pub growth_rss_bytes: i64,
    /// Share of `rss_bytes` in named kinds (all but `other`).
    pub explained_share: f64,
    /// Largest resident first.
    #[serde(deserialize_with = "crate::model::bounded::at_most::<_, _, MAX_ROWS>")]
    pub regions: Vec<RegionRow>,
    /// The smaps file was longer than leakhound reads: mappings past it are left out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub smaps_cut: bool,
}

/// Rows in a saved recording, at most: one per kind and label, and tracked-anonymous rows
/// are one per function that committed memory.
pub const MAX_ROWS: usize = 4096;
/// Rows of tracked anonymous memory kept by name; the rest are summed into one.
const MAX_TRACKED_ROWS: usize = 64;

/// A reader of the target's runtime structures, opened at the first sample that needs one.
enum Lazy<T> {
    NotTried,
    Read(T),
    /// Not this runtime, or its structures cannot be read: not tried again.
    Unavailable,
}

impl<T> Lazy<T> {
    /// The reader, opened by `open` the first time (`Ok(None)`: not this runtime).
    fn get(
        &mut self,
        what: &str,
        open: impl FnOnce() -> Result<Option<T>, String>,
    ) -> Option<&mut T> {
        if let Lazy::NotTried = self {
            *self = match open() {
                Ok(Some(reader)) => Lazy::Read(reader),
                Ok(None) => Lazy::Unavailable,
                Err(err) => {
                    log::debug!("rss split: no {what} ranges: {err}");
                    Lazy::Unavailable
                }
            };
        }
        match self {
            Lazy::Read(reader) => Some(reader),
            _ => None,
        }
    }
}

/// Reads the split at every sample, keeping the same samples as the stacks' timeline.
pub struct RssSampler {
    pid: u32,
    /// Resident bytes per owner at every sample.
    timeline: Timeline<RegionKey>,
    /// Mapped bytes per owner at the first and the last sample read.
    first: Option<(f64, HashMap<RegionKey, Usage>)>,
    last: Option<(f64, HashMap<RegionKey, Usage>)>,
    /// The VM, and its class space (read once: it does not move).
    hotspot: Lazy<(Box<HotspotVm<TargetMemory>>, Option<OwnedRange>)>,
    go: Lazy<ArenaIndex>,
    /// Whether V8's pages are looked for: until a first look finds none (not a V8 process,
    /// or one launched before V8 started, whose every page is then traced as it is mapped).
    v8: bool,
    cut: bool,
    /// Reads of the split: how many, their total time and the longest.
    reads: (usize, std::time::Duration, std::time::Duration),
}

impl RssSampler {
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            timeline: Timeline::default(),
            first: None,
            last: None,
            hotspot: Lazy::NotTried,
            go: Lazy::NotTried,
            v8: true,
            cut: false,
            reads: Default::default(),
        }
    }

    /// One sample, taken when the stacks' timeline takes one (`always`: the last sample, kept
    /// whatever the stride). `tracked`: the traced regions as (start, end, stack key).
    pub fn sample(
        &mut self,
        secs: f64,
        memory: Option<ProcessMemory>,
        tracked: &[(u64, u64, u64)],
        always: bool,
    ) {
        let started = std::time::Instant::now();
        let usage = self.read(tracked);
        let took = started.elapsed();
        // Only reads of a live target count: one that has gone costs nothing to read.
        if usage.is_some() {
            self.reads = (
                self.reads.0 + 1,
                self.reads.1 + took,
                self.reads.2.max(took),
            );
        }
        let values: Vec<(RegionKey, u64)> = usage
            .iter()
            .flatten()
            .map(|(key, usage)| (*key, usage.resident))
            .collect();
        if always {
            self.timeline.push(secs, memory, values);
        } else {
            self.timeline.offer(secs, memory, values);
        }
        if let Some(usage) = usage {
            if self.first.is_none() {
                self.first = Some((secs, usage.clone()));
            }
            self.last = Some((secs, usage));
        }
    }

    fn read(&mut self, tracked: &[(u64, u64, u64)]) -> Option<HashMap<RegionKey, Usage>> {
        let (vmas, cut) = smaps::read(self.pid)?;
        self.cut |= cut;
        let memory = TargetMemory::new(self.pid);
        let mut owned: Vec<OwnedRange> = owners::glibc_arenas(&vmas, &memory);
        owned.extend(self.hotspot_ranges());
        owned.extend(self.go_ranges(&memory));
        if self.v8 {
            let pages = owners::v8_pages(&vmas, &memory);
            self.v8 = !pages.is_empty();
            owned.extend(pages);
        }
        Some(split::split(&vmas, &owned, tracked))
    }

    fn hotspot_ranges(&mut self) -> Vec<OwnedRange> {
        let pid = self.pid;
        let Some((vm, class_space)) = self.hotspot.get("HotSpot", || {
            let vm = HotspotVm::attach(pid).map_err(|err| err.to_string())?;
            let class_space = owners::class_space(&vm.structs, vm.memory()).unwrap_or_else(|err| {
                log::debug!("rss split: no class space: {err}");
                None
            });
            Ok(Some((Box::new(vm), class_space)))
        }) else {
            return Vec::new();
        };
        let mut ranges = owners::hotspot_ranges(vm).unwrap_or_else(|err| {
            log::debug!("rss split: HotSpot ranges unreadable: {err}");
            Vec::new()
        });
        ranges.extend(*class_space);
        ranges
    }

    /// The Go heap's arenas, from the runtime's own index: the heap mapped before the attach
    /// has no traced stack to name it.
    fn go_ranges(&mut self, memory: &TargetMemory) -> Vec<OwnedRange> {
        let pid = self.pid;
        let Some(index) = self.go.get("Go heap", || {
            let process = TargetProcess::open(pid).map_err(|err| err.to_string())?;
            #[expect(
                clippy::redundant_closure,
                reason = "the function alone is not general over the file's lifetime"
            )]
            go_heap::with_executable(&process, |file, bias| arenas::index_in(file, bias))
        }) else {
            return Vec::new();
        };
        match arenas::read(memory, *index) {
            Ok(ranges) => ranges
                .into_iter()
                .map(|(start, end)| OwnedRange {
                    start,
                    end,
                    kind: RegionKind::GoHeap,
                    label: "Go heap arenas",
                })
                .collect(),
            Err(err) => {
                log::debug!("rss split: Go heap arenas unreadable: {err}");
                Vec::new()
            }
        }
    }

    /// A sample at which the target's memory is not its own any more (after an exec): the
    /// timeline keeps its place, with nothing read.
    pub fn skip(&mut self, secs: f64, always: bool) {
        let none: [(RegionKey, u64); 0] = [];
        if always {
            self.timeline.push(secs, None, none);
        } else {
            self.timeline.offer(secs, None, none);
        }
    }

    /// What reading the split (smaps, the runtimes' ranges, the owners) cost per sample.
    pub fn cost(&self) -> Option<SampleCost> {
        let (samples, total, max) = self.reads;
        (samples > 0).then(|| SampleCost {
            name: "rss split",
            samples,
            mean_ms: total.as_secs_f64() * 1e3 / samples as f64,
            max_ms: max.as_secs_f64() * 1e3,
        })
    }

    /// The traced stacks that held memory at some sample, to be named at the end.
    pub fn stack_keys(&self) -> Vec<u64> {
        self.timeline
            .keys()
            .filter_map(|key| match key {
                RegionKey::Stack(stack) => Some(*stack),
                RegionKey::Kind(..) => None,
            })
            .collect()
    }

    /// The split, with every traced stack named by `frames_of` and so given its kind.
    pub fn finish(self, mut frames_of: impl FnMut(u64) -> Vec<Frame>) -> Option<RegionSplit> {
        let (at_secs, last) = self.last?;
        let (_, first) = self.first.clone()?;
        // Samples at which smaps was read (the target lived): trends and growth use those.
        let alive: Vec<usize> = self
            .timeline
            .samples()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.memory.is_some())
            .map(|(i, _)| i)
            .collect();
        let secs: Vec<f64> = alive
            .iter()
            .map(|&i| self.timeline.samples()[i].secs)
            .collect();
        let mut owner_of: HashMap<RegionKey, (RegionKind, String)> = HashMap::new();
        let mut keys: Vec<RegionKey> = self.timeline.keys().copied().collect();
        keys.extend(last.keys().chain(first.keys()).copied());
        keys.sort();
        keys.dedup();
        for key in &keys {
            let owner = match key {
                RegionKey::Kind(kind, label) => (*kind, (*label).to_owned()),
                RegionKey::Stack(stack) => {
                    let frames = frames_of(*stack);
                    let kind = kind::kind_of_stack(&frames);
                    let label = match kind {
                        RegionKind::TrackedAnonymous => kind::stack_label(&frames),
                        RegionKind::ThreadStacks => "thread stacks (traced)".to_owned(),
                        RegionKind::V8Heap => "V8 heap pages".to_owned(),
                        RegionKind::GoHeap => "Go heap arenas".to_owned(),
                        RegionKind::JavaHeap => "GC structures".to_owned(),
                        RegionKind::JavaMetaspace => "metaspace".to_owned(),
                        RegionKind::CodeCache => "code cache".to_owned(),
                        other => other.as_str().to_owned(),
                    };
                    (kind, label)
                }
            };
            owner_of.insert(*key, owner);
        }
        // Group by (kind, label).
        #[derive(Default)]
        struct Row {
            last: Usage,
            first_resident: u64,
            first_mapped: u64,
            history: Vec<u64>,
        }
        let mut rows: BTreeMap<(RegionKind, String), Row> = BTreeMap::new();
        for key in &keys {
            let row = rows.entry(owner_of[key].clone()).or_default();
            let now = last.get(key).copied().unwrap_or_default();
            row.last.mapped += now.mapped;
            row.last.resident += now.resident;
            row.last.anon += now.anon;
            let then = first.get(key).copied().unwrap_or_default();
            row.first_resident += then.resident;
            row.first_mapped += then.mapped;
            let series = self.timeline.series(key);
            let series: Vec<u64> = alive.iter().map(|&i| series[i]).collect();
            crate::analysis::history::add_series(&mut row.history, &series);
        }
        let mut regions: Vec<RegionRow> = rows
            .into_iter()
            .map(|((kind, label), row)| RegionRow {
                kind,
                label,
                mapped_bytes: row.last.mapped,
                resident_bytes: row.last.resident,
                anon_bytes: row.last.anon,
                growth_resident_bytes: row.last.resident as i64 - row.first_resident as i64,
                growth_mapped_bytes: row.last.mapped as i64 - row.first_mapped as i64,
                trend: trend(&secs, &row.history).class,
            })
            .filter(|row| {
                row.mapped_bytes > 0 || row.resident_bytes > 0 || row.growth_resident_bytes != 0
            })
            .collect();
        regions.sort_by(|a, b| {
            b.resident_bytes
                .cmp(&a.resident_bytes)
                .then_with(|| a.kind.cmp(&b.kind))
                .then_with(|| a.label.cmp(&b.label))
        });
        fold_small_tracked(&mut regions);
        let rss_bytes: u64 = regions.iter().map(|r| r.resident_bytes).sum();
        let first_rss: u64 = first.values().map(|u| u.resident).sum();
        let named: u64 = regions
            .iter()
            .filter(|r| r.kind.is_named())
            .map(|r| r.resident_bytes)
            .sum();
        Some(RegionSplit {
            at_secs,
            rss_bytes,
            growth_rss_bytes: rss_bytes as i64 - first_rss as i64,
            explained_share: if rss_bytes == 0 {
                0.0
            } else {
                named as f64 / rss_bytes as f64
            },
            regions,
            smaps_cut: self.cut,
        })
    }
}

/// Keeps the report bounded: past [`MAX_TRACKED_ROWS`] tracked-anonymous rows, the smallest
/// are summed into one.
fn fold_small_tracked(regions: &mut Vec<RegionRow>) {
    let tracked: Vec<usize> = regions
        .iter()
        .enumerate()
        .filter(|(_, r)| r.kind == RegionKind::TrackedAnonymous)
        .map(|(i, _)| i)
        .collect();
    if tracked.len() <= MAX_TRACKED_ROWS {
        return;
    }
    let fold: Vec<usize> = tracked[MAX_TRACKED_ROWS - 1..].to_vec();
    let mut rest = RegionRow {
        kind: RegionKind::TrackedAnonymous,
        label: format!("{} other stacks", fold.len()),
        mapped_bytes: 0,
        resident_bytes: 0,
        anon_bytes: 0,
        growth_resident_bytes: 0,
        growth_mapped_bytes: 0,
        trend: TrendClass::Stable,
    };
    for &i in &fold {
        let r = &regions[i];
        rest.mapped_bytes += r.mapped_bytes;
        rest.resident_bytes += r.resident_bytes;
        rest.anon_bytes += r.anon_bytes;
        rest.growth_resident_bytes += r.growth_resident_bytes;
        rest.growth_mapped_bytes += r.growth_mapped_bytes;
    }
    let mut i = 0;
    regions.retain(|_| {
        i += 1;
        !fold.contains(&(i - 1))
    });
    regions.push(rest);
}
