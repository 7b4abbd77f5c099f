//! Anonymous mappings: mmap, munmap and mremap, seen at the syscall tracepoints so that raw
//! syscalls count as well as libc's wrappers. Calls made inside a probed allocation function are
//! the allocator's own chunks and are skipped: the allocations in them already count.
//!
//! Field offsets are those of `/sys/kernel/tracing/events/syscalls/sys_*_*/format`: eight
//! bytes of common fields, the syscall number, then one 8-byte slot per argument from 16.

use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::bpf_ktime_get_ns,
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{MapArgs, MapEvent, MapEventKind, counter};

use crate::state::{MAP_ARGS, MAP_EVENTS, count, inside_allocator, stack_key, target_thread};

const ARG0: usize = 16;
const RET: usize = 16;
const MAP_ANONYMOUS: u64 = 0x20;

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, MapEventKind::Map);
    0
}

#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, MapEventKind::Unmap);
    0
}

#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx, MapEventKind::Remap);
    0
}

#[tracepoint]
pub fn mapping_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn arg(ctx: &TracePointContext, n: usize) -> Result<u64, i64> {
    // SAFETY: the offset is inside the syscall tracepoint's fixed record.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.map_err(i64::from)
}

fn try_enter(ctx: &TracePointContext, kind: MapEventKind) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    if inside_allocator(pid_tgid) {
        return Ok(());
    }
    let args = match kind {
        MapEventKind::Map => {
            if arg(ctx, 3)? & MAP_ANONYMOUS == 0 {
                return Ok(());
            }
            MapArgs { kind: kind as u32, _pad: 0, addr: 0, len: arg(ctx, 1)?, new_len: 0 }
        }
        MapEventKind::Unmap => {
            MapArgs { kind: kind as u32, _pad: 0, addr: arg(ctx, 0)?, len: arg(ctx, 1)?, new_len: 0 }
        }
        MapEventKind::Remap => MapArgs {
            kind: kind as u32,
            _pad: 0,
            addr: arg(ctx, 0)?,
            len: arg(ctx, 1)?,
            new_len: arg(ctx, 2)?,
        },
    };
    MAP_ARGS.insert(&pid_tgid, &args, u64::from(BPF_ANY)).map_err(i64::from)
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    // SAFETY: the value is copied out before the element is removed.
    let Some(args) = (unsafe { MAP_ARGS.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    let _ = MAP_ARGS.remove(&pid_tgid);
    // SAFETY: the offset is inside the syscall tracepoint's fixed record.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.map_err(i64::from)?;
    if ret < 0 {
        count(counter::FAILED_CALLS, 1);
        return Ok(());
    }
    let event = match MapEventKind::try_from(args.kind) {
        Ok(MapEventKind::Map) => MapEvent {
            kind: args.kind,
            addr: ret as u64,
            len: args.len,
            stack_key: stack_key(ctx),
            ..MapEvent::default()
        },
        Ok(MapEventKind::Unmap) => {
            MapEvent { kind: args.kind, addr: args.addr, len: args.len, ..MapEvent::default() }
        }
        Ok(MapEventKind::Remap) => MapEvent {
            kind: args.kind,
            addr: ret as u64,
            len: args.new_len,
            old_addr: args.addr,
            old_len: args.len,
            ..MapEvent::default()
        },
        Err(_) => return Ok(()),
    };
    let event = MapEvent {
        // SAFETY: a plain helper call with no arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ..event
    };
    if MAP_EVENTS.output::<MapEvent>(&event, 0).is_err() {
        count(counter::EVENTS_LOST, 1);
    }
    Ok(())
}
