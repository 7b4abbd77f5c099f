//! Memory committed inside `PROT_NONE` reservations with `mprotect`, as V8 commits its heap
//! and glibc its thread stacks: counted under the stack that opened it, once, and released
//! by closing it again, by munmap, or by a fresh mapping over it.

use tests::report::{parse_folded, within_tolerance};
use tests::targets;
use tests::{assert_matches_truth, serial, trace_attached, trace_launched};

/// Attached after the target reserved 64 MiB: the reservation is learnt from
/// `/proc/PID/maps`, the others from the mapping events.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_attached() {
    let _serial = serial();
    let (truth, folded) =
        trace_attached("commits_match_truth_attached", &targets::committed(), &[]);
    assert_matches_truth(&truth, &folded);
}

/// Launched: every reservation, the early one included, is seen as it is made.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_launched() {
    let _serial = serial();
    let (truth, folded) = trace_launched(
        "commits_match_truth_launched",
        None,
        &targets::committed(),
        &[],
    );
    assert_matches_truth(&truth, &folded);
}

/// With unwind answers as late as a loaded machine gives them, every commit from a new call
/// site misses and is repaired, and two commits that start at one address (commit_heap's last
/// MiB and commit_overlap's range) are each repaired to their own stack.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_when_unwind_answers_are_late() {
    let _serial = serial();
    let mut via = std::process::Command::new(tests::leakhound_fault_bin());
    via.env("LEAKHOUND_TEST_UNWIND_ANSWER_DELAY_MS", "30");
    let (truth, folded) = trace_launched(
        "commits_match_truth_when_unwind_answers_are_late",
        Some(via),
        &targets::committed(),
        &[],
    );
    assert_matches_truth(&truth, &folded);
}

/// glibc opens each thread stack with mprotect: the committed bytes are the stack sizes the
/// program asked for, under the function that created the threads.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn thread_stacks_are_their_sizes() {
    let _serial = serial();
    let (truth, folded) = trace_attached(
        "thread_stacks_are_their_sizes",
        &targets::thread_stacks(),
        &[],
    );
    let lines = parse_folded(&folded).unwrap_or_else(|e| panic!("{e}\n{folded}"));
    // The stacks themselves, not the thread descriptors' TLS that glibc callocs beside them.
    let allocator = ["malloc", "calloc", "realloc", "posix_memalign", "memalign"];
    let stacks: u64 = lines
        .iter()
        .filter(|l| l.frames.iter().any(|f| f == "start_stack_threads"))
        .filter(|l| {
            !l.frames
                .last()
                .is_some_and(|f| allocator.contains(&f.as_str()))
        })
        .map(|l| l.bytes)
        .sum();
    let expected = truth["start_stack_threads"];
    eprintln!(
        "thread stacks: {stacks} bytes committed under start_stack_threads, truth {expected}"
    );
    assert!(
        within_tolerance(expected, stacks),
        "thread stacks {stacks} bytes, truth {expected}:\n{folded}"
    );
}
