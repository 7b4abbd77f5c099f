//! One JSON object with everything a script or a CI check needs: totals, drop counters, the
//! process's memory, and every stack worth reporting with its trend and ages. The schema is
//! documented in README.md (`## Formats`); `schema` names its version, and fields are only
//! ever added.

use std::{borrow::Cow, io};

use serde::Serialize;

use super::{Render, Report};
use crate::{
    analysis::TrendClass,
    model::{AGE_LABELS, AgeHistogram, Origin},
    names::{ShownFrame, shown},
};

pub struct Json;

pub const SCHEMA: &str = "leakhound-report/1";

#[derive(Serialize)]
struct Document<'a> {
    schema: &'static str,
    pid: u32,
    command: Cow<'a, str>,
    duration_secs: f64,
    ended_by: Cow<'a, str>,
    min_age_secs: Option<f64>,
    /// `--sample-bytes`: malloc-family figures are estimates.
    #[serde(skip_serializing_if = "Option::is_none")]
    sample_bytes: Option<u64>,
    totals: Totals,
    drops: Drops,
    activity: Activity,
    memory: Option<Memory<'a>>,
    /// Set when the target exec'd, which ended the trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    released_by_exec: Option<ExecOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mapping_unavailable: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ages_unavailable: Option<Cow<'a, str>>,
    /// `--jvm-heap-histogram`: what the class histograms gave, or why they gave nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    java_heap_histogram: Option<Cow<'a, str>>,
    age_buckets: [&'static str; 5],
    samples: Vec<SampleOut>,
    stacks: Vec<StackOut<'a>>,
}

/// [`crate::model::ExecEnd`] with the program's name shown (it is the target's).
#[derive(Serialize)]
struct ExecOut<'a> {
    program: Cow<'a, str>,
    released_allocations: u64,
    released_bytes: u64,
}

#[derive(Serialize)]
struct Totals {
    bytes: u64,
    /// Under byte sampling: half the width of the 95% interval around `bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_margin: Option<u64>,
    allocations: u64,
    malloc_bytes: u64,
    mmap_bytes: u64,
    stacks: usize,
    growing_stacks: usize,
    growing_bytes_per_second: f64,
}

#[derive(Serialize)]
struct Drops {
    alloc_map_full: u64,
    alloc_map_full_bytes: u64,
    stack_failed: u64,
    events_lost: u64,
    totals_map_full: u64,
    thread_map_full: u64,
    return_without_entry: u64,
    stale_entry: u64,
    malformed_events: u64,
    unwind_miss_lost: u64,
    /// Allocations (and their bytes) still under an `[unwind pending]` stack at the end.
    unwind_pending_allocations: u64,
    unwind_pending_bytes: u64,
}

#[derive(Serialize)]
struct Activity {
    allocations: u64,
    frees: u64,
    mapping_events: u64,
    free_unknown: u64,
    untracked_unmaps: u64,
    address_reused: u64,
    failed_calls: u64,
}

#[derive(Serialize)]
struct Memory<'a> {
    at_secs: f64,
    rss_bytes: u64,
    anon_bytes: u64,
    tracked_bytes: u64,
    /// The memory cgroup's usage and limit at the same sample, where it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<CgroupOut>,
    growth: Growth,
    /// The RSS split by owner (`crate::rss`), when smaps was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    regions: Option<Vec<RegionOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explained_share: Option<f64>,
}

/// A [`crate::rss::RegionRow`] with its label (a function's name, from the target) shown as
/// every name is.
#[derive(Serialize)]
struct RegionOut<'a> {
    kind: crate::rss::RegionKind,
    label: std::borrow::Cow<'a, str>,
    mapped_bytes: u64,
    resident_bytes: u64,
    anon_bytes: u64,
    growth_resident_bytes: i64,
    trend: crate::analysis::TrendClass,
}

#[derive(Serialize)]
struct CgroupOut {
    usage_bytes: u64,
    /// Null: no limit.
    limit_bytes: Option<u64>,
    used_share: Option<f64>,
}

impl From<crate::model::CgroupUse> for CgroupOut {
    fn from(cgroup: crate::model::CgroupUse) -> Self {
        Self {
            usage_bytes: cgroup.usage_bytes,
            limit_bytes: cgroup.limit_bytes,
            used_share: cgroup.used_share(),
        }
    }
}

#[derive(Serialize)]
struct Growth {
    from_secs: f64,
    to_secs: f64,
    rss_bytes: i64,
    anon_bytes: i64,
    tracked_bytes: i64,
    unexplained_bytes: i64,
    explained_share: Option<f64>,
}

#[derive(Serialize)]
struct SampleOut {
    secs: f64,
    tracked_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anon_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_usage_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_limit_bytes: Option<u64>,
}

#[derive(Serialize)]
struct StackOut<'a> {
    rank: usize,
    origin: Origin,
    frames: Vec<ShownFrame<'a>>,
    bytes: u64,
    /// Under byte sampling: half the width of the 95% interval around `bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes_margin: Option<u64>,
    allocations: u64,
    total_bytes: u64,
    total_allocations: u64,
    trend: TrendOut,
    ages: Option<&'a AgeHistogram>,
    history: &'a [u64],
}

#[derive(Serialize)]
struct TrendOut {
    class: TrendClass,
    bytes_per_second: f64,
    grew_share: f64,
    steadiness: f64,
    first_bytes: u64,
    last_bytes: u64,
    samples: usize,
}

impl Render for Json {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        let rec = report.recording;
        let analysis = &report.analysis;
        let c = &rec.counters;
        let tracked = crate::analysis::memory::tracked_per_sample(rec);
        let stacks: Vec<StackOut> = analysis
            .ranked
            .iter()
            .enumerate()
            .map(|(rank, &i)| {
                let stack = &rec.stacks[i];
                let t = &analysis.trends[i];
                StackOut {
                    rank: rank + 1,
                    origin: stack.origin,
                    frames: stack
                        .frames
                        .iter()
                        .map(|f| ShownFrame::from(&**f))
                        .collect(),
                    bytes: stack.live_bytes,
                    bytes_margin: stack.live_bytes_margin(),
                    allocations: stack.live_allocations,
                    total_bytes: stack.total_bytes,
                    total_allocations: stack.total_allocations,
                    trend: TrendOut {
                        class: t.class,
                        bytes_per_second: t.bytes_per_second,
                        grew_share: t.grew_share,
                        steadiness: t.steadiness,
                        first_bytes: t.first_bytes,
                        last_bytes: t.last_bytes,
                        samples: t.samples,
                    },
                    ages: stack.ages.as_ref(),
                    history: &stack.history,
                }
            })
            .collect();
        let document = Document {
            schema: SCHEMA,
            pid: rec.pid,
            command: shown(&rec.command),
            duration_secs: rec.duration_secs,
            ended_by: shown(&rec.ended_by),
            min_age_secs: rec.min_age_secs,
            sample_bytes: rec.sample_bytes,
            totals: Totals {
                bytes: rec.live_bytes(),
                bytes_margin: rec.live_bytes_margin(),
                allocations: rec.live_allocations(),
                malloc_bytes: rec.live_bytes_of(Origin::Malloc),
                mmap_bytes: rec.live_bytes_of(Origin::Mmap),
                stacks: stacks.len(),
                growing_stacks: analysis.growing().count(),
                growing_bytes_per_second: analysis
                    .growing()
                    .map(|i| analysis.trends[i].bytes_per_second)
                    .sum(),
            },
            drops: Drops {
                alloc_map_full: c.alloc_map_full,
                alloc_map_full_bytes: c.alloc_map_full_bytes,
                stack_failed: c.stack_failed,
                events_lost: c.events_lost,
                totals_map_full: c.totals_map_full,
                thread_map_full: c.thread_map_full,
                return_without_entry: c.return_without_entry,
                stale_entry: c.stale_entry,
                malformed_events: rec.mapping.malformed_events,
                unwind_miss_lost: c.unwind_miss_lost,
                unwind_pending_allocations: rec.unwind_pending().0,
                unwind_pending_bytes: rec.unwind_pending().1,
            },
            activity: Activity {
                allocations: c.allocations,
                frees: c.frees,
                mapping_events: rec.mapping.events,
                free_unknown: c.free_unknown,
                untracked_unmaps: rec.mapping.untracked_unmaps,
                address_reused: c.address_reused,
                failed_calls: c.failed_calls,
            },
            memory: analysis.reconciliation.map(|r| Memory {
                at_secs: r.last.secs,
                rss_bytes: r.last.rss_bytes,
                anon_bytes: r.last.anon_bytes,
                tracked_bytes: r.last.tracked_bytes,
                cgroup: r.last.cgroup.map(CgroupOut::from),
                growth: Growth {
                    from_secs: r.first.secs,
                    to_secs: r.last.secs,
                    rss_bytes: r.rss_growth(),
                    anon_bytes: r.anon_growth(),
                    tracked_bytes: r.tracked_growth(),
                    unexplained_bytes: r.unexplained_growth(),
                    explained_share: r.explained_share(),
                },
                regions: rec.regions.as_ref().map(|split| {
                    split
                        .regions
                        .iter()
                        .map(|row| RegionOut {
                            kind: row.kind,
                            label: crate::names::shown(&row.label),
                            mapped_bytes: row.mapped_bytes,
                            resident_bytes: row.resident_bytes,
                            anon_bytes: row.anon_bytes,
                            growth_resident_bytes: row.growth_resident_bytes,
                            trend: row.trend,
                        })
                        .collect()
                }),
                explained_share: rec.regions.as_ref().map(|split| split.explained_share),
            }),
            released_by_exec: rec.exec.as_ref().map(|exec| ExecOut {
                program: shown(&exec.program),
                released_allocations: exec.released_allocations,
                released_bytes: exec.released_bytes,
            }),
            mapping_unavailable: rec.mapping_unavailable.as_deref().map(shown),
            ages_unavailable: rec.ages_unavailable.as_deref().map(shown),
            java_heap_histogram: rec.java_heap_histogram.as_deref().map(shown),
            age_buckets: AGE_LABELS,
            samples: rec
                .samples
                .iter()
                .zip(&tracked)
                .map(|(sample, &tracked_bytes)| SampleOut {
                    secs: sample.secs,
                    tracked_bytes,
                    rss_bytes: sample.memory.map(|m| m.rss_bytes),
                    anon_bytes: sample.memory.map(|m| m.anon_bytes),
                    cgroup_usage_bytes: cgroup_of(sample).map(|c| c.usage_bytes),
                    cgroup_limit_bytes: cgroup_of(sample).and_then(|c| c.limit_bytes),
                })
                .collect(),
            stacks,
        };
        serde_json::to_writer_pretty(&mut *out, &document)?;
        writeln!(out)
    }
}

fn cgroup_of(sample: &crate::model::Sample) -> Option<crate::model::CgroupUse> {
    sample.memory.and_then(|memory| memory.cgroup)
}

#[cfg(test)]
mod tests {
    use tracer_common::counter::{ALL, Kind};

    use crate::{
        model::Recording,
        report::{Format, Report},
    };

    /// Every kernel counter is in the JSON report: losses under `drops`, the rest under
    /// `activity`, by the name the counter list gives it.
    #[test]
    fn every_counter_is_reported_where_its_kind_says() {
        let recording = Recording::default();
        let mut out = Vec::new();
        Format::Json
            .renderer(20)
            .render(&Report::new(&recording), &mut out)
            .expect("renders");
        let json: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        for counter in ALL {
            let section = match counter.kind {
                Kind::Loss => "drops",
                Kind::Activity => "activity",
            };
            assert!(
                json[section].get(counter.name).is_some(),
                "{} is missing from `{section}`",
                counter.name
            );
        }
    }
}
