//! `GC.class_histogram`'s output, as HotSpot prints it (`KlassInfoHisto::print_histo_on` in
//! `memory/heapInspection.cpp`):
//!
//! ```text
//!  num     #instances         #bytes  class name (module)
//! -------------------------------------------------------
//!    1:          7204        1332448  [B (java.base@17.0.15)
//!    2:          1426         175768  java.lang.Class (java.base@17.0.15)
//! Total         23282        2060680
//! ```
//!
//! The reply comes from the target, which may be anything that answers on the JVM's attach
//! socket: every row is checked, the number of classes and the length of a name are capped,
//! sums cannot overflow, and the rows must add up to the `Total` line (a cut or padded reply
//! is refused). Any bytes give a histogram or an error, never a panic.

use std::collections::HashMap;

/// Classes kept at most: a large application loads some tens of thousands.
pub const MAX_CLASSES: usize = 1 << 17;
/// The longest class name (with its module) taken; HotSpot's symbols are at most 65,535
/// bytes, but no real class name comes near this.
pub const MAX_NAME: usize = 4096;

/// One class's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassRow {
    /// As Java writes it: `byte[]`, `java.lang.String[][]`, `java.util.HashMap$Node`.
    pub name: String,
    /// `java.base@17.0.15`, when the JVM names one.
    pub module: Option<String>,
    pub instances: u64,
    pub bytes: u64,
}

/// The live objects of a Java heap by class, after the full GC that the command runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    pub classes: Vec<ClassRow>,
    pub total_instances: u64,
    pub total_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistogramError {
    #[error("no histogram header (` num #instances #bytes class name`) in the reply")]
    NoHeader,
    #[error("line {line} of the histogram is not a class row: {why}")]
    Row { line: usize, why: &'static str },
    #[error("the histogram lists more than {MAX_CLASSES} classes")]
    TooManyClasses,
    #[error("the histogram has no `Total` line: it is cut")]
    NoTotal,
    #[error("the histogram's rows add up to {rows} bytes, its `Total` line says {total}")]
    Inconsistent { rows: u64, total: u64 },
}

/// Parses the command's output (the reply after its status line).
pub fn parse(text: &str) -> Result<Histogram, HistogramError> {
    let mut lines = text.lines().enumerate().map(|(i, line)| (i + 1, line));
    lines
        .by_ref()
        .find(|(_, line)| is_header(line))
        .ok_or(HistogramError::NoHeader)?;
    let mut histogram = Histogram::default();
    let (mut instances, mut bytes) = (0u64, 0u64);
    for (number, line) in lines {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.bytes().all(|b| b == b'-') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Total") {
            let (total_instances, total_bytes) = totals(rest).ok_or(HistogramError::Row {
                line: number,
                why: "a Total line without two counts",
            })?;
            if (total_instances, total_bytes) != (instances, bytes) {
                return Err(HistogramError::Inconsistent {
                    rows: bytes,
                    total: total_bytes,
                });
            }
            histogram.total_instances = total_instances;
            histogram.total_bytes = total_bytes;
            return Ok(histogram);
        }
        if histogram.classes.len() == MAX_CLASSES {
            return Err(HistogramError::TooManyClasses);
        }
        let row = row(trimmed).map_err(|why| HistogramError::Row { line: number, why })?;
        let overflow = || HistogramError::Row {
            line: number,
            why: "the counts overflow",
        };
        instances = instances.checked_add(row.instances).ok_or_else(overflow)?;
        bytes = bytes.checked_add(row.bytes).ok_or_else(overflow)?;
        histogram.classes.push(row);
    }
    Err(HistogramError::NoTotal)
}

fn is_header(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words.next() == Some("num")
        && words.next() == Some("#instances")
        && words.next() == Some("#bytes")
}

fn totals(rest: &str) -> Option<(u64, u64)> {
    let mut words = rest.split_whitespace();
    let counts = (words.next()?.parse().ok()?, words.next()?.parse().ok()?);
    words.next().is_none().then_some(counts)
}

/// `1:  7204  1332448  [B (java.base@17.0.15)`.
fn row(line: &str) -> Result<ClassRow, &'static str> {
    let (rank, rest) = line.split_once(':').ok_or("no rank")?;
    rank.parse::<u64>().map_err(|_| "no rank")?;
    let rest = rest.trim_start();
    let (instances, rest) = rest.split_once(char::is_whitespace).ok_or("no counts")?;
    let rest = rest.trim_start();
    let (bytes, name) = rest
        .split_once(char::is_whitespace)
        .ok_or("no class name")?;
    let instances = instances.parse().map_err(|_| "no instance count")?;
    let bytes = bytes.parse().map_err(|_| "no byte count")?;
    let name = name.trim();
    if name.is_empty() {
        return Err("no class name");
    }
    if name.len() > MAX_NAME {
        return Err("a class name over 4096 bytes");
    }
    let (name, module) = match name.strip_suffix(')').and_then(|n| n.rsplit_once(" (")) {
        Some((name, module)) if !name.is_empty() => (name.trim_end(), Some(module.to_owned())),
        _ => (name, None),
    };
    Ok(ClassRow {
        name: java_name(name),
        module,
        instances,
        bytes,
    })
}

/// An array class as Java source writes it: HotSpot prints `Class.getName()`, which gives
/// arrays as descriptors (`[B`, `[[Ljava.lang.String;`). Anything else is kept as it is.
pub fn java_name(name: &str) -> String {
    let element = name.trim_start_matches('[');
    let dims = name.len() - element.len();
    if dims == 0 {
        return name.to_owned();
    }
    let base = match element {
        "B" => "byte",
        "C" => "char",
        "D" => "double",
        "F" => "float",
        "I" => "int",
        "J" => "long",
        "S" => "short",
        "Z" => "boolean",
        _ => match element
            .strip_prefix('L')
            .and_then(|class| class.strip_suffix(';'))
        {
            Some(class) if !class.is_empty() => class,
            _ => return name.to_owned(),
        },
    };
    let mut shown = String::with_capacity(base.len() + 2 * dims);
    shown.push_str(base);
    for _ in 0..dims {
        shown.push_str("[]");
    }
    shown
}

impl Histogram {
    /// Rows by class and module, rows of one name from several class loaders added together.
    pub fn by_class(&self) -> HashMap<(&str, Option<&str>), (u64, u64)> {
        let mut classes: HashMap<(&str, Option<&str>), (u64, u64)> = HashMap::new();
        for row in &self.classes {
            let entry = classes
                .entry((row.name.as_str(), row.module.as_deref()))
                .or_default();
            // The rows add up to the checked total, so neither sum overflows.
            entry.0 += row.instances;
            entry.1 += row.bytes;
        }
        classes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JDK17: &str = " num     #instances         #bytes  class name (module)
-------------------------------------------------------
   1:          7204        1332448  [B (java.base@17.0.15)
   2:          1426         175768  java.lang.Class (java.base@17.0.15)
   3:             2             48  [[Ljava.lang.String; (java.base@17.0.15)
   4:             1             16  Idle
Total          8633        1508280
";

    #[test]
    fn reads_a_jdk17_histogram() {
        let histogram = parse(JDK17).unwrap();
        assert_eq!(histogram.total_bytes, 1_508_280);
        assert_eq!(histogram.total_instances, 8633);
        assert_eq!(
            histogram.classes[0],
            ClassRow {
                name: "byte[]".into(),
                module: Some("java.base@17.0.15".into()),
                instances: 7204,
                bytes: 1_332_448
            }
        );
        assert_eq!(histogram.classes[2].name, "java.lang.String[][]");
        assert_eq!(histogram.classes[3].name, "Idle");
        assert_eq!(histogram.classes[3].module, None);
    }

    #[test]
    fn array_names_read_as_java_writes_them() {
        assert_eq!(java_name("[I"), "int[]");
        assert_eq!(java_name("[[[Z"), "boolean[][][]");
        assert_eq!(java_name("[Ljava.lang.Object;"), "java.lang.Object[]");
        assert_eq!(
            java_name("java.util.HashMap$Node"),
            "java.util.HashMap$Node"
        );
        // Not a descriptor: kept as it is.
        assert_eq!(java_name("[Q"), "[Q");
        assert_eq!(java_name("[L;"), "[L;");
        assert_eq!(java_name("["), "[");
    }

    #[test]
    fn a_cut_or_padded_reply_is_refused() {
        let cut = &JDK17[..JDK17.find("Total").unwrap()];
        assert_eq!(parse(cut), Err(HistogramError::NoTotal));
        let padded = JDK17.replace("Total          8633        1508280", "Total 8633 1508281");
        assert_eq!(
            parse(&padded),
            Err(HistogramError::Inconsistent {
                rows: 1_508_280,
                total: 1_508_281
            })
        );
        assert_eq!(parse("0\nhello\n"), Err(HistogramError::NoHeader));
        let bad = JDK17.replace("   2:          1426", "   2:          x1426");
        assert!(matches!(
            parse(&bad),
            Err(HistogramError::Row { line: 4, .. })
        ));
        let huge = JDK17.replace("7204        1332448", "7204 18446744073709551615");
        assert!(matches!(parse(&huge), Err(HistogramError::Row { .. })));
    }

    #[test]
    fn names_and_rows_are_capped() {
        let long = format!(
            " num #instances #bytes\n 1: 1 16 {}\nTotal 1 16\n",
            "a".repeat(5000)
        );
        assert!(matches!(parse(&long), Err(HistogramError::Row { .. })));
        let mut many = String::from(" num #instances #bytes\n");
        for i in 0..=MAX_CLASSES {
            many.push_str(&format!("{i}: 1 16 C{i}\n"));
        }
        assert_eq!(parse(&many), Err(HistogramError::TooManyClasses));
    }

    #[test]
    fn any_bytes_give_a_histogram_or_an_error() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces = [
            " num #instances #bytes class name\n",
            "Total ",
            "1: ",
            "[B ",
            "[[L",
            ";",
            " (",
            ")",
            "\n",
            "18446744073709551615 ",
            "7 ",
            "-----\n",
            "\u{1b}",
            "名",
        ];
        for _ in 0..20_000 {
            let text: String = (0..(next() % 24))
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            if let Ok(histogram) = parse(&text) {
                let bytes: u64 = histogram.classes.iter().map(|c| c.bytes).sum();
                assert_eq!(bytes, histogram.total_bytes);
            }
        }
    }

    #[test]
    fn one_class_from_two_loaders_is_one_class() {
        let text = " num #instances #bytes class name\n1: 2 32 Foo\n2: 1 16 Foo\nTotal 3 48\n";
        let histogram = parse(text).unwrap();
        assert_eq!(histogram.by_class()[&("Foo", None)], (3, 48));
    }
}
