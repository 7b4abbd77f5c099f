//! The process's RSS beside what the tracer tracks: how much of the growth is explained by
//! outstanding allocations, and how much is allocator retention or memory leakhound does not
//! see (allocations made before attach, other allocators, file mappings, thread stacks).

use serde::Serialize;

use crate::model::{ProcessMemory, Recording};

/// Reads `Rss:` and `Anonymous:` (in kB) from the text of `/proc/PID/smaps_rollup`.
pub fn parse_smaps_rollup(text: &str) -> Option<ProcessMemory> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kb * 1024)
        })
    };
    Some(ProcessMemory {
        rss_bytes: field("Rss")?,
        anon_bytes: field("Anonymous")?,
        cgroup: None,
    })
}

/// The memory figures at one sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MemoryPoint {
    pub secs: f64,
    pub rss_bytes: u64,
    pub anon_bytes: u64,
    /// Outstanding bytes the tracer tracked at that sample (all stacks).
    pub tracked_bytes: u64,
    /// The memory cgroup's usage and limit, where it was read.
    pub cgroup: Option<crate::model::CgroupUse>,
}

/// The first and last samples at which the target's memory was read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Reconciliation {
    pub first: MemoryPoint,
    pub last: MemoryPoint,
}

impl Reconciliation {
    pub fn rss_growth(&self) -> i64 {
        self.last.rss_bytes as i64 - self.first.rss_bytes as i64
    }

    pub fn anon_growth(&self) -> i64 {
        self.last.anon_bytes as i64 - self.first.anon_bytes as i64
    }

    pub fn tracked_growth(&self) -> i64 {
        self.last.tracked_bytes as i64 - self.first.tracked_bytes as i64
    }

    /// Share of the anonymous memory's growth that tracked allocations account for, when
    /// anonymous memory grew at all. Can exceed 1: malloc'd memory not yet touched is
    /// tracked but not resident.
    pub fn explained_share(&self) -> Option<f64> {
        let anon = self.anon_growth();
        (anon > 0).then(|| self.tracked_growth() as f64 / anon as f64)
    }

    /// Anonymous growth that tracked allocations do not explain: memory the allocator kept
    /// after frees, or that leakhound did not see. Negative when tracking explains more.
    pub fn unexplained_growth(&self) -> i64 {
        self.anon_growth() - self.tracked_growth()
    }
}

/// Outstanding tracked bytes at every sample.
pub fn tracked_per_sample(recording: &Recording) -> Vec<u64> {
    let mut tracked = vec![0u64; recording.samples.len()];
    for stack in recording
        .stacks
        .iter()
        .filter(|stack| stack.origin.counts_in_totals())
    {
        for (total, bytes) in tracked.iter_mut().zip(&stack.history) {
            *total += bytes;
        }
    }
    tracked
}

pub fn reconcile(recording: &Recording) -> Option<Reconciliation> {
    let tracked = tracked_per_sample(recording);
    let mut points =
        recording
            .samples
            .iter()
            .zip(&tracked)
            .filter_map(|(sample, &tracked_bytes)| {
                sample.memory.map(|memory| MemoryPoint {
                    secs: sample.secs,
                    rss_bytes: memory.rss_bytes,
                    anon_bytes: memory.anon_bytes,
                    tracked_bytes,
                    cgroup: memory.cgroup,
                })
            });
    let first = points.next()?;
    let last = points.next_back().unwrap_or(first);
    Some(Reconciliation { first, last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Origin, Sample, StackRecord};

    #[test]
    fn parses_the_rollup() {
        let text = "556ac91d7000-7ffdacd27000 ---p 00000000 00:00 0   [rollup]\n\
                    Rss:                1608 kB\nPss:                 336 kB\n\
                    Pss_Anon:            112 kB\nAnonymous:           112 kB\nKSM: 0 kB\n";
        assert_eq!(
            parse_smaps_rollup(text),
            Some(ProcessMemory {
                rss_bytes: 1608 * 1024,
                anon_bytes: 112 * 1024,
                cgroup: None,
            })
        );
        assert_eq!(parse_smaps_rollup("Rss: 10 kB\n"), None);
    }

    fn memory(rss: u64, anon: u64) -> Option<ProcessMemory> {
        Some(ProcessMemory {
            rss_bytes: rss,
            anon_bytes: anon,
            cgroup: None,
        })
    }

    #[test]
    fn growth_is_split_into_tracked_and_the_rest() {
        let recording = Recording {
            samples: vec![
                Sample {
                    secs: 1.0,
                    memory: memory(10_000, 4_000),
                },
                Sample {
                    secs: 2.0,
                    memory: memory(15_000, 8_000),
                },
                // The target had exited: no memory, and this sample is not used.
                Sample {
                    secs: 3.0,
                    memory: None,
                },
            ],
            stacks: vec![StackRecord {
                origin: Origin::Malloc,
                frames: vec![],
                live_bytes: 3_000,
                live_allocations: 3,
                total_bytes: 3_000,
                total_allocations: 3,
                history: vec![0, 3_000, 3_000],
                ages: None,
                live_bytes_variance: None,
            }],
            ..Recording::default()
        };
        let r = reconcile(&recording).unwrap();
        assert_eq!((r.first.secs, r.last.secs), (1.0, 2.0));
        assert_eq!(r.rss_growth(), 5_000);
        assert_eq!(r.anon_growth(), 4_000);
        assert_eq!(r.tracked_growth(), 3_000);
        assert_eq!(r.explained_share(), Some(0.75));
        assert_eq!(r.unexplained_growth(), 1_000);
        assert!(reconcile(&Recording::default()).is_none());
    }
}
