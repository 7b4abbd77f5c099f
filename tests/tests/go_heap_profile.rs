//! What is in use inside a Go heap, from the runtime's own heap profile (runtime.mbuckets,
//! sampled at MemProfileRate), read from the target's memory with no flag: a path that keeps
//! 1 MiB buffers alive through 1-byte sub-slices must show its in-use bytes within 15% of the
//! truth, as stacks of origin `go-heap`, and a path that churns as many buffers and keeps none
//! must rank below it.

use serde_json::Value;
use tests::report::parse_folded;
use tests::runtimes::within_percent;
use tests::targets::{self, Target};
use tests::{Run, arg, paths, read_report, serial};

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn go_heap_profile_names_the_keeping_path() {
    let _serial = serial();
    let dir = paths::scratch("go_heap_profile_names_the_keeping_path");
    let json = dir.join("out.json");
    let folded = dir.join("out.folded");
    let mut target = Target::start(&targets::go_sub_slices(), &["4"]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--interval",
        "500ms",
        "-o",
        arg(&json),
        "-o",
        arg(&folded),
    ]);
    run.wait_attached();
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.release();

    let report: Value = serde_json::from_str(&read_report(&json)).expect("JSON report");
    let stacks = report["stacks"].as_array().expect("stacks");
    let through = |name: &str| -> (u64, Option<u64>) {
        let mut bytes = 0;
        let mut best_rank = None;
        for stack in stacks.iter().filter(|s| s["origin"] == "go-heap") {
            let frames = stack["frames"].as_array().expect("frames");
            if frames.iter().any(|f| f["name"] == name) {
                bytes += stack["bytes"].as_u64().expect("bytes");
                let rank = stack["rank"].as_u64().expect("rank");
                best_rank = Some(best_rank.map_or(rank, |r: u64| r.min(rank)));
            }
        }
        (bytes, best_rank)
    };
    let (kept, kept_rank) = through("main.keepPrefix");
    let (churned, churn_rank) = through("main.churn");
    let truth_kept = truth["main.keepPrefix"];
    eprintln!(
        "go heap profile: main.keepPrefix {kept} bytes in use (truth {truth_kept}), rank {kept_rank:?}; \
         main.churn {churned} bytes, rank {churn_rank:?}"
    );
    assert!(
        within_percent(truth_kept, kept, 15),
        "main.keepPrefix holds {kept} bytes in the go-heap stacks, the truth is {truth_kept}"
    );
    assert!(
        churned * 10 < kept,
        "main.churn holds {churned} bytes, not far below main.keepPrefix's {kept}"
    );
    if let (Some(kept_rank), Some(churn_rank)) = (kept_rank, churn_rank) {
        assert!(
            kept_rank < churn_rank,
            "main.churn ranks above main.keepPrefix"
        );
    }
    // The same stacks reach the flame-graph formats.
    let lines = parse_folded(&read_report(&folded)).expect("folded");
    assert!(
        lines
            .iter()
            .any(|l| l.frames.iter().any(|f| f == "main.keepPrefix") && l.bytes >= kept / 2),
        "no folded stack through main.keepPrefix"
    );
}
