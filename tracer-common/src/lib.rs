//! Every byte that crosses the boundary between leakhound's eBPF programs and its user side.
//!
//! All types are `#[repr(C)]` with explicit padding, and tags stay plain `u32`s: user space
//! decodes them with `TryFrom`, so a value the kernel wrote can never be an invalid enum.
#![no_std]

pub mod identity;
pub use identity::{
    FrameIdentity, JvmFrameLayout, RuntimeLayout, StackWord, UNKNOWN_BCI, V8FrameLayout,
    identity_word,
};

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

/// The unwind tag of a mapping event: its `timestamp_ns` with this bit set. An allocation's
/// tag is its address, which never has the bit. A mapping is not named by its start, which
/// two events may share (a range committed, then committed again over its last pages), so
/// that a repair moves only the pages its own event made.
pub const MAP_EVENT_TAG: u64 = 1 << 63;

/// How a stored walk ended: `StackFrames::truncated` decoded. The kernel writes the `u32`; user
/// space decodes it with `TryFrom`, so an unknown value is an error, never a guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// The walk reached the outermost frame.
    Complete,
    /// Cut at [`MAX_STACK_DEPTH`] with frames left.
    DepthLimit,
    /// Stopped at an address with no unwind rule yet ([`TRUNCATED_PENDING`]).
    Pending,
}

impl From<Truncation> for u32 {
    fn from(truncation: Truncation) -> u32 {
        match truncation {
            Truncation::Complete => 0,
            Truncation::DepthLimit => 1,
            Truncation::Pending => TRUNCATED_PENDING,
        }
    }
}

impl TryFrom<u32> for Truncation {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            0 => Ok(Self::Complete),
            1 => Ok(Self::DepthLimit),
            TRUNCATED_PENDING => Ok(Self::Pending),
            other => Err(other),
        }
    }
}

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
    /// A [`FrameIdentity`]: what the frame's own slots say it runs, read by the walk and kept
    /// in place of the return address (interpreted Java, JavaScript).
    pub identity: u32,
}

impl UnwindRule {
    /// A rule of `kind` with its offsets; `rbp_offset` is [`RBP_UNCHANGED`] where the frame
    /// leaves rbp as it was.
    pub const fn new(kind: RuleKind, cfa_offset: i32, rbp_offset: i32) -> Self {
        Self {
            kind: kind as u32,
            cfa_offset,
            rbp_offset,
            identity: FrameIdentity::None as u32,
        }
    }

    /// The same rule, with the frame's identity read from its slots.
    pub const fn identified(self, identity: FrameIdentity) -> Self {
        Self {
            identity: identity as u32,
            ..self
        }
    }

    /// The walk ends at this frame.
    pub const fn stop() -> Self {
        Self::new(RuleKind::Stop, 0, 0)
    }

    /// A frame-pointer frame: CFA = rbp + 16, the caller's rbp at CFA - 16.
    pub const fn frame_pointer() -> Self {
        Self::new(RuleKind::FramePointer, 0, 0)
    }

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

/// The key a stack is stored under, from the hash of its frames: [`LOST_STACK`] is reserved,
/// so a hash that lands on it moves one down, and so is 0, which marks an entry of the totals
/// array that no stack was given (a target that controls its stack's words could aim a stack
/// at either). The kernel and user space both end with this, so a stack repaired in user space
/// gets the key the kernel would give it.
#[inline(always)]
pub fn stack_key_of_hash(hash: u64) -> u64 {
    match hash {
        LOST_STACK => LOST_STACK - 1,
        0 => 1,
        hash => hash,
    }
}

/// How an [`UnwindRule`] finds the CFA. The kernel matches on the `u32` values (the
/// `RULE_*` constants); user space builds and decodes rules through this enum.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleKind {
    /// CFA = rsp + offset.
    CfaRsp = 0,
    /// CFA = rbp + offset.
    CfaRbp = 1,
    /// No CFI (JIT code, hand-written assembly): a frame-pointer frame, CFA = rbp + 16.
    FramePointer = 2,
    /// The outermost frame, or CFI that the kernel walk cannot apply: the walk ends here.
    Stop = 3,
}

impl TryFrom<u32> for RuleKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        match value {
            RULE_CFA_RSP => Ok(Self::CfaRsp),
            RULE_CFA_RBP => Ok(Self::CfaRbp),
            RULE_FRAME_POINTER => Ok(Self::FramePointer),
            RULE_STOP => Ok(Self::Stop),
            other => Err(other),
        }
    }
}

pub const RULE_CFA_RSP: u32 = RuleKind::CfaRsp as u32;
pub const RULE_CFA_RBP: u32 = RuleKind::CfaRbp as u32;
pub const RULE_FRAME_POINTER: u32 = RuleKind::FramePointer as u32;
pub const RULE_STOP: u32 = RuleKind::Stop as u32;
/// `UnwindRule::rbp_offset` when the frame leaves rbp as it was.
pub const RBP_UNCHANGED: i32 = i32::MIN;

/// The registers a stack walk carries from frame to frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// The return address (or, innermost, the instruction pointer).
    pub pc: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Bytes of user stack copied into an [`UnwindMiss`].
pub const STACK_COPY_BYTES: usize = 8192;

/// Sent when a kernel walk met a return address with no rule: the walk's state at that frame
/// (`ip` is the return address, `sp` and `bp` the registers there) and the stack above it.
/// The frames below are those of the partial stack stored under `partial_key`.
///
/// A record in the ring holds the fields up to [`UnwindMiss::STACK_AT`] and then only the
/// `copied` bytes of `stack`: near the top of a stack far less than the whole copy is taken,
/// and a burst of requests from new call sites then fits twice as many in the ring.
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
    /// How many entries of `identified` are filled.
    pub identified_count: u64,
    /// JavaScript frames above the miss, read at the allocation: (frame pointer, identity
    /// word or 0) along the frame-pointer chain from `bp`. V8 moves functions, so user space,
    /// which walks the copy later, takes a frame's function from here, not from the process.
    pub identified: [[u64; 2]; MISS_IDENTIFIED_FRAMES],
    pub stack: [u8; STACK_COPY_BYTES],
}

impl UnwindMiss {
    /// Where `stack` starts: the bytes of a record before its stack copy.
    pub const STACK_AT: usize = core::mem::offset_of!(UnwindMiss, stack);
}

/// Frames of the frame-pointer chain above a miss whose JavaScript function the kernel reads.
pub const MISS_IDENTIFIED_FRAMES: usize = 64;

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
    /// The outermost call's chance of being recorded ([`sampling::probability`]), or 0 when
    /// byte sampling passed it over: its return then does no stack walk and records nothing.
    pub probability: u64,
    /// With uprobe sessions, a call that byte sampling passed over has no return probe, so
    /// no depth: its stack pointer at entry and the return address there mark it instead,
    /// and libc's mapping wrapper, entered deeper while that return address is still in its
    /// slot, is the allocator's own work (0: no such call).
    pub passed_over_sp: u64,
    pub passed_over_ret: u64,
}

/// One live allocation, keyed by its address in the kernel's allocation map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AllocInfo {
    pub size: u64,
    /// `bpf_ktime_get_ns` at the allocation's return.
    pub timestamp_ns: u64,
    /// The key of the stack that allocated it, or [`LOST_STACK`].
    pub stack_key: u64,
    /// The bytes this allocation stands for in the totals: its size, or under byte sampling
    /// the estimate `size / p` (see [`sampling`]). A free subtracts exactly this.
    pub weight_bytes: u64,
    /// The allocations it stands for: 1, or `1 / p` under byte sampling.
    pub weight_count: u64,
    /// Where the stack's totals are (an index of the kernel's `STACK_TOTALS`), which its
    /// free updates.
    pub totals_index: u32,
    pub _pad: u32,
}

/// One slot of the kernel's table of live blocks (`BLOCK_SLOTS`), which stands in front of
/// the allocation map: a block goes to the slot its address hashes to ([`block_slot`]) when
/// that slot is empty, and to the map otherwise.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockSlot {
    /// The block's address; 0 when the slot is empty, or the address with
    /// [`SLOT_BEING_WRITTEN`] set while its `info` is written.
    pub addr: u64,
    /// Blocks in the allocation map whose slot this is: while it is 0, no address of this
    /// slot is in the map, so neither a free nor a new block has to look there.
    pub spilled: u64,
    pub info: AllocInfo,
}

/// Marks a slot whose new block's `info` is not written yet. Allocators return addresses
/// aligned to 8 bytes or more; an odd address is never given a slot.
pub const SLOT_BEING_WRITTEN: u64 = 1;

/// The slot of the block at `addr` in a table of `2^bits` slots (`bits` 1 to 31): the address
/// without its alignment bits, scattered by a Fibonacci multiply, so that neighbouring blocks
/// take distant slots.
#[inline(always)]
pub fn block_slot(addr: u64, bits: u32) -> u32 {
    ((addr >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as u32
}

/// Byte sampling (`--sample-bytes N`): each allocation is recorded with the probability that a
/// Poisson process with one point every N bytes on average hits it, `p = 1 - exp(-size / N)`,
/// independently of every other allocation, and then stands for `size / p` bytes and `1 / p`
/// allocations, so that every total is an unbiased estimate (Horvitz-Thompson).
///
/// The kernel has no floating point: `p` is a fraction of 2^32 read off a curve that user space
/// computes ([`sampling::curve_point`]), and the weights come from that same fraction, so the
/// estimates stay unbiased however coarse the curve is. The kernel and user space's unit tests
/// share these functions.
pub mod sampling {
    /// Curve points per multiple of the mean.
    pub const STEPS_PER_MEAN: u64 = 64;
    /// The curve covers sizes up to this many times the mean; larger blocks are always recorded.
    pub const MEANS: u64 = 32;
    /// Points on the curve: 0 ..= STEPS_PER_MEAN * MEANS.
    pub const CURVE_LEN: u32 = (STEPS_PER_MEAN * MEANS) as u32 + 1;
    /// The largest mean accepted, which keeps every product below within 64 bits.
    pub const MAX_MEAN: u64 = 1 << 36;
    /// Blocks at least this large are always recorded.
    pub const ALWAYS_BYTES: u64 = 1 << 31;
    /// A probability of one, as a fraction of 2^32.
    pub const CERTAIN: u64 = 1 << 32;

    /// `2^32 * (1 - exp(-step / STEPS_PER_MEAN))`, point `step` of the curve (user space only:
    /// it needs floating point).
    #[cfg(feature = "user")]
    pub fn curve_point(step: u32) -> u32 {
        let x = f64::from(step) / STEPS_PER_MEAN as f64;
        let p = -(-x).exp_m1();
        (p * CERTAIN as f64).round().min(u32::MAX as f64) as u32
    }

    /// The probability, as a fraction of 2^32 ([`CERTAIN`] = always), that a block of `size`
    /// bytes is recorded when the mean is `mean` bytes (0: every block). `curve(step)` reads a
    /// point of the curve.
    #[inline(always)]
    pub fn probability(size: u64, mean: u64, curve: impl Fn(u32) -> u64) -> u64 {
        if mean == 0 || size >= ALWAYS_BYTES || size >= mean * MEANS {
            return CERTAIN;
        }
        // size < 2^31 and size < 32 * mean <= 2^41: no product below overflows.
        let scaled = size * STEPS_PER_MEAN;
        let step = scaled / mean;
        let q = if step == 0 {
            // Below the first point, x - x^2/2 with x = size / mean (within 0.004% there),
            // so that the smallest blocks keep their probability.
            let linear = (size << 32) / mean;
            linear - linear * size / (2 * mean)
        } else {
            let low = curve(step as u32);
            let high = curve(step as u32 + 1);
            let fraction = ((scaled - step * mean) << 16) / mean;
            low + ((high.saturating_sub(low) * fraction) >> 16)
        };
        // At least 2/2^32, so that the count a sample stands for fits in 32 bits.
        q.clamp(2, CERTAIN)
    }

    /// Whether to record a block of probability `q`, from a uniform random `u32`.
    #[inline(always)]
    pub fn sampled(q: u64, random: u32) -> bool {
        q >= CERTAIN || u64::from(random) < q
    }

    /// What one recorded block stands for: `(size / p, 1 / p)`, each rounded down or up at
    /// random with the odds of its fraction (from two uniform random `u32`s), so that integer
    /// weights keep the estimates unbiased.
    #[inline(always)]
    pub fn weights(size: u64, q: u64, random: [u32; 2]) -> (u64, u64) {
        if q >= CERTAIN {
            return (size, 1);
        }
        // q < CERTAIN only for size < ALWAYS_BYTES, so size << 32 fits.
        (
            divide_rounding_at_random(size << 32, q, random[0]),
            divide_rounding_at_random(CERTAIN, q, random[1]),
        )
    }

    /// `numerator / q`, rounded up with probability `(numerator % q) / q`.
    #[inline(always)]
    fn divide_rounding_at_random(numerator: u64, q: u64, random: u32) -> u64 {
        let whole = numerator / q;
        let rest = numerator % q;
        // random / 2^32 < rest / q, in integers: rest < q <= 2^32, so neither side overflows.
        whole + u64::from(u64::from(random) * q < rest << 32)
    }
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

/// One entry of the kernel's per-stack totals (`STACK_TOTALS`, an array): what the stack `key`
/// allocated and what of it was freed, each only ever added to, so that an allocation costs
/// two atomic adds and a free two. A stack is given an entry when its first allocation is
/// recorded; an entry whose `key` is 0 was never given. A key may have more than one entry
/// (two CPUs gave it one at once): its totals are their sum.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct StackTotalsSlot {
    pub key: u64,
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub freed_bytes: u64,
    pub frees: u64,
}

impl StackTotalsSlot {
    /// The totals as the report counts them. Wrapping: a reader can see a free before the
    /// allocation it frees.
    pub fn totals(&self) -> StackTotals {
        StackTotals {
            live_bytes: self.allocated_bytes.wrapping_sub(self.freed_bytes),
            live_allocations: self.allocations.wrapping_sub(self.frees),
            total_bytes: self.allocated_bytes,
            total_allocations: self.allocations,
        }
    }
}

/// The entry of `STACK_TOTALS` that holds [`LOST_STACK`]'s totals; its `key` is never written.
pub const LOST_STACK_TOTALS: u32 = 0;

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
    /// `addr..addr+len` was given the protection `prot` (only writable or `PROT_NONE` ones
    /// are sent): pages of a `PROT_NONE` reservation being committed, or closed again.
    Protect = 3,
}

impl TryFrom<u32> for MapEventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Ok(match value {
            0 => Self::Map,
            1 => Self::Unmap,
            2 => Self::Remap,
            3 => Self::Protect,
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
    /// The protection (`PROT_*` bits) a `Map` or `Protect` asked for; 0 is `PROT_NONE`,
    /// which reserves address space without committing memory.
    pub prot: u32,
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
    /// [`MAP_INSIDE_PASSED_OVER`] when it was entered by an allocation call that byte
    /// sampling passed over: nothing reports it.
    pub from_wrapper: u32,
    pub addr: u64,
    pub len: u64,
    pub new_len: u64,
    /// The protection asked for by mmap or mprotect.
    pub prot: u64,
}

/// `MapArgs::from_wrapper` of a mapping call made by the allocator inside a passed-over call.
pub const MAP_INSIDE_PASSED_OVER: u32 = 2;

/// Kinds of [`LifecycleEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleKind {
    /// The target exec'd another program: its old image, and all of its memory, are gone.
    Exec = 0,
    /// The kernel chose the target as the victim of an OOM kill (`oom:mark_victim`): it is
    /// about to be sent SIGKILL.
    OomKill = 1,
}

impl TryFrom<u32> for LifecycleKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(Self::Exec),
            1 => Ok(Self::OomKill),
            other => Err(other),
        }
    }
}

/// A change in the target's life, sent on a ring buffer of its own so that a burst of mapping
/// events can never crowd it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LifecycleEvent {
    /// A [`LifecycleKind`].
    pub kind: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns` when it happened.
    pub timestamp_ns: u64,
    /// For an OOM kill: the victim's resident memory (anonymous, file and shared) in KiB as
    /// the OOM killer saw it, or `u64::MAX` where the kernel's record does not carry it.
    pub rss_kib: u64,
}

/// Slots of the kernel's lifecycle array.
pub mod lifecycle {
    /// Execs of the target seen so far, the ones that started it included.
    pub const EXECS_SEEN: u32 = 0;
    /// When the target exec'd, ending the trace (`bpf_ktime_get_ns`), or 0. Once set, no probe
    /// records anything more: what the new program does is not part of the trace.
    pub const ENDED_AT: u32 = 1;
    /// The target's TGID in the root PID namespace, which the OOM killer's tracepoint names
    /// its victim by, or 0 while unknown: user space writes it when it runs in the root PID
    /// namespace; otherwise the first program to run in the target learns it, and the
    /// programs then check the calling task against it (tracer-ebpf's
    /// `state::target_process`).
    pub const TARGET_ROOT_TGID: u32 = 2;
    /// When the OOM killer chose the target (`bpf_ktime_get_ns`), or 0.
    pub const OOM_KILLED_AT: u32 = 3;
    /// How many slots there are.
    pub const COUNT: u32 = 4;
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

    /// Whether a counter is activity, or data that was lost.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        Activity,
        Loss,
    }

    /// One counter: its index in the kernel's array, its name in recordings and reports, and
    /// whether it counts a loss.
    #[derive(Clone, Copy, Debug)]
    pub struct Info {
        pub index: u32,
        pub name: &'static str,
        pub kind: Kind,
    }

    /// Every counter, in index order: the one list that readers and reports are built from or
    /// checked against (each constant above says what it counts).
    pub const ALL: [Info; COUNT as usize] = [
        Info {
            index: ALLOCATIONS,
            name: "allocations",
            kind: Kind::Activity,
        },
        Info {
            index: FREES,
            name: "frees",
            kind: Kind::Activity,
        },
        Info {
            index: ALLOC_MAP_FULL,
            name: "alloc_map_full",
            kind: Kind::Loss,
        },
        Info {
            index: ALLOC_MAP_FULL_BYTES,
            name: "alloc_map_full_bytes",
            kind: Kind::Loss,
        },
        Info {
            index: STACK_FAILED,
            name: "stack_failed",
            kind: Kind::Loss,
        },
        Info {
            index: FREE_UNKNOWN,
            name: "free_unknown",
            kind: Kind::Activity,
        },
        Info {
            index: RETURN_WITHOUT_ENTRY,
            name: "return_without_entry",
            kind: Kind::Loss,
        },
        Info {
            index: STALE_ENTRY,
            name: "stale_entry",
            kind: Kind::Loss,
        },
        Info {
            index: THREAD_MAP_FULL,
            name: "thread_map_full",
            kind: Kind::Loss,
        },
        Info {
            index: EVENTS_LOST,
            name: "events_lost",
            kind: Kind::Loss,
        },
        Info {
            index: TOTALS_MAP_FULL,
            name: "totals_map_full",
            kind: Kind::Loss,
        },
        Info {
            index: ADDRESS_REUSED,
            name: "address_reused",
            kind: Kind::Activity,
        },
        Info {
            index: FAILED_CALLS,
            name: "failed_calls",
            kind: Kind::Activity,
        },
        Info {
            index: UNWIND_MISS_LOST,
            name: "unwind_miss_lost",
            kind: Kind::Loss,
        },
    ];
}

#[cfg(feature = "user")]
mod user {
    use super::{
        AllocInfo, BlockSlot, LifecycleEvent, MapEvent, RuntimeLayout, StackFrames, StackTotals,
        StackTotalsSlot, ThreadState, UnwindMiss, UnwindRule,
    };

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of `u64`/`u32` fields with explicit
    // padding, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for AllocInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for BlockSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackTotalsSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MapEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ThreadState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for LifecycleEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for StackFrames {}
    // SAFETY: as above.
    unsafe impl aya::Pod for UnwindRule {}
    // SAFETY: as above (the byte array has no padding either).
    unsafe impl aya::Pod for UnwindMiss {}
    // SAFETY: as above: two structs of `u32`/`i32` fields, 24 and 32 bytes, with no padding.
    unsafe impl aya::Pod for RuntimeLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_slots_stay_in_the_table_and_spread_neighbours() {
        for bits in [1, 10, 16, 24, 31] {
            for addr in [0u64, 16, 0x7f00_0000_1000, u64::MAX] {
                assert!(block_slot(addr, bits) < 1 << bits);
            }
        }
        // A run of 16-byte blocks, as a bump allocator hands them out, fills distinct slots.
        let mut slots: [u32; 1024] =
            core::array::from_fn(|i| block_slot(0x5555_0000_0000 + i as u64 * 16, 16));
        slots.sort_unstable();
        assert!(slots.windows(2).all(|pair| pair[0] != pair[1]));
    }

    #[test]
    fn the_counter_list_is_complete_and_in_order() {
        for (i, info) in counter::ALL.iter().enumerate() {
            assert_eq!(info.index as usize, i, "{} is out of order", info.name);
        }
        let mut names: [&str; counter::COUNT as usize] = counter::ALL.map(|info| info.name);
        names.sort_unstable();
        assert!(
            names.windows(2).all(|w| w[0] != w[1]),
            "names repeat: {names:?}"
        );
    }

    #[test]
    fn truncations_and_rule_kinds_decode_both_ways() {
        for truncation in [
            Truncation::Complete,
            Truncation::DepthLimit,
            Truncation::Pending,
        ] {
            assert_eq!(Truncation::try_from(u32::from(truncation)), Ok(truncation));
        }
        assert_eq!(Truncation::try_from(7), Err(7));
        for kind in [
            RuleKind::CfaRsp,
            RuleKind::CfaRbp,
            RuleKind::FramePointer,
            RuleKind::Stop,
        ] {
            assert_eq!(RuleKind::try_from(kind as u32), Ok(kind));
        }
        assert_eq!(RuleKind::try_from(4), Err(4));
        assert_eq!(UnwindRule::stop().kind, RULE_STOP);
    }

    #[test]
    fn no_stack_is_keyed_as_lost_or_as_no_stack() {
        assert_eq!(stack_key_of_hash(LOST_STACK), LOST_STACK - 1);
        assert_eq!(stack_key_of_hash(0), 1);
        assert_eq!(stack_key_of_hash(42), 42);
    }

    #[test]
    fn tags_round_trip() {
        for kind in 0..8 {
            assert_eq!(AllocKind::try_from(kind).map(|k| k as u32), Ok(kind));
        }
        assert_eq!(AllocKind::try_from(8), Err(8));
        assert_eq!(MapEventKind::try_from(2), Ok(MapEventKind::Remap));
        assert_eq!(MapEventKind::try_from(3), Ok(MapEventKind::Protect));
        assert_eq!(MapEventKind::try_from(4), Err(4));
        assert_eq!(LifecycleKind::try_from(0), Ok(LifecycleKind::Exec));
        assert_eq!(LifecycleKind::try_from(1), Ok(LifecycleKind::OomKill));
        assert_eq!(LifecycleKind::try_from(2), Err(2));
    }

    #[test]
    fn unwind_steps() {
        let rsp = UnwindRule {
            kind: RULE_CFA_RSP,
            cfa_offset: 24,
            rbp_offset: RBP_UNCHANGED,
            identity: 0,
        };
        assert_eq!(rsp.cfa(0x1000, 0), Some(0x1018));
        assert_eq!(rsp.saved_bp_at(0x1018), None);
        let rbp = UnwindRule {
            kind: RULE_CFA_RBP,
            cfa_offset: 16,
            rbp_offset: -16,
            identity: 0,
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
            identity: 0,
        };
        assert_eq!(far.cfa(0x1000, 0), None);
        let stop = UnwindRule {
            kind: RULE_STOP,
            ..UnwindRule::default()
        };
        assert_eq!(stop.cfa(0x1000, 0x1100), None);
    }

    #[cfg(feature = "user")]
    fn curve(step: u32) -> u64 {
        u64::from(sampling::curve_point(step))
    }

    #[cfg(feature = "user")]
    #[test]
    fn sampling_probability_follows_the_poisson_curve() {
        use sampling::{CERTAIN, probability};
        let mean = 512 * 1024;
        assert_eq!(probability(64, 0, curve), CERTAIN);
        assert_eq!(probability(32 * mean, mean, curve), CERTAIN);
        assert_eq!(probability(sampling::ALWAYS_BYTES, 1 << 36, curve), CERTAIN);
        for size in [
            1,
            8,
            64,
            1000,
            8191,
            8192,
            8193,
            100_000,
            mean,
            3 * mean,
            31 * mean,
        ] {
            let q = probability(size, mean, curve) as f64 / CERTAIN as f64;
            let exact = -(-(size as f64) / mean as f64).exp_m1();
            // Linear between points 1/64 of the mean apart: within 0.01% of the curve.
            assert!(
                (q - exact).abs() <= exact * 1e-4 + 1e-9,
                "size {size}: {q} vs {exact}"
            );
        }
        // The smallest blocks still have a chance.
        assert!(probability(1, 1 << 36, curve) >= 2);
    }

    #[test]
    fn sampled_weights_average_to_the_inverse_probability() {
        use sampling::{CERTAIN, weights};
        assert_eq!(weights(100, CERTAIN, [0, 0]), (100, 1));
        // p = 3/8: 100 bytes stand for 266.67 bytes and 2.67 blocks; over every random value
        // the rounding averages to exactly that.
        let q = CERTAIN * 3 / 8;
        let (low_bytes, low_count) = weights(100, q, [0, 0]);
        let (high_bytes, high_count) = weights(100, q, [u32::MAX, u32::MAX]);
        assert_eq!((low_bytes, low_count), (267, 3));
        assert_eq!((high_bytes, high_count), (266, 2));
        let steps = 1u64 << 16;
        let (mut bytes, mut count) = (0u64, 0u64);
        for i in 0..steps {
            let random = (i << 16) as u32;
            let (b, c) = weights(100, q, [random, random]);
            bytes += b;
            count += c;
        }
        let mean_bytes = bytes as f64 / steps as f64;
        let mean_count = count as f64 / steps as f64;
        assert!((mean_bytes - 800.0 / 3.0).abs() < 1e-3, "{mean_bytes}");
        assert!((mean_count - 8.0 / 3.0).abs() < 1e-3, "{mean_count}");
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<ThreadState>(), 64);
        assert_eq!(core::mem::size_of::<AllocInfo>(), 48);
        // A slot is one cache line.
        assert_eq!(core::mem::size_of::<BlockSlot>(), 64);
        assert_eq!(core::mem::size_of::<StackTotals>(), 32);
        assert_eq!(core::mem::size_of::<StackTotalsSlot>(), 40);
        assert_eq!(core::mem::size_of::<MapEvent>(), 56);
        assert_eq!(core::mem::size_of::<MapArgs>(), 40);
        assert_eq!(core::mem::size_of::<LifecycleEvent>(), 24);
        assert_eq!(core::mem::size_of::<StackFrames>(), 8 + 8 * MAX_STACK_DEPTH);
        assert_eq!(core::mem::size_of::<UnwindRule>(), 16);
        assert_eq!(
            core::mem::size_of::<UnwindMiss>(),
            56 + STACK_COPY_BYTES + 16 * MISS_IDENTIFIED_FRAMES
        );
        assert_eq!(UnwindMiss::STACK_AT, 56 + 16 * MISS_IDENTIFIED_FRAMES);
    }
}

/// The `imm` of a placeholder helper call that stands for the `bpf_session_is_return` kfunc
/// in tracer-ebpf's session program. aya-ebpf 0.2 cannot declare a kfunc; the program calls
/// this number as if it were a helper, and tracer-user's loader rewrites each such call
/// into a kfunc call (`BPF_PSEUDO_KFUNC_CALL` with the function's id in the kernel's BTF)
/// before loading. No helper has this number, so an unrewritten program fails to load.
pub const SESSION_IS_RETURN_PLACEHOLDER: i32 = 0x1e55_0001;

/// Probe hits in the target, for the cost estimate of the `--interval` line: every call of a
/// hooked function traps, whether it is recorded or not (a per-CPU array apart from the
/// counters, which count what was recorded and lost).
pub mod probe_hits {
    /// Entries of an allocation function (each also traps on return).
    pub const ALLOC: u32 = 0;
    /// Entries of a free function.
    pub const FREE: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Where an entry probe finds the function's arguments when it is placed past the function's
/// first instructions (tracer-user's `probe_offset`): an argument whose register was
/// overwritten there may still be held by another register it was copied to (mimalloc's
/// `malloc` starts with `mov %rdi,%rsi` and then reuses `%rdi`). The attach cookie carries
/// it: the low 32 bits are the hook's kind, and 4 bits per argument, from bit 32, name the
/// register that holds it ([`IN_PLACE`] for its own).
pub mod entry_args {
    /// Arguments that can be moved: the first four of the System V calling convention
    /// (`%rdi`, `%rsi`, `%rdx`, `%rcx`), all that the entry programs read.
    pub const MOVABLE: usize = 4;
    /// The argument is in its own register.
    pub const IN_PLACE: u8 = 0;
    pub const RAX: u8 = 1;
    pub const RBX: u8 = 2;
    pub const RCX: u8 = 3;
    pub const RDX: u8 = 4;
    pub const RSI: u8 = 5;
    pub const RDI: u8 = 6;
    pub const RBP: u8 = 7;
    /// `%r8` to `%r15` are `R8 + 0` to `R8 + 7`. (The codes follow this order, from 1, in
    /// tracer-ebpf's `entry_arg`.)
    pub const R8: u8 = 8;

    /// The cookie for a hook of `kind` whose argument `n` is in register `locations[n]`.
    pub const fn cookie(kind: u32, locations: [u8; MOVABLE]) -> u64 {
        let mut cookie = kind as u64;
        let mut n = 0;
        while n < MOVABLE {
            cookie |= ((locations[n] & 0xf) as u64) << (32 + 4 * n);
            n += 1;
        }
        cookie
    }

    /// The programs for malloc's entry where a moved probe finds the size in another register
    /// than its own, by register code (tracer-ebpf's `malloc_in_*`): they know their cookie,
    /// and do without reading it. `%rdi`, malloc's own register, is [`IN_PLACE`].
    pub const MALLOC_MOVED_PROGRAMS: [(u8, &str); 14] = [
        (RAX, "malloc_in_rax"),
        (RBX, "malloc_in_rbx"),
        (RCX, "malloc_in_rcx"),
        (RDX, "malloc_in_rdx"),
        (RSI, "malloc_in_rsi"),
        (RBP, "malloc_in_rbp"),
        (R8, "malloc_in_r8"),
        (R8 + 1, "malloc_in_r9"),
        (R8 + 2, "malloc_in_r10"),
        (R8 + 3, "malloc_in_r11"),
        (R8 + 4, "malloc_in_r12"),
        (R8 + 5, "malloc_in_r13"),
        (R8 + 6, "malloc_in_r14"),
        (R8 + 7, "malloc_in_r15"),
    ];

    /// The register code of argument `n` in `cookie`.
    #[inline(always)]
    pub fn location(cookie: u64, n: usize) -> u8 {
        ((cookie >> (32 + 4 * n)) & 0xf) as u8
    }
}
