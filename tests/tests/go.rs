//! A Go program (no cgo: statically linked, no libc, no malloc) traced at the mapping
//! syscalls only. Go keeps frame pointers, so the stacks name Go functions.
//!
//! What "the bytes right" means here: Go's heap is not malloc'd. The runtime reserves arenas
//! with PROT_NONE mmaps (not counted: address space, not memory) and then maps parts of them
//! read-write with `sysMap` as the heap grows; that is what `runtime.MemStats.HeapSys` counts.
//! So the mmap bytes on stacks through `main.leakBuffers` and `runtime.sysMap` must match the
//! growth of HeapSys across the call within 1%, and the bytes the function keeps within 1%.
//! The runtime's metadata for the new arenas (`persistentalloc`, GCSys/OtherSys) shows on
//! other stacks under the same function and is not part of the comparison.

use tests::report::parse_folded;
use tests::targets::{self, Target};
use tests::{Run, arg, paths, read_report, serial};

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn go_heap_growth_by_pid() {
    let _serial = serial();
    let dir = paths::scratch("go_heap_growth_by_pid");
    let out = dir.join("out.folded");
    let mut target = Target::start(&targets::go_heap(), &[]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&["record", "--pid", &pid, "-o", arg(&out)]);
    let attached = run.wait_attached();
    assert!(attached.contains("raw mapping syscalls only"), "{attached}");
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.release();

    let folded = read_report(&out);
    let lines = parse_folded(&folded).unwrap_or_else(|e| panic!("{e}\n{folded}"));
    let has = |frames: &[String], name: &str| frames.iter().any(|f| f == name);
    for name in [
        "main.leakBuffers",
        "main.main",
        "runtime.mallocgc",
        "runtime.sysMap",
    ] {
        assert!(
            lines.iter().any(|l| has(&l.frames, name)),
            "no frame named {name} in:\n{folded}"
        );
    }
    let heap: u64 = lines
        .iter()
        .filter(|l| has(&l.frames, "main.leakBuffers") && has(&l.frames, "runtime.sysMap"))
        .map(|l| l.bytes)
        .sum();
    let kept = truth["main.leakBuffers"];
    let heap_sys = truth["heap_sys"];
    eprintln!(
        "go: heap mapped under main.leakBuffers {heap} bytes; HeapSys growth {heap_sys}; kept {kept}"
    );
    for (what, expected) in [("HeapSys growth", heap_sys), ("bytes kept", kept)] {
        assert!(
            tests::report::within_tolerance(expected, heap),
            "heap mmap bytes under main.leakBuffers ({heap}) differ from the {what} ({expected}) by more than 1%:\n{folded}"
        );
    }
}
