//! What leakhound says of its own run in `--stats-json`: the attach time, where each probe
//! went, and the report's phases. The bench reads these rather than leakhound's log lines.

use super::*;

pub(super) struct LeakhoundStats {
    pub(super) attach_ms: f64,
    /// The library whose `free` leakhound hooked, as leakhound opened it.
    pub(super) libc: Option<PathBuf>,
    /// The file offset of `free`'s probe (past the symbol when leakhound moved it).
    pub(super) free_offset: Option<u64>,
    /// "N stacks read in X ms", one per phase of the report.
    pub(super) phases: Vec<String>,
}

impl LeakhoundStats {
    pub(super) fn read(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let stats: serde_json::Value = serde_json::from_str(text)?;
        let attach = &stats["attach"];
        let attach_ms = attach["millis"]
            .as_f64()
            .context("no attach time: leakhound did not attach")?;
        let free = attach["placed"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|row| row["what"] == "free" && row["program"] == "free_enter");
        let phases = stats["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|phase| {
                let items = phase["items"]
                    .as_u64()
                    .map(|n| format!("{n} "))
                    .unwrap_or_default();
                format!(
                    "{items}{} in {:.1} ms",
                    phase["name"].as_str().unwrap_or("?"),
                    phase["millis"].as_f64().unwrap_or(f64::NAN)
                )
            })
            .collect();
        Ok(Self {
            attach_ms,
            libc: free
                .and_then(|row| row["library"].as_str())
                .map(PathBuf::from),
            free_offset: free.and_then(|row| row["offset"].as_u64()),
            phases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_attach_the_free_probe_and_the_phases() {
        let text = r#"{
            "attach": {"pid": 7, "millis": 81.5, "probes": 3, "multi_uprobe_links": 2,
                "placed": [
                    {"program": "alloc_enter", "what": "malloc", "library": "/lib/libc.so.6",
                     "offset": 4096, "flavor": "entry", "cookie": 0, "mechanism": "multi-uprobe-link"},
                    {"program": "free_enter", "what": "free", "library": "/lib/libc.so.6",
                     "offset": 8195, "flavor": "entry", "cookie": 0, "mechanism": "multi-uprobe-link"}
                ]},
            "phases": [{"name": "kernel maps read", "millis": 377.04},
                       {"name": "stacks read", "millis": 27.0, "items": 10000}],
            "outputs_ms": 12.0,
            "counters": {"allocations": 5}
        }"#;
        let stats = LeakhoundStats::parse(text).expect("parses");
        assert_eq!(stats.attach_ms, 81.5);
        assert_eq!(stats.libc.as_deref(), Some(Path::new("/lib/libc.so.6")));
        assert_eq!(stats.free_offset, Some(8195));
        assert_eq!(
            stats.phases,
            [
                "kernel maps read in 377.0 ms",
                "10000 stacks read in 27.0 ms"
            ]
        );
        assert!(LeakhoundStats::parse(r#"{"attach": null}"#).is_err());
    }
}
