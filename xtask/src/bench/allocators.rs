//! malloc(64)+free under the allocators that allocation-heavy servers link, preloaded
//! (LD_PRELOAD) beside glibc's: leakhound against the no-op floor at its own probe points in
//! that allocator. Where the kernel single-steps a probed instruction the cost per call is
//! many times an emulated probe's, so each allocator gets its own floor.

use super::*;

/// One allocator's figures, ns per pair, single thread.
pub(super) struct AllocatorRow {
    pub(super) name: &'static str,
    pub(super) skips: Skips,
    pub(super) untraced: f64,
    pub(super) floor: f64,
    pub(super) leakhound: f64,
    pub(super) sampled: f64,
}

/// The allocators, by name and library (none: glibc's own); a missing library is skipped.
const ALLOCATORS: [(&str, Option<&str>); 4] = [
    ("glibc", None),
    (
        "jemalloc",
        Some("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
    ),
    (
        "tcmalloc",
        Some("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"),
    ),
    (
        "mimalloc",
        Some("/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
    ),
];

/// Measurements of the floor and of full tracking per allocator, taken by turns. Taken once
/// each, seconds apart, they put one build at 1.18× to 1.35× of its floor in five runs on
/// this machine kind: a spell of a few seconds moves one side by 5%.
const ALTERNATIONS: usize = 3;

pub(super) fn allocator_rows(alloc_bench: &Path, leakhound: &Path) -> Result<Vec<AllocatorRow>> {
    let mut rows = Vec::new();
    for (name, library) in ALLOCATORS {
        let preload = library.map(Path::new);
        if let Some(library) = preload.filter(|library| !library.exists()) {
            eprintln!("bench: skipped {name}: no {}", library.display());
            continue;
        }
        let bench = Bench {
            binary: alloc_bench,
            threads: 1,
            preload,
        };
        let untraced = bench.measure(PAIRS_UNTRACED, Tracer::None)?.ns;
        let first_full = bench.measure(PAIRS_TRAPPED, Tracer::Leakhound(leakhound, &[]))?;
        let sampled = bench
            .measure(
                PAIRS_TRAPPED,
                Tracer::Leakhound(leakhound, &["--sample-bytes", SAMPLE_BYTES]),
            )?
            .ns;
        let allocator = Libc::inspect(
            preload.or(first_full
                .stats
                .as_ref()
                .and_then(|stats| stats.libc.as_deref())),
        )?;
        let skips = first_full.skips(&allocator);
        // The ratio's two sides, measured by turns and each taken as its median, so that a
        // slow or fast spell of the machine lands on both.
        let mut fulls = vec![first_full.ns];
        let mut floors = Vec::new();
        for turn in 0..ALTERNATIONS {
            floors.push(
                bench
                    .measure(PAIRS_TRAPPED, Tracer::Noop(&allocator, skips, true))?
                    .ns,
            );
            if turn + 1 < ALTERNATIONS {
                fulls.push(
                    bench
                        .measure(PAIRS_TRAPPED, Tracer::Leakhound(leakhound, &[]))?
                        .ns,
                );
            }
        }
        rows.push(AllocatorRow {
            name,
            skips,
            untraced,
            floor: median(&mut floors),
            leakhound: median(&mut fulls),
            sampled,
        });
    }
    Ok(rows)
}

pub(super) fn print_allocator_table(rows: &[AllocatorRow]) {
    println!(
        "\nmalloc(64)+free per allocator (LD_PRELOAD), one thread, ns per pair (median of {ROUNDS} rounds; \
         the floor and leakhound: median of {ALTERNATIONS} runs each, taken by turns)\n"
    );
    println!(
        "| allocator | probes at | untraced | no-op at leakhound's points | leakhound | × floor | --sample-bytes {SAMPLE_BYTES} | × floor |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | malloc +{}, free +{} | {:.1} | {:.1} | {:.1} | {} | {:.1} | {} |",
            row.name,
            row.skips.malloc,
            row.skips.free,
            row.untraced,
            row.floor,
            row.leakhound,
            ratio(row.leakhound / row.floor),
            row.sampled,
            ratio(row.sampled / row.floor),
        );
    }
    let worst = rows
        .iter()
        .map(|row| row.leakhound / row.floor)
        .fold(0.0, f64::max);
    println!(
        "  goal: full tracking within 1.3× of the same-point floor for every allocator: worst {worst:.2}× {}",
        if worst <= 1.3 { "met" } else { "MISSED" }
    );
}
