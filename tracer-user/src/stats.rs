//! `--stats-json FILE`: what a session placed and what it cost, as data rather than log lines,
//! for the benchmark and anyone else who measures leakhound: the attach (its time, and every
//! probe placed with its offset, cookie and mechanism), the report's phases, and the kernel's
//! counters. Filled from the session's [`Event`]s; written once the report is out.

use std::{collections::BTreeMap, io, path::Path};

use serde::Serialize;

use crate::{events::Event, kernel::attach::Placed};

/// The whole file.
#[derive(Debug, Default, Serialize)]
pub struct Stats {
    /// None when the attach did not complete.
    pub attach: Option<AttachStats>,
    /// The report's phases after tracing ended, in order.
    pub phases: Vec<Phase>,
    /// Steps taken at every sample (the RSS split's smaps read), over the whole trace.
    pub sampling: Vec<SampleCost>,
    /// Writing the report's files (`-o`), after the phases.
    pub outputs_ms: Option<f64>,
    /// Every counter of `tracer_common::counter::ALL` by name, when a recording was made.
    pub counters: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
pub struct AttachStats {
    pub pid: u32,
    /// From the start of the session to the last probe placed: preparing the target, loading
    /// and verifying the programs, attaching.
    pub millis: f64,
    /// Probes placed (uprobes and tracepoints), and the multi-uprobe links that carry uprobes.
    pub probes: usize,
    pub multi_uprobe_links: usize,
    pub placed: Vec<Placed>,
}

/// One timed step of the report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub millis: f64,
    /// What the step worked through (stacks read, addresses named), where that says more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<usize>,
}

/// What one step taken at every sample cost, over a trace.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SampleCost {
    pub name: &'static str,
    pub samples: usize,
    pub mean_ms: f64,
    pub max_ms: f64,
}

impl Stats {
    /// Takes what an event says.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Attached {
                pid,
                probes,
                multi_uprobe_links,
                millis,
                placed,
                ..
            } => {
                self.attach = Some(AttachStats {
                    pid: *pid,
                    millis: *millis,
                    probes: *probes,
                    multi_uprobe_links: *multi_uprobe_links,
                    placed: placed.clone(),
                });
            }
            Event::Phase(phase) => self.phases.push(phase.clone()),
            Event::SampleCost(cost) => self.sampling.push(cost.clone()),
            Event::Progress { .. } | Event::Notice(_) => {}
        }
    }

    pub fn write(&self, path: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        std::fs::write(path, json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::attach::{Mechanism, TRACEPOINTS};

    #[test]
    fn events_fill_the_statistics() {
        let mut stats = Stats::default();
        stats.observe(&Event::Attached {
            pid: 42,
            hooked: "/usr/lib/libc.so.6".into(),
            probes: 1,
            multi_uprobe_links: 0,
            millis: 81.5,
            placed: vec![Placed::new(&TRACEPOINTS[0], Mechanism::Tracepoint)],
        });
        stats.observe(&Event::Notice("ignored".into()));
        stats.observe(&Event::Phase(Phase {
            name: "stacks read",
            millis: 2.5,
            items: Some(7),
        }));
        stats.observe(&Event::SampleCost(SampleCost {
            name: "rss split",
            samples: 4,
            mean_ms: 1.5,
            max_ms: 3.0,
        }));
        stats.counters.insert("allocations".into(), 3);
        let json = serde_json::to_value(&stats).expect("json");
        assert_eq!(json["attach"]["millis"], 81.5);
        assert_eq!(json["attach"]["placed"][0]["program"], "exec_notice");
        assert_eq!(
            json["attach"]["placed"][0]["tracepoint"],
            "sched/sched_process_exec"
        );
        assert_eq!(
            json["phases"],
            serde_json::json!([{"name": "stacks read", "millis": 2.5, "items": 7}])
        );
        assert_eq!(
            json["sampling"],
            serde_json::json!([{"name": "rss split", "samples": 4, "mean_ms": 1.5, "max_ms": 3.0}])
        );
        assert_eq!(json["counters"]["allocations"], 3);
    }
}
