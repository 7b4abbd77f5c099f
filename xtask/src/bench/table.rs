//! The table the bench prints, with ratios against the untraced run and both floors.

use super::*;
pub(super) fn print_table(machine: &str, rows: &[Row], attach_ms: &[f64], live: &LiveReport) {
    println!("\nleakhound bench on {machine}");
    println!(
        "malloc(64)+free, ns per pair (median of {ROUNDS} rounds; 4 threads: wall time over all pairs)\n"
    );
    println!(
        "| threads | configuration | ns/pair | × untraced | × floor (entry) | × floor (same points) |"
    );
    println!("| ---: | --- | ---: | ---: | ---: | ---: |");
    for row in rows {
        let skip = if row.free_skip > 0 {
            format!(" (free at +{})", row.free_skip)
        } else {
            String::new()
        };
        let entries = [
            ("untraced", row.untraced),
            (
                "no-op BPF at function entries (bpftrace), the trap floor",
                row.floor_entry,
            ),
            (
                &*format!("no-op BPF at leakhound's points{skip}, multi-uprobe links as leakhound"),
                row.floor_same_points,
            ),
            (
                "no-op BPF at leakhound's points, one perf event per probe",
                row.floor_same_points_perf,
            ),
            ("bpftrace, count() on the 3 probes", row.bpftrace_count),
            (
                "**leakhound**, default options (CFI unwinding)",
                row.leakhound,
            ),
            ("leakhound --unwind fp", row.leakhound_fp),
            (
                &*format!("leakhound --sample-bytes {SAMPLE_BYTES} (estimates)"),
                row.leakhound_sampled,
            ),
            ("heaptrack (LD_PRELOAD)", row.heaptrack),
        ];
        for (name, ns) in entries {
            println!(
                "| {} | {name} | {ns:.1} | {} | {} | {} |",
                row.threads,
                ratio(ns / row.untraced),
                ratio(ns / row.floor_entry),
                ratio(ns / row.floor_same_points)
            );
        }
    }
    println!("\ngoals, single thread / 4 threads:");
    let goal = |name: &str, value: &dyn Fn(&Row) -> f64, limit: f64| {
        let values: Vec<String> = rows
            .iter()
            .map(|row| format!("{:.2}", value(row)))
            .collect();
        let met = rows.iter().all(|row| value(row) <= limit);
        println!(
            "  {name}: {} (goal ≤ {limit}) {}",
            values.join(" / "),
            if met { "met" } else { "MISSED" }
        );
    };
    goal(
        "leakhound / trap floor at the entries",
        &|row| row.leakhound / row.floor_entry,
        1.15,
    );
    goal(
        "leakhound / no-op at leakhound's own points",
        &|row| row.leakhound / row.floor_same_points,
        1.15,
    );
    println!(
        "    (against the same points with one perf event per probe: {})",
        rows.iter()
            .map(|row| format!("{:.2}", row.leakhound / row.floor_same_points_perf))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    goal(
        "leakhound / bpftrace count-only",
        &|row| row.leakhound / row.bpftrace_count,
        0.70,
    );
    println!("  not full tracking, for comparison, single thread / 4 threads:");
    let sampled = |row: &Row| row.leakhound_sampled / row.floor_same_points;
    println!(
        "  leakhound --sample-bytes {SAMPLE_BYTES} / no-op at leakhound's points: {}",
        rows.iter()
            .map(|row| format!("{:.2}", sampled(row)))
            .collect::<Vec<_>>()
            .join(" / ")
    );

    let mut attach = attach_ms.to_vec();
    let attach_median = median(&mut attach);
    let map_bytes: u64 = live.maps.iter().map(|(_, bytes)| bytes).sum();
    println!("\nleakhound's own costs (1,000,000 live blocks across 10,000 stacks):");
    println!(
        "  attach (load, verify, attach all probes): median {attach_median:.0} ms over {} attaches",
        attach.len()
    );
    println!(
        "  tracking the 1M allocations: {:.2} s in the target",
        live.track_s
    );
    println!(
        "  report after SIGINT (read maps, symbolize, write .txt and .folded): {:.2} s (goal < 1 s) {}",
        live.report_s,
        if live.report_s < 1.0 { "met" } else { "MISSED" }
    );
    for phase in &live.phases {
        println!("    {phase}");
    }
    println!(
        "  exit after SIGINT (the kernel's detach of every probe, beside the report): {:.2} s",
        live.exit_s
    );
    println!(
        "  peak RSS: {:.1} MiB (goal < 200 MiB) {}",
        live.peak_rss_kib as f64 / 1024.0,
        if live.peak_rss_kib < 200 * 1024 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  BPF maps (bpftool memlock): {:.1} MiB in total",
        map_bytes as f64 / (1 << 20) as f64
    );
    for (name, bytes) in &live.maps {
        println!("    {name:<16} {:>10.1} KiB", *bytes as f64 / 1024.0);
    }
    println!("  the report said:");
    for line in &live.summary {
        println!("    {line}");
    }
}

/// Two decimals near 1, fewer far from it, where they mean nothing.
pub(super) fn ratio(value: f64) -> String {
    if value >= 10.0 {
        format!("{value:.0}×")
    } else if value >= 0.01 {
        format!("{value:.2}×")
    } else {
        format!("{value:.4}×")
    }
}

pub(super) fn check_no_probes_left() {
    let events = fs::read_to_string("/sys/kernel/tracing/uprobe_events").unwrap_or_default();
    if !events.trim().is_empty() {
        eprintln!("bench: warning: uprobe_events is not empty:\n{events}");
    }
}

pub(super) fn print_node_table(node: Option<&NodeRow>) {
    let Some(node) = node else {
        return;
    };
    println!(
        "\nNode: Buffer.allocUnsafeSlow(1024) three JavaScript calls deep, ns per Buffer (median of {ROUNDS} rounds)\n"
    );
    println!("| configuration | ns/Buffer | × untraced | × frames off |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, ns) in [
        ("untraced", node.untraced),
        (
            "**leakhound**, JavaScript frames from V8's metadata",
            node.frames_on,
        ),
        (
            "leakhound, V8's metadata unreadable (node without v8dbg_*)",
            node.frames_off,
        ),
    ] {
        println!(
            "| {name} | {ns:.1} | {} | {} |",
            ratio(ns / node.untraced),
            ratio(ns / node.frames_off)
        );
    }
}
