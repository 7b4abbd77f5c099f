//! Pure accounting: the targets' truth lines, leakhound's folded report, and the comparison of
//! the two. No I/O here, so the unit tests cover it without root.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Outstanding bytes per known function, as the target itself computed them.
pub type Truth = BTreeMap<String, u64>;

/// One line of a target's stdout, read while waiting for `done`.
#[derive(Debug, PartialEq, Eq)]
pub enum TruthLine {
    Truth {
        function: String,
        bytes: u64,
    },
    Done,
    /// `ready <pid>` or anything else a target or leakhound prints on the same stream.
    Other,
}

pub fn parse_truth_line(line: &str) -> Result<TruthLine, String> {
    let line = line.trim_end();
    if line == "done" {
        return Ok(TruthLine::Done);
    }
    let Some(rest) = line.strip_prefix("truth ") else {
        return Ok(TruthLine::Other);
    };
    let (function, bytes) = rest
        .split_once(' ')
        .ok_or_else(|| format!("malformed truth line {line:?}"))?;
    let bytes = bytes
        .parse()
        .map_err(|e| format!("malformed byte count in truth line {line:?}: {e}"))?;
    Ok(TruthLine::Truth {
        function: function.to_owned(),
        bytes,
    })
}

/// One stack of a folded report: frames root first, the leaf last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedLine {
    pub frames: Vec<String>,
    pub bytes: u64,
}

impl FoldedLine {
    pub fn to_folded(&self) -> String {
        format!("{} {}", self.frames.join(";"), self.bytes)
    }
}

/// Parses `root;...;leaf BYTES` lines. The count follows the last space; blank lines are skipped.
pub fn parse_folded(text: &str) -> Result<Vec<FoldedLine>, String> {
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        let malformed = |why: &str| format!("folded line {}: {why}: {line:?}", n + 1);
        let (stack, bytes) = line.rsplit_once(' ').ok_or_else(|| malformed("no count"))?;
        let bytes = bytes.parse().map_err(|_| malformed("count is not a u64"))?;
        if stack.is_empty() {
            return Err(malformed("empty stack"));
        }
        lines.push(FoldedLine {
            frames: stack.split(';').map(str::to_owned).collect(),
            bytes,
        });
    }
    Ok(lines)
}

/// Frames of glibc's thread creation. Thread stacks (and their TLS) are allocated by
/// `pthread_create` and stay cached after the threads end, so they are outstanding; when the
/// unwinder then produces a garbage frame that happens to name a known function further up,
/// the bytes are still not that function's.
const THREAD_MACHINERY: &[&str] = &[
    "pthread_create",
    "__pthread_create_2_1",
    "allocate_stack",
    "_dl_allocate_tls",
    "_dl_allocate_tls_init",
    "allocate_dtv",
];

fn is_thread_machinery(frame: &str) -> bool {
    // glibc's internal aliases carry a __GI_ prefix (`__GI___mmap64`) when its symtab is read.
    let frame = frame.strip_prefix("__GI_").unwrap_or(frame);
    THREAD_MACHINERY.iter().any(|name| {
        frame
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['@', '.']))
    })
}

/// The known function `frame` names, if any. gcc's clone suffixes (`leak_x.constprop.0`) still
/// name `leak_x`; the targets forbid clones, but a stray one should not hide the bytes.
fn known_name<'a>(frame: &str, known: &'a BTreeSet<String>) -> Option<&'a String> {
    let base = frame.split_once('.').map_or(frame, |(base, _)| base);
    known.get(base)
}

#[derive(Debug, Default)]
pub struct Attribution {
    /// Bytes per known function, with the lines that contributed them.
    pub per_function: BTreeMap<String, (u64, Vec<FoldedLine>)>,
    /// Bytes on stacks that name no known function: the C runtime, stdio buffers, and so on.
    pub unattributed: u64,
    /// The lines behind `unattributed`: where bytes missing from a function went.
    pub unattributed_lines: Vec<FoldedLine>,
    /// Bytes that thread creation allocated, left out even when a known name appears root-ward.
    pub thread_machinery: u64,
}

impl Attribution {
    pub fn bytes(&self, function: &str) -> u64 {
        self.per_function
            .get(function)
            .map_or(0, |(bytes, _)| *bytes)
    }
}

/// Gives each line's bytes to the leaf-most frame that names a known function. Stacks of code
/// without frame pointers keep only the direct caller of the allocator exactly; frames
/// root-ward of it can be garbage, so only the leaf-most match is trusted.
pub fn attribute(lines: &[FoldedLine], known: &BTreeSet<String>) -> Attribution {
    let mut attribution = Attribution::default();
    for line in lines {
        let mut owner = None;
        for frame in line.frames.iter().rev() {
            if let Some(name) = known_name(frame, known) {
                owner = Some(name);
                break;
            }
            if is_thread_machinery(frame) {
                break;
            }
        }
        match owner {
            Some(name) => {
                let entry = attribution.per_function.entry(name.clone()).or_default();
                entry.0 += line.bytes;
                entry.1.push(line.clone());
            }
            None if line.frames.iter().any(|f| is_thread_machinery(f)) => {
                attribution.thread_machinery += line.bytes;
            }
            None => {
                attribution.unattributed += line.bytes;
                attribution.unattributed_lines.push(line.clone());
            }
        }
    }
    attribution
}

/// Within 1% of the truth; a truth of zero demands exactly zero.
pub fn within_tolerance(truth: u64, traced: u64) -> bool {
    u128::from(truth.abs_diff(traced)) * 100 <= u128::from(truth)
}

/// Compares every known function. Returns a table either way, so a passing run can be shown
/// too; the error also lists the stacks behind each mismatch.
pub fn compare(truth: &Truth, attribution: &Attribution) -> Result<String, String> {
    let mut table = format!(
        "{:<22} {:>12} {:>12} {:>12}\n",
        "function", "truth", "traced", "diff"
    );
    let mut evidence = String::new();
    let mut failed = false;
    for (function, &expected) in truth {
        let traced = attribution.bytes(function);
        let ok = within_tolerance(expected, traced);
        failed |= !ok;
        let diff = i128::from(traced) - i128::from(expected);
        let mark = if ok { "" } else { "  <-- off by more than 1%" };
        let _ = writeln!(
            table,
            "{function:<22} {expected:>12} {traced:>12} {diff:>12}{mark}"
        );
        if !ok {
            let _ = writeln!(evidence, "stacks attributed to {function}:");
            let stacks = attribution
                .per_function
                .get(function)
                .map(|(_, l)| l.as_slice());
            match stacks {
                None | Some([]) => evidence.push_str("  (none)\n"),
                Some(stacks) => {
                    for line in stacks.iter().take(20) {
                        let _ = writeln!(evidence, "  {}", line.to_folded());
                    }
                }
            }
        }
    }
    let _ = writeln!(
        table,
        "unattributed: {} bytes; thread creation: {} bytes",
        attribution.unattributed, attribution.thread_machinery
    );
    if failed {
        let mut largest: Vec<&FoldedLine> = attribution.unattributed_lines.iter().collect();
        largest.sort_by_key(|line| std::cmp::Reverse(line.bytes));
        evidence.push_str("largest unattributed stacks:\n");
        for line in largest.iter().take(10) {
            let _ = writeln!(evidence, "  {}", line.to_folded());
        }
        Err(format!("{table}{evidence}"))
    } else {
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn truth_lines() {
        assert_eq!(
            parse_truth_line("truth leak_malloc 4800\n"),
            Ok(TruthLine::Truth {
                function: "leak_malloc".into(),
                bytes: 4800
            })
        );
        assert_eq!(parse_truth_line("done"), Ok(TruthLine::Done));
        assert_eq!(parse_truth_line("ready 42"), Ok(TruthLine::Other));
        assert!(parse_truth_line("truth leak_malloc").is_err());
        assert!(parse_truth_line("truth leak_malloc -1").is_err());
    }

    #[test]
    fn folded_count_follows_the_last_space() {
        let lines = parse_folded("main;do work;leak_malloc 4800\n\nlibfoo.so+0x1234 7\n").unwrap();
        assert_eq!(
            lines,
            vec![
                FoldedLine {
                    frames: vec!["main".into(), "do work".into(), "leak_malloc".into()],
                    bytes: 4800
                },
                FoldedLine {
                    frames: vec!["libfoo.so+0x1234".into()],
                    bytes: 7
                },
            ]
        );
    }

    #[test]
    fn folded_rejects_garbage_with_the_line_number() {
        let err = parse_folded("a;b 1\nleak_malloc\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_folded("a;b x").is_err());
        assert!(parse_folded(" 5").is_err());
        assert!(parse_folded("a;b -5").is_err());
    }

    #[test]
    fn leaf_most_known_frame_wins() {
        let known = known(&["leak_malloc", "leak_calloc", "leak_mmap"]);
        let lines = parse_folded(
            "_start;main;leak_calloc;leak_malloc 100\n\
             libc.so.6+0x29d90;leak_calloc 48\n\
             main;leak_mmap;mmap64 65536\n\
             main;leak_malloc.constprop.0 4\n\
             _start;main;_IO_file_doallocate 1024\n",
        )
        .unwrap();
        let a = attribute(&lines, &known);
        assert_eq!(a.bytes("leak_malloc"), 104);
        assert_eq!(a.bytes("leak_calloc"), 48);
        assert_eq!(a.bytes("leak_mmap"), 65536);
        assert_eq!(a.unattributed, 1024);
        assert_eq!(a.thread_machinery, 0);
    }

    #[test]
    fn thread_stacks_belong_to_no_function() {
        let known = known(&["leak_in_threads"]);
        let lines = parse_folded(
            "leak_in_threads;run_threads;pthread_create@@GLIBC_2.34;mmap64 8392704\n\
             start_thread;thread_entry;leak_in_threads 2048\n\
             leak_in_threads;allocate_stack.constprop.0;__mmap 4096\n",
        )
        .unwrap();
        let a = attribute(&lines, &known);
        assert_eq!(a.bytes("leak_in_threads"), 2048);
        assert_eq!(a.thread_machinery, 8392704 + 4096);
        assert!(is_thread_machinery("pthread_create"));
        assert!(is_thread_machinery("__pthread_create_2_1"));
        assert!(is_thread_machinery("__GI__dl_allocate_tls"));
        assert!(!is_thread_machinery("pthread_created_by_me"));
    }

    #[test]
    fn tolerance_is_one_percent_and_zero_is_exact() {
        assert!(within_tolerance(10_000, 10_100));
        assert!(within_tolerance(10_000, 9_900));
        assert!(!within_tolerance(10_000, 10_101));
        assert!(within_tolerance(0, 0));
        assert!(!within_tolerance(0, 1));
        assert!(within_tolerance(u64::MAX, u64::MAX));
    }

    #[test]
    fn compare_reports_every_function_and_the_evidence() {
        let truth: Truth = [
            ("leak_malloc".to_owned(), 4800),
            ("churn_all_freed".to_owned(), 0),
        ]
        .into();
        let lines = parse_folded("main;leak_malloc 4800\nmain;churn_all_freed 64\n").unwrap();
        let a = attribute(&lines, &truth.keys().cloned().collect());
        let err = compare(&truth, &a).unwrap_err();
        assert!(err.contains("churn_all_freed"), "{err}");
        assert!(err.contains("main;churn_all_freed 64"), "{err}");

        let lines = parse_folded("main;leak_malloc 4799\n").unwrap();
        let a = attribute(&lines, &truth.keys().cloned().collect());
        let table = compare(&truth, &a).unwrap();
        assert!(table.contains("leak_malloc"), "{table}");
    }
}
