//! An entry program's arguments, where the attach cookie says they are (see
//! tracer_common::entry_args): in their own registers at a function's entry, possibly in
//! others when the probe sits past the function's first instructions.

use aya_ebpf::programs::ProbeContext;
use tracer_common::entry_args::{self, IN_PLACE};

/// Argument `n` of the probed call.
#[inline(always)]
pub fn entry_arg(ctx: &ProbeContext, cookie: u64, n: usize) -> u64 {
    let code = entry_args::location(cookie, n);
    if code == IN_PLACE {
        return ctx.arg::<u64>(n).unwrap_or(0);
    }
    // SAFETY: kprobe-type programs may read their pt_regs context directly.
    let regs = unsafe { &*ctx.regs };
    // Every register is read at a constant offset first: the verifier refuses a context read
    // at an offset that depends on a value, which is what a `match` on the code compiles to.
    let registers = [
        regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.r8, regs.r9,
        regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
    ];
    registers.get(usize::from(code) - 1).copied().unwrap_or(0)
}
