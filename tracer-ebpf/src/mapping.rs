//! Anonymous mappings: mmap, munmap, mremap, and mprotect inside reservations.
//!
//! Calls through libc's `mmap` are seen by a uprobe and a uretprobe on the wrapper, so that
//! the stack is taken at the return, where its first frame is the caller (the wrapper keeps no
//! frame pointer, so a frame-pointer walk inside it loses the caller). `munmap`, `mremap` and
//! `mprotect` are seen by one uprobe each just after their `syscall`, at the branch on its
//! result, which the kernel emulates: the arguments are still in the syscall's registers and
//! the result is in `%rax` (`map_syscall_done`).
//!
//! Raw syscalls, as the Go runtime makes them, are seen at the syscall tracepoints, attached
//! only for such targets (or on request): while any syscall tracepoint is attached, every
//! system call on the machine takes the kernel's traced path, the `uretprobe` call that ends
//! each return probe included. There, the tracepoints stand aside while a wrapper call is in
//! flight on the thread, and they see `munmap`, `mremap` and `mprotect` themselves (the
//! probes after the syscall are not placed); `mprotect`'s stack is walked with CFI rules from
//! the syscall's own registers, and only under `--unwind fp` does libc's `mprotect` keep an
//! entry uprobe, for its caller's frame. Calls made inside a probed allocation function are
//! the allocator's own chunks and are skipped: the allocations in them already count.
//!
//! Tracepoint field offsets are those of `/sys/kernel/tracing/events/syscalls/sys_*/format`:
//! eight bytes of common fields, the syscall number, then one 8-byte slot per argument from 16.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    bindings::pt_regs,
    helpers::{
        bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_attach_cookie, bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{tracepoint, uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use tracer_common::{
    MAP_EVENT_TAG, MAP_INSIDE_PASSED_OVER, MapArgs, MapEvent, MapEventKind, counter,
};

use crate::{
    args::entry_arg,
    stacks::{kernel_user_stack, syscall_user_stack, walk_user_stack, wrapper_stack},
    state::{
        MAP_ARGS, MAP_EVENTS, count, inside_allocator, inside_passed_over_call, target_thread,
    },
};

const ARG0: usize = 16;
const RET: usize = 16;
const MAP_ANONYMOUS: u64 = 0x20;
const PROT_NONE: u64 = 0;
const PROT_WRITE: u64 = 0x2;

#[uprobe]
pub fn map_call_enter(ctx: ProbeContext) -> u32 {
    let _ = try_call_enter(&ctx);
    0
}

#[uretprobe]
pub fn map_call_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_call_exit(&ctx);
    0
}

/// After a wrapper's `syscall`, at the branch on its result (user space's `syscall_return`
/// module): the arguments are still in the syscall's registers and the result is in `%rax`.
#[uprobe]
pub fn map_syscall_done(ctx: ProbeContext) -> u32 {
    let _ = try_syscall_done(&ctx);
    0
}

#[tracepoint]
pub fn mmap_enter(ctx: TracePointContext) -> u32 {
    let _ = try_syscall_enter(&ctx, MapEventKind::Map);
    0
}

#[tracepoint]
pub fn munmap_enter(ctx: TracePointContext) -> u32 {
    let _ = try_syscall_enter(&ctx, MapEventKind::Unmap);
    0
}

#[tracepoint]
pub fn mremap_enter(ctx: TracePointContext) -> u32 {
    let _ = try_syscall_enter(&ctx, MapEventKind::Remap);
    0
}

#[tracepoint]
pub fn mprotect_enter(ctx: TracePointContext) -> u32 {
    let _ = try_syscall_enter(&ctx, MapEventKind::Protect);
    0
}

#[tracepoint]
pub fn mapping_exit(ctx: TracePointContext) -> u32 {
    let _ = try_syscall_exit(&ctx);
    0
}

/// The arguments of a mapping call, given its first four arguments in order (mmap's are
/// addr, len, prot, flags; munmap's addr, len; mremap's old_addr, old_len, new_len;
/// mprotect's addr, len, prot). `None` for a call that changes nothing counted.
fn args_of(kind: MapEventKind, args: [u64; 4], from_wrapper: u32) -> Option<MapArgs> {
    let base = MapArgs {
        kind: kind as u32,
        from_wrapper,
        ..MapArgs::default()
    };
    match kind {
        // Every anonymous mapping is sent. A PROT_NONE one reserves address space, not
        // memory: user space keeps it as a reservation, in which a later mprotect commits
        // pages (V8's heap, glibc's thread stacks), and a MAP_FIXED one over committed
        // memory releases it. glibc reserves each thread arena that way too (also from
        // inside free, which has no return probe), and the JVM and Go reserve heaps so.
        MapEventKind::Map => (args[3] & MAP_ANONYMOUS != 0).then_some(MapArgs {
            len: args[1],
            prot: args[2],
            ..base
        }),
        MapEventKind::Unmap => Some(MapArgs {
            addr: args[0],
            len: args[1],
            ..base
        }),
        MapEventKind::Remap => Some(MapArgs {
            addr: args[0],
            len: args[1],
            new_len: args[2],
            ..base
        }),
        // Only opening for writing (commits pages) and closing (releases them) matter; the
        // read-only and executable flips of relro and JIT code do not change what is held.
        MapEventKind::Protect => {
            (args[2] & PROT_WRITE != 0 || args[2] == PROT_NONE).then_some(MapArgs {
                addr: args[0],
                len: args[1],
                prot: args[2],
                ..base
            })
        }
    }
}

/// The calling thread, the attach cookie and the kind of a mapping call that a wrapper's
/// probe should see: one of the target's, made outside an allocation function.
#[inline(always)]
fn wrapper_call(ctx: &ProbeContext) -> Option<(u64, u64, MapEventKind)> {
    let pid_tgid = target_thread()?;
    if inside_allocator(pid_tgid) {
        return None;
    }
    // SAFETY: `ctx` is the kprobe-type context that the helper expects.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = MapEventKind::try_from(cookie as u32).ok()?;
    Some((pid_tgid, cookie, kind))
}

fn try_call_enter(ctx: &ProbeContext) -> Result<(), i64> {
    let Some((pid_tgid, cookie, kind)) = wrapper_call(ctx) else {
        return Ok(());
    };
    let raw = [0, 1, 2, 3].map(|n| entry_arg(ctx, cookie, n));
    // SAFETY: kprobe-type programs may read their pt_regs context directly.
    let sp = unsafe { (*ctx.regs).rsp };
    let from_wrapper = if inside_passed_over_call(pid_tgid, sp) {
        MAP_INSIDE_PASSED_OVER
    } else {
        1
    };
    match args_of(kind, raw, from_wrapper) {
        Some(args) => MAP_ARGS
            .insert(&pid_tgid, &args, u64::from(BPF_ANY))
            .map_err(i64::from),
        None => Ok(()),
    }
}

fn try_call_exit(ctx: &RetProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    let Some(args) = take_args(pid_tgid) else {
        return Ok(());
    };
    // 0: the syscall tracepoint reports it; MAP_INSIDE_PASSED_OVER: nothing does.
    if args.from_wrapper != 1 {
        return Ok(());
    }
    let ret: i64 = ctx.ret();
    // mmap and mremap return MAP_FAILED (-1) on failure, munmap and mprotect return -1.
    let returns_status =
        args.kind == MapEventKind::Unmap as u32 || args.kind == MapEventKind::Protect as u32;
    let failed = ret == -1 || (returns_status && ret != 0);
    emit(
        |tag| walk_user_stack(ctx.regs, tag).key,
        args,
        (!failed).then_some(ret as u64),
    );
    Ok(())
}

fn try_syscall_done(ctx: &ProbeContext) -> Result<(), i64> {
    let Some((pid_tgid, _, kind)) = wrapper_call(ctx) else {
        return Ok(());
    };
    // SAFETY: kprobe-type programs may read their pt_regs context directly.
    let regs = unsafe { &*ctx.regs };
    if inside_passed_over_call(pid_tgid, regs.rsp) {
        return Ok(());
    }
    // The syscall convention: the fourth argument is in %r10, not %rcx.
    let raw = [regs.rdi, regs.rsi, regs.rdx, regs.r10];
    let Some(args) = args_of(kind, raw, 1) else {
        return Ok(());
    };
    // The kernel returns -errno, from -4095 to -1.
    let ret = regs.rax;
    let failed = ret >= (-4095i64) as u64;
    emit(
        |tag| wrapper_stack(ctx.regs, tag).key,
        args,
        (!failed).then_some(ret),
    );
    Ok(())
}

/// The user stack pointer of the current task, which a tracepoint's context does not hold:
/// from the registers saved at the syscall's entry.
#[inline(always)]
fn current_user_sp() -> Option<u64> {
    // SAFETY: plain helper calls; the task pointer is the verifier-checked current task, and
    // bpf_probe_read_kernel validates the address it reads.
    unsafe {
        let task = bpf_get_current_task_btf();
        let regs = bpf_task_pt_regs(task) as *const pt_regs;
        bpf_probe_read_kernel(core::ptr::addr_of!((*regs).rsp)).ok()
    }
}

fn tracepoint_arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the offset is inside the syscall tracepoint's fixed record.
    unsafe { ctx.read_at::<u64>(ARG0 + 8 * n) }.unwrap_or(0)
}

fn try_syscall_enter(ctx: &TracePointContext, kind: MapEventKind) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    if inside_allocator(pid_tgid)
        || current_user_sp().is_some_and(|sp| inside_passed_over_call(pid_tgid, sp))
    {
        return Ok(());
    }
    // SAFETY: the value is only read.
    if unsafe { MAP_ARGS.get(&pid_tgid) }.is_some_and(|args| args.from_wrapper != 0) {
        return Ok(());
    }
    let raw = [0, 1, 2, 3].map(|n| tracepoint_arg(ctx, n));
    match args_of(kind, raw, 0) {
        Some(args) => MAP_ARGS
            .insert(&pid_tgid, &args, u64::from(BPF_ANY))
            .map_err(i64::from),
        None => Ok(()),
    }
}

fn try_syscall_exit(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    // SAFETY: the value is copied out.
    let Some(args) = (unsafe { MAP_ARGS.get(&pid_tgid) }).copied() else {
        return Ok(());
    };
    if args.from_wrapper != 0 {
        // The wrapper's return probe reports this call.
        return Ok(());
    }
    let _ = MAP_ARGS.remove(&pid_tgid);
    // SAFETY: the offset is inside the syscall tracepoint's fixed record.
    let ret = unsafe { ctx.read_at::<i64>(RET) }.map_err(i64::from)?;
    // A commit's stack is walked from the syscall itself: libc's mprotect has no uprobe where
    // stacks are walked with CFI rules (its first instruction would be single-stepped).
    let protect = args.kind == MapEventKind::Protect as u32;
    emit(
        |tag| {
            if protect {
                syscall_user_stack(ctx, tag).key
            } else {
                kernel_user_stack(ctx).key
            }
        },
        args,
        (ret >= 0).then_some(ret as u64),
    );
    Ok(())
}

fn take_args(pid_tgid: u64) -> Option<MapArgs> {
    // SAFETY: the value is copied out before the element is removed.
    let args = (unsafe { MAP_ARGS.get(&pid_tgid) }).copied()?;
    let _ = MAP_ARGS.remove(&pid_tgid);
    Some(args)
}

/// Sends one mapping change to user space. `result` is the call's return value, `None` when
/// it failed; `stack` walks the stack, which only a new mapping or a commit needs, with the
/// event's unwind tag ([`MAP_EVENT_TAG`]).
fn emit(stack: impl FnOnce(u64) -> u64, args: MapArgs, result: Option<u64>) {
    let Some(result) = result else {
        count(counter::FAILED_CALLS, 1);
        return;
    };
    // SAFETY: a plain helper call with no arguments.
    let timestamp_ns = unsafe { bpf_ktime_get_ns() };
    let Ok(kind) = MapEventKind::try_from(args.kind) else {
        return;
    };
    // A new mapping or a commit needs its stack; a reservation holds nothing, so it needs
    // none. The walk is taken at this one place: it is inlined, and a second copy (one per
    // kind) doubled what the verifier checks (map_call_exit took 0.40 s to verify, now 0.31).
    let needs_stack =
        matches!(kind, MapEventKind::Map | MapEventKind::Protect) && args.prot != PROT_NONE;
    let stack_key = if needs_stack {
        stack(timestamp_ns | MAP_EVENT_TAG)
    } else {
        0
    };
    let event = match kind {
        MapEventKind::Map => MapEvent {
            kind: args.kind,
            prot: args.prot as u32,
            addr: result,
            len: args.len,
            stack_key,
            ..MapEvent::default()
        },
        MapEventKind::Protect => MapEvent {
            kind: args.kind,
            prot: args.prot as u32,
            addr: args.addr,
            len: args.len,
            stack_key,
            ..MapEvent::default()
        },
        MapEventKind::Unmap => MapEvent {
            kind: args.kind,
            addr: args.addr,
            len: args.len,
            ..MapEvent::default()
        },
        MapEventKind::Remap => MapEvent {
            kind: args.kind,
            addr: result,
            len: args.new_len,
            old_addr: args.addr,
            old_len: args.len,
            ..MapEvent::default()
        },
    };
    let event = MapEvent {
        timestamp_ns,
        ..event
    };
    if MAP_EVENTS.output::<MapEvent>(&event, 0).is_err() {
        count(counter::EVENTS_LOST, 1);
    }
}
