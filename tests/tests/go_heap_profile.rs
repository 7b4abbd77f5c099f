//! What is in use inside a Go heap, from the runtime's own heap profile (runtime.mbuckets,
//! sampled at MemProfileRate), read from the target's memory with no flag: a path that keeps
//! 1 MiB buffers alive through 1-byte sub-slices must show its in-use bytes within 15% of the
//! truth, as stacks of origin `go-heap`, and a path that churns as many buffers and keeps none
//! must rank below it.

use serde_json::Value;
use tests::report::parse_folded;
use tests::runtimes::within_percent;
use tests::targets::{self, Target};
use tests::{paths, read_report, serial};

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn go_heap_profile_names_the_keeping_path() {
    let _serial = serial();
    let dir = paths::scratch("go_heap_profile_names_the_keeping_path");
    let json = dir.join("out.json");
    let folded = dir.join("out.folded");
    let truth = Target::start(&targets::go_sub_slices(), &["4"]).record_its_work(&[&json, &folded]);

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

/// A Go service attached after it has run a while: its heap was mapped before any probe was
/// there, so no traced stack names it. The runtime's own arena index (`mheap_.allArenas`) must
/// name it `go-heap`, not `other`.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn go_heap_mapped_before_the_attach_is_named_from_the_runtimes_arenas() {
    let _serial = serial();
    let test = "go_heap_mapped_before_the_attach_is_named_from_the_runtimes_arenas";
    let dir = paths::scratch(test);
    let json = dir.join("out.json");
    let truth =
        Target::start(&targets::go_sub_slices(), &["--hold-mib=64", "2"]).record_its_work(&[&json]);

    let report: Value = serde_json::from_str(&read_report(&json)).expect("JSON report");
    let regions = report["memory"]["regions"]
        .as_array()
        .expect("memory.regions");
    let resident = |kind: &str| -> u64 {
        regions
            .iter()
            .filter(|row| row["kind"] == kind)
            .map(|row| row["resident_bytes"].as_u64().expect("resident_bytes"))
            .sum()
    };
    let (held, kept) = (truth["main.hold"], truth["main.keepPrefix"]);
    let (go_heap, other) = (resident("go-heap"), resident("other"));
    let explained = report["memory"]["explained_share"]
        .as_f64()
        .expect("explained_share");
    eprintln!(
        "go heap before the attach: held {held} + kept {kept} bytes; go-heap {go_heap} resident, \
         other {other}; named kinds explain {:.1}%",
        explained * 100.0
    );
    assert_eq!(held, 64 << 20, "the target's own truth");
    // The held buffers are touched page by page; the kept ones only at their first byte (the
    // runtime does not zero memory fresh from the system), so only the held part is surely
    // resident.
    assert!(
        go_heap * 100 >= held * 95,
        "go-heap holds {go_heap} resident bytes, under the {held} held before the attach"
    );
    // Churned buffers not yet returned to the system sit in the heap too, but not many.
    assert!(
        go_heap * 100 <= (held + kept) * 130,
        "go-heap holds {go_heap} resident bytes, far over the {} the target keeps: memory that \
         is not the heap is claimed",
        held + kept
    );
    assert!(
        other < held / 8,
        "{other} resident bytes are `other`: the heap mapped before the attach is not named"
    );
    assert!(explained >= 0.9, "named kinds explain {explained}");
}
