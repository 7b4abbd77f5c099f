//! Whole stacks without frame pointers: targets built -O2 -fomit-frame-pointer, allocating
//! through Debian's glibc and libstdc++ (which keep none), report their truth per call path,
//! root first. A path counts the bytes of every folded line that contains it as consecutive
//! frames, and must be within 1% of the truth.

use std::path::Path;

use tests::report::{FoldedLine, Truth, parse_folded, within_tolerance};
use tests::targets;
use tests::{serial, trace_attached, trace_launched};

/// Bytes of the lines whose frames contain `path` (`a;b;c`) as a consecutive run.
fn bytes_through(lines: &[FoldedLine], path: &str) -> u64 {
    let path: Vec<&str> = path.split(';').collect();
    lines
        .iter()
        .filter(|line| {
            line.frames
                .windows(path.len())
                .any(|window| window.iter().map(String::as_str).eq(path.iter().copied()))
        })
        .map(|line| line.bytes)
        .sum()
}

fn assert_paths(truth: &Truth, folded: &str) {
    let lines = parse_folded(folded).unwrap_or_else(|e| panic!("{e}\nwhole report:\n{folded}"));
    let mut table = String::new();
    let mut ok = true;
    for (path, &expected) in truth {
        let traced = bytes_through(&lines, path);
        ok &= within_tolerance(expected, traced);
        table.push_str(&format!(
            "{path:<50} truth {expected:>8} traced {traced:>8}\n"
        ));
    }
    eprintln!("{table}");
    assert!(
        ok,
        "traced bytes per call path differ from the truth:\n{table}\nwhole report:\n{folded}"
    );
    assert!(
        !folded.contains("[unwind pending]"),
        "stacks left pending:\n{folded}"
    );
}

/// Attaches to `exe`, lets it allocate, stops leakhound, and checks every path of its truth.
fn attach_and_check(test: &str, exe: &Path) {
    let _serial = serial();
    let (truth, folded) = trace_attached(test, exe, &[]);
    assert_paths(&truth, &folded);
}

/// Each unwind request is answered as it is read: a burst from new call sites must not fill
/// the request buffer while a backlog is read, which would leave allocations pending.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_burst_from_new_call_sites_lands_on_whole_stacks() {
    attach_and_check(
        "a_burst_from_new_call_sites_lands_on_whole_stacks",
        &targets::call_site_burst(),
    );
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn call_chain_without_frame_pointers() {
    attach_and_check("call_chain_without_frame_pointers", &targets::call_chain());
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn cxx_callers_above_operator_new_and_strdup() {
    attach_and_check(
        "cxx_callers_above_operator_new_and_strdup",
        &targets::cxx_strings(),
    );
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn thread_stacks_reach_their_entry() {
    attach_and_check("thread_stacks_reach_their_entry", &targets::thread_entry());
}

/// Launched, the first allocations come before any rule is known: every one of them goes
/// through a miss and a repair, and still lands on its whole stack.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn launched_call_chain_is_repaired_from_the_first_allocation() {
    let _serial = serial();
    let (truth, folded) = trace_launched("launched_call_chain", None, &targets::call_chain(), &[]);
    assert_paths(&truth, &folded);
}

#[test]
fn consecutive_path_matching() {
    let lines = parse_folded("_start;main;a;b 10\nmain;c;b 5\nmain;a 7\n").unwrap();
    assert_eq!(bytes_through(&lines, "main;a;b"), 10);
    assert_eq!(bytes_through(&lines, "main;a"), 17);
    assert_eq!(bytes_through(&lines, "a;c"), 0);
}
