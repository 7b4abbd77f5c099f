//! Where inside a function to put an entry probe so that the kernel emulates the probed
//! instruction instead of single-stepping it.
//!
//! A uprobe replaces one instruction with `int3`. After the BPF program runs, the kernel
//! must execute the displaced instruction: it emulates a few kinds in place (relative
//! jumps, calls and conditional jumps, `nop`, `push` of a register) and single-steps every
//! other one in an out-of-line slot, which costs a second trap. glibc 2.36's `free` starts
//! with `test %rdi,%rdi`, so a probe at its entry costs about 4.3 µs against 0.9 µs for
//! `malloc`'s, whose first instruction is `push %r12` (shared/TOOLCHAIN.md). The kernel's
//! list: `branch_setup_xol_ops` and `push_setup_xol_ops` in
//! <https://github.com/torvalds/linux/blob/master/arch/x86/kernel/uprobes.c>.
//!
//! Moving the probe past instructions is safe only when the probe still sees what it would
//! have seen at the entry, on every path into the function:
//! - the skipped instructions write no register (flags aside) and no memory, so every
//!   argument register and the stack pointer still hold their entry values, and they do not
//!   branch, so every call reaches the probe;
//! - no branch in the function targets the skipped range or the new probe point, so no call
//!   passes the probe twice or not at all;
//! - the function has no indirect jump, whose targets cannot be checked.
//!
//! Return probes must stay at offset 0: the kernel hijacks the return address at the top of
//! the stack when the entry fires, which holds only at the first instruction. So this serves
//! entry-only hooks. Whenever the code cannot be decoded or a rule is in doubt, the answer is
//! 0, the function's entry, which is always correct.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, OpAccess,
};

/// Instructions that may be skipped at most. Compilers put one or two cheap checks first
/// (`endbr64`, `test`); anything longer is not worth the risk.
const MAX_SKIPPED: usize = 3;

/// The offset from the function's start at which an entry-only probe should go: past up to
/// [`MAX_SKIPPED`] instructions that the rules above allow skipping, onto the first
/// instruction that the kernel emulates. 0 when the entry is already emulated, or when no
/// such point exists or it is not provably safe.
///
/// `code` is the whole function (its symbol's bytes) and `address` its virtual address, so
/// that branch targets can be compared.
pub fn entry_probe_skip(code: &[u8], address: u64) -> u64 {
    let Some(instructions) = decode_all(code, address) else {
        return 0;
    };
    let mut info = InstructionInfoFactory::new();
    let mut probed = None;
    for instruction in instructions.iter().take(MAX_SKIPPED + 1) {
        let start = (instruction.ip() - address) as usize;
        if kernel_emulates(&code[start..start + instruction.len()]) {
            probed = Some(start as u64);
            break;
        }
        if !is_inert(instruction, &mut info) {
            return 0;
        }
    }
    let Some(skip) = probed.filter(|&skip| skip > 0) else {
        return 0;
    };
    let guarded = address..=address + skip;
    for instruction in &instructions {
        match instruction.flow_control() {
            FlowControl::IndirectBranch => return 0,
            FlowControl::ConditionalBranch
            | FlowControl::UnconditionalBranch
            | FlowControl::Call
            | FlowControl::XbeginXabortXend
                if guarded.contains(&instruction.near_branch_target()) =>
            {
                return 0;
            }
            _ => {}
        }
    }
    skip
}

/// Every instruction of the function, or `None` if any byte range does not decode.
fn decode_all(code: &[u8], address: u64) -> Option<Vec<Instruction>> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instructions = Vec::new();
    while decoder.can_decode() {
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            return None;
        }
        instructions.push(instruction);
    }
    (!instructions.is_empty()).then_some(instructions)
}

/// Falls through, and writes nothing but flags: no register, no memory.
fn is_inert(instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
    if instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    !info.used_registers().iter().any(|r| writes(r.access()))
        && !info.used_memory().iter().any(|m| writes(m.access()))
}

/// Whether the kernel emulates this instruction rather than single-stepping it, by the
/// opcode tests of `branch_setup_xol_ops` and `push_setup_xol_ops` (Linux 4.x to 6.18).
/// Prefixed branches are left out: the kernel rejects some (0x66) and others gain nothing.
fn kernel_emulates(bytes: &[u8]) -> bool {
    match bytes {
        // jmp rel8, jmp rel32, call rel32, jcc rel8, nop
        [0xeb, _] | [0xe9, _, _, _, _] | [0xe8, _, _, _, _] | [0x90] => true,
        [0x70..=0x7f, _] => true,
        // jcc rel32
        [0x0f, 0x80..=0x8f, _, _, _, _] => true,
        // push %reg, push %r8..%r15
        [0x50..=0x57] | [0x41, 0x50..=0x57] => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000;

    /// `test %rdi,%rdi; je +0x10; push %rbp; ...; ret`, glibc 2.36's `free` in small.
    fn free_like() -> Vec<u8> {
        let mut code = vec![0x48, 0x85, 0xff, 0x0f, 0x84, 0x10, 0, 0, 0, 0x55];
        code.extend([0x90; 16]);
        code.extend([0x5d, 0xc3]);
        code
    }

    #[test]
    fn skips_a_test_onto_an_emulated_jcc() {
        assert_eq!(entry_probe_skip(&free_like(), BASE), 3);
    }

    #[test]
    fn keeps_an_entry_that_is_already_emulated() {
        // push %r12; push %rbp; mov %rdi,%rbx; ret
        let code = [0x41, 0x54, 0x55, 0x48, 0x89, 0xfb, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
    }

    #[test]
    fn skips_endbr64_and_a_test() {
        // endbr64; test %rdi,%rdi; je rel8; push %rbx; pop %rbx; ret
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x85, 0xff, 0x74, 0x02, 0x53, 0x5b, 0xc3,
        ];
        assert_eq!(entry_probe_skip(&code, BASE), 7);
    }

    #[test]
    fn never_skips_a_register_write() {
        // mov %rdi,%rsi (an argument register); je; ret
        let code = [0x48, 0x89, 0xfe, 0x74, 0x00, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
        // sub $8,%rsp (the stack pointer); push %rbx; pop %rbx; ret
        let code = [0x48, 0x83, 0xec, 0x08, 0x53, 0x5b, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
        // xor %eax,%eax (not an argument, but a register all the same); push %rbx; ...
        let code = [0x31, 0xc0, 0x53, 0x5b, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
    }

    #[test]
    fn never_skips_a_memory_write() {
        // movq $0,(%rsp) ... then push %rbx
        let code = [0x48, 0xc7, 0x04, 0x24, 0, 0, 0, 0, 0x53, 0x5b, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
    }

    #[test]
    fn falls_back_when_a_branch_targets_the_skipped_range_or_probe_point() {
        for target in [0u8, 1, 3] {
            let mut code = free_like();
            // Replace the tail's `ret` area: jmp rel8 back to BASE + target.
            let at = code.len() - 2;
            let rel = (i64::from(target) - (at as i64 + 2)) as i8;
            code[at] = 0xeb;
            code[at + 1] = rel as u8;
            assert_eq!(entry_probe_skip(&code, BASE), 0, "branch to +{target}");
        }
        // A branch past the probe point is fine.
        let mut code = free_like();
        let at = code.len() - 2;
        code[at] = 0xeb;
        code[at + 1] = (9i64 - (at as i64 + 2)) as i8 as u8;
        assert_eq!(entry_probe_skip(&code, BASE), 3);
    }

    #[test]
    fn falls_back_on_an_indirect_jump() {
        let mut code = free_like();
        // jmp *%rax
        code.extend([0xff, 0xe0]);
        assert_eq!(entry_probe_skip(&code, BASE), 0);
    }

    #[test]
    fn falls_back_on_undecodable_or_truncated_code() {
        assert_eq!(entry_probe_skip(&[], BASE), 0);
        // test %rdi,%rdi then half a jcc
        assert_eq!(
            entry_probe_skip(&[0x48, 0x85, 0xff, 0x0f, 0x84, 0x10], BASE),
            0
        );
        // test, then an invalid opcode in 64-bit mode
        assert_eq!(entry_probe_skip(&[0x48, 0x85, 0xff, 0x06, 0x53], BASE), 0);
    }

    #[test]
    fn falls_back_when_nothing_emulated_is_in_reach() {
        // Four flag-only tests, then push: too far.
        let mut code = [0x48, 0x85, 0xff].repeat(4);
        code.extend([0x53, 0x5b, 0xc3]);
        assert_eq!(entry_probe_skip(&code, BASE), 0);
        // A branch-free function of flag-only instructions and a ret.
        assert_eq!(entry_probe_skip(&[0x48, 0x85, 0xff, 0xc3], BASE), 0);
    }

    #[test]
    fn does_not_skip_a_conditional_branch() {
        // je +0 is itself emulated: nothing to gain, and skipping it would skip a path.
        let code = [0x74, 0x00, 0x53, 0x5b, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
        // cmp then a call: the call is emulated, so it is the probe point.
        let code = [0x48, 0x85, 0xff, 0xe8, 0, 0, 0, 0, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 3);
    }
}
