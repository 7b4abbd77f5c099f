//! Plain data that the analysis and the output formats share. A recording can be saved and
//! read back, so every format is produced by the same code live and offline.

pub mod bounded;

use std::{ops::Deref, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize};

/// The kernel side's activity and loss counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelCounters {
    pub allocations: u64,
    pub frees: u64,
    pub alloc_map_full: u64,
    pub alloc_map_full_bytes: u64,
    pub stack_failed: u64,
    pub free_unknown: u64,
    pub return_without_entry: u64,
    pub stale_entry: u64,
    pub thread_map_full: u64,
    pub events_lost: u64,
    pub totals_map_full: u64,
    pub address_reused: u64,
    pub failed_calls: u64,
    /// Allocations left under a partial `[unwind pending]` stack, their unwind request lost
    /// to a full buffer.
    #[serde(default)]
    pub unwind_miss_lost: u64,
}

/// Where a stack's memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The malloc family.
    Malloc,
    /// Anonymous mmap (and mremap), and pages committed with mprotect inside reservations.
    Mmap,
    /// In use inside a Go heap, from the runtime's own heap profile (`crate::go_heap`):
    /// estimates, and inside memory that `Mmap` stacks already count.
    #[serde(rename = "go-heap")]
    GoHeap,
    /// Live in a V8 heap, from V8's sampling heap profiler through Node's inspector
    /// (`crate::js_heap`, `--js-heap`): estimates, inside memory that `Mmap` stacks count.
    #[serde(rename = "js-heap")]
    JsHeap,
    /// Live in a Java heap, by class, from HotSpot's class histograms (`crate::jvm_heap`,
    /// `--jvm-heap-histogram`): one frame, the class; inside the Java heap, which is mapped
    /// before any trace.
    #[serde(rename = "java-heap")]
    JavaHeap,
}

impl Origin {
    /// Whether the stack's bytes are part of the outstanding total. A managed heap's objects
    /// (Go's, V8's, Java's) sit inside the heap's mappings, which are counted already or were
    /// mapped before the trace.
    pub fn counts_in_totals(self) -> bool {
        !matches!(self, Self::GoHeap | Self::JsHeap | Self::JavaHeap)
    }

    /// The name every report gives it (the JSON value, the pprof label, the text tag).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::Mmap => "mmap",
            Self::GoHeap => "go-heap",
            Self::JsHeap => "js-heap",
            Self::JavaHeap => "java-heap",
        }
    }
}

/// One named frame, shared: the stacks of a report repeat a few hundred distinct frames a
/// million times over (10,000 stacks 100 deep), and a copy of each would cost 240 MB.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Frame(Arc<FrameData>);

/// Each frame read from a saved recording comes out of the reader's budget
/// ([`bounded::with_frame_budget`]).
impl<'de> Deserialize<'de> for Frame {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bounded::take_frame()?;
        Ok(FrameData::deserialize(deserializer)?.into())
    }
}

impl Frame {
    pub fn named(name: impl Into<String>) -> Self {
        FrameData::named(name).into()
    }
}

impl Deref for Frame {
    type Target = FrameData;

    fn deref(&self) -> &FrameData {
        &self.0
    }
}

impl From<FrameData> for Frame {
    fn from(data: FrameData) -> Self {
        Self(Arc::new(data))
    }
}

/// What a [`Frame`] says.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FrameData {
    /// The function (demangled), or `module+0xoffset` when no symbol covers the address.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// An inlined call inside the frame before it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inlined: bool,
}

impl FrameData {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            module: None,
            file: None,
            line: None,
            inlined: false,
        }
    }
}

/// What one call stack holds at the end of the trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StackRecord {
    pub origin: Origin,
    /// Root first.
    #[serde(deserialize_with = "bounded::at_most::<_, _, { bounded::MAX_FRAMES_PER_STACK }>")]
    pub frames: Vec<Frame>,
    pub live_bytes: u64,
    pub live_allocations: u64,
    /// Everything allocated on this stack while traced, freed or not.
    pub total_bytes: u64,
    pub total_allocations: u64,
    /// Outstanding bytes at each of [`Recording::samples`], the same length as it. Empty in a
    /// recording made before samples existed.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::at_most::<_, _, { bounded::MAX_SAMPLES }>"
    )]
    pub history: Vec<u64>,
    /// How old the live allocations were when tracing ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ages: Option<AgeHistogram>,
    /// Under byte sampling: the estimated variance of `live_bytes` (bytes squared), from the
    /// sampled allocations that make it up. None when every allocation was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_bytes_variance: Option<f64>,
}

impl StackRecord {
    /// Half the width of the 95% interval around `live_bytes`, under byte sampling.
    pub fn live_bytes_margin(&self) -> Option<u64> {
        self.live_bytes_variance.map(margin_of)
    }
}

/// 1.96 standard deviations: half the width of a 95% normal interval.
pub fn margin_of(variance: f64) -> u64 {
    (1.96 * variance.max(0.0).sqrt()).round() as u64
}

/// Upper bounds, in seconds, of the age buckets; a last bucket holds everything older.
pub const AGE_BOUNDS_SECS: [u64; 4] = [1, 10, 60, 600];
/// Names of the age buckets, as the text and JSON reports print them.
pub const AGE_LABELS: [&str; 5] = ["<1s", "<10s", "<1m", "<10m", ">=10m"];

/// Live allocations of one stack by age at the end of the trace: bucket `i` holds the
/// allocations younger than `AGE_BOUNDS_SECS[i]` and not younger than the bound before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgeHistogram {
    pub allocations: [u64; 5],
    pub bytes: [u64; 5],
}

impl AgeHistogram {
    pub fn add(&mut self, other: &Self) {
        for i in 0..self.bytes.len() {
            self.allocations[i] += other.allocations[i];
            self.bytes[i] += other.bytes[i];
        }
    }
}

/// The target's memory as the kernel counts it (`/proc/PID/smaps_rollup`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessMemory {
    /// Resident set size.
    pub rss_bytes: u64,
    /// Resident anonymous memory: the heap, anonymous mmap, thread stacks.
    pub anon_bytes: u64,
    /// The target's memory cgroup at the same moment, where one is mounted for leakhound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<CgroupUse>,
}

/// What the target's memory cgroup has charged, and its limit: the figure the OOM killer
/// compares, which can be reached long before the target's own RSS looks large (the cgroup
/// also charges its other processes and the page cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupUse {
    pub usage_bytes: u64,
    /// `None`: no limit (`max`).
    pub limit_bytes: Option<u64>,
}

impl CgroupUse {
    /// Usage over the limit, when there is a limit.
    pub fn used_share(&self) -> Option<f64> {
        self.limit_bytes
            .filter(|&limit| limit > 0)
            .map(|limit| self.usage_bytes as f64 / limit as f64)
    }
}

/// One point of the timeline that every stack's [`StackRecord::history`] follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since tracing started.
    pub secs: f64,
    /// Absent once the target had exited, or when /proc could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ProcessMemory>,
}

/// User-space counters about mapping events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappingCounters {
    pub events: u64,
    /// Unmaps of memory that was not tracked (mapped before attach, or the allocator's own).
    pub untracked_unmaps: u64,
    pub malformed_events: u64,
}

/// The pseudo frame under which the flame-graph formats (folded, SVG, pprof) show the bytes of
/// allocations that were not tracked because the allocation map was full: they cannot be put
/// on their stacks, but leaving them out would hide them.
pub const NOT_TRACKED_FRAME: &str = "[not tracked: allocation map full]";

/// The version of the saved-recording layout that this build writes. Fields added since
/// version 1 all have defaults, so older files still load.
pub const RECORDING_VERSION: u32 = 1;

/// A finished trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// [`RECORDING_VERSION`] when saved.
    #[serde(default)]
    pub version: u32,
    pub pid: u32,
    pub command: String,
    pub duration_secs: f64,
    /// Why tracing stopped.
    pub ended_by: String,
    pub counters: KernelCounters,
    pub mapping: MappingCounters,
    /// Why anonymous mappings were not tracked, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_unavailable: Option<String>,
    /// The timeline, oldest first; bounded, so long traces keep every other sample.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "bounded::at_most::<_, _, { bounded::MAX_SAMPLES }>"
    )]
    pub samples: Vec<Sample>,
    /// With `--min-age`: only allocations at least this old count in each stack's
    /// `live_bytes` and `live_allocations` (its history still counts everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_secs: Option<f64>,
    /// Why allocation ages are missing, when they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ages_unavailable: Option<String>,
    /// With `--sample-bytes`: the mean bytes between recorded allocations. Every malloc-family
    /// figure is then an estimate (mappings are still recorded in full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_bytes: Option<u64>,
    /// Set when the target exec'd another program, which ended the trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecEnd>,
    #[serde(deserialize_with = "bounded::at_most::<_, _, { bounded::MAX_STACKS }>")]
    pub stacks: Vec<StackRecord>,
    /// The target's RSS split by what owns it (`crate::rss`), from its smaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<crate::rss::RegionSplit>,
    /// With `--jvm-heap-histogram`: one line on the class histograms taken (when, what they
    /// cost, how many classes grew), or why there are no java-heap stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub java_heap_histogram: Option<String>,
}

/// The target exec'd: the exec replaced its whole memory, so what the old program still held
/// was released then, not leaked. leakhound does not follow into the new program.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecEnd {
    /// The program it exec'd, as `/proc/PID/exe` named it when leakhound noticed.
    pub program: String,
    /// Allocations and mappings the old program still held, released by the exec.
    pub released_allocations: u64,
    pub released_bytes: u64,
}

/// The root frame of a stack whose walk stopped at an address with no unwind rule and was
/// never repaired: its allocations are counted, under the frames that were walked.
pub const UNWIND_PENDING: &str = "[unwind pending]";

impl Recording {
    /// Allocations and bytes still under an [`UNWIND_PENDING`] stack: a loss of frames, not of
    /// bytes, which the reports list with the other losses.
    pub fn unwind_pending(&self) -> (u64, u64) {
        self.stacks
            .iter()
            .filter(|stack| {
                stack
                    .frames
                    .first()
                    .is_some_and(|f| f.name == UNWIND_PENDING)
            })
            .fold((0, 0), |(allocations, bytes), stack| {
                (
                    allocations + stack.live_allocations,
                    bytes + stack.live_bytes,
                )
            })
    }

    /// Outstanding bytes of every stack that counts in the totals (see
    /// [`Origin::counts_in_totals`]).
    pub fn live_bytes(&self) -> u64 {
        self.counted().map(|stack| stack.live_bytes).sum()
    }

    pub fn live_allocations(&self) -> u64 {
        self.counted().map(|stack| stack.live_allocations).sum()
    }

    fn counted(&self) -> impl Iterator<Item = &StackRecord> {
        self.stacks
            .iter()
            .filter(|stack| stack.origin.counts_in_totals())
    }

    /// Half the width of the 95% interval around [`Self::live_bytes`], under byte sampling
    /// (stacks are sampled independently, so their variances add).
    pub fn live_bytes_margin(&self) -> Option<u64> {
        self.sample_bytes?;
        let variance = self
            .stacks
            .iter()
            .filter_map(|stack| stack.live_bytes_variance)
            .sum();
        Some(margin_of(variance))
    }

    pub fn live_bytes_of(&self, origin: Origin) -> u64 {
        self.stacks
            .iter()
            .filter(|stack| stack.origin == origin)
            .map(|stack| stack.live_bytes)
            .sum()
    }

    /// Stacks that still hold memory, largest first, ties broken by frames for stable output.
    pub fn holding_stacks(&self) -> Vec<&StackRecord> {
        let mut stacks: Vec<_> = self
            .stacks
            .iter()
            .filter(|stack| stack.live_bytes > 0)
            .collect();
        stacks.sort_by(|a, b| {
            b.live_bytes
                .cmp(&a.live_bytes)
                .then_with(|| cmp_frame_names(&a.frames, &b.frames))
        });
        stacks
    }
}

impl KernelCounters {
    /// Every counter by its name in `tracer_common::counter::ALL` (the field names, which a
    /// test checks against that list).
    pub fn by_name(&self) -> std::collections::BTreeMap<String, u64> {
        serde_json::to_value(self)
            .ok()
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default()
    }
}

/// Orders stacks by their frame names, for output that does not depend on map order.
pub fn cmp_frame_names(a: &[Frame], b: &[Frame]) -> std::cmp::Ordering {
    a.iter().map(|f| &f.name).cmp(b.iter().map(|f| &f.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counters_are_the_counter_list() {
        let json = serde_json::to_value(KernelCounters::default()).expect("serializes");
        let mut fields: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut listed: Vec<&str> = tracer_common::counter::ALL.iter().map(|c| c.name).collect();
        fields.sort_unstable();
        listed.sort_unstable();
        assert_eq!(fields, listed);
    }
}
