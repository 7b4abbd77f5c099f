//! A saved recording: the whole [`Recording`] as JSON, which `leakhound report` reads back and
//! renders through the same analysis and formats as a live session.
//!
//! A recording may come from anyone, so reading one is bounded and checked: the file is read
//! up to [`MAX_RECORDING_BYTES`], every list and the frames up to the limits of
//! [`crate::model::bounded`], and the result must pass [`validate::check`] before any analysis
//! sees it.

mod validate;

use std::{
    fs::File,
    io::{self, Read as _},
    path::{Path, PathBuf},
};

pub use validate::Invalid;

use super::{Render, Report};
use crate::model::{RECORDING_VERSION, Recording, bounded};

pub struct SavedRecording;

impl Render for SavedRecording {
    fn render(&self, report: &Report, out: &mut dyn io::Write) -> io::Result<()> {
        let recording = Recording {
            version: RECORDING_VERSION,
            ..report.recording.clone()
        };
        serde_json::to_writer(&mut *out, &recording)?;
        writeln!(out)
    }
}

/// Largest recording file read. Frames repeat in full in the file, so a trace of 10,000
/// stacks 100 frames deep takes about 120 MB.
pub const MAX_RECORDING_BYTES: u64 = 512 << 20;

/// Why a recording was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    #[error("it is larger than {} MiB, more than leakhound reads", MAX_RECORDING_BYTES >> 20)]
    TooLarge,
    #[error("it is not a leakhound recording: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("it is not a consistent recording: {0}")]
    Invalid(#[from] Invalid),
}

impl RecordingError {
    pub fn hint(&self) -> &'static str {
        match self {
            Self::Io(_) => "check the path and that the file can be read",
            Self::Invalid(Invalid::NewerVersion { .. }) => {
                "render it with the leakhound that saved it, or a newer one"
            }
            Self::TooLarge | Self::Malformed(_) | Self::Invalid(_) => {
                "give a recording saved with `-o FILE.leakhound.json` or `--save FILE`, unmodified"
            }
        }
    }
}

/// A recording that could not be loaded from a path.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the recording {}: {error}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub error: RecordingError,
}

impl LoadError {
    pub fn hint(&self) -> &'static str {
        self.error.hint()
    }
}

/// Opens and reads a saved recording.
pub fn load_recording(path: &Path) -> Result<Recording, LoadError> {
    File::open(path)
        .map_err(RecordingError::from)
        .and_then(read_recording)
        .map_err(|error| LoadError {
            path: path.to_path_buf(),
            error,
        })
}

/// Reads a saved recording: bounded in size and in what it may allocate, then checked.
pub fn read_recording(reader: impl io::Read) -> Result<Recording, RecordingError> {
    read_within(reader, MAX_RECORDING_BYTES, bounded::MAX_FRAMES)
}

fn read_within(
    reader: impl io::Read,
    max_bytes: u64,
    max_frames: u64,
) -> Result<Recording, RecordingError> {
    let mut text = Vec::new();
    reader.take(max_bytes + 1).read_to_end(&mut text)?;
    if text.len() as u64 > max_bytes {
        return Err(RecordingError::TooLarge);
    }
    let recording: Recording =
        bounded::with_frame_budget(max_frames, || serde_json::from_slice(&text))?;
    validate::check(&recording)?;
    Ok(recording)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small recording as leakhound writes it, as JSON to tamper with.
    fn valid() -> serde_json::Value {
        serde_json::json!({
            "version": 1, "pid": 7, "command": "app", "duration_secs": 2.0,
            "ended_by": "SIGINT", "counters": crate::model::KernelCounters::default(),
            "mapping": crate::model::MappingCounters::default(),
            "samples": [{"secs": 1.0}, {"secs": 2.0, "memory": {"rss_bytes": 10, "anon_bytes": 5}}],
            "stacks": [{
                "origin": "malloc", "frames": [{"name": "main"}, {"name": "leak"}],
                "live_bytes": 64, "live_allocations": 1, "total_bytes": 128,
                "total_allocations": 2, "history": [0, 64]
            }]
        })
    }

    fn read(json: &serde_json::Value) -> Result<Recording, RecordingError> {
        read_recording(json.to_string().as_bytes())
    }

    fn refused(json: &serde_json::Value, expect: &str) {
        let err = read(json).expect_err("a crafted recording was accepted");
        assert!(err.to_string().contains(expect), "{err}");
    }

    #[test]
    fn a_valid_recording_reads() {
        let rec = read(&valid()).unwrap();
        assert_eq!(rec.live_bytes(), 64);
    }

    #[test]
    fn versions_from_the_future_are_refused() {
        let mut json = valid();
        json["version"] = 2.into();
        let err = read(&json).unwrap_err();
        assert!(matches!(
            err,
            RecordingError::Invalid(Invalid::NewerVersion { found: 2 })
        ));
        assert!(err.hint().contains("newer"));
    }

    #[test]
    fn times_must_be_finite_non_negative_and_in_order() {
        let mut json = valid();
        json["duration_secs"] = (-1.0).into();
        refused(&json, "the duration is -1");
        let mut json = valid();
        json["samples"][0]["secs"] = 3.0.into();
        refused(&json, "sample 1 (at 2 s) comes before");
        let mut json = valid();
        json["samples"][0]["secs"] = (-0.5).into();
        refused(&json, "sample 0");
        let mut json = valid();
        json["min_age_secs"] = (-3.0).into();
        refused(&json, "--min-age");
        // JSON has no NaN or infinity; a huge exponent overflows the number instead.
        let text = valid()
            .to_string()
            .replace("\"duration_secs\":2.0", "\"duration_secs\":1e999");
        assert!(read_recording(text.as_bytes()).is_err());
    }

    #[test]
    fn histories_follow_the_samples() {
        let mut json = valid();
        json["stacks"][0]["history"] = serde_json::json!([64]);
        refused(&json, "1 history points for 2 samples");
        let mut json = valid();
        json["stacks"][0]["history"] = serde_json::json!([]);
        refused(&json, "0 history points for 2 samples");
    }

    #[test]
    fn impossible_figures_are_refused() {
        let mut json = valid();
        json["stacks"][0]["live_bytes"] = u64::MAX.into();
        refused(&json, "the outstanding bytes adds up to");
        let mut json = valid();
        let mut stack = json["stacks"][0].clone();
        stack["live_bytes"] = (1u64 << 61).into();
        json["stacks"] = serde_json::json!([stack.clone(), stack]);
        refused(&json, "the outstanding bytes");
        let mut json = valid();
        json["stacks"][0]["history"] = serde_json::json!([0, u64::MAX]);
        refused(&json, "at sample 1");
        let mut json = valid();
        json["counters"]["alloc_map_full_bytes"] = u64::MAX.into();
        refused(&json, "untracked");
        let mut json = valid();
        json["samples"][1]["memory"]["rss_bytes"] = u64::MAX.into();
        refused(&json, "the memory at sample 1");
        let mut json = valid();
        json["stacks"][0]["live_bytes_variance"] = (-4.0).into();
        refused(&json, "variance");
        let mut json = valid();
        json["sample_bytes"] = 0.into();
        refused(&json, "sampling mean 0");
        let mut json = valid();
        json["exec"] = serde_json::json!({
            "program": "/bin/x", "released_allocations": 1, "released_bytes": u64::MAX
        });
        refused(&json, "released by exec");
    }

    #[test]
    fn lists_and_frames_are_bounded() {
        let mut json = valid();
        json["samples"] = (0..=bounded::MAX_SAMPLES)
            .map(|i| serde_json::json!({"secs": i}))
            .collect();
        refused(&json, "longer than");
        let mut json = valid();
        json["stacks"][0]["frames"] = (0..=bounded::MAX_FRAMES_PER_STACK)
            .map(|_| serde_json::json!({"name": "f"}))
            .collect();
        refused(&json, "longer than");
        // Frames over the whole file (small budgets here, for speed): the valid recording has
        // 2 frames, and 4 with its stack twice.
        let text = valid().to_string();
        assert!(read_within(text.as_bytes(), 1 << 20, 2).is_ok());
        let mut json = valid();
        let stack = json["stacks"][0].clone();
        json["stacks"] = serde_json::json!([stack.clone(), stack]);
        let err = read_within(json.to_string().as_bytes(), 1 << 20, 3).unwrap_err();
        assert!(err.to_string().contains("frames in one recording"), "{err}");
    }

    #[test]
    fn files_are_read_up_to_a_cap() {
        let text = valid().to_string();
        let len = text.len() as u64;
        assert!(read_within(text.as_bytes(), len, bounded::MAX_FRAMES).is_ok());
        assert!(matches!(
            read_within(text.as_bytes(), len - 1, bounded::MAX_FRAMES),
            Err(RecordingError::TooLarge)
        ));
        // A file that never ends is not read to its end.
        assert!(matches!(
            read_within(io::repeat(b' '), 1 << 20, bounded::MAX_FRAMES),
            Err(RecordingError::TooLarge)
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for text in ["", "{", "[]", "null", "{\"stacks\": 5}", "\u{feff}{}"] {
            assert!(
                matches!(
                    read_recording(text.as_bytes()),
                    Err(RecordingError::Malformed(_))
                ),
                "{text:?}"
            );
        }
    }
}
