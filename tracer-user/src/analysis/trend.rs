//! Growth of one stack's outstanding bytes over the samples: a robust slope, how steadily it
//! moved, and a class that tells a leak from a cache that filled and from churn.
//!
//! - The slope is Theil–Sen's (the median of the slopes between every pair of samples), so one
//!   burst or one early fill does not decide it the way it would a least-squares fit.
//! - Steadiness is Kendall's tau: +1 when every later sample is above every earlier one, about
//!   0 for churn. A cache that filled in the first samples and then only replaced entries has
//!   most of its pairs tied, so its tau stays low.
//! - A leak is still growing at the end; a cache that filled is flat by then. The later half
//!   of the window must have a rising Theil–Sen slope of its own.

use serde::{Deserialize, Serialize};

/// How a stack's outstanding bytes moved over the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrendClass {
    /// Steady growth that was still going on at the end: a leak suspect.
    Growing,
    /// Flat, churning, or filled early and then held (a cache).
    Stable,
    /// Steadily released.
    Shrinking,
}

impl TrendClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Growing => "growing",
            Self::Stable => "stable",
            Self::Shrinking => "shrinking",
        }
    }
}

/// One stack's trend.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub class: TrendClass,
    /// Theil–Sen slope of outstanding bytes over time.
    pub bytes_per_second: f64,
    /// Share of the intervals between samples in which the bytes grew.
    pub grew_share: f64,
    /// Kendall's tau (tau-a) of bytes against time, from -1 to 1.
    pub steadiness: f64,
    /// Outstanding bytes at the first and the last sample.
    pub first_bytes: u64,
    pub last_bytes: u64,
    pub samples: usize,
}

/// Below this many samples there is no trend to speak of; the stack is called stable.
pub const MIN_SAMPLES: usize = 3;
/// Kendall's tau a growing (or shrinking) stack must reach.
const MIN_STEADINESS: f64 = 0.5;
/// The fitted change over the window must be at least this share of the larger end...
const MIN_RELATIVE_CHANGE: f64 = 0.1;
/// ...and at least this many bytes, so that a few stray bytes are not a trend.
const MIN_ABSOLUTE_CHANGE: f64 = 64.0;

/// The trend of `bytes` sampled at `secs` (seconds, increasing; the same length).
pub fn trend(secs: &[f64], bytes: &[u64]) -> Trend {
    let n = secs.len().min(bytes.len());
    let (secs, bytes) = (&secs[..n], &bytes[..n]);
    let mut trend = Trend {
        class: TrendClass::Stable,
        bytes_per_second: 0.0,
        grew_share: 0.0,
        steadiness: 0.0,
        first_bytes: bytes.first().copied().unwrap_or(0),
        last_bytes: bytes.last().copied().unwrap_or(0),
        samples: n,
    };
    if n < 2 {
        return trend;
    }
    trend.grew_share = bytes.windows(2).filter(|w| w[1] > w[0]).count() as f64 / (n - 1) as f64;
    // Most stacks never move; skip the quadratic work for them.
    if bytes.iter().all(|&b| b == bytes[0]) {
        return trend;
    }
    trend.bytes_per_second = theil_sen(secs, bytes);
    trend.steadiness = kendall_tau(bytes);
    if n < MIN_SAMPLES {
        return trend;
    }

    let span = secs[n - 1] - secs[0];
    // Relative to the ends rather than the peak, so that one burst cannot hide a leak.
    let level = trend.first_bytes.max(trend.last_bytes) as f64;
    let change = trend.bytes_per_second * span;
    let big_enough = change.abs() >= MIN_ABSOLUTE_CHANGE.max(MIN_RELATIVE_CHANGE * level);
    // Still moving in the later half: a cache that filled and stopped is flat there.
    let late = n / 2;
    let late_slope = theil_sen(&secs[late..], &bytes[late..]);
    trend.class = if change > 0.0
        && big_enough
        && trend.steadiness >= MIN_STEADINESS
        && late_slope > 0.0
    {
        TrendClass::Growing
    } else if change < 0.0 && big_enough && trend.steadiness <= -MIN_STEADINESS && late_slope < 0.0
    {
        TrendClass::Shrinking
    } else {
        TrendClass::Stable
    };
    trend
}

/// The median of the slopes between every pair of samples with distinct times.
fn theil_sen(secs: &[f64], bytes: &[u64]) -> f64 {
    let mut slopes = Vec::with_capacity(secs.len() * (secs.len() - 1) / 2);
    for i in 0..secs.len() {
        for j in i + 1..secs.len() {
            let dt = secs[j] - secs[i];
            if dt > 0.0 {
                slopes.push((bytes[j] as f64 - bytes[i] as f64) / dt);
            }
        }
    }
    median(&mut slopes)
}

fn median(values: &mut [f64]) -> f64 {
    let n = values.len();
    if n == 0 {
        return 0.0;
    }
    let (_, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        return upper;
    }
    // The lower middle is the largest value left of the upper one.
    let lower = values[..n / 2]
        .iter()
        .copied()
        .max_by(f64::total_cmp)
        .unwrap_or(upper);
    (lower + upper) / 2.0
}

/// Kendall's tau-a of the values against their order: ties count as neither.
fn kendall_tau(bytes: &[u64]) -> f64 {
    let n = bytes.len();
    if n < 2 {
        return 0.0;
    }
    let mut score: i64 = 0;
    for i in 0..n {
        for j in i + 1..n {
            score += match bytes[j].cmp(&bytes[i]) {
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
            };
        }
    }
    score as f64 / (n * (n - 1) / 2) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(n: usize) -> Vec<f64> {
        (1..=n).map(|i| i as f64).collect()
    }

    #[test]
    fn a_steady_leak_is_growing_at_its_rate() {
        let bytes: Vec<u64> = (1..=12).map(|i| i * 1000).collect();
        let t = trend(&seconds(12), &bytes);
        assert_eq!(t.class, TrendClass::Growing);
        assert!((t.bytes_per_second - 1000.0).abs() < 1e-9);
        assert_eq!(t.grew_share, 1.0);
        assert_eq!(t.steadiness, 1.0);
        assert_eq!((t.first_bytes, t.last_bytes, t.samples), (1000, 12000, 12));
    }

    #[test]
    fn one_burst_does_not_move_the_slope() {
        let mut bytes: Vec<u64> = (1..=12).map(|i| i * 1000).collect();
        bytes[5] = 1_000_000;
        let t = trend(&seconds(12), &bytes);
        assert_eq!(t.class, TrendClass::Growing);
        assert!((t.bytes_per_second - 1000.0).abs() < 100.0, "{t:?}");
    }

    #[test]
    fn a_cache_that_filled_early_is_stable() {
        // Filled during the first interval, then entries only replaced.
        let mut bytes = vec![40_000u64, 100_000];
        bytes.extend([100_000; 10]);
        let t = trend(&seconds(12), &bytes);
        assert_eq!(t.class, TrendClass::Stable, "{t:?}");
        assert_eq!(t.bytes_per_second, 0.0);
    }

    #[test]
    fn a_cache_that_filled_over_several_samples_then_stopped_is_not_growing() {
        // Enough rising samples to look steady, but nothing new after the first half.
        let bytes = [10u64, 20, 30, 40, 50, 60, 60, 60, 60, 60, 60, 60].map(|b| b * 1000);
        let t = trend(&seconds(12), &bytes);
        assert_ne!(t.class, TrendClass::Growing, "{t:?}");
    }

    #[test]
    fn churn_is_stable() {
        // Deterministic noise around 50 KB.
        let mut state = 12345u64;
        let bytes: Vec<u64> = (0..12)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                40_000 + (state >> 33) % 20_000
            })
            .collect();
        let t = trend(&seconds(12), &bytes);
        assert_eq!(t.class, TrendClass::Stable, "{t:?} {bytes:?}");
    }

    #[test]
    fn a_steady_release_is_shrinking() {
        let bytes: Vec<u64> = (1..=10).rev().map(|i| i * 4096).collect();
        let t = trend(&seconds(10), &bytes);
        assert_eq!(t.class, TrendClass::Shrinking);
        assert!((t.bytes_per_second + 4096.0).abs() < 1e-9);
        assert_eq!(t.grew_share, 0.0);
    }

    #[test]
    fn a_stair_step_leak_is_growing() {
        // Grows once every three samples.
        let bytes: Vec<u64> = (0..12).map(|i| (i / 3 + 1) * 256).collect();
        let t = trend(&seconds(12), &bytes);
        assert_eq!(t.class, TrendClass::Growing, "{t:?}");
        assert!((t.grew_share - 3.0 / 11.0).abs() < 1e-9);
    }

    #[test]
    fn too_few_samples_or_too_little_change_is_stable() {
        assert_eq!(
            trend(&[1.0, 2.0], &[0, 1_000_000]).class,
            TrendClass::Stable
        );
        assert_eq!(trend(&[], &[]).samples, 0);
        let tiny: Vec<u64> = (0..12).map(|i| 1_000_000 + i).collect();
        assert_eq!(trend(&seconds(12), &tiny).class, TrendClass::Stable);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut []), 0.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn uneven_and_repeated_times() {
        // The final sample can land just after the last periodic one; equal times are skipped.
        let t = trend(&[1.0, 2.0, 3.0, 3.0, 4.0], &[100, 200, 300, 300, 400]);
        assert!((t.bytes_per_second - 100.0).abs() < 1e-9);
    }
}
