//! Per-stack totals, in an array that each stored stack gets an index of once.
//!
//! Kept in a hash map by stack key, the totals cost a lookup at each allocation's return and
//! again at its free, about 30 ns each here, and the walk's check that its stack is stored
//! another. Now a stack is given the next free index of [`STACK_TOTALS`] the first time its
//! totals are needed, kept in [`STACK_INDEX`], and a live block keeps its index
//! (`AllocInfo::totals_index`), so its free adds to the array directly. Each CPU also keeps
//! the stacks it met last with their index ([`STACK_CACHE`]): a walk that ends at a stack met
//! before needs neither the stack map nor the index map. Stacks are never removed from either
//! map, so a cached index stays right.
//!
//! User space reads the array up to the last index handed out and adds up the entries of each
//! key: two CPUs that give the same new stack an index at once leave one entry unused.

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use tracer_common::{LOST_STACK, LOST_STACK_TOTALS, StackTotalsSlot, counter};

use crate::{
    atomics::{add, fetch_increment},
    state::count,
};

/// The totals, by index; entry [`LOST_STACK_TOTALS`] is [`LOST_STACK`]'s. Sized by the loader.
#[map]
static STACK_TOTALS: Array<StackTotalsSlot> = Array::with_max_entries(1, 0);

/// The entries of [`STACK_TOTALS`], as the loader sized it.
#[unsafe(no_mangle)]
static TOTALS_SLOTS: Global<u32> = Global::new(1);

/// Indexes handed out so far (the next is one more).
#[map]
static TOTALS_HANDED_OUT: Array<u64> = Array::with_max_entries(1, 0);

/// Each stored stack's index in [`STACK_TOTALS`], by key. Not preallocated: it holds as many
/// entries as there are stacks, which come one at a time.
#[map]
static STACK_INDEX: HashMap<u64, u32> = HashMap::with_max_entries(16385, BPF_F_NO_PREALLOC);

/// One entry of a CPU's cache of stacks: `key` 0 while the entry is written.
#[repr(C)]
pub struct CachedStack {
    key: u64,
    index: u64,
}

const CACHE_SLOTS: u32 = 256;

#[map]
static STACK_CACHE: PerCpuArray<CachedStack> = PerCpuArray::with_max_entries(CACHE_SLOTS, 0);

/// A stored stack: its key, and its index in the totals.
#[derive(Clone, Copy)]
pub struct StackRef {
    pub key: u64,
    pub totals: u32,
}

impl StackRef {
    /// A stack that could not be walked or stored.
    pub const LOST: Self = Self {
        key: LOST_STACK,
        totals: LOST_STACK_TOTALS,
    };
}

#[inline(always)]
fn cache_slot(key: u64) -> Option<*mut CachedStack> {
    // Keys are FNV hashes, whose low bits depend only on the frames' low bits: fold the high
    // half in.
    STACK_CACHE.get_ptr_mut(((key ^ (key >> 32)) as u32) & (CACHE_SLOTS - 1))
}

/// The stack `key` if this CPU met it lately: it is stored, and has an index.
#[inline(always)]
pub fn cached(key: u64) -> Option<StackRef> {
    let entry = cache_slot(key)?;
    // A uprobe program may be preempted by another task's on the same CPU, which may rewrite
    // the entry meanwhile: the key is read before and after the index, and written as 0
    // before the index and as the key after it, so a torn entry is never taken for a hit.
    // SAFETY: the pointer is to this CPU's live entry; volatile accesses keep the order.
    unsafe {
        if core::ptr::read_volatile(&raw const (*entry).key) != key {
            return None;
        }
        let index = core::ptr::read_volatile(&raw const (*entry).index);
        (core::ptr::read_volatile(&raw const (*entry).key) == key).then_some(StackRef {
            key,
            totals: index as u32,
        })
    }
}

/// The stored stack `key`, given an index if it has none yet.
#[inline(always)]
pub fn index_of(key: u64) -> StackRef {
    if key == LOST_STACK {
        return StackRef::LOST;
    }
    // SAFETY: the value is copied out.
    let index = match unsafe { STACK_INDEX.get(&key) }.copied() {
        Some(index) => index,
        None => match new_index(key) {
            Some(index) => index,
            None => {
                count(counter::TOTALS_MAP_FULL, 1);
                return StackRef {
                    key,
                    totals: LOST_STACK_TOTALS,
                };
            }
        },
    };
    if let Some(entry) = cache_slot(key) {
        // SAFETY: as in `cached`.
        unsafe {
            core::ptr::write_volatile(&raw mut (*entry).key, 0);
            core::ptr::write_volatile(&raw mut (*entry).index, u64::from(index));
            core::ptr::write_volatile(&raw mut (*entry).key, key);
        }
    }
    StackRef { key, totals: index }
}

/// Hands `key` the next index, or finds the one another CPU handed it first.
#[inline(always)]
fn new_index(key: u64) -> Option<u32> {
    let handed_out = TOTALS_HANDED_OUT.get_ptr_mut(0)?;
    // SAFETY: a live array value, updated atomically.
    let index = unsafe { fetch_increment(handed_out) }? + 1;
    if index >= u64::from(TOTALS_SLOTS.load()) {
        return None;
    }
    let index = index as u32;
    let slot = STACK_TOTALS.get_ptr_mut(index)?;
    // SAFETY: a live array value that no other stack was handed. Its key is written before
    // the index is published, so user space never reads totals without their key.
    unsafe { core::ptr::write_volatile(&raw mut (*slot).key, key) };
    match STACK_INDEX.insert(&key, &index, u64::from(BPF_NOEXIST)) {
        Ok(()) => Some(index),
        // SAFETY: the value is copied out.
        Err(_) => unsafe { STACK_INDEX.get(&key) }.copied(),
    }
}

/// Adds an allocation of `bytes` standing for `allocations` to the totals at `index`.
#[inline(always)]
pub fn add_allocation(index: u32, bytes: u64, allocations: u64) {
    let Some(slot) = STACK_TOTALS.get_ptr_mut(index) else {
        count(counter::TOTALS_MAP_FULL, 1);
        return;
    };
    // SAFETY: the pointer is to a live array value; the fields are updated atomically.
    unsafe {
        add(&raw mut (*slot).allocated_bytes, bytes);
        add(&raw mut (*slot).allocations, allocations);
    }
}

/// Adds a free of an allocation of `bytes` standing for `allocations` to the totals at `index`.
#[inline(always)]
pub fn add_free(index: u32, bytes: u64, allocations: u64) {
    if let Some(slot) = STACK_TOTALS.get_ptr_mut(index) {
        // SAFETY: as above.
        unsafe {
            add(&raw mut (*slot).freed_bytes, bytes);
            add(&raw mut (*slot).frees, allocations);
        }
    }
}
