//! What is in use inside a Go heap, by allocation stack, from the runtime's own heap profile
//! ([`profile`]): no flag, no restart, no pprof endpoint. Each sample reads it again, so its
//! stacks (origin `go-heap`) get histories, trends and every format like any other.
//!
//! The stacks that mapped the heap (`runtime.sysMap`) say where the heap grew; these say who
//! holds what is in it. Both are reported; the go-heap bytes live inside the mapped bytes and
//! are not added to the outstanding total.

pub mod arenas;
pub mod profile;

use std::collections::HashMap;

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use crate::{
    analysis::history::Timeline,
    jit::hotspot::ProcessMemory as TargetMemory,
    model::{Frame, Origin, ProcessMemory, StackRecord},
    process::{TargetProcess, elf, root},
    symbolize::CodeAddress,
    unwind::stack_key,
};

use profile::{HeapRecord, ProfileSymbols};

/// Finds the profile's variables in a Go executable's symbol table; `Ok(None)` for a program
/// that is not Go (the Go linker always writes `.go.buildinfo` or `.gopclntab`). `bias`:
/// where the executable is loaded, minus its link address.
pub fn symbols_in<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    bias: u64,
) -> Result<Option<ProfileSymbols>, String> {
    if !is_go(file) {
        return Ok(None);
    }
    let mut found: HashMap<&str, u64> = HashMap::new();
    for symbol in file.symbols() {
        if let Ok(name @ ("runtime.mbuckets" | "runtime.MemProfileRate" | "runtime.mProfCycle")) =
            symbol.name()
        {
            found.insert(name, symbol.address().wrapping_add(bias));
        }
    }
    match (
        found.get("runtime.mbuckets"),
        found.get("runtime.MemProfileRate"),
    ) {
        (Some(&mbuckets), Some(&rate)) => Ok(Some(ProfileSymbols {
            mbuckets,
            rate,
            cycle: found.get("runtime.mProfCycle").copied(),
        })),
        _ => Err(
            "its executable has no runtime.mbuckets or runtime.MemProfileRate symbol (stripped?)"
                .into(),
        ),
    }
}

/// Whether `file` is a Go program: the Go linker always writes `.go.buildinfo` or `.gopclntab`.
fn is_go<'data, R: object::ReadRef<'data>>(file: &object::File<'data, R>) -> bool {
    file.sections()
        .any(|s| matches!(s.name(), Ok(".go.buildinfo" | ".gopclntab")))
}

/// Reads the target's executable with `read` (given the parsed file and its load bias);
/// `Ok(None)` when it is no ELF file `read` recognises.
pub fn with_executable<T>(
    process: &TargetProcess,
    read: impl FnOnce(
        &object::File<'_, &object::ReadCache<std::fs::File>>,
        u64,
    ) -> Result<Option<T>, String>,
) -> Result<Option<T>, String> {
    let file = root::open_regular_link(&process.exe_link()).map_err(|err| err.to_string())?;
    let size = file.metadata().map_err(|err| err.to_string())?.len();
    if size > elf::MAX_OBJECT_BYTES {
        return Err(format!("its executable is {size} bytes, over the limit"));
    }
    // Only the headers, the section names and the sections asked for are read, not the
    // whole file (a Node or JVM executable is large and is no Go program).
    let cache = object::ReadCache::new(file);
    let Ok(object) = object::File::parse(&cache) else {
        return Ok(None);
    };
    let bias = load_bias(process, &object);
    read(&object, bias)
}

/// The load bias of a position-independent executable, from the mapping of its first
/// segment; 0 for one linked at a fixed address (Go's default).
fn load_bias<'data, R: object::ReadRef<'data>>(
    process: &TargetProcess,
    file: &object::File<'data, R>,
) -> u64 {
    if file.kind() != object::ObjectKind::Dynamic {
        return 0;
    }
    let Some(first) = file.segments().map(|s| s.address()).min() else {
        return 0;
    };
    let exe = std::fs::read_link(process.exe_link()).ok();
    process
        .maps()
        .ok()
        .and_then(|maps| {
            maps.into_iter()
                .find(|m| m.offset == 0 && m.path.is_some() && m.path == exe)
        })
        .map_or(0, |m| m.start.wrapping_sub(first & !0xfff))
}

/// Reads a Go target's heap profile at every sample.
pub struct GoHeapSampler {
    memory: TargetMemory,
    symbols: ProfileSymbols,
    timeline: Timeline<u64>,
    /// The latest record of every stack seen, by stack key.
    last: HashMap<u64, HeapRecord>,
    pub rate: Option<u64>,
    /// Why the last read failed, if it did.
    pub unavailable: Option<String>,
}

impl GoHeapSampler {
    /// `Ok(None)` for a target that is not a Go program; `Err` says why a Go program's
    /// profile cannot be read.
    pub fn open(process: &TargetProcess) -> Result<Option<Self>, String> {
        #[expect(
            clippy::redundant_closure,
            reason = "the function alone is not general over the file's lifetime"
        )]
        let Some(symbols) = with_executable(process, |file, bias| symbols_in(file, bias))? else {
            return Ok(None);
        };
        Ok(Some(Self {
            memory: TargetMemory::new(process.pid),
            symbols,
            timeline: Timeline::default(),
            last: HashMap::new(),
            rate: None,
            unavailable: None,
        }))
    }

    /// One sample, at the same times as the stacks' timeline (`always` for the last one).
    pub fn sample(&mut self, secs: f64, memory: Option<ProcessMemory>, always: bool) {
        let values: Vec<(u64, u64)> = match profile::read_profile(&self.memory, &self.symbols) {
            Ok((rate, records)) => {
                self.rate = Some(rate);
                self.unavailable = None;
                let mut values: HashMap<u64, u64> = HashMap::new();
                for record in records {
                    let key = stack_key(&record.stack);
                    *values.entry(key).or_default() += record.inuse_bytes;
                    self.last.insert(key, record);
                }
                values.into_iter().collect()
            }
            Err(err) => {
                self.unavailable = Some(err.to_string());
                Vec::new()
            }
        };
        if always {
            self.timeline.push(secs, memory, values);
        } else {
            self.timeline.offer(secs, memory, values);
        }
    }

    /// A sample at which nothing is read (before the profile was found, or after an exec).
    pub fn skip(&mut self, secs: f64) {
        let none: [(u64, u64); 0] = [];
        self.timeline.push(secs, None, none);
    }

    /// Every return address of the stacks, to be named with the rest.
    pub fn addresses(&self) -> impl Iterator<Item = CodeAddress> + '_ {
        self.last
            .values()
            .flat_map(|r| r.stack.iter().map(|ip| CodeAddress::ReturnAddress(*ip)))
    }

    /// The stacks as of the last sample, named by `name` (innermost-first addresses to
    /// root-first frames, as the kernel's stacks are named).
    pub fn stacks(&self, mut name: impl FnMut(&[CodeAddress]) -> Vec<Frame>) -> Vec<StackRecord> {
        self.last
            .iter()
            .map(|(key, record)| StackRecord {
                origin: Origin::GoHeap,
                frames: name(
                    &record
                        .stack
                        .iter()
                        .map(|ip| CodeAddress::ReturnAddress(*ip))
                        .collect::<Vec<_>>(),
                ),
                live_bytes: record.inuse_bytes,
                live_allocations: record.inuse_objects,
                total_bytes: record.alloc_bytes,
                total_allocations: record.alloc_objects,
                history: self.timeline.series(key),
                ages: None,
                live_bytes_variance: None,
            })
            .collect()
    }
}
