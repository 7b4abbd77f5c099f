//! The kernel side's maps, each taken out of the loaded object once, by name, with its key and
//! value types checked then. Everything after load holds a typed handle: no map is looked up
//! by a string again, and a misnamed or resized map fails at load, not in the middle of a
//! trace.
//!
//! The programs keep working on maps taken out of [`aya::Ebpf`]: their instructions hold the
//! maps' descriptors, which these handles keep open.

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
};
use tracer_common::{
    AllocInfo, BlockSlot, RuntimeLayout, StackFrames, StackTotalsSlot, UnwindRule,
};

use crate::errors::TracerError;

pub struct KernelMaps {
    /// Outstanding and total bytes per stack (`STACK_TOTALS`), by the index each stack was
    /// given; entry 0 is LOST_STACK's.
    pub totals: Array<MapData, StackTotalsSlot>,
    /// How many indexes of the totals were handed out (`TOTALS_HANDED_OUT`, one entry).
    pub totals_handed_out: Array<MapData, u64>,
    /// Live allocations by address (`ALLOCS`), those that found their slot taken.
    pub allocs: HashMap<MapData, u64, AllocInfo>,
    /// The slot table in front of it (`BLOCK_SLOTS`), where most live allocations are.
    pub block_slots: Array<MapData, BlockSlot>,
    /// Stored stacks by key (`STACKS`); user space adds repaired ones.
    pub stacks: HashMap<MapData, u64, StackFrames>,
    /// Unwind rules by return address (`UNWIND_RULES`), added on demand.
    pub rules: HashMap<MapData, u64, UnwindRule>,
    /// The generation of the rules (`RULE_GENERATION`, one entry): raised after rules are
    /// removed, so that the kernel's per-CPU rule caches look them up again.
    pub rule_generation: Array<MapData, u64>,
    /// Activity and loss counters per CPU (`COUNTERS`, indexed by `tracer_common::counter`).
    pub counters: PerCpuArray<MapData, u64>,
    /// The target's lifecycle marks (`LIFECYCLE`, indexed by `tracer_common::lifecycle`).
    pub lifecycle: Array<MapData, u64>,
    /// Where runtimes keep a frame's method or function (`RUNTIME_LAYOUT`, one entry).
    pub runtime_layout: Array<MapData, RuntimeLayout>,
    /// Probe hits per CPU (`PROBE_HITS`, indexed by `tracer_common::probe_hits`).
    pub probe_hits: PerCpuArray<MapData, u64>,
}

/// The ring buffers, each handed to the one reader that waits on it.
pub struct Rings {
    /// Anonymous mapping events (`MAP_EVENTS`).
    pub map_events: RingBuf<MapData>,
    /// Unwind requests from the kernel walk (`UNWIND_MISSES`).
    pub unwind_misses: RingBuf<MapData>,
    /// The target's exec (`LIFECYCLE_EVENTS`).
    pub lifecycle_events: RingBuf<MapData>,
    /// Keys of new stacks with identified frames (`NEW_IDENTIFIED`).
    pub new_identified: RingBuf<MapData>,
}

impl KernelMaps {
    /// Takes every map that user space reads or writes out of `ebpf`.
    pub fn take(ebpf: &mut Ebpf) -> Result<(Self, Rings), TracerError> {
        Ok((
            Self {
                totals: typed(ebpf, "STACK_TOTALS")?,
                totals_handed_out: typed(ebpf, "TOTALS_HANDED_OUT")?,
                allocs: typed(ebpf, "ALLOCS")?,
                block_slots: typed(ebpf, "BLOCK_SLOTS")?,
                stacks: typed(ebpf, "STACKS")?,
                rules: typed(ebpf, "UNWIND_RULES")?,
                rule_generation: typed(ebpf, "RULE_GENERATION")?,
                counters: typed(ebpf, "COUNTERS")?,
                lifecycle: typed(ebpf, "LIFECYCLE")?,
                runtime_layout: typed(ebpf, "RUNTIME_LAYOUT")?,
                probe_hits: typed(ebpf, "PROBE_HITS")?,
            },
            Rings {
                map_events: typed(ebpf, "MAP_EVENTS")?,
                unwind_misses: typed(ebpf, "UNWIND_MISSES")?,
                lifecycle_events: typed(ebpf, "LIFECYCLE_EVENTS")?,
                new_identified: typed(ebpf, "NEW_IDENTIFIED")?,
            },
        ))
    }
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, TracerError> {
    let error = |source| TracerError::Map {
        map: name,
        source: Box::new(source),
    };
    let map = ebpf.take_map(name).ok_or_else(|| {
        error(MapError::InvalidName {
            name: name.to_owned(),
        })
    })?;
    T::try_from(map).map_err(error)
}
