//! The report for people: what is outstanding, what was lost, and the stacks holding most.

use std::io;

use super::{Render, Report, estimate_mark, human_bytes, human_change};
use crate::{
    analysis::{Analysis, Reconciliation, Trend, TrendClass},
    model::{AGE_LABELS, Origin, Recording, StackRecord},
    names::{ShownFrame, shown},
};

pub struct Text {
    /// How many stacks to list.
    pub top: usize,
}

impl Render for Text {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        let rec = report.recording;
        let analysis = &report.analysis;
        writeln!(
            out,
            "leakhound report: pid {} ({})",
            rec.pid,
            shown(&rec.command)
        )?;
        writeln!(
            out,
            "traced for {:.1} s; ended by {}{}",
            rec.duration_secs,
            shown(&rec.ended_by),
            timeline(rec)
        )?;
        if let Some(mean) = rec.sample_bytes {
            writeln!(
                out,
                "byte sampling: one allocation recorded per {} on average (--sample-bytes); malloc-family figures marked ~ are unbiased estimates, ± a 95% interval; mappings are recorded in full",
                human_bytes(mean)
            )?;
        }
        if let Some(min_age) = rec.min_age_secs {
            writeln!(
                out,
                "counting only allocations at least {min_age:.1} s old (--min-age); trends count all"
            )?;
        }
        writeln!(out)?;
        write_growing(self.top, rec, analysis, out)?;

        writeln!(out)?;
        let holding = rec.holding_stacks();
        let estimate = estimate_mark(rec.sample_bytes.is_some());
        writeln!(
            out,
            "outstanding: {estimate}{}{} ({} bytes) in {estimate}{} allocations across {} stacks",
            human_bytes(rec.live_bytes()),
            margin(rec.live_bytes_margin()),
            rec.live_bytes(),
            rec.live_allocations(),
            holding.len()
        )?;
        writeln!(
            out,
            "  malloc family {}, anonymous mmap {}",
            human_bytes(rec.live_bytes_of(Origin::Malloc)),
            human_bytes(rec.live_bytes_of(Origin::Mmap))
        )?;
        if rec.stacks.iter().any(|s| s.origin == Origin::GoHeap) {
            writeln!(
                out,
                "  go heap in use ~{} (the runtime's own heap profile, scaled as pprof scales it; inside the mapped heap, not added above)",
                human_bytes(rec.live_bytes_of(Origin::GoHeap))
            )?;
        }
        if rec.stacks.iter().any(|s| s.origin == Origin::JsHeap) {
            writeln!(
                out,
                "  js heap live ~{} (V8's sampling heap profiler, through the inspector; inside the V8 heap, not added above)",
                human_bytes(rec.live_bytes_of(Origin::JsHeap))
            )?;
        }
        if let Some(note) = &rec.java_heap_histogram {
            writeln!(out, "  java heap: {}", shown(note))?;
        }
        if let Some(exec) = &rec.exec {
            writeln!(
                out,
                "released by exec: {} ({} bytes) in {} allocations that the program still held when it exec'd {}; an exec frees them, so they are not outstanding",
                human_bytes(exec.released_bytes),
                exec.released_bytes,
                exec.released_allocations,
                shown(&exec.program)
            )?;
        }
        if let Some(r) = &analysis.reconciliation {
            write_memory(r, out)?;
        }
        if let Some(split) = &rec.regions {
            crate::rss::text::write(split, rec.live_bytes_of(Origin::Malloc), out)?;
        }
        let c = &rec.counters;
        writeln!(
            out,
            "activity: {} allocations{} and {} frees tracked, {} mapping events",
            c.allocations,
            if rec.sample_bytes.is_some() {
                " (sampled)"
            } else {
                ""
            },
            c.frees,
            rec.mapping.events
        )?;
        write_losses(rec, out)?;

        writeln!(out)?;
        // Stacks that hold memory, largest first (the ranking puts growing ones first).
        let mut by_bytes: Vec<usize> = analysis
            .ranked
            .iter()
            .copied()
            .filter(|&i| rec.stacks[i].live_bytes > 0)
            .collect();
        by_bytes.sort_by_key(|&i| std::cmp::Reverse(rec.stacks[i].live_bytes));
        if by_bytes.is_empty() {
            writeln!(out, "No stack holds memory.")?;
            return Ok(());
        }
        writeln!(
            out,
            "Top {} stacks by outstanding bytes:",
            self.top.min(by_bytes.len())
        )?;
        for (rank, &i) in by_bytes.iter().take(self.top).enumerate() {
            let stack = &rec.stacks[i];
            let estimate = estimate_mark(stack.live_bytes_variance.is_some());
            if stack.origin == Origin::JavaHeap {
                // A class from two histograms: instances, not calls, and its totals are the
                // growth between them.
                writeln!(
                    out,
                    "\n#{} {} in {} instances [{}] (+{} in +{} instances since the first histogram)",
                    rank + 1,
                    human_bytes(stack.live_bytes),
                    stack.live_allocations,
                    origin(stack),
                    human_bytes(stack.total_bytes),
                    stack.total_allocations
                )?;
            } else {
                writeln!(
                    out,
                    "\n#{} {estimate}{}{} in {estimate}{} allocations [{}] ({estimate}{} allocated in {estimate}{} calls while traced)",
                    rank + 1,
                    human_bytes(stack.live_bytes),
                    margin(stack.live_bytes_margin()),
                    stack.live_allocations,
                    origin(stack),
                    human_bytes(stack.total_bytes),
                    stack.total_allocations
                )?;
            }
            writeln!(
                out,
                "    trend: {}",
                describe(&analysis.trends[i], stack.origin)
            )?;
            if let Some(ages) = age_line(stack) {
                writeln!(out, "    ages: {ages}")?;
            }
            write_frames(stack, out)?;
        }
        Ok(())
    }
}

/// ` ± 1.2 MiB` under byte sampling, or nothing.
fn margin(margin: Option<u64>) -> String {
    margin
        .map(|margin| format!(" ± {}", human_bytes(margin)))
        .unwrap_or_default()
}

/// `; 12 samples, 1.0 s apart`, or nothing when there is no timeline.
fn timeline(rec: &Recording) -> String {
    match rec.samples.as_slice() {
        [] => String::new(),
        [_] => "; 1 sample".to_owned(),
        [first, .., last] => format!(
            "; {} samples, {:.1} s apart",
            rec.samples.len(),
            (last.secs - first.secs) / (rec.samples.len() - 1) as f64
        ),
    }
}

/// The opening section: the leak suspects.
fn write_growing(
    top: usize,
    rec: &Recording,
    analysis: &Analysis,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    let growing: Vec<usize> = analysis.growing().collect();
    if growing.is_empty() {
        let why = if rec.samples.len() < crate::analysis::trend::MIN_SAMPLES {
            " (too few samples for a trend; trace longer or lower --interval)"
        } else {
            ""
        };
        return writeln!(out, "Growing stacks: none{why}.");
    }
    let rate: f64 = growing
        .iter()
        .map(|&i| analysis.trends[i].bytes_per_second)
        .sum();
    writeln!(
        out,
        "Growing stacks: {}, together {}/s (leak suspects, fastest first):",
        growing.len(),
        human_rate(rate)
    )?;
    for (rank, &i) in growing.iter().take(top).enumerate() {
        let stack = &rec.stacks[i];
        writeln!(
            out,
            "\n#{} {}: {} now in {} {} [{}]",
            rank + 1,
            describe(&analysis.trends[i], stack.origin),
            human_bytes(stack.live_bytes),
            stack.live_allocations,
            counted(stack),
            origin(stack)
        )?;
        if let Some(ages) = age_line(stack) {
            writeln!(out, "    ages: {ages}")?;
        }
        write_frames(stack, out)?;
    }
    Ok(())
}

fn write_memory(r: &Reconciliation, out: &mut dyn io::Write) -> io::Result<()> {
    write!(
        out,
        "memory at {:.1} s: RSS {}, anonymous {}, tracked outstanding {}",
        r.last.secs,
        human_bytes(r.last.rss_bytes),
        human_bytes(r.last.anon_bytes),
        human_bytes(r.last.tracked_bytes)
    )?;
    match &r.last.cgroup {
        Some(cgroup) => writeln!(out, "; {}", cgroup_line(cgroup))?,
        None => writeln!(out)?,
    }
    if r.last.secs <= r.first.secs {
        return Ok(());
    }
    write!(
        out,
        "  from {:.1} s to {:.1} s: RSS {}, anonymous {}, tracked {}",
        r.first.secs,
        r.last.secs,
        human_change(r.rss_growth()),
        human_change(r.anon_growth()),
        human_change(r.tracked_growth())
    )?;
    match r.explained_share() {
        Some(share) if r.unexplained_growth() >= 0 => writeln!(
            out,
            "; tracked allocations explain {:.0}% of the anonymous growth, {} is allocator retention or untracked",
            share * 100.0,
            human_change(r.unexplained_growth())
        ),
        // Pages that were allocated but never written are tracked, yet not resident.
        Some(_) => writeln!(
            out,
            "; tracked growth exceeds the anonymous growth by {}: allocated but not yet touched, so not resident",
            human_bytes(r.unexplained_growth().unsigned_abs())
        ),
        None => writeln!(out, "; anonymous memory did not grow"),
    }
}

/// `memory cgroup: 900.0 MiB used of 1.0 GiB limit (90%)`: how near the OOM killer is.
fn cgroup_line(cgroup: &crate::model::CgroupUse) -> String {
    let used = human_bytes(cgroup.usage_bytes);
    match (cgroup.limit_bytes, cgroup.used_share()) {
        (Some(limit), Some(share)) => format!(
            "memory cgroup: {used} used of {} limit ({:.0}%)",
            human_bytes(limit),
            share * 100.0
        ),
        _ => format!("memory cgroup: {used} used, no limit (max)"),
    }
}

/// What a stack's count counts: a class histogram's instances, else allocations.
fn counted(stack: &StackRecord) -> &'static str {
    if stack.origin == Origin::JavaHeap {
        "instances"
    } else {
        "allocations"
    }
}

fn describe(trend: &Trend, origin: Origin) -> String {
    let intervals = trend.samples.saturating_sub(1);
    let mut text = format!(
        "{}, {}/s",
        trend.class.as_str(),
        human_rate(trend.bytes_per_second)
    );
    if origin == Origin::JavaHeap {
        // Measured at two samples only (each histogram is a full GC): intervals and
        // steadiness would describe the line drawn between them, not the heap.
        text.push_str(&format!(
            ", {} between the first and the last histogram",
            human_change(trend.last_bytes as i64 - trend.first_bytes as i64)
        ));
        return text;
    }
    if intervals > 0 {
        let grew = (trend.grew_share * intervals as f64).round() as usize;
        text.push_str(&format!(", grew in {grew} of {intervals} intervals"));
    }
    if trend.class != TrendClass::Stable {
        text.push_str(&format!(", steadiness {:.2}", trend.steadiness));
    }
    text
}

/// A rate in bytes per second, signed.
fn human_rate(bytes_per_second: f64) -> String {
    human_change(bytes_per_second.round() as i64)
}

fn origin(stack: &StackRecord) -> &'static str {
    stack.origin.as_str()
}

/// `<1s 3 (192 B), >=10m 1 (64 B)`: the non-empty age buckets.
fn age_line(stack: &StackRecord) -> Option<String> {
    let ages = stack.ages.as_ref()?;
    let estimate = estimate_mark(stack.live_bytes_variance.is_some());
    let parts: Vec<String> = AGE_LABELS
        .iter()
        .enumerate()
        .filter(|(i, _)| ages.allocations[*i] > 0)
        .map(|(i, label)| {
            format!(
                "{label} {estimate}{} ({estimate}{})",
                ages.allocations[i],
                human_bytes(ages.bytes[i])
            )
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

fn write_frames(stack: &StackRecord, out: &mut dyn io::Write) -> io::Result<()> {
    for frame in stack.frames.iter().rev() {
        let frame = ShownFrame::from(&**frame);
        let location = match (&frame.file, frame.line) {
            (Some(file), Some(line)) => format!(" at {file}:{line}"),
            (Some(file), None) => format!(" at {file}"),
            _ => frame
                .module
                .as_ref()
                .map(|m| format!(" in {m}"))
                .unwrap_or_default(),
        };
        let inlined = if frame.inlined { " (inlined)" } else { "" };
        writeln!(out, "    {}{inlined}{location}", frame.name)?;
    }
    Ok(())
}

/// What the report says of each loss counter, by its name in `tracer_common::counter::ALL`,
/// in the order shown. `{alloc_map_full_bytes}` stands for that counter's bytes. The test
/// `every_counter_has_its_line` fails when a counter of the list is missing here or from the
/// activity lines.
const LOSS_LINES: [(&str, &str); 8] = [
    (
        "unwind_miss_lost",
        "unwind requests lost to a full buffer (their allocations stay under [unwind pending])",
    ),
    (
        "alloc_map_full",
        "allocations not tracked, allocation map full ({alloc_map_full_bytes}; raise --max-allocs)",
    ),
    (
        "stack_failed",
        "stacks not stored, counted under [lost stack] (raise --max-stacks)",
    ),
    ("events_lost", "mapping events lost, event buffer full"),
    ("totals_map_full", "allocations without a stack total"),
    ("thread_map_full", "calls missed, thread map full"),
    (
        "return_without_entry",
        "returns without an entry (calls in flight at attach)",
    ),
    ("stale_entry", "calls that never returned"),
];

fn write_losses(rec: &Recording, out: &mut dyn io::Write) -> io::Result<()> {
    let c = &rec.counters;
    let values = c.by_name();
    let value = |name: &str| values.get(name).copied().unwrap_or(0);
    // Allocations still under a partial stack come first: a loss of frames, whatever the
    // cause (a lost request is one of them, counted on the next line).
    let (pending, pending_bytes) = rec.unwind_pending();
    let mut losses: Vec<(u64, String)> = vec![(
        pending,
        format!(
            "allocations left under [unwind pending] ({}), their stacks not walked whole",
            human_bytes(pending_bytes)
        ),
    )];
    losses.extend(LOSS_LINES.iter().map(|(name, what)| {
        let bytes = human_bytes(value("alloc_map_full_bytes"));
        (value(name), what.replace("{alloc_map_full_bytes}", &bytes))
    }));
    losses.push((
        rec.mapping.malformed_events,
        "malformed mapping events".into(),
    ));
    let mut any = false;
    for (count, what) in losses.iter().filter(|(count, _)| *count > 0) {
        if !any {
            writeln!(out, "losses:")?;
            any = true;
        }
        writeln!(out, "  {count} {what}")?;
    }
    if !any {
        writeln!(out, "losses: none")?;
    }
    writeln!(
        out,
        "not losses: {} frees and {} unmaps of memory allocated before attach{}; {} address reuses without a seen free; {} failed calls",
        c.free_unknown,
        rec.mapping.untracked_unmaps,
        if rec.sample_bytes.is_some() {
            " or passed over by sampling"
        } else {
            ""
        },
        c.address_reused,
        c.failed_calls
    )?;
    if let Some(why) = &rec.ages_unavailable {
        writeln!(out, "allocation ages are missing: {}", shown(why))?;
    }
    if let Some(why) = &rec.mapping_unavailable {
        writeln!(out, "anonymous mmap was not tracked: {}", shown(why))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tracer_common::counter::{self, Kind};

    use super::*;
    use crate::model::KernelCounters;

    /// Each counter set to a value of its own, through the same names the kernel reader uses.
    fn distinct_counters() -> KernelCounters {
        let values: serde_json::Map<String, serde_json::Value> = counter::ALL
            .iter()
            .map(|info| {
                (
                    info.name.to_owned(),
                    (1_000_003 + 1009 * u64::from(info.index)).into(),
                )
            })
            .collect();
        serde_json::from_value(values.into()).expect("the counter list matches the model")
    }

    #[test]
    fn every_counter_has_its_line() {
        let recording = Recording {
            counters: distinct_counters(),
            ..Recording::default()
        };
        let mut out = Vec::new();
        Text { top: 10 }
            .render(&Report::new(&recording), &mut out)
            .expect("renders");
        let text = String::from_utf8(out).expect("utf-8");
        let losses: Vec<&str> = text
            .lines()
            .skip_while(|line| *line != "losses:")
            .skip(1)
            .take_while(|line| line.starts_with("  "))
            .collect();
        let activity = text
            .lines()
            .filter(|line| line.starts_with("activity:") || line.starts_with("not losses:"))
            .collect::<Vec<_>>()
            .join("\n");
        for info in counter::ALL {
            let count = (1_000_003 + 1009 * u64::from(info.index)).to_string();
            match (info.kind, info.name) {
                // Shown as bytes in the line of the allocations it counts.
                (_, "alloc_map_full_bytes") => assert!(
                    losses
                        .iter()
                        .any(|line| line.contains("allocation map full (")),
                    "{text}"
                ),
                (Kind::Loss, name) => assert!(
                    losses
                        .iter()
                        .any(|line| line.starts_with(&format!("  {count} "))),
                    "the loss counter {name} has no line under losses:\n{text}"
                ),
                (Kind::Activity, name) => assert!(
                    activity.contains(&count),
                    "the activity counter {name} is in no activity line:\n{text}"
                ),
            }
        }
        assert_eq!(losses.len(), LOSS_LINES.len(), "{losses:?}");
    }

    #[test]
    fn the_cgroup_is_shown_beside_the_rss() {
        use crate::model::{CgroupUse, ProcessMemory, Sample};
        let sample = |secs: f64, usage_bytes: u64, limit_bytes: Option<u64>| Sample {
            secs,
            memory: Some(ProcessMemory {
                rss_bytes: 912 << 20,
                anon_bytes: 900 << 20,
                cgroup: Some(CgroupUse {
                    usage_bytes,
                    limit_bytes,
                }),
            }),
        };
        let render = |samples: Vec<Sample>| {
            let recording = Recording {
                samples,
                ..Recording::default()
            };
            let mut out = Vec::new();
            Text { top: 10 }
                .render(&Report::new(&recording), &mut out)
                .expect("renders");
            let mut json = Vec::new();
            crate::report::Format::Json
                .renderer(10)
                .render(&Report::new(&recording), &mut json)
                .expect("renders");
            let json: serde_json::Value = serde_json::from_slice(&json).expect("valid JSON");
            (String::from_utf8(out).expect("utf-8"), json)
        };
        let (text, json) = render(vec![
            sample(1.0, 800 << 20, Some(1 << 30)),
            sample(2.0, 900 << 20, Some(1 << 30)),
        ]);
        assert!(
            text.contains(
                "memory at 2.0 s: RSS 912.0 MiB, anonymous 900.0 MiB, tracked outstanding 0 B; memory cgroup: 900.0 MiB used of 1.0 GiB limit (88%)\n"
            ),
            "{text}"
        );
        let cgroup = &json["memory"]["cgroup"];
        assert_eq!(cgroup["usage_bytes"], 900u64 << 20);
        assert_eq!(cgroup["limit_bytes"], 1u64 << 30);
        assert_eq!(cgroup["used_share"], 900.0 / 1024.0);
        assert_eq!(json["samples"][0]["cgroup_usage_bytes"], 800u64 << 20);
        assert_eq!(json["samples"][1]["cgroup_limit_bytes"], 1u64 << 30);

        let (text, json) = render(vec![sample(1.0, 5 << 20, None)]);
        assert!(
            text.contains("; memory cgroup: 5.0 MiB used, no limit (max)\n"),
            "{text}"
        );
        assert!(json["memory"]["cgroup"]["limit_bytes"].is_null());
        assert!(json["samples"][0].get("cgroup_limit_bytes").is_none());
    }
}
