//! What a recording session is asked to do, independent of how it was asked.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use crate::{kernel::MapSizes, report::Format};

#[derive(Clone, Debug)]
pub enum TargetSpec {
    Pid(u32),
    /// argv of a command to launch.
    Command(Vec<OsString>),
}

#[derive(Clone, Debug)]
pub struct Output {
    /// `None` is stdout.
    pub path: Option<PathBuf>,
    pub format: Format,
}

#[derive(Clone, Debug)]
pub struct RecordConfig {
    pub target: TargetSpec,
    pub duration: Option<Duration>,
    pub interval: Option<Duration>,
    pub outputs: Vec<Output>,
    pub sizes: MapSizes,
    pub top: usize,
}
