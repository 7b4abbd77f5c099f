//! Trend classification on a real target: a steady leak, a cache that fills in its first
//! second and then only replaces entries, and churn, traced for 12 s at 1 s intervals.

use serde_json::Value;
use tests::frame_pointer_targets::growth_shapes;
use tests::targets::Target;
use tests::{Run, arg, paths, read_report, serial};

/// The JSON report's stacks whose leaf-most frame is `function`.
fn stacks_of<'a>(stacks: &'a [Value], function: &str) -> Vec<(usize, &'a Value)> {
    stacks
        .iter()
        .enumerate()
        .filter(|(_, stack)| {
            stack["frames"]
                .as_array()
                .and_then(|frames| frames.last())
                .is_some_and(|leaf| leaf["name"] == function)
        })
        .collect()
}

fn describe(stack: &Value) -> String {
    format!(
        "class {} at {:.0} B/s, grew in {:.0}% of intervals, steadiness {:.2}, {} bytes",
        stack["trend"]["class"],
        stack["trend"]["bytes_per_second"]
            .as_f64()
            .unwrap_or(f64::NAN),
        stack["trend"]["grew_share"].as_f64().unwrap_or(f64::NAN) * 100.0,
        stack["trend"]["steadiness"].as_f64().unwrap_or(f64::NAN),
        stack["bytes"]
    )
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn leak_grows_cache_and_churn_do_not() {
    let _serial = serial();
    let dir = paths::scratch("leak_grows_cache_and_churn_do_not");
    let json = dir.join("out.json");
    let text = dir.join("out.txt");
    let mut target = Target::start(&growth_shapes(), &[]);

    let pid = target.pid().to_string();
    let mut run = Run::start(&[
        "record",
        "--pid",
        &pid,
        "--interval",
        "1",
        "--duration",
        "12s",
        "-o",
        arg(&json),
        "-o",
        arg(&text),
    ]);
    run.wait_attached();
    target.go();
    let outcome = run.finish();
    outcome.assert_success();
    target.release();

    let report: Value = serde_json::from_str(&read_report(&json)).expect("the JSON report parses");
    let stacks = report["stacks"].as_array().expect("stacks is a list");
    for (name, stack) in ["leak_steady", "cache_put", "churn_batch"]
        .iter()
        .flat_map(|f| stacks_of(stacks, f).into_iter().map(move |s| (f, s)))
    {
        eprintln!("{name} (rank {}): {}", stack.0 + 1, describe(stack.1));
    }

    let leak = stacks_of(stacks, "leak_steady");
    assert_eq!(
        leak.len(),
        1,
        "one leak stack expected; report:\n{}",
        read_report(&text)
    );
    let (rank, leak) = leak[0];
    assert_eq!(leak["trend"]["class"], "growing", "{}", describe(leak));
    assert_eq!(
        rank,
        0,
        "the leak must rank first; report:\n{}",
        read_report(&text)
    );
    // 4 KiB every 100 ms is 40 KiB/s; allow for ticks that run late on a loaded machine.
    let rate = leak["trend"]["bytes_per_second"].as_f64().unwrap();
    assert!(
        (25_000.0..=45_000.0).contains(&rate),
        "leak rate {rate} B/s"
    );

    let cache = stacks_of(stacks, "cache_put");
    assert!(
        !cache.is_empty(),
        "the cache holds 512 KiB; it must be reported"
    );
    for (_, stack) in cache {
        assert_ne!(
            stack["trend"]["class"],
            "growing",
            "cache: {}",
            describe(stack)
        );
    }
    for (_, stack) in stacks_of(stacks, "churn_batch") {
        assert_eq!(
            stack["trend"]["class"],
            "stable",
            "churn: {}",
            describe(stack)
        );
    }

    let text = read_report(&text);
    let opening = text.lines().skip(2).find(|l| !l.is_empty()).unwrap_or("");
    assert!(
        opening.starts_with("Growing stacks: 1"),
        "the text report must open with the growing stacks; it said:\n{text}"
    );
}
