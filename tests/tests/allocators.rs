//! Allocators other than glibc's, found by their symbols: jemalloc, tcmalloc and mimalloc from
//! Debian's packages, preloaded (LD_PRELOAD), and jemalloc linked into the executable; and
//! glibc's malloc in a statically linked executable, found in its .symtab. Each is traced
//! against alloc_family.c's own truth, within 1% per function.
//!
//! A function the allocator does not define (jemalloc 5.3 has no pvalloc) is not called by
//! the target, whose truth for it is then 0 (see `allocator_has` in alloc_family.c): glibc's
//! version would allocate from glibc's heap, and the allocator's free would crash on it.

use std::path::Path;
use std::process::Command;

use tests::targets::{self, Target, read_truth};
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial, trace_attached};

const LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";

/// The library's path, or a printed skip when its Debian package is missing.
fn library(test: &str, file: &str, package: &str) -> Option<String> {
    let path = Path::new(LIB_DIR).join(file);
    if path.exists() {
        return Some(path.to_string_lossy().into_owned());
    }
    println!(
        "skipped: {test} needs {} (Debian package {package})",
        path.display()
    );
    None
}

/// `leakhound record -- alloc_family` with LD_PRELOAD in leakhound's environment, which the
/// command inherits and `ld.so --list` honours. Returns leakhound's stderr.
fn launch_preloaded(test: &str, preload: &str, exe: &Path) -> Vec<String> {
    let dir = paths::scratch(test);
    let out = dir.join("out.folded");
    let mut cmd = Command::new(tests::leakhound_bin());
    cmd.env("LD_PRELOAD", preload);
    // The ELF module's debug lines say where each probe went (see `assert_probes_moved`).
    cmd.env("RUST_LOG", "tracer_user::process::elf=debug");
    let run = Run::start_with(
        cmd,
        &["record", "-o", arg(&out), "--", arg(exe), "--now", "--exit"],
    );
    let truth = read_truth(&run.proc.stdout, test);
    let outcome = run.finish();
    outcome.assert_success();
    assert_matches_truth(&truth, &read_report(&out));
    outcome.stderr
}

/// The run's truth was checked with `malloc` and `free` of the preloaded allocator probed
/// past their entries, onto instructions the kernel emulates (their first ones it would
/// single-step): a moved probe counts the same bytes per function as one at the entry.
/// glibc's `malloc` (`push %r12`) is never moved, and its `free` is: so a moved `malloc` is
/// the allocator's, and a second moved `free` too.
fn assert_probes_moved(stderr: &[String]) {
    let moved = |name: &str| {
        stderr
            .iter()
            .filter(|line| line.contains(&format!("probe offset: {name} at +")))
            .count()
    };
    assert!(moved("malloc") >= 1, "malloc was not moved: {stderr:?}");
    assert!(moved("free") >= 2, "free was not moved: {stderr:?}");
}

fn attached_line(stderr: &[String]) -> &str {
    stderr
        .iter()
        .find(|line| line.starts_with("leakhound: attached"))
        .expect("an attach line")
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jemalloc_preloaded_launch() {
    let Some(lib) = library(
        "jemalloc_preloaded_launch",
        "libjemalloc.so.2",
        "libjemalloc2",
    ) else {
        return;
    };
    let _serial = serial();
    let stderr = launch_preloaded("jemalloc_preloaded_launch", &lib, &targets::alloc_family());
    assert!(
        attached_line(&stderr).contains("libjemalloc.so.2"),
        "{stderr:?}"
    );
    assert_probes_moved(&stderr);
    // jemalloc 5.3 has no pvalloc: the target said it left it out (truth 0, traced 0).
    assert!(
        stderr
            .iter()
            .any(|l| l.contains("pvalloc is not the allocator's")),
        "expected the target's note that jemalloc lacks pvalloc: {stderr:?}"
    );
}

/// Attached by PID to a running process that preloaded jemalloc: found from its mappings.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jemalloc_preloaded_attach() {
    let Some(lib) = library(
        "jemalloc_preloaded_attach",
        "libjemalloc.so.2",
        "libjemalloc2",
    ) else {
        return;
    };
    let _serial = serial();
    let dir = paths::scratch("jemalloc_preloaded_attach");
    let out = dir.join("out.folded");
    let mut target = Target::start_with_env(&targets::alloc_family(), &[], &[("LD_PRELOAD", &lib)]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&["record", "--pid", &pid, "-o", arg(&out)]);
    let attached = run.wait_attached();
    assert!(attached.contains("libjemalloc.so.2"), "{attached}");
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    assert_matches_truth(&truth, &read_report(&out));
    target.release();
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn tcmalloc_preloaded_launch() {
    let Some(lib) = library(
        "tcmalloc_preloaded_launch",
        "libtcmalloc_minimal.so.4",
        "libtcmalloc-minimal4",
    ) else {
        return;
    };
    let _serial = serial();
    let stderr = launch_preloaded("tcmalloc_preloaded_launch", &lib, &targets::alloc_family());
    assert!(
        attached_line(&stderr).contains("libtcmalloc_minimal.so.4"),
        "{stderr:?}"
    );
    assert_probes_moved(&stderr);
}

/// tcmalloc replaces `munmap` and `mremap` with its own, which make the system call through
/// libc's `syscall()`: with no syscall tracepoint attached they are probed at their entry and
/// return, and the committed target's unmaps still match its truth (all but the commit made
/// with a raw `syscall` instruction, which only `--syscall-tracepoints` sees).
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn tcmalloc_own_munmap_is_probed_at_its_entry() {
    let test = "tcmalloc_own_munmap_is_probed_at_its_entry";
    let Some(lib) = library(test, "libtcmalloc_minimal.so.4", "libtcmalloc-minimal4") else {
        return;
    };
    let _serial = serial();
    let out = paths::scratch(test).join("out.folded");
    let mut cmd = Command::new(tests::leakhound_bin());
    cmd.env("LD_PRELOAD", &lib);
    cmd.env("RUST_LOG", "tracer_user::process::elf=debug");
    let exe = targets::committed();
    let run = Run::start_with(
        cmd,
        &[
            "record",
            "-o",
            arg(&out),
            "--",
            arg(&exe),
            "--now",
            "--exit",
        ],
    );
    let mut truth = read_truth(&run.proc.stdout, test);
    let outcome = run.finish();
    outcome.assert_success();
    for name in ["munmap", "mremap"] {
        let line = format!("no probe point after {name}'s system call: probed at its entry");
        assert!(
            outcome.stderr.iter().any(|l| l.contains(&line)),
            "{name}: {:?}",
            outcome.stderr
        );
    }
    assert!(truth.remove("commit_raw").is_some());
    assert_matches_truth(&truth, &read_report(&out));
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn mimalloc_preloaded_launch() {
    let Some(lib) = library(
        "mimalloc_preloaded_launch",
        "libmimalloc.so.2",
        "libmimalloc2.0",
    ) else {
        return;
    };
    let _serial = serial();
    let stderr = launch_preloaded("mimalloc_preloaded_launch", &lib, &targets::alloc_family());
    // mimalloc's malloc copies its size to %rsi and reuses %rdi before its first branch: the
    // probe there reads the size from %rsi (tracer_common::entry_args::RSI).
    assert!(
        stderr
            .iter()
            .any(|line| line.contains("probe offset: malloc at +") && line.contains("[5, 0, 0, 0]")),
        "{stderr:?}"
    );
    assert!(
        attached_line(&stderr).contains("libmimalloc.so.2"),
        "{stderr:?}"
    );
    assert_probes_moved(&stderr);
}

/// jemalloc linked into the executable (Debian's libjemalloc_pic.a): the executable's own
/// symbols name the allocator, in launch mode and by PID.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jemalloc_linked_statically() {
    if !Path::new(targets::JEMALLOC_ARCHIVE).exists() {
        println!(
            "skipped: jemalloc_linked_statically needs {} (Debian package libjemalloc-dev)",
            targets::JEMALLOC_ARCHIVE
        );
        return;
    }
    let _serial = serial();
    let exe = targets::alloc_family_jemalloc_static();
    let stderr = launch_preloaded("jemalloc_linked_statically", "", &exe);
    assert!(
        attached_line(&stderr).contains("alloc_family.jemalloc-static"),
        "the executable itself should be hooked: {stderr:?}"
    );

    let (truth, folded) = trace_attached("jemalloc_linked_statically_attach", &exe, &[]);
    assert_matches_truth(&truth, &folded);
}

/// A fully static executable (glibc linked in) that keeps its symbol table: glibc's malloc
/// is found in its .symtab.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn static_glibc_from_symtab() {
    let _serial = serial();
    let exe = targets::static_target();
    let stderr = launch_preloaded("static_glibc_from_symtab", "", &exe);
    assert!(
        attached_line(&stderr).contains("static_target"),
        "{stderr:?}"
    );
}
