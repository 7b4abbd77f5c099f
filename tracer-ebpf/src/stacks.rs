//! User stacks, walked and stored by leakhound itself.
//!
//! The kernel's own walker follows `rbp` for as long as the memory it points to is readable.
//! In code built without frame pointers `rbp` is an ordinary register, so the walk goes on
//! through garbage, and every garbage tail makes a distinct stack: a C++ service filled a
//! 16K-entry stack map within seconds. This walk accepts a frame only while the frame pointer
//! stays on the thread's stack, above the stack pointer and climbing, so garbage ends it.
//! And where code between the allocation and an outer frame-pointer frame (JIT code, say)
//! leaves `rbp` alone, the walk still lands in those outer frames.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST, pt_regs},
    helpers::{
        bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_get_stack, bpf_loop,
            bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    FrameIdentity, MAX_STACK_DEPTH, MAX_STACK_SPAN, MISS_IDENTIFIED_FRAMES, RuntimeLayout,
    STACK_COPY_BYTES, STACK_HASH_SEED, StackFrames, TRUNCATED_PENDING, UnwindMiss, UnwindRule,
    counter, identity_word, stack_hash_step, stack_key_of_hash,
};

use crate::{
    diag::diag,
    state::count,
    totals::{self, StackRef},
};

#[map]
pub static STACKS: HashMap<u64, StackFrames> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

// A stack is 1 KiB, over the BPF stack's 512 bytes: it is built here.
#[map]
static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);

/// 1 to unwind with CFI rules (`--unwind dwarf`), 0 to follow frame pointers only.
#[unsafe(no_mangle)]
static UNWIND_DWARF: Global<u32> = Global::new(0);

/// Bytes of stack copied for an unwind request, at most `STACK_COPY_BYTES` (`--stack-copy`).
#[unsafe(no_mangle)]
static STACK_COPY_LIMIT: Global<u64> = Global::new(STACK_COPY_BYTES as u64);

/// Bytes of the user stack that a CFI walk copies in one read: the frames whose saved words
/// lie in it are stepped from the copy, without a read of their own (see [`StackWindow`]).
const WINDOW_BYTES: u64 = 1024;

/// A copy of a stretch of the user stack, per CPU, that a CFI walk reads its frames' return
/// addresses and saved rbp from. One read of a kilobyte costs about what one of a word does,
/// and a server's walk through twenty frames took twenty reads.
#[repr(C)]
pub struct StackWindow {
    words: [u64; (WINDOW_BYTES / 8) as usize],
}

#[map]
static STACK_WINDOW: PerCpuArray<StackWindow> = PerCpuArray::with_max_entries(1, 0);

/// Unwind rules by return address, inserted by user space as walks ask for them.
#[map]
pub static UNWIND_RULES: HashMap<u64, UnwindRule> =
    HashMap::with_max_entries(65536, BPF_F_NO_PREALLOC);

/// Slots in each CPU's cache of unwind rules: a power of two, as many as a busy service's hot
/// return addresses, so that most steps of a walk find their rule there.
const RULE_CACHE_SLOTS: u32 = 1024;

/// One slot of the rule cache: the rule for `pc`, taken from [`UNWIND_RULES`] while user
/// space's rule generation was `generation`. `pc` 0 marks a slot being written.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CachedRule {
    pc: u64,
    generation: u64,
    rule: UnwindRule,
}

/// A direct-mapped cache in front of [`UNWIND_RULES`], per CPU: a step of a walk reads its rule
/// from an array slot instead of hashing the return address into the hash map. In a steady
/// state every allocation walks the same few frames again.
#[map]
static RULE_CACHE: PerCpuArray<CachedRule> = PerCpuArray::with_max_entries(RULE_CACHE_SLOTS, 0);

/// User space's rule generation: it adds 1 after removing rules from [`UNWIND_RULES`] (code
/// that a JIT freed), and a cached rule of an older generation is looked up again.
#[map]
pub static RULE_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Where runtimes keep a frame's method or function (HotSpot's interpreter, V8), written by
/// user space when it has read the runtime's own description, before any rule asks for it.
#[map]
pub static RUNTIME_LAYOUT: Array<RuntimeLayout> = Array::with_max_entries(1, 0);

/// Keys of new stacks that hold identified frames: user space names their methods and
/// functions at once, while the objects the words point to are still what they were (V8's GC
/// moves them). Names are still found at the report if this is full, only later.
#[map]
pub static NEW_IDENTIFIED: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// Walks that met a return address with no rule: user space unwinds their stack copies.
// Room for about four thousand full stack copies, and twice as many of the shorter ones taken
// near a stack's top: a burst of allocations from new call sites can come faster than user
// space answers the first of them. 16 MiB lost requests in a burst of 1,200 new call sites
// (tests/tests/unwind.rs) on a loaded 2-core machine; 32 MiB of full-size records lost a few
// hundred in one run of 13.
#[map]
pub static UNWIND_MISSES: RingBuf = RingBuf::with_byte_size(32 << 20, 0);

/// Where a request is written before it goes into the ring with only the bytes it copied
/// (a reserved record would have the full size whatever the copy).
#[map]
static MISS_SCRATCH: PerCpuArray<UnwindMiss> = PerCpuArray::with_max_entries(1, 0);

/// Walks the user stack from the registers of a uprobe or uretprobe and returns it, stored.
/// `tag` names what the stack is for (an allocation's address), so that user space can repair
/// it if the walk has to stop for a missing unwind rule.
#[inline(always)]
pub fn walk_user_stack(regs: *const pt_regs, tag: u64) -> StackRef {
    // SAFETY: the registers are the program's own context.
    let regs = unsafe { &*regs };
    walk_from(regs.rip, regs.rsp, regs.rbp, tag)
}

/// The stack at a probe just after a frameless wrapper's `syscall` (glibc's `mprotect`), whose
/// return address is on top of the stack. With CFI rules the walk steps through the wrapper;
/// a frame-pointer walk starts at its caller, as a return probe's would, since the wrapper
/// keeps no frame and the chain from `%rbp` would skip the caller.
#[inline(always)]
pub fn wrapper_stack(regs: *const pt_regs, tag: u64) -> StackRef {
    // SAFETY: the registers are the program's own context.
    let regs = unsafe { &*regs };
    // One walk_from, which is inlined: a second copy would double what the verifier checks.
    let (pc, sp) = if UNWIND_DWARF.load() != 0 {
        (regs.rip, regs.rsp)
    } else {
        // SAFETY: bpf_probe_read_user validates the user address.
        match unsafe { bpf_probe_read_user(regs.rsp as *const u64) } {
            Ok(ret) => (ret, regs.rsp + 8),
            Err(_) => {
                count(counter::STACK_FAILED, 1);
                return StackRef::LOST;
            }
        }
    };
    walk_from(pc, sp, regs.rbp, tag)
}

/// The stack of a system call that the task is in, from the user registers it saved on
/// entry, for a syscall tracepoint: with CFI rules the walk starts at the instruction after
/// `syscall` and steps through the wrapper that made it (glibc's `mprotect` keeps no frame, so
/// a frame-pointer walk would skip its caller), so no uprobe on the wrapper is needed for its
/// stack. Without CFI rules, the kernel's walker, as before.
#[inline(always)]
pub fn syscall_user_stack<C: EbpfContext>(ctx: &C, tag: u64) -> StackRef {
    if UNWIND_DWARF.load() == 0 {
        return kernel_user_stack(ctx);
    }
    // SAFETY: plain helper calls; the task pointer is the verifier-checked current task, and
    // bpf_probe_read_kernel validates the addresses it reads.
    let regs = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        (
            bpf_probe_read_kernel(core::ptr::addr_of!((*regs).rip)),
            bpf_probe_read_kernel(core::ptr::addr_of!((*regs).rsp)),
            bpf_probe_read_kernel(core::ptr::addr_of!((*regs).rbp)),
        )
    };
    let (Ok(pc), Ok(sp), Ok(bp)) = regs else {
        count(counter::STACK_FAILED, 1);
        return StackRef::LOST;
    };
    walk_from(pc, sp, bp, tag)
}

/// Walks the user stack from a frame's `pc`, `sp` and `bp` and returns it, stored.
#[inline(always)]
fn walk_from(pc: u64, sp: u64, bp: u64, tag: u64) -> StackRef {
    let Some(frames) = STACK_SCRATCH.get_ptr_mut(0) else {
        return StackRef::LOST;
    };
    // SAFETY: a per-CPU scratch value that nothing else uses while this program runs.
    let frames = unsafe { &mut *frames };
    if UNWIND_DWARF.load() != 0 {
        return cfi_walk(frames, pc, sp, bp, tag);
    }
    frames.ips[0] = pc;
    frames.truncated = 0;
    let mut walk = FpWalk {
        frames: frames as *mut StackFrames,
        sp,
        fp: bp,
        len: 1,
    };
    run_loop((MAX_STACK_DEPTH - 1) as u32, fp_step, &mut walk);
    frames.len = walk.len;
    if walk.len as usize == MAX_STACK_DEPTH {
        frames.truncated = 1;
    }
    store(frames, false)
}

/// The state of a frame-pointer walk between steps.
#[repr(C)]
struct FpWalk {
    frames: *mut StackFrames,
    sp: u64,
    fp: u64,
    len: u32,
}

/// One step of the frame-pointer walk. Returns 1 to stop.
extern "C" fn fp_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the FpWalk that walk_user_stack passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<FpWalk>() };
    let fp = walk.fp;
    if fp < walk.sp || fp - walk.sp > MAX_STACK_SPAN || fp & 7 != 0 {
        return 1;
    }
    // SAFETY: bpf_probe_read_user validates the user address.
    let Ok([next_fp, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
        return 1;
    };
    let Some(len) = push_frame(walk.frames, index, ret) else {
        return 1;
    };
    walk.len = len;
    if next_fp <= fp {
        return 1;
    }
    walk.fp = next_fp;
    0
}

/// Stores the return address found by step `index` of a walk (frame `index + 1`), and returns
/// the stack's length; `None` ends the walk (an address no code can have, or a full stack).
/// The slot comes from bpf_loop's index, not from a counter carried between steps: a carried
/// counter is a precise value to the verifier, which then checks every length apart.
#[inline(always)]
fn push_frame(frames: *mut StackFrames, index: u64, ret: u64) -> Option<u32> {
    if ret < 4096 {
        return None;
    }
    // SAFETY: `frames` is the per-CPU scratch value that the walk is filling.
    let slot = unsafe { &mut *frames }.ips.get_mut(index as usize + 1)?;
    *slot = ret;
    Some(index as u32 + 2)
}

/// Runs `step` over `state` up to `count` times with bpf_loop, which has the verifier check
/// `step` once rather than once per iteration. `step` returns 1 to stop early.
#[inline(always)]
fn run_loop<T>(count: u32, step: extern "C" fn(u64, *mut core::ffi::c_void) -> i64, state: &mut T) {
    // SAFETY: `step` has the signature bpf_loop expects, and `state` outlives the call.
    unsafe {
        bpf_loop(
            count,
            step as *mut core::ffi::c_void,
            (state as *mut T).cast(),
            0,
        );
    }
}

/// Walks with the CFI rules that user space derived from `.eh_frame`, so frames built without
/// frame pointers unwind too. A return address with no rule yet ends the walk: the partial
/// stack is stored marked pending, and the registers and a copy of the stack go to user space,
/// which inserts rules for every frame in the copy and moves this allocation to its whole
/// stack. Only the first allocation from a new call site pays that round trip.
#[inline(always)]
fn cfi_walk(frames: &mut StackFrames, pc: u64, sp: u64, bp: u64, tag: u64) -> StackRef {
    frames.ips[0] = pc;
    frames.truncated = 0;
    let mut walk = CfiWalk {
        frames: frames as *mut StackFrames,
        pc,
        sp,
        bp,
        len: 1,
        missed: 0,
        identified: 0,
        window: STACK_WINDOW
            .get_ptr_mut(0)
            .map_or(core::ptr::null_mut(), |window| window),
        window_base: 0,
        window_valid: 0,
        generation: RULE_GENERATION.get(0).copied().unwrap_or(0),
        layout: RUNTIME_LAYOUT
            .get_ptr(0)
            .map_or(core::ptr::null(), |layout| layout),
    };
    // bpf_loop has the verifier check the step once, not once per frame: the unrolled walk
    // took a second to verify.
    let mut stopped = false;
    for index in 0..INLINE_STEPS {
        if step(&mut walk, index) != 0 {
            stopped = true;
            break;
        }
    }
    if !stopped {
        run_loop(
            (MAX_STACK_DEPTH as u64 - 1 - INLINE_STEPS) as u32,
            cfi_step,
            &mut walk,
        );
    }
    let missed = walk.missed != 0;
    frames.len = walk.len;
    if walk.len as usize == MAX_STACK_DEPTH {
        frames.truncated = 1;
    }
    if missed {
        frames.truncated = TRUNCATED_PENDING;
    }
    let stack = store(frames, walk.identified != 0);
    if missed {
        // The copy starts where the walk stopped, not at the allocation: a deep stack would
        // otherwise keep its upper frames out of every copy, and their rules out of reach.
        send_miss(walk.pc, walk.sp, walk.bp, stack.key, tag);
    }
    stack
}

/// The state of a CFI walk between steps.
#[repr(C)]
struct CfiWalk {
    frames: *mut StackFrames,
    pc: u64,
    sp: u64,
    bp: u64,
    len: u32,
    missed: u32,
    /// 1 once a frame was identified by its slots.
    identified: u32,
    /// The runtimes' frame layouts (null if the map cannot be read).
    layout: *const RuntimeLayout,
    /// [`RULE_GENERATION`] when the walk began.
    generation: u64,
    /// This CPU's stack window (null if the map cannot be read), holding the stack from
    /// `window_base` when `window_valid` is 1.
    window: *mut StackWindow,
    window_base: u64,
    window_valid: u32,
}

impl CfiWalk {
    /// The user word at `at`: from the window, which is first moved to start at `at` when it
    /// does not hold it. Where that read fails (the window would run past the end of the
    /// stack's mapping) or the address is unaligned, the word is read alone.
    #[inline(always)]
    fn word(&mut self, at: u64) -> Option<u64> {
        if self.window.is_null() || at & 7 != 0 {
            return read_word(at);
        }
        let mut offset = at.wrapping_sub(self.window_base);
        if self.window_valid == 0 || offset >= WINDOW_BYTES {
            // SAFETY: the window is this CPU's scratch value, of the size passed, and the
            // helper validates the user address.
            let rc = unsafe {
                probe_read_user_raw(
                    self.window.cast(),
                    WINDOW_BYTES as u32,
                    at as *const core::ffi::c_void,
                )
            };
            if rc != 0 {
                self.window_valid = 0;
                return read_word(at);
            }
            self.window_base = at;
            self.window_valid = 1;
            offset = 0;
        }
        // SAFETY: as above; the index is checked against the array.
        unsafe { &*self.window }
            .words
            .get((offset / 8) as usize)
            .copied()
    }
}

#[inline(always)]
fn read_word(at: u64) -> Option<u64> {
    // SAFETY: bpf_probe_read_user validates the user address.
    unsafe { bpf_probe_read_user(at as *const u64) }.ok()
}

/// Steps of a CFI walk made inline, before its loop. Each step in the loop is a call of
/// [`cfi_step`], a subprogram, and on this kernel a call and its return cost about 20 ns (the
/// return goes through a mitigation thunk), as much as the step's own work; an allocation's
/// stack is often only a few frames deep. More inline steps cost attach time: each is
/// verified apart.
const INLINE_STEPS: u64 = 2;

/// One step of the CFI walk in its loop, for frame `INLINE_STEPS + index`. Returns 1 to stop.
extern "C" fn cfi_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the CfiWalk that cfi_walk passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<CfiWalk>() };
    step(walk, INLINE_STEPS + index)
}

/// One step of the CFI walk: from frame `index`, at `pc`, to its caller. Returns 1 to stop.
#[inline(always)]
fn step(walk: &mut CfiWalk, index: u64) -> i64 {
    let Some(rule) = rule_at(walk.pc, walk.generation) else {
        walk.missed = 1;
        return 1;
    };
    if rule.identity != FrameIdentity::None as u32 {
        identify(walk, &rule, index);
    }
    let Some(cfa) = rule.cfa(walk.sp, walk.bp) else {
        return 1;
    };
    // The saved rbp first: it lies below the return address, so a window moved to it holds
    // the return address as well.
    if let Some(at) = rule.saved_bp_at(cfa) {
        match walk.word(at) {
            Some(value) => walk.bp = value,
            None => return 1,
        }
    }
    let Some(ret) = walk.word(cfa - 8) else {
        return 1;
    };
    let Some(len) = push_frame(walk.frames, index, ret) else {
        return 1;
    };
    walk.len = len;
    walk.sp = cfa;
    walk.pc = ret;
    0
}

/// The unwind rule for `pc`: from this CPU's cache when it holds one of this `generation`,
/// else from [`UNWIND_RULES`], which then fills the slot.
#[inline(always)]
fn rule_at(pc: u64, generation: u64) -> Option<UnwindRule> {
    // Return addresses are spread over pages of code: fold the page bits into the slot.
    let slot = ((pc ^ (pc >> 10)) as u32) & (RULE_CACHE_SLOTS - 1);
    let Some(entry) = RULE_CACHE.get_ptr_mut(slot) else {
        // SAFETY: the value is copied out.
        return unsafe { UNWIND_RULES.get(&pc) }.copied();
    };
    // A uprobe program may be preempted by another task's on the same CPU, which may rewrite
    // the slot meanwhile: the slot's pc is read before and after the rule, and written as 0
    // before the rule and as the pc after it, so a torn slot is never taken for a hit.
    // SAFETY: the pointer is to this CPU's live slot; volatile accesses keep the order.
    unsafe {
        let pc_at = &raw mut (*entry).pc;
        if core::ptr::read_volatile(pc_at) == pc {
            let cached = core::ptr::read_volatile(entry);
            if cached.generation == generation && core::ptr::read_volatile(pc_at) == pc {
                return Some(cached.rule);
            }
        }
        let rule = UNWIND_RULES.get(&pc).copied()?;
        core::ptr::write_volatile(pc_at, 0);
        core::ptr::write_volatile(&raw mut (*entry).generation, generation);
        core::ptr::write_volatile(&raw mut (*entry).rule, rule);
        core::ptr::write_volatile(pc_at, pc);
        Some(rule)
    }
}

/// Replaces the return address of frame `index` (the one being stepped, with its own `bp`)
/// with the identity its slots give, where they give one.
#[inline(always)]
fn identify(walk: &mut CfiWalk, rule: &UnwindRule, index: u64) {
    let kind = match rule.identity {
        1 => FrameIdentity::JvmInterpreted,
        2 => FrameIdentity::V8Js,
        _ => return,
    };
    if walk.layout.is_null() {
        return;
    }
    // SAFETY: a pointer to the array map's one value, which lives as long as the program.
    let layout = unsafe { &*walk.layout };
    let read = |at: u64| {
        // SAFETY: bpf_probe_read_user validates the user address.
        unsafe { bpf_probe_read_user(at as *const u64) }.ok()
    };
    let Some(word) = identity_word(kind, layout, walk.bp, read) else {
        return;
    };
    // SAFETY: `frames` is the per-CPU scratch value that the walk is filling.
    if let Some(slot) = unsafe { &mut *walk.frames }.ips.get_mut(index as usize) {
        *slot = word;
        walk.identified = 1;
    }
}

/// Asks user space for the rule at `pc`, the frame where a walk stopped (with its `sp` and
/// `bp`), sending a copy of the stack from there.
fn send_miss(pc: u64, sp: u64, bp: u64, partial_key: u64, tag: u64) {
    let Some(miss) = MISS_SCRATCH.get_ptr_mut(0) else {
        count(counter::UNWIND_MISS_LOST, 1);
        return;
    };
    // SAFETY: `miss` is this CPU's scratch value, of the right size; the stack copy is written
    // by the helper into its own array.
    let copied = unsafe {
        (*miss).tag = tag;
        (*miss).partial_key = partial_key;
        (*miss).ip = pc;
        (*miss).sp = sp;
        (*miss).bp = bp;
        // The stack may end closer to sp than a full copy: try smaller copies.
        let mut copied = 0u64;
        // Near the top of a stack a full copy would run past its end and fail as a whole,
        // so step down a kilobyte at a time.
        for kib in [8u64, 7, 6, 5, 4, 3, 2, 1] {
            let size = (kib * 1024)
                .min(STACK_COPY_LIMIT.load())
                .min(STACK_COPY_BYTES as u64);
            let rc = probe_read_user_raw(
                (&raw mut (*miss).stack).cast(),
                size as u32,
                sp as *const core::ffi::c_void,
            );
            if rc == 0 {
                copied = size;
                break;
            }
        }
        (*miss).copied = copied;
        (*miss).identified_count = 0;
        copied
    };
    // JavaScript frames above the miss, read now: user space walks the copy later, when V8
    // may have moved the functions the frames point to.
    if let Some(layout) = RUNTIME_LAYOUT.get_ptr(0) {
        // SAFETY: the array map's one value, alive as long as the program.
        if unsafe { (*layout).v8.valid } != 0 {
            let mut prefetch = JsPrefetch {
                miss,
                layout,
                sp,
                fp: bp,
            };
            run_loop(
                MISS_IDENTIFIED_FRAMES as u32,
                js_prefetch_step,
                &mut prefetch,
            );
        }
    }
    let size = (UnwindMiss::STACK_AT as u64 + copied).min(size_of::<UnwindMiss>() as u64);
    // SAFETY: `miss` is the scratch value and `size` is at most its size.
    let record = unsafe { core::slice::from_raw_parts(miss.cast::<u8>(), size as usize) };
    if UNWIND_MISSES.output::<[u8]>(record, 0).is_err() {
        count(counter::UNWIND_MISS_LOST, 1);
    }
}

/// The state of the frame-pointer walk that reads JavaScript frames above a miss.
#[repr(C)]
struct JsPrefetch {
    miss: *mut UnwindMiss,
    layout: *const RuntimeLayout,
    sp: u64,
    fp: u64,
}

/// One frame of that walk: records (fp, identity word or 0) in slot `index`. Returns 1 to
/// stop.
extern "C" fn js_prefetch_step(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the JsPrefetch that send_miss passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<JsPrefetch>() };
    let fp = walk.fp;
    if fp < walk.sp || fp - walk.sp > MAX_STACK_SPAN || fp & 7 != 0 {
        return 1;
    }
    let read = |at: u64| {
        // SAFETY: bpf_probe_read_user validates the user address.
        unsafe { bpf_probe_read_user(at as *const u64) }.ok()
    };
    // SAFETY: the layout is the array map's value; the record is the reserved entry.
    let word = identity_word(FrameIdentity::V8Js, unsafe { &*walk.layout }, fp, read).unwrap_or(0);
    // SAFETY: as above.
    let miss = unsafe { &mut *walk.miss };
    let Some(slot) = miss.identified.get_mut(index as usize) else {
        return 1;
    };
    *slot = [fp, word];
    miss.identified_count = index + 1;
    let Some(next) = read(fp) else {
        return 1;
    };
    if next <= fp {
        return 1;
    }
    walk.fp = next;
    0
}

/// Takes the user stack with the kernel's walker, for tracepoints, whose context holds no user
/// registers. Only raw mapping syscalls come here: Go's runtime, which keeps frame pointers.
#[inline(always)]
pub fn kernel_user_stack<C: EbpfContext>(ctx: &C) -> StackRef {
    let Some(frames) = STACK_SCRATCH.get_ptr_mut(0) else {
        return StackRef::LOST;
    };
    // SAFETY: as above.
    let frames = unsafe { &mut *frames };
    // SAFETY: the buffer is the scratch value's frame array, of the size passed.
    let bytes = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            frames.ips.as_mut_ptr().cast(),
            (MAX_STACK_DEPTH * 8) as u32,
            u64::from(BPF_F_USER_STACK),
        )
    };
    if bytes <= 0 {
        count(counter::STACK_FAILED, 1);
        return StackRef::LOST;
    }
    frames.len = (bytes as u64 / 8) as u32;
    frames.truncated = 0;
    store(frames, false)
}

/// Stores a walked stack under the hash of its frames (FNV-1a over the addresses), and gives it
/// an index in the totals. A new stack with `identified` frames is announced to user space.
#[inline(always)]
fn store(frames: &StackFrames, identified: bool) -> StackRef {
    // A plain loop, which the compiler unrolls, rather than bpf_loop: each of its steps would
    // be a call of a subprogram, about 20 ns each here (see INLINE_STEPS).
    let len = frames.len.min(MAX_STACK_DEPTH as u32) as usize;
    let mut hash = STACK_HASH_SEED;
    for ip in frames.ips.iter().take(len) {
        hash = stack_hash_step(hash, *ip);
    }
    let key = stack_key_of_hash(hash);
    // A stack this CPU met lately is stored and has its index: most walks end here.
    if let Some(stack) = totals::cached(key) {
        return stack;
    }
    // SAFETY: only checks for presence.
    if unsafe { STACKS.get(&key) }.is_some() {
        return totals::index_of(key);
    }
    match STACKS.insert(&key, frames, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            if identified {
                // A full ring only delays the names to the report.
                let _ = NEW_IDENTIFIED.output::<u64>(key, 0);
            }
            totals::index_of(key)
        }
        // EEXIST: another CPU stored the same stack first.
        Err(-17) => totals::index_of(key),
        Err(err) => {
            // -E2BIG is the map being full, which the counter reports; anything else is news.
            if err != -7 {
                diag!("stack map insert failed: error {}", err);
            }
            count(counter::STACK_FAILED, 1);
            StackRef::LOST
        }
    }
}
