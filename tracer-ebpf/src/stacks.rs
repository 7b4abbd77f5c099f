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
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST, pt_regs},
    helpers::{bpf_probe_read_user, generated::bpf_get_stack},
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use tracer_common::{LOST_STACK, MAX_STACK_DEPTH, StackFrames, counter};

use crate::state::count;

#[map]
pub static STACKS: HashMap<u64, StackFrames> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

// A stack is 1 KiB, over the BPF stack's 512 bytes: it is built here.
#[map]
static STACK_SCRATCH: PerCpuArray<StackFrames> = PerCpuArray::with_max_entries(1, 0);

/// How far above the stack pointer a frame may be: the default 8 MiB main-thread stack.
const MAX_STACK_SPAN: u64 = 8 << 20;

/// Walks the user stack from the registers of a uprobe or uretprobe and returns its key.
#[inline(always)]
pub fn walk_user_stack(regs: *const pt_regs) -> u64 {
    let Some(frames) = STACK_SCRATCH.get_ptr_mut(0) else {
        return LOST_STACK;
    };
    // SAFETY: a per-CPU scratch value that nothing else uses while this program runs; the
    // registers are the program's own context.
    let (frames, regs) = unsafe { (&mut *frames, &*regs) };
    frames.ips[0] = regs.rip;
    let sp = regs.rsp;
    let mut fp = regs.rbp;
    let mut len = 1;
    frames.truncated = 0;
    for slot in 1..MAX_STACK_DEPTH {
        if fp < sp || fp - sp > MAX_STACK_SPAN || fp & 7 != 0 {
            break;
        }
        // SAFETY: bpf_probe_read_user validates the user address.
        let Ok([next_fp, ret]) = (unsafe { bpf_probe_read_user(fp as *const [u64; 2]) }) else {
            break;
        };
        if ret < 4096 {
            break;
        }
        if let Some(ip) = frames.ips.get_mut(slot) {
            *ip = ret;
        }
        len = slot + 1;
        if next_fp <= fp {
            break;
        }
        fp = next_fp;
        if slot == MAX_STACK_DEPTH - 1 {
            frames.truncated = 1;
        }
    }
    frames.len = len as u32;
    store(frames)
}

/// Takes the user stack with the kernel's walker, for tracepoints, whose context holds no user
/// registers. Only raw mapping syscalls come here: Go's runtime, which keeps frame pointers.
#[inline(always)]
pub fn kernel_user_stack<C: EbpfContext>(ctx: &C) -> u64 {
    let Some(frames) = STACK_SCRATCH.get_ptr_mut(0) else {
        return LOST_STACK;
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
        return LOST_STACK;
    }
    frames.len = (bytes as u64 / 8) as u32;
    frames.truncated = 0;
    store(frames)
}

/// Stores a walked stack under the hash of its frames (FNV-1a over the addresses).
#[inline(always)]
fn store(frames: &StackFrames) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for slot in 0..MAX_STACK_DEPTH {
        if slot >= frames.len as usize {
            break;
        }
        let ip = frames.ips.get(slot).copied().unwrap_or(0);
        hash = (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // LOST_STACK is reserved.
    let key = if hash == LOST_STACK { hash - 1 } else { hash };
    // SAFETY: only checks for presence.
    if unsafe { STACKS.get(&key) }.is_some() {
        return key;
    }
    match STACKS.insert(&key, frames, u64::from(BPF_NOEXIST)) {
        // EEXIST: another CPU stored the same stack first.
        Ok(()) | Err(-17) => key,
        Err(_) => {
            count(counter::STACK_FAILED, 1);
            LOST_STACK
        }
    }
}
