//! A saved recording: the whole [`Recording`] as JSON, which `leakhound report` reads back and
//! renders through the same analysis and formats as a live session.

use std::io;

use super::{Render, Report};
use crate::model::{RECORDING_VERSION, Recording};

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

/// Reads a saved recording. Refuses one written by a newer leakhound, whose fields this
/// build may misread.
pub fn read_recording(reader: impl io::Read) -> io::Result<Recording> {
    let recording: Recording = serde_json::from_reader(io::BufReader::new(reader))
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    if recording.version > RECORDING_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "recording version {} is newer than this leakhound's ({RECORDING_VERSION})",
                recording.version
            ),
        ));
    }
    Ok(recording)
}
