//! How long live allocations have been held: "held for hours" is a leak suspect, "freed soon"
//! is churn, even when both hold the same bytes now.

use std::hash::Hash;

use foldhash::HashMap;

use crate::model::{AGE_BOUNDS_SECS, AgeHistogram};

const NANOS: u64 = 1_000_000_000;

/// The bucket of an allocation `age_ns` old.
pub fn bucket(age_ns: u64) -> usize {
    AGE_BOUNDS_SECS
        .iter()
        .position(|&bound| age_ns < bound * NANOS)
        .unwrap_or(AGE_BOUNDS_SECS.len())
}

/// One live allocation, or one live mapping, as the age walk sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Live<K> {
    pub key: K,
    pub bytes: u64,
    /// The allocations it stands for: 1, or more under byte sampling.
    pub count: u64,
    /// What it adds to the variance of its key's estimated bytes under byte sampling (0 when
    /// recorded for certain).
    pub variance: f64,
    /// When it was made, on the clock of `now_ns` (CLOCK_MONOTONIC, which is
    /// `bpf_ktime_get_ns`'s).
    pub made_ns: u64,
}

/// Per-key ages, and the bytes and counts of allocations at least `min_age_ns` old.
#[derive(Debug)]
pub struct Ages<K> {
    pub histograms: HashMap<K, AgeHistogram>,
    /// Only allocations at least `min_age_ns` old: (bytes, allocations).
    pub old_enough: HashMap<K, (u64, u64)>,
    /// The variance of those bytes, where it is not zero.
    pub variance: HashMap<K, f64>,
}

pub fn ages<K: Hash + Eq + Copy>(
    live: impl IntoIterator<Item = Live<K>>,
    now_ns: u64,
    min_age_ns: u64,
) -> Ages<K> {
    let mut histograms: HashMap<K, AgeHistogram> = HashMap::default();
    let mut old_enough: HashMap<K, (u64, u64)> = HashMap::default();
    let mut variance: HashMap<K, f64> = HashMap::default();
    for item in live {
        // An allocation stamped after `now` was read (the walk races the target) is new.
        let age = now_ns.saturating_sub(item.made_ns);
        let histogram = histograms.entry(item.key).or_default();
        let b = bucket(age);
        histogram.allocations[b] += item.count;
        histogram.bytes[b] += item.bytes;
        if age >= min_age_ns {
            let old = old_enough.entry(item.key).or_default();
            old.0 += item.bytes;
            old.1 += item.count;
            if item.variance > 0.0 {
                *variance.entry(item.key).or_default() += item.variance;
            }
        }
    }
    Ages {
        histograms,
        old_enough,
        variance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_at_their_bounds() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(NANOS - 1), 0);
        assert_eq!(bucket(NANOS), 1);
        assert_eq!(bucket(59 * NANOS), 2);
        assert_eq!(bucket(60 * NANOS), 3);
        assert_eq!(bucket(3600 * NANOS), 4);
    }

    #[test]
    fn histograms_and_the_min_age_filter() {
        let now = 1000 * NANOS;
        let live = [
            Live {
                key: 1,
                bytes: 10,
                count: 1,
                variance: 0.0,
                made_ns: now - NANOS / 2,
            },
            Live {
                key: 1,
                bytes: 20,
                count: 1,
                variance: 0.0,
                made_ns: now - 30 * NANOS,
            },
            Live {
                key: 2,
                bytes: 5,
                count: 1,
                variance: 0.0,
                made_ns: now + 1, // stamped after `now` was read
            },
        ];
        let ages = ages(live, now, 5 * NANOS);
        let h = ages.histograms[&1];
        assert_eq!(h.allocations, [1, 0, 1, 0, 0]);
        assert_eq!(h.bytes, [10, 0, 20, 0, 0]);
        assert_eq!(ages.histograms[&2].bytes, [5, 0, 0, 0, 0]);
        assert_eq!(ages.old_enough.get(&1), Some(&(20, 1)));
        assert_eq!(ages.old_enough.get(&2), None);
    }
}
