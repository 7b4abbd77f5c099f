//! `leakhound debug-jvm`: what leakhound reads of a JVM's own metadata, for a person or a test
//! to check against the JVM's perf map. Hidden from `--help`; not part of the tracing.

use std::{
    fmt::Write as _,
    io::{self, BufRead as _, Write as _},
    path::Path,
    time::Instant,
};

use anyhow::Context as _;

use super::{
    HotspotError, HotspotVm, Memory, ProcessMemory, TargetAddr,
    libjvm::{self, Libjvm},
    vmstructs::{FieldPlace, VmStructs},
};

/// Prints the tables' summary and the heaps, then one line per pc in `pcs` (hex, one a line;
/// `-` for stdin): `pc kind blob code_begin code_end frame_words compile_id name source
/// frames`, tab-separated (frames: the Java frames at the pc, outermost first, `;` between,
/// each with `:line` where known), or `pc -` for a pc in no blob, or `pc error message`.
/// With `tables`, every field, type and constant read is listed too, sorted.
pub fn run(pid: u32, pcs: Option<&Path>, tables: bool) -> anyhow::Result<()> {
    let context = || format!("reading the JVM in {pid}");
    let started = Instant::now();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).with_context(context)?;
    let maps = crate::process::maps::parse(&maps);
    let mapping = libjvm::find_mapping(&maps)
        .ok_or(HotspotError::NoLibjvm)
        .with_context(context)?;
    let libjvm = Libjvm::open(pid, mapping).with_context(context)?;
    let symbols_in = started.elapsed();
    let started = Instant::now();
    let memory = ProcessMemory::new(pid);
    let structs = VmStructs::read(&memory, &libjvm.symbols).with_context(context)?;
    let read_in = started.elapsed();
    let mut out = io::stdout().lock();
    if tables {
        // Before the layouts are taken from them: a JDK whose tables lack a field leakhound
        // needs is what this listing is for.
        write_tables(&structs, &mut out)?;
    }
    let mut vm = HotspotVm::new(memory, structs).with_context(context)?;
    writeln!(
        out,
        "libjvm\t{}\tbias {:#x}\tsymbols read in {} us",
        libjvm.path.display(),
        libjvm.bias,
        symbols_in.as_micros()
    )?;
    writeln!(
        out,
        "tables\t{} fields, {} types, {} int and {} long constants, read in {} us",
        vm.structs.fields.len(),
        vm.structs.types.len(),
        vm.structs.int_constants.len(),
        vm.structs.long_constants.len(),
        read_in.as_micros()
    )?;
    let keeps = match vm.bool_flag("PreserveFramePointer") {
        Ok(Some(value)) => value.to_string(),
        Ok(None) => "-".to_owned(),
        Err(err) => format!("[{err}]"),
    };
    writeln!(out, "flags\tPreserveFramePointer={keeps}")?;
    for heap in vm.heaps() {
        writeln!(
            out,
            "heap\t{}\tcode {:#x}-{:#x}\tsegment {} bytes\tmap {:#x}-{:#x}",
            heap.address,
            heap.code.start,
            heap.code.end,
            1u64 << heap.log2_segment_size,
            heap.segmap.start,
            heap.segmap.end
        )?;
    }
    let Some(pcs) = pcs else {
        return Ok(());
    };
    let text = if pcs == Path::new("-") {
        io::stdin()
            .lock()
            .lines()
            .collect::<Result<Vec<_>, _>>()?
            .join("\n")
    } else {
        std::fs::read_to_string(pcs).with_context(|| format!("reading {}", pcs.display()))?
    };
    let pcs: Vec<TargetAddr> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            u64::from_str_radix(line.strip_prefix("0x").unwrap_or(line), 16).ok()
        })
        .map(TargetAddr)
        .collect();
    let mut lines = String::new();
    let cold = Instant::now();
    for &pc in &pcs {
        describe(&mut vm, pc, &mut lines);
    }
    let cold = cold.elapsed();
    // Again, with blob and method names cached: the cost of the walk itself.
    let warm = Instant::now();
    let mut ignored = String::new();
    for &pc in &pcs {
        describe(&mut vm, pc, &mut ignored);
    }
    let warm = warm.elapsed();
    // The code-heap walk alone: what an unwind rule costs.
    let walk = Instant::now();
    for &pc in &pcs {
        let _ = vm.find_blob(pc);
    }
    let walk = walk.elapsed();
    out.write_all(lines.as_bytes())?;
    let per = |total: std::time::Duration| total.as_nanos() / pcs.len().max(1) as u128;
    writeln!(
        out,
        "timing\t{} pcs\tfirst {} ns/pc\tcached names {} ns/pc\tblob only {} ns/pc",
        pcs.len(),
        per(cold),
        per(warm),
        per(walk)
    )?;
    Ok(())
}

fn write_tables(structs: &VmStructs, out: &mut impl io::Write) -> io::Result<()> {
    let mut lines: Vec<String> = Vec::new();
    for ((type_name, field), entry) in &structs.fields {
        let place = match entry.place {
            FieldPlace::Instance { offset } => format!("offset {offset}"),
            FieldPlace::Static { address } => format!("static {address}"),
        };
        lines.push(format!(
            "field\t{type_name}::{field}\t{}\t{place}",
            entry.type_string
        ));
    }
    for (name, entry) in &structs.types {
        let superclass = entry.superclass.as_deref().unwrap_or("-");
        lines.push(format!("type\t{name}\t{}\t{superclass}", entry.size));
    }
    for (name, value) in &structs.int_constants {
        lines.push(format!("int\t{name}\t{value}"));
    }
    for (name, value) in &structs.long_constants {
        lines.push(format!("long\t{name}\t{value}"));
    }
    lines.sort();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

fn describe<M: Memory>(vm: &mut HotspotVm<M>, pc: TargetAddr, out: &mut String) {
    let _ = match vm.resolve(pc) {
        Ok(None) => writeln!(out, "{pc}\t-"),
        Err(err) => writeln!(out, "{pc}\terror\t{err}"),
        Ok(Some(resolved)) => {
            let blob = &resolved.blob;
            let compile_id = blob
                .nmethod
                .as_ref()
                .map_or(String::from("-"), |n| n.compile_id.0.to_string());
            let frames = match vm.java_frames(blob, pc) {
                Ok(frames) => frames
                    .iter()
                    .map(|frame| match frame.line {
                        Some(line) => format!("{}:{line}", frame.name.qualified()),
                        None => frame.name.qualified(),
                    })
                    .collect::<Vec<_>>()
                    .join(";"),
                Err(err) => format!("[{err}]"),
            };
            let (name, source) = match &resolved.method {
                None => (blob.name.to_string(), String::from("-")),
                Some(Ok(method)) => (
                    method.qualified(),
                    method.source_file.clone().unwrap_or_else(|| "-".into()),
                ),
                Some(Err(err)) => (format!("[{err}]"), String::from("-")),
            };
            writeln!(
                out,
                "{pc}\t{:?}\t{}\t{}\t{}\t{}\t{compile_id}\t{name}\t{source}\t{frames}",
                blob.kind, blob.start, blob.code.start, blob.code.end, blob.frame_size_words
            )
        }
    };
}
