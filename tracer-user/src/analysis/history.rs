//! The timeline of outstanding bytes per stack, kept bounded however long the trace runs.
//!
//! Every series shares one list of sample times. When the list grows past its cap, every other
//! sample is dropped and from then on only every other offered sample is kept, so the samples
//! stay evenly spaced, cover the whole trace, and memory stays `cap × stacks`.

use std::{collections::HashMap, hash::Hash};

use crate::model::{ProcessMemory, Sample};

/// Samples kept at most. Even, so that halving an overfull list (cap + 1, odd) keeps the
/// newest sample. Trends are quadratic in this (Theil–Sen), so it stays modest.
pub const DEFAULT_CAP: usize = 128;

// Clone: continuous mode renders a profile mid-trace from a copy (src/push).
#[derive(Clone, Debug)]
pub struct Timeline<K> {
    cap: usize,
    /// Keep one offered sample in `stride`.
    stride: u64,
    offered: u64,
    samples: Vec<Sample>,
    series: HashMap<K, Vec<u64>>,
}

impl<K: Hash + Eq + Clone> Default for Timeline<K> {
    fn default() -> Self {
        Self::new(DEFAULT_CAP)
    }
}

impl<K: Hash + Eq + Clone> Timeline<K> {
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(2) & !1,
            stride: 1,
            offered: 0,
            samples: Vec::new(),
            series: HashMap::new(),
        }
    }

    /// A periodic sample; kept or skipped according to the current stride. Keys that are not
    /// given hold nothing at this sample.
    pub fn offer(
        &mut self,
        secs: f64,
        memory: Option<ProcessMemory>,
        values: impl IntoIterator<Item = (K, u64)>,
    ) {
        let keep = self.offered.is_multiple_of(self.stride);
        self.offered += 1;
        if keep {
            self.push(secs, memory, values);
        }
    }

    /// A sample that is always kept (the one taken at the end).
    pub fn push(
        &mut self,
        secs: f64,
        memory: Option<ProcessMemory>,
        values: impl IntoIterator<Item = (K, u64)>,
    ) {
        let index = self.samples.len();
        self.samples.push(Sample { secs, memory });
        for (key, bytes) in values {
            let series = self.series.entry(key).or_default();
            // A stack first seen now held nothing before.
            series.resize(index, 0);
            series.push(bytes);
        }
        for series in self.series.values_mut() {
            series.resize(index + 1, 0);
        }
        if self.samples.len() > self.cap {
            self.halve();
        }
    }

    fn halve(&mut self) {
        fn keep_even<T: Copy>(values: &mut Vec<T>) {
            let mut i = 0;
            values.retain(|_| {
                i += 1;
                (i - 1) % 2 == 0
            });
        }
        keep_even(&mut self.samples);
        for series in self.series.values_mut() {
            keep_even(series);
        }
        self.stride *= 2;
        // The next offered sample is kept only after a whole new stride.
        self.offered = 1;
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The bytes `key` held at every sample (zeros for a key never seen).
    pub fn series(&self, key: &K) -> Vec<u64> {
        self.series
            .get(key)
            .cloned()
            .unwrap_or_else(|| vec![0; self.samples.len()])
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.series.keys()
    }
}

/// Adds `from` into `into` pointwise; the longer decides the length.
pub fn add_series(into: &mut Vec<u64>, from: &[u64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_stacks_are_padded_and_missing_ones_hold_zero() {
        let mut timeline = Timeline::new(16);
        timeline.offer(1.0, None, [("a", 10)]);
        timeline.offer(2.0, None, [("a", 20), ("b", 5)]);
        timeline.offer(3.0, None, [("b", 7)]);
        assert_eq!(timeline.series(&"a"), [10, 20, 0]);
        assert_eq!(timeline.series(&"b"), [0, 5, 7]);
        assert_eq!(timeline.series(&"never"), [0, 0, 0]);
        assert_eq!(timeline.samples().len(), 3);
    }

    #[test]
    fn stays_bounded_evenly_spaced_and_keeps_the_newest() {
        let mut timeline = Timeline::new(8);
        for i in 0..100u64 {
            timeline.offer(i as f64, None, [("a", i)]);
            assert!(timeline.samples().len() <= 8);
        }
        let secs: Vec<f64> = timeline.samples().iter().map(|s| s.secs).collect();
        let gaps: Vec<f64> = secs.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == gaps[0]), "{secs:?}");
        assert_eq!(secs[0], 0.0);
        assert!(*secs.last().unwrap() >= 100.0 - gaps[0], "{secs:?}");
        let series = timeline.series(&"a");
        assert_eq!(series.len(), secs.len());
        assert!(series.iter().zip(&secs).all(|(&b, &s)| b as f64 == s));
        timeline.push(100.5, None, [("a", 7)]);
        assert_eq!(timeline.samples().last().unwrap().secs, 100.5);
        assert_eq!(*timeline.series(&"a").last().unwrap(), 7);
    }

    #[test]
    fn series_add_pointwise() {
        let mut a = vec![1, 2];
        add_series(&mut a, &[10, 20, 30]);
        assert_eq!(a, [11, 22, 30]);
    }
}
