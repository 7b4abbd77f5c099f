//! What a saved recording must be before the analysis reads it: what leakhound itself could
//! have written. The analysis and the formats then rely on it (sorted sample times, one
//! history point per sample, sums that fit in their integers) without checking again.

use crate::model::{RECORDING_VERSION, Recording};

/// No byte or allocation figure reaches this: it is beyond any address space (x86-64 maps at
/// most 2^57 bytes), and leaves the reports room for sums and signed differences.
pub const MAX_FIGURE: u128 = 1 << 62;

/// The first rule a recording breaks.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Invalid {
    #[error("its version {found} is newer than this leakhound's ({RECORDING_VERSION})")]
    NewerVersion { found: u32 },
    #[error("{what} is {value}, not a finite number of seconds of at least 0")]
    BadSeconds { what: String, value: f64 },
    #[error("sample {index} (at {secs} s) comes before the sample before it")]
    SamplesOutOfOrder { index: usize, secs: f64 },
    #[error("stack {stack} has {len} history points for {samples} samples")]
    HistoryLength {
        stack: usize,
        len: usize,
        samples: usize,
    },
    #[error("{what} adds up to {value}, more than any process can hold")]
    ImpossibleFigure { what: String, value: u128 },
    #[error("stack {stack} has the sampling variance {value}, not a finite number of at least 0")]
    BadVariance { stack: usize, value: f64 },
    #[error("its byte-sampling mean {0} is outside 1 byte to 64 GiB")]
    SampleBytes(u64),
}

/// Checks every rule; the first one broken is the answer.
pub fn check(rec: &Recording) -> Result<(), Invalid> {
    if rec.version > RECORDING_VERSION {
        return Err(Invalid::NewerVersion { found: rec.version });
    }
    seconds("the duration", rec.duration_secs)?;
    if let Some(min_age) = rec.min_age_secs {
        seconds("--min-age", min_age)?;
    }
    if let Some(mean) = rec.sample_bytes
        && !(1..=tracer_common::sampling::MAX_MEAN).contains(&mean)
    {
        return Err(Invalid::SampleBytes(mean));
    }
    check_samples(rec)?;
    check_stacks(rec)?;
    if let Some(exec) = &rec.exec {
        figure("the bytes released by exec", [exec.released_bytes])?;
        figure(
            "the allocations released by exec",
            [exec.released_allocations],
        )?;
    }
    let c = &rec.counters;
    figure(
        "the bytes of untracked allocations",
        [c.alloc_map_full_bytes],
    )?;
    figure("the untracked allocations", [c.alloc_map_full])
}

fn seconds(what: &str, value: f64) -> Result<(), Invalid> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(Invalid::BadSeconds {
            what: what.to_owned(),
            value,
        })
    }
}

/// Sample times are finite, not negative, and in order; the process's memory is a possible
/// figure.
fn check_samples(rec: &Recording) -> Result<(), Invalid> {
    let mut previous = 0.0;
    for (index, sample) in rec.samples.iter().enumerate() {
        seconds(&format!("the time of sample {index}"), sample.secs)?;
        if sample.secs < previous {
            return Err(Invalid::SamplesOutOfOrder {
                index,
                secs: sample.secs,
            });
        }
        previous = sample.secs;
        if let Some(memory) = sample.memory {
            figure(
                &format!("the memory at sample {index}"),
                [memory.rss_bytes, memory.anon_bytes],
            )?;
        }
    }
    Ok(())
}

/// Every history follows the samples, and no figure or sum of figures is impossible.
fn check_stacks(rec: &Recording) -> Result<(), Invalid> {
    let samples = rec.samples.len();
    let mut per_sample = vec![0u128; samples];
    for (i, stack) in rec.stacks.iter().enumerate() {
        // A recording from before samples existed has neither samples nor histories.
        if stack.history.len() != samples {
            return Err(Invalid::HistoryLength {
                stack: i,
                len: stack.history.len(),
                samples,
            });
        }
        for (sum, &bytes) in per_sample.iter_mut().zip(&stack.history) {
            *sum += u128::from(bytes);
        }
        if let Some(ages) = &stack.ages {
            figure(&format!("the ages of stack {i}"), ages.bytes)?;
            figure(&format!("the ages of stack {i}"), ages.allocations)?;
        }
        if let Some(variance) = stack.live_bytes_variance
            && !(variance.is_finite() && variance >= 0.0)
        {
            return Err(Invalid::BadVariance {
                stack: i,
                value: variance,
            });
        }
    }
    if let Some((index, &value)) = per_sample
        .iter()
        .enumerate()
        .find(|(_, v)| **v >= MAX_FIGURE)
    {
        return Err(Invalid::ImpossibleFigure {
            what: format!("the outstanding bytes at sample {index}"),
            value,
        });
    }
    let stacks = &rec.stacks;
    figure("the outstanding bytes", stacks.iter().map(|s| s.live_bytes))?;
    figure(
        "the outstanding allocations",
        stacks.iter().map(|s| s.live_allocations),
    )?;
    figure("the bytes allocated", stacks.iter().map(|s| s.total_bytes))?;
    figure(
        "the allocations made",
        stacks.iter().map(|s| s.total_allocations),
    )
}

/// The sum of `values` is below [`MAX_FIGURE`] (and so is each of them).
fn figure(what: &str, values: impl IntoIterator<Item = u64>) -> Result<(), Invalid> {
    let value: u128 = values.into_iter().map(u128::from).sum();
    if value < MAX_FIGURE {
        Ok(())
    } else {
        Err(Invalid::ImpossibleFigure {
            what: what.to_owned(),
            value,
        })
    }
}
