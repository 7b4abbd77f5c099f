//! Live blocks by address: a table of slots in front of the allocation map.
//!
//! An insert into the allocation map cost about 190 ns here and a lookup and delete about
//! 160 ns (the map allocates and frees an element each time): more than a third of what full
//! tracking adds to a malloc+free pair. Most blocks live briefly and allocators hand the same
//! addresses out again, so a block goes to the slot that its address hashes to when that slot
//! is empty, taken with one compare-and-swap and given back with another; only a block whose
//! slot holds another goes to the map.
//!
//! An address is never in both. A slot counts the blocks of its addresses that went to the
//! map (`spilled`), so a new block looks for its address in the map only when that count says
//! it may be there: as a stale entry whose free was missed, which the caller then retires.

use aya_ebpf::{
    Global,
    bindings::{BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap},
};
use tracer_common::{AllocInfo, BlockSlot, SLOT_BEING_WRITTEN, block_slot};

use crate::atomics::{add, cas};

// No preallocation: memory follows the live allocations rather than the configured maximum.
#[map]
pub static ALLOCS: HashMap<u64, AllocInfo> = HashMap::with_max_entries(1 << 20, BPF_F_NO_PREALLOC);

/// The slot table, `2^SLOT_BITS` slots, sized by the loader.
#[map]
static BLOCK_SLOTS: Array<BlockSlot> = Array::with_max_entries(1, 0);

/// log2 of the slot count; 0 when the table is off (a small `--max-allocs`).
#[unsafe(no_mangle)]
static SLOT_BITS: Global<u32> = Global::new(0);

/// `-EEXIST`: the address is live already (its free was missed).
pub const EEXIST: i32 = -17;

/// The slot of `addr`, if the table is on and the address can have one.
#[inline(always)]
fn slot_of(addr: u64) -> Option<*mut BlockSlot> {
    let bits = SLOT_BITS.load();
    if bits == 0 || bits > 31 || addr & SLOT_BEING_WRITTEN != 0 {
        return None;
    }
    BLOCK_SLOTS.get_ptr_mut(block_slot(addr, bits))
}

/// Adds the block `info` at `addr`. `Err(EEXIST)` when the address is live already, else the
/// allocation map's error (`-E2BIG` when it is full).
#[inline(always)]
pub fn insert(addr: u64, info: &AllocInfo) -> Result<(), i32> {
    let slot = slot_of(addr);
    if let Some(slot) = slot {
        // SAFETY: the pointer is to a live array element; its fields are aligned u64s.
        let (held, won) = unsafe { cas(&raw mut (*slot).addr, 0, addr | SLOT_BEING_WRITTEN) };
        if won {
            // SAFETY: as above; the slot is this call's until its address is stored.
            unsafe {
                if (*slot).spilled != 0 && ALLOCS.get(&addr).is_some() {
                    core::ptr::write_volatile(&raw mut (*slot).addr, 0);
                    return Err(EEXIST);
                }
                (*slot).info = *info;
                // Stored last: a free, or user space, takes the slot's info only once this
                // says whose it is (x86-64 keeps stores in order).
                core::ptr::write_volatile(&raw mut (*slot).addr, addr);
            }
            return Ok(());
        }
        if held == addr {
            return Err(EEXIST);
        }
    }
    ALLOCS.insert(&addr, info, u64::from(BPF_NOEXIST))?;
    if let Some(slot) = slot {
        // SAFETY: as above.
        unsafe { add(&raw mut (*slot).spilled, 1) };
    }
    Ok(())
}

/// The live block at `addr`, if it is tracked.
#[inline(always)]
pub fn find(addr: u64) -> Option<AllocInfo> {
    let slot = slot_of(addr);
    if let Some(slot) = slot {
        // SAFETY: the pointer is to a live array element. A block's slot cannot change hands
        // while the block is live, and the block is live until its own free removes it.
        unsafe {
            if core::ptr::read_volatile(&raw const (*slot).addr) == addr {
                return Some((*slot).info);
            }
            if (*slot).spilled == 0 {
                return None;
            }
        }
    }
    // SAFETY: the value is copied out at once.
    unsafe { ALLOCS.get(&addr) }.copied()
}

/// Removes the block at `addr`. Returns whether this call removed it: only one caller's does,
/// so a race cannot retire a block twice.
#[inline(always)]
pub fn remove(addr: u64) -> bool {
    let slot = slot_of(addr);
    if let Some(slot) = slot {
        // SAFETY: the pointer is to a live array element.
        if unsafe { cas(&raw mut (*slot).addr, addr, 0) }.1 {
            return true;
        }
    }
    if ALLOCS.remove(&addr).is_err() {
        return false;
    }
    if let Some(slot) = slot {
        // SAFETY: as above.
        unsafe { add(&raw mut (*slot).spilled, 1u64.wrapping_neg()) };
    }
    true
}
