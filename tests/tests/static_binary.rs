//! The static binary from `cargo xtask dist`, as a debug container runs it: alone in an empty
//! root (no libc, no loader, no `/usr`), in a mount namespace of its own and the target's PID
//! namespace, attached by the PID that namespace gives the target.

use tests::container::Container;
use tests::empty_root::{self, descendant_named};
use tests::{Run, assert_matches_truth, paths, read_report, serial, targets};

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn static_binary_in_an_empty_root_traces_a_target_in_other_namespaces() {
    let _serial = serial();
    let bin = empty_root::static_bin();
    let dir = paths::scratch("static_binary_empty_root");
    let mut container = Container::start(&targets::alloc_family());
    // The target is PID 1 of its namespace, which leakhound joins: `--pid 1`, not the host's.
    let mut run = Run::start_with(
        empty_root::command(&bin, container.host_pid, &dir),
        &["record", "--pid", "1", "-o", "/out/out.folded"],
    );
    run.wait_attached();
    container.go();
    let truth = container.read_truth();
    let leakhound = descendant_named(run.proc.pid(), "leakhound");
    // SAFETY: kill(2) on a process of this test's own tree, still running.
    assert_eq!(unsafe { libc::kill(leakhound, libc::SIGINT) }, 0);
    run.finish().assert_success();
    assert_matches_truth(&truth, &read_report(&dir.join("out.folded")));
    container.release();
}
