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
//! Moving the probe past instructions is safe only when the programs still see what they
//! would have seen at the entry, on every path into the function:
//! - the skipped instructions fall through (no branch, so every call reaches the probe),
//!   write no memory and leave the stack pointer alone, so the return address is still on
//!   top of the stack: a return probe hijacks it there when the entry fires, which is why a
//!   hook with a return probe may move too;
//! - every argument the hook's programs read is still in a register: its own, or one it was
//!   copied to by a plain `mov` (the cookie then tells the program which, see
//!   tracer_common::entry_args). Other registers may be overwritten, since no program reads
//!   them; jemalloc's `free` computes in `%rax`, `%rcx` and `%rdx` before its first branch;
//! - no branch in the function targets the skipped range or the new probe point, so no call
//!   passes the probe twice or not at all;
//! - the function has no indirect jump, whose targets cannot be checked.
//!
//! Whenever the code cannot be decoded or a rule is in doubt, the answer is the function's
//! entry, which is always correct.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfo,
    InstructionInfoFactory, OpAccess, OpKind, Register,
};
use tracer_common::entry_args::{self, IN_PLACE, MOVABLE};

/// Instructions that may be skipped at most: a function's fast-path test reaches its first
/// branch within a dozen (jemalloc's `free`: ten); the bound keeps the search short.
const MAX_SKIPPED: usize = 16;

/// The argument registers of the System V calling convention, in order.
const ARGUMENT_REGISTERS: [Register; MOVABLE] =
    [Register::RDI, Register::RSI, Register::RDX, Register::RCX];

/// Which arguments a hook's programs read (bit `n` for argument `n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArgsRead(pub u8);

impl ArgsRead {
    fn reads(self, n: usize) -> bool {
        self.0 & (1 << n) != 0
    }
}

/// Where to put a hook's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryPoint {
    /// Bytes from the function's start.
    pub skip: u64,
    /// The register code ([`entry_args`]) holding each argument there.
    pub args: [u8; MOVABLE],
    /// Whether the kernel emulates the instruction there (false: it single-steps it, because
    /// no point that it emulates is provably equivalent to the entry).
    pub emulated: bool,
}

impl EntryPoint {
    fn entry(code: &[u8]) -> Self {
        Self {
            skip: 0,
            args: [IN_PLACE; MOVABLE],
            emulated: kernel_emulates_start(code),
        }
    }
}

/// Where a hook's probes should go: the first instruction on the function's entry path that
/// the kernel emulates, past up to [`MAX_SKIPPED`] instructions that the rules above allow
/// skipping. The entry when it is already emulated, or when no such point exists or it is
/// not provably safe.
///
/// `code` is the whole function (its symbol's bytes) and `address` its virtual address, so
/// that branch targets can be compared; `read` the arguments the hook's programs read.
pub fn entry_probe_point(code: &[u8], address: u64, read: ArgsRead) -> EntryPoint {
    let entry = EntryPoint::entry(code);
    if entry.emulated {
        return entry;
    }
    let Some(instructions) = decode_all(code, address) else {
        return entry;
    };
    let mut info = InstructionInfoFactory::new();
    let mut holders = ArgumentHolders::at_entry();
    let mut probed = None;
    for instruction in instructions.iter().take(MAX_SKIPPED + 1) {
        let start = (instruction.ip() - address) as usize;
        if kernel_emulates(&code[start..start + instruction.len()]) {
            probed = holders.locations(read).map(|args| (start as u64, args));
            break;
        }
        if !holders.step(instruction, &mut info) {
            return entry;
        }
    }
    let Some((skip, args)) = probed.filter(|&(skip, _)| skip > 0) else {
        return entry;
    };
    let guarded = address..=address + skip;
    if has_indirect_branch(&instructions)
        || branch_targets(&instructions).any(|target| guarded.contains(&target))
    {
        return entry;
    }
    EntryPoint {
        skip,
        args,
        emulated: true,
    }
}

/// Every instruction of the function, or `None` if any byte range does not decode.
pub(super) fn decode_all(code: &[u8], address: u64) -> Option<Vec<Instruction>> {
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

/// Whether the function has an indirect jump, whose targets cannot be checked.
pub(super) fn has_indirect_branch(instructions: &[Instruction]) -> bool {
    instructions
        .iter()
        .any(|i| i.flow_control() == FlowControl::IndirectBranch)
}

/// Where the function's direct branches and calls go.
pub(super) fn branch_targets(instructions: &[Instruction]) -> impl Iterator<Item = u64> + '_ {
    instructions
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::ConditionalBranch
                    | FlowControl::UnconditionalBranch
                    | FlowControl::Call
                    | FlowControl::XbeginXabortXend
            )
        })
        .map(Instruction::near_branch_target)
}

/// Whether an instruction falls through, writes no memory and leaves the stack pointer alone;
/// `info` describes it. Such instructions may be passed over by a probe placed after them.
pub(super) fn falls_through_in_place(instruction: &Instruction, info: &InstructionInfo) -> bool {
    instruction.flow_control() == FlowControl::Next
        && !info.used_memory().iter().any(|m| writes(m.access()))
        && !info
            .used_registers()
            .iter()
            .any(|r| writes(r.access()) && r.register().full_register() == Register::RSP)
}

/// Whether an operand access writes.
fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Which general-purpose registers hold each argument's entry value, as the skipped
/// instructions run.
struct ArgumentHolders([Vec<Register>; MOVABLE]);

impl ArgumentHolders {
    fn at_entry() -> Self {
        Self(ARGUMENT_REGISTERS.map(|register| vec![register]))
    }

    /// Follows one skipped instruction; false when it may not be skipped: it branches,
    /// writes memory or the stack pointer.
    fn step(&mut self, instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
        let info = info.info(instruction);
        if !falls_through_in_place(instruction, info) {
            return false;
        }
        let written: Vec<Register> = info
            .used_registers()
            .iter()
            .filter(|used| writes(used.access()))
            .map(|used| used.register().full_register())
            .collect();
        // A 64-bit register-to-register copy gives the destination whatever the source held.
        let copied = (matches!(instruction.code(), Code::Mov_rm64_r64 | Code::Mov_r64_rm64)
            && instruction.op0_kind() == OpKind::Register
            && instruction.op1_kind() == OpKind::Register)
            .then(|| (instruction.op0_register(), instruction.op1_register()));
        for holders in &mut self.0 {
            let had_source = copied.is_some_and(|(_, source)| holders.contains(&source));
            holders.retain(|register| !written.contains(register));
            if let Some((destination, _)) = copied.filter(|_| had_source) {
                holders.push(destination);
            }
        }
        true
    }

    /// Where each argument in `read` is, preferring its own register; `None` if one is lost.
    fn locations(&self, read: ArgsRead) -> Option<[u8; MOVABLE]> {
        let mut locations = [IN_PLACE; MOVABLE];
        for (n, holders) in self.0.iter().enumerate() {
            if !read.reads(n) || holders.contains(&ARGUMENT_REGISTERS[n]) {
                continue;
            }
            locations[n] = holders.iter().find_map(|&register| code_of(register))?;
        }
        Some(locations)
    }
}

/// The [`entry_args`] code of a 64-bit general-purpose register other than the stack pointer.
fn code_of(register: Register) -> Option<u8> {
    Some(match register {
        Register::RAX => entry_args::RAX,
        Register::RBX => entry_args::RBX,
        Register::RCX => entry_args::RCX,
        Register::RDX => entry_args::RDX,
        Register::RSI => entry_args::RSI,
        Register::RDI => entry_args::RDI,
        Register::RBP => entry_args::RBP,
        Register::R8 => entry_args::R8,
        Register::R9 => entry_args::R8 + 1,
        Register::R10 => entry_args::R8 + 2,
        Register::R11 => entry_args::R8 + 3,
        Register::R12 => entry_args::R8 + 4,
        Register::R13 => entry_args::R8 + 5,
        Register::R14 => entry_args::R8 + 6,
        Register::R15 => entry_args::R8 + 7,
        _ => return None,
    })
}

/// Whether the kernel emulates the function's first instruction.
fn kernel_emulates_start(code: &[u8]) -> bool {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let first = decoder.decode();
    !first.is_invalid() && kernel_emulates(&code[..first.len()])
}

/// Whether the kernel emulates this instruction rather than single-stepping it, by the
/// opcode tests of `branch_setup_xol_ops` and `push_setup_xol_ops` (Linux 4.x to 6.18).
/// Prefixed branches are left out: the kernel rejects some (0x66) and others gain nothing.
pub(super) fn kernel_emulates(bytes: &[u8]) -> bool {
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

    /// The probe's offset for a hook that reads the first argument (free, malloc).
    fn entry_probe_skip(code: &[u8], base: u64) -> u64 {
        entry_probe_point(code, base, ArgsRead(0b1)).skip
    }

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
        let point = entry_probe_point(&code, BASE, ArgsRead(0b1));
        assert_eq!((point.skip, point.emulated), (0, true));
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
    fn skips_writes_to_registers_no_program_reads() {
        // mov %rdi,%rax; mov %rdi,%rcx; shr $0x1a,%rax; jne; ret: jemalloc's free in small.
        let code = [
            0x48, 0x89, 0xf8, 0x48, 0x89, 0xf9, 0x48, 0xc1, 0xe8, 0x1a, 0x75, 0x00, 0xc3,
        ];
        let point = entry_probe_point(&code, BASE, ArgsRead(0b1));
        assert_eq!(
            (point.skip, point.args, point.emulated),
            (10, [IN_PLACE; 4], true)
        );
        // xor %eax,%eax (not an argument); push %rbx; pop %rbx; ret
        let code = [0x31, 0xc0, 0x53, 0x5b, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 2);
    }

    #[test]
    fn never_skips_a_write_to_the_stack_pointer() {
        // sub $8,%rsp; push %rbx; pop %rbx; ret
        let code = [0x48, 0x83, 0xec, 0x08, 0x53, 0x5b, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
    }

    #[test]
    fn follows_an_argument_copied_to_another_register() {
        // mimalloc's malloc: mov 0x10(%rip),%rax; mov %rdi,%rsi; mov %fs:(%rax),%rdi;
        // cmp $0x400,%rsi; ja; ret
        let code = [
            0x48, 0x8b, 0x05, 0x10, 0, 0, 0, 0x48, 0x89, 0xfe, 0x64, 0x48, 0x8b, 0x38, 0x48, 0x81,
            0xfe, 0, 4, 0, 0, 0x77, 0x00, 0xc3,
        ];
        let point = entry_probe_point(&code, BASE, ArgsRead(0b1));
        assert_eq!(point.skip, 21);
        assert_eq!(point.args, [entry_args::RSI, IN_PLACE, IN_PLACE, IN_PLACE]);
        // A hook that also reads the second argument (realloc's size) loses it to the copy.
        assert_eq!(entry_probe_point(&code, BASE, ArgsRead(0b11)).skip, 0);
    }

    #[test]
    fn never_moves_past_an_argument_that_is_lost() {
        // xor %edi,%edi; je; ret: the first argument is gone.
        let code = [0x31, 0xff, 0x74, 0x00, 0xc3];
        let point = entry_probe_point(&code, BASE, ArgsRead(0b1));
        assert_eq!((point.skip, point.emulated), (0, false));
        // A 32-bit copy is not the argument: mov %edi,%esi; xor %edi,%edi; je; ret.
        let code = [0x89, 0xfe, 0x31, 0xff, 0x74, 0x00, 0xc3];
        assert_eq!(entry_probe_skip(&code, BASE), 0);
        // A hook that reads neither may move (the third argument, %rdx, is untouched).
        assert_eq!(entry_probe_point(&code, BASE, ArgsRead(0b100)).skip, 4);
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
        // More flag-only tests than may be skipped, then push: too far.
        let mut code = [0x48, 0x85, 0xff].repeat(MAX_SKIPPED + 1);
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
