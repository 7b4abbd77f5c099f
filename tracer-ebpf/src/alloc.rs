//! The malloc family: one entry program and one return program for every allocation
//! function (the attach cookie says which), and an entry program for free.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{AllocKind, ThreadState, counter, probe_hits};

use crate::{
    args::entry_arg,
    sampling,
    stacks::walk_user_stack,
    state::{
        THREADS, count, hit, inside_allocator, record, release, release_tracked, target_thread,
        tracked,
    },
};

const PAGE_SIZE: u64 = 4096;

#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let _ = try_alloc_enter(&ctx);
    0
}

#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_alloc_exit(&ctx);
    0
}

#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let _ = try_free_enter(&ctx);
    0
}

fn try_alloc_enter(ctx: &ProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    hit(probe_hits::ALLOC);
    // SAFETY: `ctx` is the kprobe-type context that the helper expects.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let kind = cookie as u32;
    let arg = |n| entry_arg(ctx, cookie, n);
    // SAFETY: kprobe-type programs may read their pt_regs context directly.
    let sp = unsafe { (*ctx.regs).rsp };

    let (size, old_ptr, out_ptr) = match AllocKind::try_from(kind) {
        Ok(AllocKind::Malloc | AllocKind::Valloc) => (arg(0), 0, 0),
        // An overflowing product makes the call fail, so its value does not matter.
        Ok(AllocKind::Calloc) => (arg(0).wrapping_mul(arg(1)), 0, 0),
        Ok(AllocKind::Realloc) => (arg(1), arg(0), 0),
        Ok(AllocKind::Reallocarray) => (arg(1).wrapping_mul(arg(2)), arg(0), 0),
        Ok(AllocKind::PosixMemalign) => (arg(2), 0, arg(0)),
        Ok(AllocKind::Memalign) => (arg(1), 0, 0),
        Ok(AllocKind::Pvalloc) => (arg(0).wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1), 0, 0),
        Err(_) => return Ok(()),
    };

    let fresh = || ThreadState {
        entry_sp: sp,
        size,
        old_ptr,
        out_ptr,
        kind,
        depth: 1,
        probability: sampling::draw(size),
    };
    if let Some(state) = THREADS.get_ptr_mut(&pid_tgid) {
        // SAFETY: the pointer is to this thread's own live map value; only this thread writes it.
        let state = unsafe { &mut *state };
        if state.depth > 0 {
            if sp < state.entry_sp {
                // Called from inside the outer allocation call: that call accounts for it.
                state.depth += 1;
                return Ok(());
            }
            count(counter::STALE_ENTRY, 1);
        }
        *state = fresh();
        return Ok(());
    }
    THREADS
        .insert(&pid_tgid, &fresh(), u64::from(BPF_NOEXIST))
        .map_err(|err| {
            count(counter::THREAD_MAP_FULL, 1);
            i64::from(err)
        })
}

fn try_alloc_exit(ctx: &RetProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    let Some(state) = THREADS.get_ptr_mut(&pid_tgid) else {
        count(counter::RETURN_WITHOUT_ENTRY, 1);
        return Ok(());
    };
    // SAFETY: the pointer is to this thread's own live map value; only this thread writes it.
    let state = unsafe { &mut *state };
    if state.depth == 0 {
        count(counter::RETURN_WITHOUT_ENTRY, 1);
        return Ok(());
    }
    state.depth -= 1;
    if state.depth > 0 {
        return Ok(());
    }
    let ThreadState {
        size,
        old_ptr,
        out_ptr,
        kind,
        probability,
        ..
    } = *state;
    let ret: u64 = ctx.ret();
    // Walked only for a call that allocated and that byte sampling picked.
    let record_new = |addr: u64| {
        if probability != 0 {
            record(walk_user_stack(ctx.regs, addr), addr, size, probability);
        }
    };

    match AllocKind::try_from(kind) {
        Ok(AllocKind::Realloc | AllocKind::Reallocarray) => {
            if ret != 0 {
                if old_ptr != 0 {
                    release_tracked(old_ptr);
                }
                record_new(ret);
            } else if size == 0 && old_ptr != 0 {
                // glibc's realloc(p, 0) frees p and returns NULL.
                release_tracked(old_ptr);
            } else {
                // A failed realloc leaves the old block untouched.
                count(counter::FAILED_CALLS, 1);
            }
        }
        Ok(AllocKind::PosixMemalign) => {
            // It returns 0 on success and writes the block through its first argument.
            if ret as u32 != 0 {
                count(counter::FAILED_CALLS, 1);
                return Ok(());
            }
            if probability != 0 {
                // SAFETY: bpf_probe_read_user validates the user address.
                let addr = unsafe { bpf_probe_read_user(out_ptr as *const u64) }?;
                record_new(addr);
            }
        }
        Ok(_) if ret != 0 => record_new(ret),
        Ok(_) => count(counter::FAILED_CALLS, 1),
        Err(_) => {}
    }
    Ok(())
}

fn try_free_enter(ctx: &ProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    hit(probe_hits::FREE);
    // SAFETY: `ctx` is the kprobe-type context that the helper expects.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let addr = entry_arg(ctx, cookie, 0);
    // free(NULL) is a no-op.
    if addr == 0 {
        return Ok(());
    }
    // Most frees under byte sampling are of blocks passed over: the allocation map answers
    // first, and only a tracked block needs the thread's state.
    let Some(info) = tracked(addr) else {
        count(counter::FREE_UNKNOWN, 1);
        return Ok(());
    };
    // A free inside realloc is accounted when realloc returns.
    if inside_allocator(pid_tgid) {
        return Ok(());
    }
    if release(addr, &info) {
        count(counter::FREES, 1);
    }
    Ok(())
}
