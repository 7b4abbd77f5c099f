//! Where to see a libc mapping wrapper's system call from user space: at the branch on its
//! result, right after the `syscall` instruction.
//!
//! glibc's `munmap` and `mprotect` are `mov $N,%eax; syscall; cmp $-4095,%rax; jae error;
//! ret`, and `mremap` has the same tail after its stack set-up. At the `jae` the kernel
//! emulates the probed instruction (a conditional jump, see [`super::probe_offset`]), the
//! arguments are still in the syscall's registers (`syscall` writes only `%rcx` and `%r11`,
//! `cmp` only the flags) and `%rax` holds the result: one probe sees the whole call. The
//! syscall tracepoints that would see it instead make every system call on the machine take
//! the kernel's traced path while they are attached, which on Linux 6.11+ includes the
//! `uretprobe` system call that ends every return probe: about 95 ns of each malloc's
//! return here.
//!
//! The point is taken only when it provably sees every call, once, with what the syscall got:
//! - the function has exactly one `syscall`, with the expected number set by the `mov` just
//!   before it, and no indirect jump;
//! - the `cmp` on `%rax` and the conditional jump follow it directly;
//! - no branch targets the `syscall`, the `cmp` or the jump (which would reach the probe
//!   without the call, or the call with another number).
//!
//! It is *frameless* when every instruction before the `syscall` falls through, writes no
//! memory and leaves `%rsp` alone, and no branch goes back into them: the return address is
//! then on top of the stack at the probe, which a frame-pointer walk needs for the caller.

use iced_x86::{Code, FlowControl, InstructionInfoFactory, OpKind, Register};

use super::probe_offset::{
    branch_targets, decode_all, falls_through_in_place, has_indirect_branch, kernel_emulates,
};

/// A probe point after a wrapper's system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallReturn {
    /// Bytes from the function's start.
    pub skip: u64,
    /// Whether the return address is on top of the stack there.
    pub frameless: bool,
}

/// The point after the function's system call `number`, or `None` if the code does not have
/// the shape above. `code` is the whole function and `address` its virtual address.
pub fn syscall_return_point(code: &[u8], address: u64, number: u32) -> Option<SyscallReturn> {
    let instructions = decode_all(code, address)?;
    if has_indirect_branch(&instructions) {
        return None;
    }
    let mut syscalls = (0..instructions.len()).filter(|&n| instructions[n].code() == Code::Syscall);
    let at = syscalls.next()?;
    if syscalls.next().is_some() || at == 0 {
        return None;
    }
    let set = &instructions[at - 1];
    if set.code() != Code::Mov_r32_imm32
        || set.op0_register() != Register::EAX
        || set.immediate32() != number
    {
        return None;
    }
    let cmp = instructions.get(at + 1)?;
    let on_result = matches!(cmp.code(), Code::Cmp_RAX_imm32 | Code::Cmp_rm64_imm32)
        && cmp.op0_kind() == OpKind::Register
        && cmp.op0_register() == Register::RAX;
    let branch = instructions.get(at + 2)?;
    let start = (branch.ip() - address) as usize;
    if !on_result
        || branch.flow_control() != FlowControl::ConditionalBranch
        || !kernel_emulates(&code[start..start + branch.len()])
    {
        return None;
    }
    let targets: Vec<u64> = branch_targets(&instructions).collect();
    let guarded = [instructions[at].ip(), cmp.ip(), branch.ip()];
    if targets.iter().any(|target| guarded.contains(target)) {
        return None;
    }
    let mut info = InstructionInfoFactory::new();
    let straight = instructions[..at]
        .iter()
        .all(|instruction| falls_through_in_place(instruction, info.info(instruction)));
    let before = address..instructions[at].ip();
    let frameless = straight && !targets.iter().any(|target| before.contains(target));
    Some(SyscallReturn {
        skip: branch.ip() - address,
        frameless,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1000;

    /// glibc 2.36's `munmap`, byte for byte: `mov $0xb,%eax; syscall; cmp $-4095,%rax;
    /// jae +1; ret`, then the errno path.
    fn munmap() -> Vec<u8> {
        vec![
            0xb8, 0x0b, 0, 0, 0, // mov $0xb,%eax
            0x0f, 0x05, // syscall
            0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp $-4095,%rax
            0x73, 0x01, // jae +1
            0xc3, // ret
            0x48, 0x8b, 0x0d, 0, 0, 0, 0, // mov 0(%rip),%rcx
            0xf7, 0xd8, // neg %eax
            0x64, 0x89, 0x01, // mov %eax,%fs:(%rcx)
            0x48, 0x83, 0xc8, 0xff, // or $-1,%rax
            0xc3, // ret
        ]
    }

    #[test]
    fn munmap_is_probed_at_the_branch_on_its_result() {
        assert_eq!(
            syscall_return_point(&munmap(), BASE, 11),
            Some(SyscallReturn {
                skip: 13,
                frameless: true
            })
        );
    }

    #[test]
    fn another_syscall_number_is_not_the_wrapper() {
        assert_eq!(syscall_return_point(&munmap(), BASE, 10), None);
    }

    #[test]
    fn a_stack_frame_before_the_syscall_is_not_frameless() {
        // sub $0x58,%rsp first, as glibc's mremap.
        let mut code = vec![0x48, 0x83, 0xec, 0x58];
        code.extend(munmap());
        let point = syscall_return_point(&code, BASE, 11).unwrap();
        assert_eq!(point.skip, 17);
        assert!(!point.frameless);
    }

    #[test]
    fn a_branch_to_the_probe_point_refuses_it() {
        // jmp back to the jae, after the errno path.
        let mut code = munmap();
        let at = code.len() as i64;
        let back = (13 - (at + 2)) as i8;
        code.extend([0xeb, back as u8]);
        assert_eq!(syscall_return_point(&code, BASE, 11), None);
    }

    #[test]
    fn two_syscalls_refuse_it() {
        let mut code = munmap();
        code.extend([0x0f, 0x05]);
        assert_eq!(syscall_return_point(&code, BASE, 11), None);
    }

    #[test]
    fn a_result_kept_elsewhere_refuses_it() {
        // mov %rax,%rdx between syscall and cmp: the cmp no longer follows the syscall.
        let mut code = munmap();
        code.splice(7..7, [0x48, 0x89, 0xc2]);
        assert_eq!(syscall_return_point(&code, BASE, 11), None);
    }
}
