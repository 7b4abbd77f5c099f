//! The kernel side as user space sees it: loading and attaching the programs, and reading
//! what they gathered.

pub mod attach;
pub mod batch;
pub(crate) mod faults;
pub mod loader;
pub mod maps;
pub mod multi_uprobe;
pub mod oom_format;
pub mod probe_cost;
pub mod reader;
pub mod snapshot;
pub mod sys;
pub mod tracefs;

pub use loader::{Detaching, MapSizes, Probes};
