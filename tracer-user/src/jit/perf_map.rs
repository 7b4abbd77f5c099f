//! Perf map files (`/tmp/perf-<pid>.map`): one `START SIZE NAME` line per piece of generated
//! code, addresses and sizes in hex (HotSpot writes a `0x` prefix, V8 does not). This module is
//! pure: it parses text and keeps ranges; reading the file is `super::PerfMapFile`'s business.
//!
//! Format: <https://github.com/torvalds/linux/blob/master/tools/perf/Documentation/jit-interface.txt>

use std::{collections::BTreeMap, sync::Arc};

use crate::model::{Frame, FrameData};

/// The module that frames named from a perf map report.
pub const JIT_MODULE: &str = "[jit]";

/// One line of a perf map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    pub start: u64,
    pub size: u64,
    pub name: &'a str,
}

/// Parses one line; `None` for blank or malformed lines, which a reader skips (a runtime may
/// be writing the file as it is read).
pub fn parse_line(line: &str) -> Option<Entry<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    let (start, rest) = line.split_once(' ')?;
    let (size, name) = rest.split_once(' ')?;
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok();
    let (start, size) = (hex(start)?, hex(size)?);
    (size > 0 && !name.is_empty()).then_some(Entry { start, size, name })
}

/// Code ranges named by perf maps, accumulated over the session. A later entry replaces the
/// ranges it overlaps (the runtime freed that code and put new code there); everything else is
/// kept, since live allocations may point at code that was freed since.
#[derive(Debug, Default)]
pub struct PerfMap {
    by_start: BTreeMap<u64, (u64, Arc<str>)>,
}

impl PerfMap {
    pub fn insert(&mut self, entry: &Entry<'_>) {
        let end = entry.start.saturating_add(entry.size);
        // Ranges never overlap each other, so only the last range starting before `end` can
        // reach into the new one from the left; every range starting inside it goes.
        let overlapping: Vec<u64> = self
            .by_start
            .range(..end)
            .rev()
            .take_while(|(_, (old_end, _))| *old_end > entry.start)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            self.by_start.remove(&start);
        }
        self.by_start
            .insert(entry.start, (end, Arc::from(entry.name)));
    }

    /// Adds every well-formed line of `text`, in order.
    pub fn add_text(&mut self, text: &str) -> usize {
        let mut added = 0;
        for entry in text.lines().filter_map(parse_line) {
            self.insert(&entry);
            added += 1;
        }
        added
    }

    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let (_, (end, name)) = self.by_start.range(..=addr).next_back()?;
        (addr < *end).then_some(name)
    }

    pub fn len(&self) -> usize {
        self.by_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

/// The frame for a perf map name, made readable: V8's `JS:*name file:line:column` becomes
/// `name` with its file and line, HotSpot's `void pkg.Class.method(int, long)` becomes
/// `pkg.Class.method`. Other names (stubs, `Interpreter`, builtins) are kept as written.
pub fn frame(name: &str) -> Frame {
    let mut frame = v8_function(name)
        .or_else(|| java_method(name))
        .unwrap_or_else(|| FrameData::named(name));
    frame.module = Some(JIT_MODULE.to_owned());
    frame.into()
}

/// `JS:~foo /app/server.js:12:5`. The prefix was `LazyCompile:` or `Function:` in older V8;
/// the marker says the tier (`~` interpreted, `^` baseline, `+` Maglev, `*` optimized).
fn v8_function(name: &str) -> Option<FrameData> {
    let rest = ["JS:", "LazyCompile:", "Function:", "Script:"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let rest = rest.trim_start_matches(['~', '^', '+', '*']);
    let (function, location) = rest.split_once(' ').unwrap_or((rest, ""));
    let (file, line) = split_location(location);
    Some(js_function(function, file, line))
}

/// A JavaScript function's frame, wherever its name came from (a perf map or V8's own
/// metadata), so that both name it alike.
pub fn js_function(function: &str, file: Option<String>, line: Option<u32>) -> FrameData {
    let function = if function.is_empty() {
        // Anonymous functions are told apart by where they are, as in a stack trace.
        match (&file, line) {
            (Some(file), Some(line)) => format!("(anonymous {}:{line})", base_name(file)),
            (Some(file), None) => format!("(anonymous {})", base_name(file)),
            _ => "(anonymous)".to_owned(),
        }
    } else {
        function.to_owned()
    };
    FrameData {
        name: function,
        module: None,
        file,
        line,
        inlined: false,
    }
}

/// `/app/server.js:12:5` into the file and line; the column is dropped.
fn split_location(location: &str) -> (Option<String>, Option<u32>) {
    if location.is_empty() {
        return (None, None);
    }
    let mut parts = location.rsplitn(3, ':');
    let (column, line, file) = (parts.next(), parts.next(), parts.next());
    match (file, line.and_then(|l| l.parse().ok()), column) {
        (Some(file), Some(line), Some(column)) if column.parse::<u32>().is_ok() => {
            (Some(file.to_owned()), Some(line))
        }
        _ => (Some(location.to_owned()), None),
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `java.lang.Object java.util.HashMap.get(java.lang.Object)`: return type, qualified method,
/// parameters. A method's name alone reads best in a flame graph, as in async-profiler's.
fn java_method(name: &str) -> Option<FrameData> {
    let open = name.find('(')?;
    if !name.ends_with(')') {
        return None;
    }
    let (return_type, method) = name[..open].rsplit_once(' ')?;
    let plausible = !return_type.is_empty()
        && method.contains('.')
        && !method.starts_with('.')
        && !method.ends_with('.');
    plausible.then(|| FrameData::named(method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hotspot_and_v8_lines() {
        assert_eq!(
            parse_line("0x00007f9668ec7920 0x00000000000001f0 int java.lang.Object.hashCode()"),
            Some(Entry {
                start: 0x7f96_68ec_7920,
                size: 0x1f0,
                name: "int java.lang.Object.hashCode()",
            })
        );
        assert_eq!(
            parse_line("7f96f0006080 124 JS:^acceptConnection /tmp/leak.js:4:26\n"),
            Some(Entry {
                start: 0x7f96_f000_6080,
                size: 0x124,
                name: "JS:^acceptConnection /tmp/leak.js:4:26",
            })
        );
    }

    #[test]
    fn skips_malformed_and_partial_lines() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("7f96f0006080"), None);
        assert_eq!(parse_line("7f96f0006080 12"), None);
        assert_eq!(parse_line("zz 12 name"), None);
        assert_eq!(parse_line("1000 0 empty"), None);
        let mut map = PerfMap::default();
        assert_eq!(map.add_text("1000 10 a\ngarbage\n2000 10 b\n3000 1"), 2);
        assert_eq!(map.lookup(0x2005), Some("b"));
        assert_eq!(map.lookup(0x3000), None);
    }

    #[test]
    fn lookups_respect_range_ends() {
        let mut map = PerfMap::default();
        map.add_text("1000 100 first\n1100 100 second\n");
        assert_eq!(map.lookup(0xfff), None);
        assert_eq!(map.lookup(0x1000), Some("first"));
        assert_eq!(map.lookup(0x10ff), Some("first"));
        assert_eq!(map.lookup(0x1100), Some("second"));
        assert_eq!(map.lookup(0x1200), None);
    }

    #[test]
    fn later_entries_replace_what_they_overlap_and_keep_the_rest() {
        let mut map = PerfMap::default();
        map.add_text("1000 100 old_a\n1100 100 old_b\n1200 100 old_c\n5000 10 far\n");
        // New code over the end of a and the start of b.
        map.add_text("1080 100 new\n");
        assert_eq!(map.lookup(0x1000), None);
        assert_eq!(map.lookup(0x1090), Some("new"));
        assert_eq!(map.lookup(0x1190), None);
        assert_eq!(map.lookup(0x1250), Some("old_c"));
        assert_eq!(map.lookup(0x5005), Some("far"));
        // The same code written again (HotSpot rewrites the whole map) changes nothing.
        map.add_text("1200 100 old_c\n");
        assert_eq!(map.lookup(0x1250), Some("old_c"));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn v8_names_become_functions_with_locations() {
        let frame = frame("JS:*acceptConnection /srv/app/leak.js:4:26");
        assert_eq!(frame.name, "acceptConnection");
        assert_eq!(frame.file.as_deref(), Some("/srv/app/leak.js"));
        assert_eq!(frame.line, Some(4));
        assert_eq!(frame.module.as_deref(), Some(JIT_MODULE));
        assert_eq!(
            super::frame("JS:~ /srv/app/leak.js:12:3").name,
            "(anonymous leak.js:12)"
        );
        assert_eq!(
            super::frame("LazyCompile:~onData node:net:300:20").name,
            "onData"
        );
        assert_eq!(
            super::frame("JS:^emit node:events:517:28").file.as_deref(),
            Some("node:events")
        );
        assert_eq!(
            super::frame("Builtin:ArrayPrototypePush").name,
            "Builtin:ArrayPrototypePush"
        );
    }

    #[test]
    fn java_names_lose_return_type_and_parameters() {
        assert_eq!(
            frame("void Leaky.acceptConnection(int)").name,
            "Leaky.acceptConnection"
        );
        assert_eq!(
            frame("java.lang.Object java.util.HashMap.get(java.lang.Object)").name,
            "java.util.HashMap.get"
        );
        assert_eq!(
            frame("long jdk.internal.misc.Unsafe.allocateMemory0(long)").name,
            "jdk.internal.misc.Unsafe.allocateMemory0"
        );
        for kept in ["Interpreter", "I2C/C2I adapters", "StubRoutines (1)"] {
            assert_eq!(frame(kept).name, kept);
        }
    }
}
