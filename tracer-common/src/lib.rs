//! Every byte that crosses the boundary between leakhound's eBPF programs and its user side.
//!
//! All types are `#[repr(C)]` with explicit padding, and tags stay plain `u32`s: user space
//! decodes them with `TryFrom`, so a value the kernel wrote can never be an invalid enum.
#![no_std]

/// Frames kept per stack: perf's default maximum.
pub const MAX_STACK_DEPTH: usize = 127;

/// One user stack, innermost frame first, stored in the kernel under a 64-bit hash of its
/// frames. Hashing the frames that were really walked (rather than using the kernel's stack
/// map, which keeps one stack per hash bucket and drops the next one that lands there) makes a
/// stack's key depend on nothing but the stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StackFrames {
    /// How many entries of `ips` are frames.
    pub len: u32,
    /// 1 when the walk stopped at [`MAX_STACK_DEPTH`] with frames left, or
    /// [`TRUNCATED_PENDING`].
    pub truncated: u32,
    /// Return addresses (the first is where execution resumes in the innermost frame).
    pub ips: [u64; MAX_STACK_DEPTH],
}

/// `StackFrames::truncated` when the walk stopped at an address with no unwind rule yet: user
/// space was asked for the rule, and repairs this allocation's stack from a copy.
pub const TRUNCATED_PENDING: u32 = 2;

/// How to step from a frame to its caller's, for one return address. User space derives it from
/// the module's CFI (`.eh_frame`) and inserts it on demand; the kernel walk applies it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindRule {
    /// A `RULE_*` constant.
    pub kind: u32,
    /// CFA = the rule's base register + this.
    pub cfa_offset: i32,
    /// The caller's rbp is saved at CFA + this, unless it is [`RBP_UNCHANGED`].
    pub rbp_offset: i32,
    pub _pad: u32,
}

impl UnwindRule {
    /// The frame's CFA (the caller's stack pointer) under this rule, from the frame's `sp` and
    /// `bp`; `None` where the walk ends: a stop rule, or a CFA that is not above `sp` on the
    /// same stack. The kernel walk and user space's walk of a copy both step with this, so the
    /// stacks (and their keys) they produce agree.
    #[inline(always)]
    pub fn cfa(&self, sp: u64, bp: u64) -> Option<u64> {
        let cfa = match self.kind {
            RULE_CFA_RSP => sp.wrapping_add(self.cfa_offset as i64 as u64),
            RULE_CFA_RBP => bp.wrapping_add(self.cfa_offset as i64 as u64),
            RULE_FRAME_POINTER => bp.wrapping_add(16),
            _ => return None,
        };
        (cfa > sp && cfa - sp <= MAX_STACK_SPAN).then_some(cfa)
    }

    /// Where the frame saved its caller's rbp, if it did; the return address is at `cfa - 8`.
    #[inline(always)]
    pub fn saved_bp_at(&self, cfa: u64) -> Option<u64> {
        match self.kind {
            RULE_FRAME_POINTER => Some(cfa - 16),
            _ if self.rbp_offset != RBP_UNCHANGED => {
                Some(cfa.wrapping_add(self.rbp_offset as i64 as u64))
            }
            _ => None,
        }
    }
}

/// How far above the stack pointer a frame may be: the default 8 MiB main-thread stack.
pub const MAX_STACK_SPAN: u64 = 8 << 20;

/// FNV-1a over 64-bit words: the hash a stack is stored under, from [`STACK_HASH_SEED`].
#[inline(always)]
pub fn stack_hash_step(hash: u64, ip: u64) -> u64 {
    (hash ^ ip).wrapping_mul(0x0000_0100_0000_01b3)
}

/// The FNV-1a offset basis.
pub const STACK_HASH_SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// CFA = rsp + offset.
pub const RULE_CFA_RSP: u32 = 0;
/// CFA = rbp + offset.
pub const RULE_CFA_RBP: u32 = 1;
/// No CFI (JIT code, hand-written assembly): a frame-pointer frame, CFA = rbp + 16.
pub const RULE_FRAME_POINTER: u32 = 2;
/// The outermost frame, or CFI that the kernel walk cannot apply: the walk ends here.
pub const RULE_STOP: u32 = 3;
/// `UnwindRule::rbp_offset` when the frame leaves rbp as it was.
pub const RBP_UNCHANGED: i32 = i32::MIN;

/// Bytes of user stack copied into an [`UnwindMiss`].
pub const STACK_COPY_BYTES: usize = 8192;

/// Sent when a kernel walk met a return address with no rule: the walk's state at that frame
/// (`ip` is the return address, `sp` and `bp` the registers there) and the stack above it.
/// The frames below are those of the partial stack stored under `partial_key`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UnwindMiss {
    /// The block the walk was for (its address), or 0 for a mapping.
    pub tag: u64,
    /// The key the partial stack was stored under.
    pub partial_key: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// How many bytes of `stack` are valid, from `sp` up.
    pub copied: u64,
    pub stack: [u8; STACK_COPY_BYTES],
}

/// Stack key recorded when the kernel could not store a stack (its stack map was full, or the
/// walk failed). The bytes still count, under a visible `[lost stack]` frame.
pub const LOST_STACK: u64 = u64::MAX;

/// The allocation functions that share one entry and one return program. The attach cookie
/// carries the value, so one program serves them all.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllocKind {
    /// `malloc(size)`
    Malloc = 0,
    /// `calloc(nmemb, size)`
    Calloc = 1,
    /// `realloc(ptr, size)`
    Realloc = 2,
    /// `reallocarray(ptr, nmemb, size)`
    Reallocarray = 3,
    /// `posix_memalign(memptr, alignment, size)`: the result is written through `memptr`.
    PosixMemalign = 4,
    /// `aligned_alloc(alignment, size)` and `memalign(alignment, size)`.
    Memalign = 5,
    /// `valloc(size)`
    Valloc = 6,
    /// `pvalloc(size)`: the size is rounded up to whole pages.
    Pvalloc = 7,
}

impl TryFrom<u32> for AllocKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            0 => Self::Malloc,
            1 => Self::Calloc,
            2 => Self::Realloc,
            3 => Self::Reallocarray,
            4 => Self::PosixMemalign,
            5 => Self::Memalign,
            6 => Self::Valloc,
            7 => Self::Pvalloc,
            other => return Err(other),
        })
    }
}

/// Per-thread state between an allocation function's entry and its return.
///
/// `depth` counts probed allocation calls that are in flight on the thread. Only the outermost
/// call is recorded: glibc's `realloc(NULL, n)` calls `malloc`, `memalign` may call `malloc`,
/// and an `mmap` made inside `malloc` is the allocator's own chunk, already counted by the
/// allocation that lives in it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadState {
    /// User stack pointer at the outermost entry. A later entry at or above it means the
    /// outermost call never returned (a longjmp, a lost return probe), so its state is stale.
    pub entry_sp: u64,
    /// Requested size in bytes (already multiplied for calloc and reallocarray).
    pub size: u64,
    /// The block that realloc and reallocarray replace.
    pub old_ptr: u64,
    /// Where posix_memalign writes the new block's address.
    pub out_ptr: u64,
    /// An [`AllocKind`].
    pub kind: u32,
    /// Probed allocation calls in flight on this thread.
    pub depth: u32,
}

/// One live allocation, keyed by its address in the kernel's allocation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocInfo {
    pub size: u64,
    /// `bpf_ktime_get_ns` at the allocation's return.
    pub timestamp_ns: u64,
    /// The stack's key in the per-stack totals, or [`LOST_STACK`].
    pub stack_key: u64,
}

/// What one stack holds, kept up to date in the kernel so a report reads these rather than
/// walking every live allocation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackTotals {
    /// Outstanding bytes. Updated with wrapping atomic adds; read it as `i64`, since a reader
    /// can observe a free's subtraction before the matching allocation's addition.
    pub live_bytes: u64,
    /// Outstanding allocations (wrapping, as `live_bytes`).
    pub live_allocations: u64,
    /// Bytes ever allocated on this stack since attach.
    pub total_bytes: u64,
    /// Allocations ever made on this stack since attach.
    pub total_allocations: u64,
}

/// Kinds of [`MapEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapEventKind {
    /// An anonymous mapping was created at `addr..addr+len`.
    Map = 0,
    /// `addr..addr+len` was unmapped; parts of tracked mappings in it are gone.
    Unmap = 1,
    /// `old_addr..old_addr+old_len` moved or resized to `addr..addr+len`.
    Remap = 2,
}

impl TryFrom<u32> for MapEventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            0 => Self::Map,
            1 => Self::Unmap,
            2 => Self::Remap,
            other => return Err(other),
        })
    }
}

/// Anonymous-memory mapping changes, sent to user space through a ring buffer. They are rare
/// next to malloc calls, and a partial munmap needs an interval map that BPF does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapEvent {
    /// A [`MapEventKind`].
    pub kind: u32,
    pub _pad: u32,
    pub addr: u64,
    pub len: u64,
    pub old_addr: u64,
    pub old_len: u64,
    pub stack_key: u64,
    pub timestamp_ns: u64,
}

/// Arguments of a mapping syscall, kept between its entry and exit tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapArgs {
    /// A [`MapEventKind`].
    pub kind: u32,
    /// 1 when libc's wrapper was entered: its return probe reports the call, with a stack
    /// that starts at the wrapper's caller, and the syscall tracepoints stand aside.
    pub from_wrapper: u32,
    pub addr: u64,
    pub len: u64,
    pub new_len: u64,
}

/// Indexes of the kernel's loss and activity counters (a per-CPU array).
pub mod counter {
    /// Allocations recorded.
    pub const ALLOCATIONS: u32 = 0;
    /// Frees of a tracked address.
    pub const FREES: u32 = 1;
    /// Allocations not tracked because the allocation map was full.
    pub const ALLOC_MAP_FULL: u32 = 2;
    /// Bytes of those allocations.
    pub const ALLOC_MAP_FULL_BYTES: u32 = 3;
    /// Stacks that could not be stored, the stack map being full (the bytes count under
    /// `[lost stack]`).
    pub const STACK_FAILED: u32 = 4;
    /// Frees of an address that was not tracked (allocated before attach, or lost).
    pub const FREE_UNKNOWN: u32 = 5;
    /// Return probes that fired with no entry state on the thread.
    pub const RETURN_WITHOUT_ENTRY: u32 = 6;
    /// Entry states overwritten because their call never returned.
    pub const STALE_ENTRY: u32 = 7;
    /// Entries that found the per-thread state map full.
    pub const THREAD_MAP_FULL: u32 = 8;
    /// Mapping events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 9;
    /// Allocations whose stack totals could not be created.
    pub const TOTALS_MAP_FULL: u32 = 10;
    /// Allocations returned at an address that was still live: its free was missed.
    pub const ADDRESS_REUSED: u32 = 11;
    /// Calls that failed (returned NULL or an error) and so count nothing.
    pub const FAILED_CALLS: u32 = 12;
    /// Unwind misses not sent to user space, the ring buffer being full: those allocations
    /// stay under their partial stack, marked `[unwind pending]`.
    pub const UNWIND_MISS_LOST: u32 = 13;
    /// How many counters there are.
    pub const COUNT: u32 = 14;
}

#[cfg(feature = "user")]
mod user {
    use super::{
        AllocInfo, MapEvent, StackFrames, StackTotals, ThreadState, UnwindMiss, UnwindRule,
    };

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of `u64`/`u32` fields with explicit
    // padding, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MapEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ThreadState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackFrames {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindRule {}
    // SAFETY: as above (the byte array has no padding either).
    unsafe impl aya::Pod for UnwindMiss {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for kind in 0..8 {
            assert_eq!(AllocKind::try_from(kind).map(|k| k as u32), Ok(kind));
        }
        assert_eq!(AllocKind::try_from(8), Err(8));
        assert_eq!(MapEventKind::try_from(2), Ok(MapEventKind::Remap));
        assert_eq!(MapEventKind::try_from(3), Err(3));
    }

    #[test]
    fn unwind_steps() {
        let rsp = UnwindRule {
            kind: RULE_CFA_RSP,
            cfa_offset: 24,
            rbp_offset: RBP_UNCHANGED,
            _pad: 0,
        };
        assert_eq!(rsp.cfa(0x1000, 0), Some(0x1018));
        assert_eq!(rsp.saved_bp_at(0x1018), None);
        let rbp = UnwindRule {
            kind: RULE_CFA_RBP,
            cfa_offset: 16,
            rbp_offset: -16,
            _pad: 0,
        };
        assert_eq!(rbp.cfa(0x1000, 0x1100), Some(0x1110));
        assert_eq!(rbp.saved_bp_at(0x1110), Some(0x1100));
        let fp = UnwindRule {
            kind: RULE_FRAME_POINTER,
            ..UnwindRule::default()
        };
        assert_eq!(fp.cfa(0x1000, 0x1100), Some(0x1110));
        assert_eq!(fp.saved_bp_at(0x1110), Some(0x1100));
        // A CFA at or below sp, or beyond the stack span, ends the walk; so does a stop rule.
        assert_eq!(rbp.cfa(0x2000, 0x1100), None);
        assert_eq!(rsp.cfa(0x1000, 0).map(|_| ()), Some(()));
        let far = UnwindRule {
            kind: RULE_CFA_RSP,
            cfa_offset: i32::MAX,
            rbp_offset: RBP_UNCHANGED,
            _pad: 0,
        };
        assert_eq!(far.cfa(0x1000, 0), None);
        let stop = UnwindRule {
            kind: RULE_STOP,
            ..UnwindRule::default()
        };
        assert_eq!(stop.cfa(0x1000, 0x1100), None);
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ThreadState>(), 40);
        assert_eq!(core::mem::size_of::<AllocInfo>(), 24);
        assert_eq!(core::mem::size_of::<StackTotals>(), 32);
        assert_eq!(core::mem::size_of::<MapEvent>(), 56);
        assert_eq!(core::mem::size_of::<MapArgs>(), 32);
        assert_eq!(core::mem::size_of::<StackFrames>(), 8 + 8 * MAX_STACK_DEPTH);
        assert_eq!(core::mem::size_of::<UnwindRule>(), 16);
        assert_eq!(core::mem::size_of::<UnwindMiss>(), 48 + STACK_COPY_BYTES);
    }
}
