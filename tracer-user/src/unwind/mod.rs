//! Whole stacks without frame pointers: unwind rules from each module's CFI (`.eh_frame`),
//! handed to the kernel walk on demand, and the same walk run here over a copied stack.
//!
//! The kernel walk (tracer-ebpf/src/stacks.rs) looks a rule up by return address. A miss sends
//! the registers and a copy of the stack; [`unwind_copy`] then walks that copy here with the
//! same steps, asking [`CfiRules`] for each frame's rule, and every rule it derives is inserted
//! into the kernel, so the next allocation from that site is walked whole in the kernel.

mod cfi;
pub mod ledger;
mod repair;

pub use cfi::{CfiRules, rules_in_image};
pub use repair::{DRAIN_BUDGET, MissHandler};
use tracer_common::{
    FrameIdentity, MAX_STACK_DEPTH, Regs, STACK_HASH_SEED, Truncation, UnwindRule, stack_hash_step,
};

/// How stacks are walked (`--unwind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum UnwindMode {
    /// CFI rules: whole stacks through code without frame pointers (glibc, libstdc++, -O2
    /// builds), frame pointers where there is no CFI (JIT code). This is what `auto` picks.
    #[default]
    Auto,
    /// The same as `auto`, named for what it does.
    Dwarf,
    /// Frame pointers only: the cheapest walk, whole only where every frame keeps them.
    Fp,
}

impl UnwindMode {
    pub fn uses_cfi(self) -> bool {
        !matches!(self, Self::Fp)
    }
}

/// A user stack copied at a known stack pointer.
pub struct StackCopy<'a> {
    pub sp: u64,
    pub bytes: &'a [u8],
}

impl StackCopy<'_> {
    pub fn read(&self, addr: u64) -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(self.sp)?).ok()?;
        let word = self.bytes.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(word.try_into().ok()?))
    }
}

/// A walked stack: return addresses, innermost first, and how the walk ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Walked {
    pub ips: Vec<u64>,
    pub truncation: Truncation,
}

/// Walks a copied stack from the registers at an allocation's return, exactly as the kernel's
/// CFI walk does, so that the result is the stack the kernel will store for the same site.
/// `rule_for` gives the rule for a return address (`None`: no rule can be had); `identify`
/// gives the identity word of a frame whose rule asks for one, from the frame's `bp`
/// (`tracer_common::identity_word`, as the kernel computes it), which then stands in the
/// frame's place.
pub fn unwind_copy(
    regs: Regs,
    copy: &StackCopy<'_>,
    mut rule_for: impl FnMut(u64) -> Option<UnwindRule>,
    mut identify: impl FnMut(FrameIdentity, u64) -> Option<u64>,
) -> Walked {
    let Regs {
        mut pc,
        mut sp,
        mut bp,
    } = regs;
    let mut ips = vec![pc];
    let mut truncation = Truncation::Complete;
    for slot in 1..MAX_STACK_DEPTH {
        let Some(rule) = rule_for(pc) else {
            truncation = Truncation::Pending;
            break;
        };
        if let Ok(kind) = FrameIdentity::try_from(rule.identity)
            && kind != FrameIdentity::None
            && let Some(word) = identify(kind, bp)
            && let Some(last) = ips.last_mut()
        {
            *last = word;
        }
        let Some(cfa) = rule.cfa(sp, bp) else { break };
        let Some(ret) = copy.read(cfa - 8) else {
            // The stack goes on beyond the copy: say so rather than cut it silently.
            truncation = Truncation::DepthLimit;
            break;
        };
        if let Some(at) = rule.saved_bp_at(cfa) {
            match copy.read(at) {
                Some(value) => bp = value,
                None => {
                    truncation = Truncation::DepthLimit;
                    break;
                }
            }
        }
        if ret < 4096 {
            break;
        }
        ips.push(ret);
        sp = cfa;
        pc = ret;
        if slot == MAX_STACK_DEPTH - 1 {
            truncation = Truncation::DepthLimit;
        }
    }
    Walked { ips, truncation }
}

/// The key the kernel stores a stack under: FNV-1a over its return addresses, with
/// `LOST_STACK` (all ones) reserved.
pub fn stack_key(ips: &[u64]) -> u64 {
    tracer_common::stack_key_of_hash(
        ips.iter()
            .fold(STACK_HASH_SEED, |hash, ip| stack_hash_step(hash, *ip)),
    )
}

#[cfg(test)]
mod tests {
    use tracer_common::{RBP_UNCHANGED, RuleKind};

    use super::*;

    fn rule(kind: RuleKind, cfa_offset: i32, rbp_offset: i32) -> UnwindRule {
        UnwindRule::new(kind, cfa_offset, rbp_offset)
    }

    /// A recorded stack: main (frame pointer) -> a (no frame pointer, 24-byte frame) ->
    /// b (leaf caller of malloc, 8-byte frame). Addresses and layout as a -O2 build has them.
    fn recorded() -> (Vec<u8>, u64) {
        let sp = 0x7ffd_0000_1000_u64;
        let mut words = [0u64; 16];
        // b's frame: [sp] spill, [sp+8] return into a.
        words[1] = 0x40_1100;
        // a's frame (from sp + 16): 16 bytes of locals, then the return into main.
        words[4] = 0x40_1200;
        // main's frame: saved rbp at +48, return into __libc_start_call_main at +56.
        words[6] = 0x7ffd_0000_1100;
        words[7] = 0x7f00_0002_9d90;
        let bytes = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        (bytes, sp)
    }

    #[test]
    fn walks_frames_without_frame_pointers_by_their_rules() {
        let (bytes, sp) = recorded();
        let copy = StackCopy { sp, bytes: &bytes };
        let rules = |pc: u64| match pc {
            0x40_1050 => Some(rule(RuleKind::CfaRsp, 16, RBP_UNCHANGED)), // in b, after the call
            0x40_1100 => Some(rule(RuleKind::CfaRsp, 24, RBP_UNCHANGED)), // in a
            0x40_1200 => Some(rule(RuleKind::CfaRbp, 16, -16)),           // main keeps rbp
            0x7f00_0002_9d90 => Some(rule(RuleKind::Stop, 0, 0)),
            _ => None,
        };
        // At b's return from malloc: rip in b, rsp = b's frame, rbp = main's frame pointer.
        let walked = unwind_copy(
            Regs {
                pc: 0x40_1050,
                sp,
                bp: sp + 48,
            },
            &copy,
            rules,
            |_, _| None,
        );
        assert_eq!(
            walked.ips,
            [0x40_1050, 0x40_1100, 0x40_1200, 0x7f00_0002_9d90]
        );
        assert_eq!(walked.truncation, Truncation::Complete);
    }

    #[test]
    fn a_missing_rule_marks_the_walk_pending_and_a_short_copy_ends_it() {
        let (bytes, sp) = recorded();
        let copy = StackCopy { sp, bytes: &bytes };
        let walked = unwind_copy(
            Regs {
                pc: 0x40_1050,
                sp,
                bp: 0,
            },
            &copy,
            |pc| (pc == 0x40_1050).then(|| rule(RuleKind::CfaRsp, 16, RBP_UNCHANGED)),
            |_, _| None,
        );
        assert_eq!(walked.ips, [0x40_1050, 0x40_1100]);
        assert_eq!(walked.truncation, Truncation::Pending);

        let short = StackCopy {
            sp,
            bytes: &bytes[..8],
        };
        let walked = unwind_copy(
            Regs {
                pc: 0x40_1050,
                sp,
                bp: 0,
            },
            &short,
            |_| Some(rule(RuleKind::CfaRsp, 16, RBP_UNCHANGED)),
            |_, _| None,
        );
        assert_eq!(walked.ips, [0x40_1050]);
        assert_eq!(
            walked.truncation,
            Truncation::DepthLimit,
            "a walk that runs off the copy is marked truncated"
        );
    }

    #[test]
    fn keys_match_the_kernels_hash() {
        // FNV-1a over 64-bit words, as tracer-ebpf/src/stacks.rs computes it.
        let mut hash = 0xcbf2_9ce4_8422_2325_u64;
        for ip in [1u64, 2, 3] {
            hash = (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3);
        }
        assert_eq!(stack_key(&[1, 2, 3]), hash);
        assert_ne!(stack_key(&[1, 2, 3]), stack_key(&[1, 3, 2]));
    }
}
