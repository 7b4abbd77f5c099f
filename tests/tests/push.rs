//! Continuous mode against a loopback receiver that speaks Pyroscope's ingest API: every
//! pushed profile is read back with `go tool pprof` and its bytes per stack compared with the
//! target's truth; a store that refuses at first gets the profile again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::ingest_receiver::{Ingested, Receiver};
use tests::pprof::pprof_folded;
use tests::process::TIMEOUT;
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial, targets};

fn save(dir: &Path, index: usize, request: &Ingested) -> std::path::PathBuf {
    let path = dir.join(format!("push-{index}.pb.gz"));
    std::fs::write(&path, request.profile()).expect("the profile written");
    path
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn pushed_profiles_match_the_truth() {
    let _serial = serial();
    let dir = paths::scratch("push");
    // The first push is refused: it must come again, and tracing must not wait for it.
    let receiver = Receiver::start(1);
    let mut target = targets::Target::start(&targets::alloc_family(), &[]);
    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--push",
        &receiver.url,
        "--push-every",
        "1s",
        "--service",
        "lh-push-test",
        "-o",
        arg(&dir.join("out.folded")),
    ]);
    run.wait_attached();
    target.go();
    let truth = target.read_truth();
    let truth_at = Instant::now();
    // Two periodic pushes after the target's allocations (the refused one came again).
    let deadline = Instant::now() + TIMEOUT;
    while receiver
        .received()
        .iter()
        .filter(|r| r.accepted && r.at > truth_at + Duration::from_millis(1100))
        .count()
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "no periodic push after the allocations"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();
    target.release();
    assert_matches_truth(&truth, &read_report(&dir.join("out.folded")));

    let received = receiver.received();
    assert!(!received[0].accepted, "the first push was refused");
    let accepted: Vec<&Ingested> = received.iter().filter(|r| r.accepted).collect();
    assert!(
        accepted.len() >= 3,
        "periodic pushes and a final one: {}",
        accepted.len()
    );
    // The refused profile came again: same period.
    assert_eq!(accepted[0].param("from"), received[0].param("from"));
    let mut last_until = 0u64;
    for (index, request) in accepted.iter().enumerate() {
        assert!(request.target.starts_with("/ingest?"), "{}", request.target);
        assert_eq!(request.param("format").as_deref(), Some("pprof"));
        let name = request.param("name").expect("name");
        assert!(
            name.starts_with("lh-push-test{")
                && name.contains(&format!("pid={pid}"))
                && name.contains("host="),
            "labels in {name}"
        );
        let (from, until): (u64, u64) = (
            request.param("from").unwrap().parse().unwrap(),
            request.param("until").unwrap().parse().unwrap(),
        );
        assert!(
            from < until && from >= last_until,
            "periods in order: {from}..{until}"
        );
        last_until = until;
        let profile = save(&dir, index, request);
        // Every location has a mapping (Pyroscope drops those that do not), and the four
        // sample types are there.
        let raw = Command::new("go")
            .args(["tool", "pprof", "-raw"])
            .arg(&profile)
            .env("HOME", &dir)
            .output()
            .expect("go tool pprof -raw");
        let raw = String::from_utf8_lossy(&raw.stdout);
        assert!(
            raw.contains(
                "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes"
            ),
            "sample types:\n{raw}"
        );
        let locations = raw.split("Locations").nth(1).expect("a location table");
        let mappings = raw.split("Mappings").nth(1).unwrap_or_default();
        let locations = locations.split("Mappings").next().unwrap_or_default();
        for line in locations.lines().filter(|l| l.contains("M=")) {
            assert!(
                !line.contains("M=0 "),
                "a location without a mapping: {line}\n{mappings}"
            );
        }
        // Pushed after the allocations: in-use bytes per stack match the truth exactly.
        if request.at > truth_at + Duration::from_millis(1100) {
            let folded = pprof_folded(&profile, "inuse_space");
            std::fs::write(profile.with_extension("folded"), &folded).expect("kept for reading");
            eprintln!("push {index} ({from}..{until}):");
            assert_matches_truth(&truth, &folded);
        }
    }
}
