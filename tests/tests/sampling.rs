//! Byte sampling (`--sample-bytes`): every estimate against the target's own truth, within
//! the interval leakhound reports for it.

use std::collections::BTreeMap;

use serde_json::Value;
use std::process::Command;

use tests::{Run, arg, attach_to_truth_target, paths, read_report, serial, targets};

/// Mean bytes between samples: 44 MB of kept blocks give about 2,700 samples.
const MEAN: u64 = 16 * 1024;

/// Estimated bytes and their variance per truth function, from the JSON report: each stack's
/// bytes go to the leaf-most frame that names a known function.
fn estimates(report: &Value, known: &[&str]) -> BTreeMap<String, (u64, f64)> {
    let mut per_function: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for stack in report["stacks"].as_array().expect("stacks") {
        if stack["origin"] != "malloc" {
            continue;
        }
        let frames = stack["frames"].as_array().expect("frames");
        let owner = frames.iter().rev().find_map(|frame| {
            let name = frame["name"].as_str()?;
            known.iter().find(|k| **k == name)
        });
        let Some(owner) = owner else { continue };
        let bytes = stack["bytes"].as_u64().expect("bytes");
        let margin = stack["bytes_margin"]
            .as_u64()
            .expect("every malloc stack has a margin under sampling") as f64;
        let entry = per_function.entry((*owner).to_owned()).or_default();
        entry.0 += bytes;
        entry.1 += (margin / 1.96).powi(2);
    }
    per_function
}

/// On a kernel with uprobe sessions (Linux 6.12+), as here, the allocation functions are
/// attached as sessions under sampling, and a call passed over has no return trap.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn sampled_estimates_hold_the_truth_within_their_intervals() {
    let _serial = serial();
    let test = "sampled_estimates_hold_the_truth_within_their_intervals";
    let json = paths::scratch(test).join("out.json");
    let mean = MEAN.to_string();
    let trace = attach_to_truth_target(
        test,
        &targets::sampled_mix(),
        &["--sample-bytes", &mean, "-o", arg(&json)],
    );
    let (mut target, run, truth) = (trace.target, trace.run, trace.truth);
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.release();
    check_estimates(&json, &truth);
}

/// The same through perf-event uprobes, which have no sessions: separate entry and return
/// programs, as on kernels before 6.12.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn sampled_estimates_hold_without_uprobe_sessions() {
    let _serial = serial();
    let test = "sampled_estimates_hold_without_uprobe_sessions";
    let json = paths::scratch(test).join("out.json");
    let out = paths::scratch(test).join("out.folded");
    let mean = MEAN.to_string();
    let mut target = targets::Target::start(&targets::sampled_mix(), &[]);
    let pid = target.pid().to_string();
    let mut cmd = Command::new(tests::leakhound_fault_bin());
    cmd.env("LEAKHOUND_TEST_PERF_UPROBES", "1");
    let mut run = Run::start_with(
        cmd,
        &[
            "record",
            "--pid",
            &pid,
            "-o",
            arg(&out),
            "--sample-bytes",
            &mean,
            "-o",
            arg(&json),
        ],
    );
    let attached = run.wait_attached();
    assert!(!attached.contains("multi-uprobe"), "{attached}");
    target.go();
    let truth = target.read_truth();
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    target.release();
    check_estimates(&json, &truth);
}

/// Every function's estimate against its truth, within the interval leakhound reports.
fn check_estimates(json: &std::path::Path, truth: &BTreeMap<String, u64>) {
    let report: Value = serde_json::from_str(&read_report(json)).expect("JSON report");
    assert_eq!(
        report["sample_bytes"], MEAN,
        "the report names the sampling"
    );
    assert!(
        report["totals"]["bytes_margin"].as_u64().is_some(),
        "the total has an interval"
    );
    let known: Vec<&str> = truth.keys().map(String::as_str).collect();
    let estimates = estimates(&report, &known);

    let mut table = format!(
        "{:<12} {:>10} {:>10} {:>9} {:>7}\n",
        "function", "truth", "estimate", "sigma", "z"
    );
    let mut failures = Vec::new();
    for (function, &expected) in truth {
        let (estimate, variance) = estimates.get(function).copied().unwrap_or_default();
        let sigma = variance.sqrt();
        let error = estimate as f64 - expected as f64;
        let z = if sigma > 0.0 { error / sigma } else { 0.0 };
        table.push_str(&format!(
            "{function:<12} {expected:>10} {estimate:>10} {sigma:>9.0} {z:>7.2}\n"
        ));
        if expected == 0 {
            // Everything sampled on this path was freed: the estimate is exactly zero.
            if estimate != 0 {
                failures.push(format!("{function}: {estimate} bytes where none are held"));
            }
            continue;
        }
        // Beyond 4.5 standard deviations is a 1 in 150,000 chance for a right estimator.
        if error.abs() > 4.5 * sigma + 1.0 {
            failures.push(format!("{function}: off by {error:.0} bytes, {z:.1} sigma"));
        }
        // And the interval must say something: within 10% (about 2,700 samples in all).
        if sigma > 0.1 * expected as f64 {
            failures.push(format!(
                "{function}: sigma {sigma:.0} is over 10% of the truth"
            ));
        }
    }
    eprintln!("{table}");
    assert!(failures.is_empty(), "{}\n{table}", failures.join("\n"));
}
