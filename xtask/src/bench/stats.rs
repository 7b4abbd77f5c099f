//! What leakhound says of its own run in `--stats-json`: the attach time, where each probe
//! went, and the report's phases. The bench reads these rather than leakhound's log lines.

use super::*;

pub(super) struct LeakhoundStats {
    pub(super) attach_ms: f64,
    /// The library whose `free` leakhound hooked, as leakhound opened it.
    pub(super) libc: Option<PathBuf>,
    /// "N stacks read in X ms", one per phase of the report.
    pub(super) phases: Vec<String>,
    /// Every entry probe placed: the function, and the file offset of the probe.
    pub(super) entries: Vec<(String, u64)>,
    /// The RSS split read at every sample: samples, mean and longest ms.
    pub(super) rss_split: Option<(u64, f64, f64)>,
}

/// The most bytes past a function's symbol that a moved entry probe is looked for.
const MAX_SKIP: u64 = 256;

impl LeakhoundStats {
    /// How far past their symbols leakhound placed `allocator`'s malloc and free probes.
    pub(super) fn skips(&self, allocator: &Libc) -> Skips {
        Skips {
            malloc: self.entry_skip("malloc", allocator.malloc).unwrap_or(0),
            free: self.entry_skip("free", allocator.free).unwrap_or(0),
        }
    }

    /// How far past `entry` (a function's file offset) leakhound placed the entry probe of
    /// `name`, if it placed one there.
    pub(super) fn entry_skip(&self, name: &str, entry: u64) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(what, _)| what == name)
            .filter_map(|(_, offset)| offset.checked_sub(entry))
            .find(|skip| *skip < MAX_SKIP)
    }
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
            .find(|row| {
                row["what"] == "free"
                    && (row["program"] == "free_enter" || row["program"] == "free_enter_moved")
            });
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
        let entries = attach["placed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|row| row["flavor"] != "return")
            .filter_map(|row| Some((row["what"].as_str()?.to_owned(), row["offset"].as_u64()?)))
            .collect();
        let rss_split = stats["sampling"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|cost| cost["name"] == "rss split")
            .and_then(|cost| {
                Some((
                    cost["samples"].as_u64()?,
                    cost["mean_ms"].as_f64()?,
                    cost["max_ms"].as_f64()?,
                ))
            });
        Ok(Self {
            entries,
            rss_split,
            attach_ms,
            libc: free
                .and_then(|row| row["library"].as_str())
                .map(PathBuf::from),
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
            "sampling": [{"name": "rss split", "samples": 4, "mean_ms": 1.5, "max_ms": 3.0}],
            "outputs_ms": 12.0,
            "counters": {"allocations": 5}
        }"#;
        let stats = LeakhoundStats::parse(text).expect("parses");
        assert_eq!(stats.attach_ms, 81.5);
        assert_eq!(stats.libc.as_deref(), Some(Path::new("/lib/libc.so.6")));
        assert_eq!(stats.entry_skip("free", 8192), Some(3));
        assert_eq!(
            stats.phases,
            [
                "kernel maps read in 377.0 ms",
                "10000 stacks read in 27.0 ms"
            ]
        );
        assert_eq!(stats.rss_split, Some((4, 1.5, 3.0)));
        assert!(LeakhoundStats::parse(r#"{"attach": null}"#).is_err());
    }
}
