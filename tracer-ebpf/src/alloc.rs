//! The malloc family: one entry program and one return program for every allocation
//! function (the attach cookie says which), and an entry program for free.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_probe_read_user, generated::bpf_get_attach_cookie},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{
    AllocKind, SESSION_IS_RETURN_PLACEHOLDER, ThreadState, counter, entry_args, probe_hits,
};

use crate::{
    args::entry_arg,
    sampling,
    stacks::walk_user_stack,
    state::{
        count, hit, inside_allocator, record, release, release_tracked, target_thread, tracked,
    },
    threads,
};

const PAGE_SIZE: u64 = 4096;

#[uprobe]
pub fn alloc_enter(ctx: ProbeContext) -> u32 {
    let _ = try_alloc_enter(&ctx, Cookie::Attached, false);
    0
}

/// malloc's entry where its size is in its own register (tracer-user attaches this program
/// only there): it knows what its cookie would say, and reading the cookie is a helper call,
/// about 20 ns here, a fifth of the rest of this program.
#[uprobe]
pub fn malloc_enter(ctx: ProbeContext) -> u32 {
    let _ = try_alloc_enter(&ctx, Cookie::Known(AllocKind::Malloc as u64), false);
    0
}

/// malloc's entry where a moved probe finds the size in another register, one program per
/// register, named and numbered as in tracer_common::entry_args::MALLOC_MOVED_PROGRAMS, by
/// which tracer-user attaches them: each knows its cookie, as [`malloc_enter`] does, and
/// does without reading it. mimalloc's `malloc` copies the size to `%rsi` before its first
/// emulated instruction.
macro_rules! malloc_entry_in {
    ($($name:ident: $index:literal),* $(,)?) => {$(
        #[uprobe]
        pub fn $name(ctx: ProbeContext) -> u32 {
            const MOVED: (u8, &str) = entry_args::MALLOC_MOVED_PROGRAMS[$index];
            const _: () = assert!(same_name(MOVED.1, stringify!($name)));
            const COOKIE: u64 = entry_args::cookie(AllocKind::Malloc as u32, [MOVED.0, 0, 0, 0]);
            let _ = try_alloc_enter(&ctx, Cookie::Known(COOKIE), false);
            0
        }
    )*};
}

malloc_entry_in!(
    malloc_in_rax: 0,
    malloc_in_rbx: 1,
    malloc_in_rcx: 2,
    malloc_in_rdx: 3,
    malloc_in_rsi: 4,
    malloc_in_rbp: 5,
    malloc_in_r8: 6,
    malloc_in_r9: 7,
    malloc_in_r10: 8,
    malloc_in_r11: 9,
    malloc_in_r12: 10,
    malloc_in_r13: 11,
    malloc_in_r14: 12,
    malloc_in_r15: 13,
);

/// Whether two names are the same, at compile time: a program's name must be the one
/// tracer-user attaches by.
const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut n = 0;
    while n < a.len() {
        if a[n] != b[n] {
            return false;
        }
        n += 1;
    }
    true
}

/// Where an entry program learns which function ran and where its arguments are.
#[derive(Clone, Copy)]
enum Cookie {
    /// From the attach cookie.
    Attached,
    /// A program attached only where the cookie is always this.
    Known(u64),
}

impl Cookie {
    #[inline(always)]
    fn read(self, ctx: &ProbeContext) -> u64 {
        match self {
            // SAFETY: `ctx` is the kprobe-type context that the helper expects.
            Self::Attached => unsafe { bpf_get_attach_cookie(ctx.as_ptr()) },
            Self::Known(cookie) => cookie,
        }
    }
}

#[uretprobe]
pub fn alloc_exit(ctx: RetProbeContext) -> u32 {
    let _ = try_alloc_exit(&ctx);
    0
}

/// Entry and return of an allocation function in one program, for uprobe sessions (Linux
/// 6.12+): the same program runs at the entry and, unless the entry returned 1, at the
/// return. Under byte sampling, a call that is passed over returns 1 at its entry, so it
/// costs one trap instead of two. Loaded only by tracer-user's multi-uprobe loader, which
/// rewrites [`session_is_return`]'s placeholder call into the kfunc.
// Not `#[uprobe]`: aya-ebpf's macro discards the function's value and returns 0, and a
// session's entry must return 1 to cancel its return. This is the macro's expansion otherwise.
#[unsafe(no_mangle)]
#[unsafe(link_section = "uprobe")]
pub fn alloc_session(ctx: *mut core::ffi::c_void) -> u32 {
    let ctx = ProbeContext::new(ctx);
    if session_is_return() {
        let _ = try_alloc_exit(&RetProbeContext::new(ctx.as_ptr()));
        return 0;
    }
    let skip = matches!(
        try_alloc_enter(&ctx, Cookie::Attached, true),
        Ok(Return::Skip)
    );
    // The verifier wants a session entry's value provably 0 or 1; the mask says so.
    core::hint::black_box(u32::from(skip)) & 1
}

/// `bool bpf_session_is_return(void)`, through the placeholder that the loader rewrites
/// (tracer_common::SESSION_IS_RETURN_PLACEHOLDER).
#[inline(always)]
fn session_is_return() -> bool {
    // SAFETY: a call of the placeholder number, which the loader turns into the kfunc call;
    // it takes no argument and returns a bool in r0, as a helper would.
    let kfunc: unsafe extern "C" fn() -> u64 =
        unsafe { core::mem::transmute(SESSION_IS_RETURN_PLACEHOLDER as usize) };
    // SAFETY: see above.
    let returned = unsafe { kfunc() };
    returned & 1 != 0
}

/// Whether an allocation call's return must run its program.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    Run,
    /// Nothing to do at the return: byte sampling passed the call over (sessions only).
    Skip,
}

/// Starts the outermost allocation call of a thread whose state is `state`. Field by field,
/// and each store volatile: the compiler merges stores of known zeros (malloc's old pointer,
/// out pointer and the padding around them) into a call of `memset`, a subprogram, whose
/// call and return cost about 20 ns here.
#[inline(always)]
fn begin_call(state: &mut ThreadState, fresh: &ThreadState) {
    // SAFETY: plain stores to fields of a live reference.
    unsafe {
        core::ptr::write_volatile(&raw mut state.entry_sp, fresh.entry_sp);
        core::ptr::write_volatile(&raw mut state.size, fresh.size);
        core::ptr::write_volatile(&raw mut state.old_ptr, fresh.old_ptr);
        core::ptr::write_volatile(&raw mut state.out_ptr, fresh.out_ptr);
        core::ptr::write_volatile(&raw mut state.kind, fresh.kind);
        core::ptr::write_volatile(&raw mut state.depth, fresh.depth);
        core::ptr::write_volatile(&raw mut state.probability, fresh.probability);
        core::ptr::write_volatile(&raw mut state.passed_over_sp, 0);
        core::ptr::write_volatile(&raw mut state.passed_over_ret, 0);
    }
}

/// free's entry where its pointer is in its own register (tracer-user attaches this program
/// only there): no cookie to read (see [`malloc_enter`]).
#[uprobe]
pub fn free_enter(ctx: ProbeContext) -> u32 {
    let _ = try_free_enter(&ctx, Cookie::Known(0));
    0
}

/// free's entry where a moved probe finds its pointer in another register, as its cookie says.
#[uprobe]
pub fn free_enter_moved(ctx: ProbeContext) -> u32 {
    let _ = try_free_enter(&ctx, Cookie::Attached);
    0
}

/// `may_skip`: the return may be cancelled (a session), so a call that byte sampling passes
/// over keeps no state at all.
// Inlined: as a subprogram, its call and return cost more than the rest of the program's
// bookkeeping on a kernel whose returns go through a mitigation thunk.
#[inline(always)]
fn try_alloc_enter(ctx: &ProbeContext, cookie: Cookie, may_skip: bool) -> Result<Return, i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(Return::Skip);
    };
    hit(probe_hits::ALLOC);
    let cookie = cookie.read(ctx);
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
        Err(_) => return Ok(Return::Run),
    };
    let probability = sampling::draw(size);
    // realloc's return releases the old block even when the new one is passed over.
    let skip = may_skip
        && probability == 0
        && !matches!(
            AllocKind::try_from(kind),
            Ok(AllocKind::Realloc | AllocKind::Reallocarray)
        );

    let fresh = || ThreadState {
        entry_sp: sp,
        size,
        old_ptr,
        out_ptr,
        kind,
        depth: 1,
        probability,
        passed_over_sp: 0,
        passed_over_ret: 0,
    };
    // The return address of a call passed over, which marks it (ThreadState::passed_over_sp).
    let passed_over = || {
        // SAFETY: bpf_probe_read_user validates the user address.
        let ret = unsafe { bpf_probe_read_user(sp as *const u64) }.unwrap_or(0);
        ThreadState {
            depth: 0,
            passed_over_sp: sp,
            passed_over_ret: ret,
            ..fresh()
        }
    };
    if let Some(state) = threads::state(pid_tgid) {
        // SAFETY: the pointer is to this thread's own live map value; only this thread writes it.
        let state = unsafe { &mut *state };
        if state.depth > 0 {
            if sp < state.entry_sp {
                // Called from inside the outer allocation call: that call accounts for it.
                state.depth += 1;
                return Ok(Return::Run);
            }
            count(counter::STALE_ENTRY, 1);
        }
        if skip {
            // No depth: nothing is inside an allocation call that no return will close.
            *state = passed_over();
            return Ok(Return::Skip);
        }
        begin_call(state, &fresh());
        return Ok(Return::Run);
    }
    let (state, returned) = if skip {
        (passed_over(), Return::Skip)
    } else {
        (fresh(), Return::Run)
    };
    threads::insert(pid_tgid, &state).map(|()| returned)
}

// Inlined into each program: as a subprogram returning through a pointer, the compiler may
// leave a stack address in r0 at its exit, which the verifier refuses ("cannot return stack
// pointer to the caller").
#[inline(always)]
fn try_alloc_exit(ctx: &RetProbeContext) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    let Some(state) = threads::state(pid_tgid) else {
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
    // The block the call made, if any; the old block of a realloc is released on the way.
    let made = match AllocKind::try_from(kind) {
        Ok(AllocKind::Realloc | AllocKind::Reallocarray) => {
            if ret != 0 {
                if old_ptr != 0 {
                    release_tracked(old_ptr);
                }
                ret
            } else {
                if size == 0 && old_ptr != 0 {
                    // glibc's realloc(p, 0) frees p and returns NULL.
                    release_tracked(old_ptr);
                } else {
                    // A failed realloc leaves the old block untouched.
                    count(counter::FAILED_CALLS, 1);
                }
                0
            }
        }
        Ok(AllocKind::PosixMemalign) => {
            // It returns 0 on success and writes the block through its first argument.
            if ret as u32 != 0 {
                count(counter::FAILED_CALLS, 1);
                return Ok(());
            }
            if probability == 0 {
                return Ok(());
            }
            // SAFETY: bpf_probe_read_user validates the user address.
            unsafe { bpf_probe_read_user(out_ptr as *const u64) }?
        }
        Ok(_) if ret != 0 => ret,
        Ok(_) => {
            count(counter::FAILED_CALLS, 1);
            0
        }
        Err(_) => 0,
    };
    // Walked only for a call that allocated and that byte sampling picked, from one place:
    // a walk reached from each arm above was made a subprogram of its own, whose call and
    // return cost more than they carry.
    if made != 0 && probability != 0 {
        record(walk_user_stack(ctx.regs, made), made, size, probability);
    }
    Ok(())
}

#[inline(always)]
fn try_free_enter(ctx: &ProbeContext, cookie: Cookie) -> Result<(), i64> {
    let Some(pid_tgid) = target_thread() else {
        return Ok(());
    };
    hit(probe_hits::FREE);
    let cookie = cookie.read(ctx);
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
