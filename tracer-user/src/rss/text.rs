//! The RSS split in the text report: one line per kind and label, then what grew.

use std::io;

use super::{RegionKind, RegionRow, RegionSplit};
use crate::{
    analysis::trend::TrendClass,
    names::shown,
    report::{human_bytes, human_change},
};

/// Rows listed; the rest are summed on one line.
const MAX_LISTED: usize = 16;

/// Writes the split. `malloc_live`: the malloc family's tracked outstanding bytes, set
/// against the allocator's resident memory.
pub fn write(split: &RegionSplit, malloc_live: u64, out: &mut dyn io::Write) -> io::Result<()> {
    writeln!(
        out,
        "where the RSS goes at {:.1} s: {} resident; named kinds explain {:.0}%{}",
        split.at_secs,
        human_bytes(split.rss_bytes),
        split.explained_share * 100.0,
        if split.smaps_cut {
            " (smaps cut at its size limit: later mappings left out)"
        } else {
            ""
        }
    )?;
    for row in split.regions.iter().take(MAX_LISTED) {
        writeln!(
            out,
            "  {:<17} {:>10} resident {:>10} anon {:>10} mapped  {:>10} {:<9} {}",
            row.kind.as_str(),
            human_bytes(row.resident_bytes),
            human_bytes(row.anon_bytes),
            human_bytes(row.mapped_bytes),
            human_change(row.growth_resident_bytes),
            row.trend.as_str(),
            shown(&row.label)
        )?;
    }
    let rest = &split.regions[split.regions.len().min(MAX_LISTED)..];
    if !rest.is_empty() {
        let resident: u64 = rest.iter().map(|r| r.resident_bytes).sum();
        writeln!(
            out,
            "  ... {} more, {} resident",
            rest.len(),
            human_bytes(resident)
        )?;
    }
    let malloc_resident: u64 = split
        .regions
        .iter()
        .filter(|r| r.kind == RegionKind::Malloc)
        .map(|r| r.resident_bytes)
        .sum();
    if malloc_resident > 0 || malloc_live > 0 {
        let rest = if malloc_live <= malloc_resident {
            format!(
                "the other {} is the allocator's free lists and fragmentation, and blocks from before attach",
                human_bytes(malloc_resident - malloc_live)
            )
        } else {
            "more than is resident: pages allocated but not yet touched".to_owned()
        };
        writeln!(
            out,
            "  malloc: {} resident; traced allocations hold {} live, {rest}",
            human_bytes(malloc_resident),
            human_bytes(malloc_live)
        )?;
    }
    write_growth(split, out)
}

/// Resident growth worth a line: a tenth of the RSS growth and 1 MiB; for what nothing
/// explains, any 1 MiB, so that it is never hidden.
fn grew_enough(row: &RegionRow, split: &RegionSplit) -> bool {
    let floor = if row.kind == RegionKind::Other {
        1i64 << 20
    } else {
        (1i64 << 20).max(split.growth_rss_bytes / 10)
    };
    row.growth_resident_bytes >= floor
}

fn write_growth(split: &RegionSplit, out: &mut dyn io::Write) -> io::Result<()> {
    let mut grew: Vec<&RegionRow> = split
        .regions
        .iter()
        .filter(|row| grew_enough(row, split))
        .collect();
    grew.sort_by_key(|row| std::cmp::Reverse(row.growth_resident_bytes));
    if grew.is_empty() {
        return writeln!(
            out,
            "  what grew: nothing by 1 MiB or more (RSS {})",
            human_change(split.growth_rss_bytes)
        );
    }
    let said: Vec<String> = grew.iter().map(|row| describe(row)).collect();
    writeln!(
        out,
        "  what grew (RSS {}): {}",
        human_change(split.growth_rss_bytes),
        said.join("; ")
    )
}

fn describe(row: &RegionRow) -> String {
    let how = if row.kind == RegionKind::Other {
        "not explained".to_owned()
    } else if row.growth_mapped_bytes <= 0 {
        // The memory was there (mapped or committed) from the start: its pages are being
        // touched, by the runtime's own allocation within it.
        "committed at start; pages being touched".to_owned()
    } else {
        format!(
            "{} newly committed",
            human_bytes(row.growth_mapped_bytes as u64)
        )
    };
    let trend = match row.trend {
        TrendClass::Growing => ", growing",
        TrendClass::Shrinking => ", shrinking",
        TrendClass::Stable => "",
    };
    format!(
        "{} {} resident ({}; {}){}",
        row.kind.as_str(),
        human_change(row.growth_resident_bytes),
        shown(&row.label),
        how,
        trend
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_grew() {
        let row =
            |kind, label: &str, resident: u64, growth: i64, mapped_growth: i64, trend| RegionRow {
                kind,
                label: label.into(),
                mapped_bytes: resident,
                resident_bytes: resident,
                anon_bytes: resident,
                growth_resident_bytes: growth,
                growth_mapped_bytes: mapped_growth,
                trend,
            };
        let split = RegionSplit {
            at_secs: 10.0,
            rss_bytes: 200 << 20,
            growth_rss_bytes: 100 << 20,
            explained_share: 0.95,
            regions: vec![
                row(
                    RegionKind::JavaHeap,
                    "Java heap",
                    150 << 20,
                    94 << 20,
                    0,
                    TrendClass::Growing,
                ),
                row(
                    RegionKind::Other,
                    "untracked anonymous",
                    10 << 20,
                    5 << 20,
                    5 << 20,
                    TrendClass::Stable,
                ),
                row(
                    RegionKind::Malloc,
                    "brk heap",
                    4 << 20,
                    1 << 10,
                    0,
                    TrendClass::Stable,
                ),
            ],
            smaps_cut: false,
        };
        let mut out = Vec::new();
        write(&split, 1 << 20, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("named kinds explain 95%"), "{text}");
        assert!(
            text.contains("java-heap +94.0 MiB resident (Java heap; committed at start; pages being touched), growing; other +5.0 MiB resident (untracked anonymous; not explained)"),
            "{text}"
        );
        assert!(
            text.contains(
                "malloc: 4.0 MiB resident; traced allocations hold 1.0 MiB live, the other 3.0 MiB is"
            ),
            "{text}"
        );
    }
}
