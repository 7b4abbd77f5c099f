//! Memory committed inside `PROT_NONE` reservations with `mprotect`, as V8 commits its heap
//! and glibc its thread stacks: counted under the stack that opened it, once, and released
//! by closing it again, by munmap, or by a fresh mapping over it.

use tests::report::{Truth, parse_folded, within_tolerance};
use tests::runtimes::bytes_through;
use tests::targets;
use tests::{assert_matches_truth, serial, trace_attached, trace_launched};

/// The target's commit made with a raw `syscall` instruction, not through libc's wrapper.
const RAW_COMMIT: &str = "commit_raw";

/// Without the syscall tracepoints, libc's wrappers are seen after their system call and a
/// raw `syscall` in a program that has libc is not seen at all (`--syscall-tracepoints` sees
/// it): every other path must match its truth, and the raw commit must count nothing rather
/// than land elsewhere.
fn assert_matches_truth_but_raw(truth: &Truth, folded: &str) {
    let mut wrapped = truth.clone();
    assert!(wrapped.remove(RAW_COMMIT).is_some_and(|bytes| bytes > 0));
    assert_matches_truth(&wrapped, folded);
    let lines = parse_folded(folded).unwrap_or_else(|e| panic!("{e}\n{folded}"));
    assert_eq!(bytes_through(&lines, RAW_COMMIT), 0, "{folded}");
}

/// Attached after the target reserved 64 MiB: the reservation is learnt from
/// `/proc/PID/maps`, the others from the probes after libc's mapping syscalls.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_attached() {
    let _serial = serial();
    let (truth, folded) =
        trace_attached("commits_match_truth_attached", &targets::committed(), &[]);
    assert_matches_truth_but_raw(&truth, &folded);
}

/// Launched with the syscall tracepoints: every reservation, the early one included, is seen
/// as it is made, and so is the raw syscall's commit.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_launched_at_the_syscall_tracepoints() {
    let _serial = serial();
    let (truth, folded) = trace_launched(
        "commits_match_truth_launched_at_the_syscall_tracepoints",
        None,
        &targets::committed(),
        &["--syscall-tracepoints"],
    );
    assert_matches_truth(&truth, &folded);
}

/// Attached, frame-pointer walks: at the probe after `mprotect`'s system call the walk starts
/// from the return address on top of the stack, as the wrapper keeps no frame.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_with_frame_pointer_walks() {
    let _serial = serial();
    let (truth, folded) = trace_attached(
        "commits_match_truth_with_frame_pointer_walks",
        &targets::committed(),
        &["--unwind", "fp"],
    );
    assert_matches_truth_but_raw(&truth, &folded);
}

/// Against musl, whose mapping functions have another shape than glibc's (no `cmp` on the
/// result after the `syscall`, and `mprotect` rounds its arguments before it): they are probed
/// at their entry and return, and every path but the raw syscall's still matches its truth.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn commits_match_truth_against_musl() {
    let _serial = serial();
    let (truth, folded) = trace_attached(
        "commits_match_truth_against_musl",
        &targets::committed_musl(),
        &[],
    );
    assert_matches_truth_but_raw(&truth, &folded);
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
    assert_matches_truth_but_raw(&truth, &folded);
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
