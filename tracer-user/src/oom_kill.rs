//! How a trace that the OOM killer ended is described: `OOM kill`, with the RSS the kernel
//! recorded for the victim and the memory cgroup's limit that it enforced.

use std::path::Path;

use crate::{
    exec_watch::OomKill,
    process::cgroup_memory::{CgroupMemory, CgroupReading},
    report::human_bytes,
};

/// How every `ended_by` of an OOM kill starts.
pub const OOM_KILL: &str = "OOM kill";

/// Why tracing ended, read now from the cgroup (it outlives the killed process).
pub fn ended_by(kill: OomKill, cgroup: Option<&CgroupMemory>) -> String {
    let reading = cgroup.map(|cgroup| (cgroup.limit_file(), cgroup.read()));
    describe(
        kill,
        reading
            .as_ref()
            .map(|(file, reading)| (file.as_path(), *reading)),
    )
}

/// `OOM kill: RSS 63.1 MiB at the kill; memory cgroup limit 64.0 MiB (memory.limit_in_bytes
/// of /sys/fs/cgroup/memory/app)`.
pub fn describe(kill: OomKill, cgroup: Option<(&Path, CgroupReading)>) -> String {
    let rss = match kill.rss_bytes {
        Some(bytes) => format!("RSS {} ({bytes} bytes) at the kill", human_bytes(bytes)),
        None => "RSS at the kill not given by this kernel".to_owned(),
    };
    let limit = match cgroup {
        Some((file, reading)) => {
            let path = file.display().to_string();
            let shown = crate::names::shown(&path);
            match reading.limit {
                Some(limit) => format!(
                    "memory cgroup limit {} ({limit} bytes, {shown})",
                    human_bytes(limit)
                ),
                None => format!("no memory cgroup limit ({shown}): the machine ran out"),
            }
        }
        None => "memory cgroup limit unknown (no memory cgroup mounted here)".to_owned(),
    };
    format!("{OOM_KILL}: {rss}; {limit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_rss_and_the_limit() {
        let file = Path::new("/sys/fs/cgroup/memory/app/memory.limit_in_bytes");
        let text = describe(
            OomKill {
                rss_bytes: Some(66_060_288),
            },
            Some((
                file,
                CgroupReading {
                    limit: Some(67_108_864),
                    usage: Some(67_000_000),
                },
            )),
        );
        assert_eq!(
            text,
            "OOM kill: RSS 63.0 MiB (66060288 bytes) at the kill; memory cgroup limit 64.0 MiB (67108864 bytes, /sys/fs/cgroup/memory/app/memory.limit_in_bytes)"
        );
        assert!(
            describe(OomKill { rss_bytes: None }, None)
                .starts_with("OOM kill: RSS at the kill not given")
        );
    }
}
