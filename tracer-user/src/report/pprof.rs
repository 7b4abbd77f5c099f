//! pprof: a gzipped profile.proto with the four sample types of a Go heap profile
//! (alloc_objects, alloc_space, inuse_objects, inuse_space; in-use space shown by default), so
//! `go tool pprof`, Pyroscope and every pprof viewer read leakhound's stacks as a heap profile.
//!
//! Frames carry names, files and lines but no addresses, so each location is keyed by what it
//! names. A frame inlined into the one before it becomes an extra line of its caller's
//! location, as pprof represents inlining.

use std::{
    collections::HashMap,
    io::{self, Write as _},
};

use flate2::{Compression, write::GzEncoder};
use prost::Message as _;

use super::{
    Render, Report,
    pprof_proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType},
};
use crate::{
    model::{Frame, NOT_TRACKED_FRAME},
    names::shown,
};

pub struct Pprof;

impl Render for Pprof {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        let bytes = profile(report).encode_to_vec();
        let mut gz = GzEncoder::new(out, Compression::default());
        gz.write_all(&bytes)?;
        gz.finish()?;
        Ok(())
    }
}

/// The profile, before encoding; public so that tests can read what was written.
pub fn profile(report: &Report) -> Profile {
    let rec = report.recording;
    let mut b = Builder::default();
    b.string("");
    let value_type = |b: &mut Builder, kind: &str, unit: &str| ValueType {
        r#type: b.string(kind),
        unit: b.string(unit),
    };
    let sample_type = vec![
        value_type(&mut b, "alloc_objects", "count"),
        value_type(&mut b, "alloc_space", "bytes"),
        value_type(&mut b, "inuse_objects", "count"),
        value_type(&mut b, "inuse_space", "bytes"),
    ];
    let period_type = Some(value_type(&mut b, "space", "bytes"));
    let default_sample_type = b.string("inuse_space");
    let mut comment = vec![b.string(&format!(
        "leakhound: pid {} ({}), ended by {}",
        rec.pid,
        shown(&rec.command),
        shown(&rec.ended_by)
    ))];
    if let Some(mean) = rec.sample_bytes {
        comment.push(b.string(&format!(
            "byte sampling: one allocation recorded per {mean} bytes on average; malloc values are unbiased estimates"
        )));
    }
    let (origin_key, trend_key, rate_key) = (
        b.string("origin"),
        b.string("trend"),
        b.string("bytes_per_second"),
    );

    let mut samples = Vec::new();
    // Every stack the reports rank, then the ones that hold nothing now but allocated.
    let mut order = report.analysis.ranked.clone();
    order.extend((0..rec.stacks.len()).filter(|i| !report.analysis.ranked.contains(i)));
    for i in order {
        let stack = &rec.stacks[i];
        if stack.live_bytes == 0 && stack.total_bytes == 0 {
            continue;
        }
        let trend = &report.analysis.trends[i];
        let location_id = b.locations(&stack.frames);
        let origin = b.string(stack.origin.as_str());
        let class = b.string(trend.class.as_str());
        samples.push(Sample {
            location_id,
            value: vec![
                stack.total_allocations as i64,
                stack.total_bytes as i64,
                stack.live_allocations as i64,
                stack.live_bytes as i64,
            ],
            label: vec![
                Label {
                    key: origin_key,
                    str: origin,
                    ..Label::default()
                },
                Label {
                    key: trend_key,
                    str: class,
                    ..Label::default()
                },
                Label {
                    key: rate_key,
                    num: trend.bytes_per_second.round() as i64,
                    num_unit: b.string("bytes"),
                    ..Label::default()
                },
            ],
        });
    }
    let c = &rec.counters;
    if c.alloc_map_full_bytes > 0 {
        // Allocations the full allocation map could not track: no stack, but not hidden.
        let location_id = b.locations(&[Frame::named(NOT_TRACKED_FRAME)]);
        let (count, bytes) = (c.alloc_map_full as i64, c.alloc_map_full_bytes as i64);
        let origin = b.string("not tracked");
        comment.push(b.string(&format!(
            "{NOT_TRACKED_FRAME}: {} allocations of {} bytes were not tracked (raise --max-allocs); whether they were freed is unknown",
            c.alloc_map_full, c.alloc_map_full_bytes
        )));
        samples.push(Sample {
            location_id,
            value: vec![count, bytes, count, bytes],
            label: vec![Label {
                key: origin_key,
                str: origin,
                ..Label::default()
            }],
        });
    }
    Profile {
        sample_type,
        sample: samples,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        time_nanos: 0,
        duration_nanos: (rec.duration_secs * 1e9) as i64,
        period_type,
        // As Go's heap profiles do: the sampling period, the values already scaled up.
        period: rec.sample_bytes.map_or(1, |mean| mean as i64),
        comment,
        default_sample_type,
    }
}

/// Interns strings, functions, mappings and locations.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(String, Option<String>), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<(u64, Vec<(u64, i64)>), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(s) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_owned());
        self.string_ids.insert(s.to_owned(), id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let key = (frame.name.clone(), frame.file.clone());
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        let name = self.string(&shown(&frame.name));
        let filename = frame.file.as_deref().map_or(0, |f| self.string(&shown(f)));
        self.functions.push(Function {
            id,
            name,
            system_name: name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn mapping(&mut self, module: Option<&str>) -> u64 {
        let Some(module) = module else { return 0 };
        if let Some(&id) = self.mapping_ids.get(module) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&shown(module));
        // Frames are already named: say so, or pprof would try to symbolize the mapping.
        self.mappings.push(Mapping {
            id,
            filename,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..Mapping::default()
        });
        self.mapping_ids.insert(module.to_owned(), id);
        id
    }

    /// Location ids for `frames` (root first), leaf first as a sample lists them.
    fn locations(&mut self, frames: &[Frame]) -> Vec<u64> {
        // A frame marked inlined was inlined into the frame before it: same location.
        let mut groups: Vec<Vec<&Frame>> = Vec::new();
        for frame in frames {
            match groups.last_mut() {
                Some(group) if frame.inlined => group.push(frame),
                _ => groups.push(vec![frame]),
            }
        }
        let mut ids: Vec<u64> = groups
            .into_iter()
            .map(|group| {
                let mapping_id = self.mapping(group[0].module.as_deref());
                let lines: Vec<(u64, i64)> = group
                    .iter()
                    .rev()
                    .map(|frame| (self.function(frame), frame.line.map_or(0, i64::from)))
                    .collect();
                let key = (mapping_id, lines);
                if let Some(&id) = self.location_ids.get(&key) {
                    return id;
                }
                let id = self.locations.len() as u64 + 1;
                self.locations.push(Location {
                    id,
                    mapping_id,
                    address: 0,
                    line: key
                        .1
                        .iter()
                        .map(|&(function_id, line)| Line { function_id, line })
                        .collect(),
                });
                self.location_ids.insert(key, id);
                id
            })
            .collect();
        ids.reverse();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrameData, Origin, Recording, StackRecord};

    fn frame(name: &str, inlined: bool) -> Frame {
        FrameData {
            module: Some("/bin/app".into()),
            file: Some("app.c".into()),
            line: Some(7),
            inlined,
            ..FrameData::named(name)
        }
        .into()
    }

    #[test]
    fn inlined_frames_share_their_callers_location_and_samples_are_leaf_first() {
        let recording = Recording {
            stacks: vec![StackRecord {
                origin: Origin::Malloc,
                frames: vec![
                    frame("main", false),
                    frame("serve", false),
                    frame("helper", true),
                ],
                live_bytes: 64,
                live_allocations: 1,
                total_bytes: 128,
                total_allocations: 2,
                history: vec![],
                ages: None,
                live_bytes_variance: None,
            }],
            ..Recording::default()
        };
        let p = profile(&Report::new(&recording));
        assert_eq!(p.string_table[0], "");
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, [2, 128, 1, 64]);
        assert_eq!(p.location.len(), 2);
        let leaf = &p.location[(p.sample[0].location_id[0] - 1) as usize];
        let names: Vec<&str> = leaf
            .line
            .iter()
            .map(|l| {
                let f = &p.function[(l.function_id - 1) as usize];
                p.string_table[f.name as usize].as_str()
            })
            .collect();
        assert_eq!(names, ["helper", "serve"]);
        assert_eq!(p.mapping.len(), 1);
        assert_eq!(
            p.string_table[p.default_sample_type as usize],
            "inuse_space"
        );
        // No line for untracked allocations when there were none.
        assert!(!p.string_table.iter().any(|s| s == NOT_TRACKED_FRAME));
        // And it encodes and gzips.
        let mut out = Vec::new();
        Pprof.render(&Report::new(&recording), &mut out).unwrap();
        assert_eq!(&out[..2], &[0x1f, 0x8b]);
    }

    #[test]
    fn untracked_allocations_are_a_sample() {
        let mut recording = Recording::default();
        recording.counters.alloc_map_full = 3;
        recording.counters.alloc_map_full_bytes = 4096;
        let p = profile(&Report::new(&recording));
        assert_eq!(p.sample.len(), 1);
        assert_eq!(p.sample[0].value, [3, 4096, 3, 4096]);
        let location = &p.location[(p.sample[0].location_id[0] - 1) as usize];
        let function = &p.function[(location.line[0].function_id - 1) as usize];
        assert_eq!(p.string_table[function.name as usize], NOT_TRACKED_FRAME);
    }
}
