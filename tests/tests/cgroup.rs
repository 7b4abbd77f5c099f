//! The target's memory cgroup beside its RSS in every report: a target in a cgroup v1 memory
//! cgroup (v2 where v1 is not mounted) with a known limit; the report's limit is that limit,
//! and its usage is what the cgroup's own file says while the target sits idle, a tmpfs file
//! that the target's RSS does not show included.

use tests::memory_cgroup::MemoryCgroup;
use tests::{Run, arg, assert_matches_truth, paths, read_report, serial, targets};

const LIMIT: u64 = 768 << 20;
const SHM_BYTES: u64 = 16 << 20;

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn reports_show_the_cgroups_limit_and_usage() {
    let _serial = serial();
    let dir = paths::scratch("cgroup_memory");
    let cgroup = MemoryCgroup::new("cgroup-usage", LIMIT);
    let mut target = targets::Target::start(&targets::alloc_family(), &[]);
    cgroup.add(target.pid());
    let pid = target.pid().to_string();
    let (json, text) = (dir.join("out.json"), dir.join("out.txt"));
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--interval",
        "100ms",
        "-o",
        arg(&json),
        "-o",
        arg(&text),
        "-o",
        arg(&dir.join("out.folded")),
    ]);
    run.wait_attached();
    // Memory the cgroup is charged for beyond the target's RSS: a 16 MiB file in tmpfs,
    // written by another process of the cgroup (removed at the end).
    let shm = std::path::PathBuf::from(format!("/dev/shm/leakhound-cgroup-{}", std::process::id()));
    let written = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec head -c {SHM_BYTES} /dev/zero > {}",
            cgroup.dir.display(),
            shm.display()
        ))
        .status()
        .expect("sh runs");
    assert!(written.success(), "writing {}", shm.display());
    target.go();
    let truth = target.read_truth();
    // The target is idle now: a few samples of the same usage, then the end.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let usage_before = cgroup.usage();
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    let usage_after = cgroup.usage();
    let _ = std::fs::remove_file(&shm);
    outcome.assert_success();
    target.release();
    assert_matches_truth(&truth, &read_report(&dir.join("out.folded")));

    let report: serde_json::Value =
        serde_json::from_str(&read_report(&json)).expect("the JSON report parses");
    let shown = &report["memory"]["cgroup"];
    eprintln!("memory.cgroup: {shown}; the cgroup's own usage {usage_before}..{usage_after}");
    assert_eq!(shown["limit_bytes"].as_u64(), Some(LIMIT), "{shown}");
    let usage = shown["usage_bytes"].as_u64().expect("usage_bytes");
    let (low, high) = (usage_before.min(usage_after), usage_before.max(usage_after));
    // The last sample was read between the two readings of the idle target's cgroup: the
    // same figure, but for what the kernel charges or frees meanwhile (seen: 20 KiB).
    let slack = 32 * 4096;
    assert!(
        usage + slack >= low && usage <= high + slack,
        "usage {usage} against the cgroup's {low}..{high}"
    );
    // The tmpfs file is charged to the cgroup, not to the target's RSS.
    let rss = report["memory"]["rss_bytes"].as_u64().expect("rss_bytes");
    assert!(
        usage >= SHM_BYTES && rss < SHM_BYTES,
        "usage {usage} holds the {SHM_BYTES}-byte file; RSS {rss} does not"
    );
    let share = shown["used_share"].as_f64().expect("used_share");
    assert!(
        (share - usage as f64 / LIMIT as f64).abs() < 1e-9,
        "{share}"
    );
    // Every sample carries the cgroup's figures.
    let samples = report["samples"].as_array().expect("samples");
    let with_rss: Vec<_> = samples
        .iter()
        .filter(|s| s.get("rss_bytes").is_some())
        .collect();
    assert!(!with_rss.is_empty());
    for sample in with_rss {
        assert_eq!(
            sample["cgroup_limit_bytes"].as_u64(),
            Some(LIMIT),
            "{sample}"
        );
        assert!(sample["cgroup_usage_bytes"].as_u64().is_some(), "{sample}");
    }

    let text_report = read_report(&text);
    let line = text_report
        .lines()
        .find(|line| line.starts_with("memory at "))
        .expect("the memory line");
    assert!(
        line.contains(&format!(
            "; memory cgroup: {} used of 768.0 MiB limit ({:.0}%)",
            human(usage),
            share * 100.0
        )),
        "{line}"
    );
}

/// The report's rendering of a byte count (report::human_bytes).
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
