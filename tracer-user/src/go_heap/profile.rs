//! The Go runtime's always-on heap profile, read from the target's memory.
//!
//! The runtime samples one allocation per `runtime.MemProfileRate` bytes on average (512 KiB
//! by default) and keeps, per allocation stack, a `bucket` on the list `runtime.mbuckets`
//! (`allnext` links them). Layout since Go 1.4 (runtime/mprof.go), on 64-bit:
//!
//! ```text
//! bucket:     next, allnext, typ, hash, size, nstk   (6 words)
//!             stk[nstk]                              (return PCs, innermost first)
//! memRecord:  active, future[3]                      (memRecordCycle each:
//!                                                     allocs, frees, alloc_bytes, free_bytes)
//! ```
//!
//! `active` holds the profile as of the last completed GC; `runtime.MemProfile` first folds
//! in `future[cycle % 3]`, the cycle whose sweep is done (`mProfCycle`, a `uint32` that holds
//! the cycle shifted left by one). This reader does the same, and scales the in-use counts
//! as pprof does (`scaleHeapSample`), so its bytes are what `go tool pprof` would show.
//!
//! The target's memory is not trusted: every bucket is read in bounded pieces, the list is
//! cut at [`MAX_BUCKETS`] and at a repeated address, and a stack deeper than [`MAX_DEPTH`]
//! or a bucket of the wrong type ends the walk with an error that says so.

use std::collections::HashSet;

use crate::jit::hotspot::{Memory, MemoryError, TargetAddr};

/// Buckets read at most per sample: one per distinct allocation stack in the program.
pub const MAX_BUCKETS: usize = 1 << 16;
/// Frames per stack: the runtime keeps 32 (`maxStack`), 128 at most in later versions.
pub const MAX_DEPTH: u64 = 128;
/// `memProfile`, the first `bucketType`.
const MEM_PROFILE: u64 = 1;

/// Where the profile lives in the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileSymbols {
    /// `runtime.mbuckets`: a pointer to the first bucket.
    pub mbuckets: u64,
    /// `runtime.MemProfileRate`: an `int`.
    pub rate: u64,
    /// `runtime.mProfCycle`: a `uint32` (cycle << 1 | flushed).
    pub cycle: Option<u64>,
}

/// One allocation stack's share of the heap, scaled to estimates of the whole.
#[derive(Clone, Debug, PartialEq)]
pub struct HeapRecord {
    /// Return PCs, innermost first.
    pub stack: Vec<u64>,
    pub inuse_objects: u64,
    pub inuse_bytes: u64,
    pub alloc_objects: u64,
    pub alloc_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read {what}: {cause}")]
    Memory {
        what: &'static str,
        cause: MemoryError,
    },
    #[error("the heap profile is off (runtime.MemProfileRate is {0})")]
    Off(i64),
    #[error("implausible heap profile bucket at {addr:#x}: {detail}")]
    Corrupt { addr: u64, detail: String },
}

fn read_words<const N: usize>(
    memory: &impl Memory,
    addr: u64,
    what: &'static str,
) -> Result<[u64; N], ProfileError> {
    let mut bytes = vec![0u8; N * 8];
    memory
        .read(TargetAddr(addr), &mut bytes)
        .map_err(|cause| ProfileError::Memory { what, cause })?;
    let mut words = [0u64; N];
    for (i, word) in words.iter_mut().enumerate() {
        *word = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    }
    Ok(words)
}

/// The sampling rate and every bucket with memory in use or ever allocated.
pub fn read_profile(
    memory: &impl Memory,
    symbols: &ProfileSymbols,
) -> Result<(u64, Vec<HeapRecord>), ProfileError> {
    let [rate] = read_words::<1>(memory, symbols.rate, "runtime.MemProfileRate")?;
    let rate = rate as i64;
    if rate <= 0 {
        return Err(ProfileError::Off(rate));
    }
    let flushed = match symbols.cycle {
        Some(at) => {
            let mut word = [0u8; 4];
            memory
                .read(TargetAddr(at), &mut word)
                .map_err(|cause| ProfileError::Memory {
                    what: "runtime.mProfCycle",
                    cause,
                })?;
            Some(((u32::from_le_bytes(word) >> 1) % 3) as usize)
        }
        None => None,
    };
    let [mut at] = read_words::<1>(memory, symbols.mbuckets, "runtime.mbuckets")?;
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    while at != 0 && records.len() < MAX_BUCKETS && seen.insert(at) {
        let corrupt = |detail: String| ProfileError::Corrupt { addr: at, detail };
        let [_next, allnext, typ, _hash, _size, nstk] =
            read_words::<6>(memory, at, "a heap profile bucket")?;
        if typ != MEM_PROFILE {
            return Err(corrupt(format!("type {typ} on the memory profile's list")));
        }
        if nstk == 0 || nstk > MAX_DEPTH {
            return Err(corrupt(format!("{nstk} frames")));
        }
        let stack_at = at
            .checked_add(48)
            .ok_or_else(|| corrupt("address overflows".into()))?;
        let mut stack_bytes = vec![0u8; nstk as usize * 8];
        memory
            .read(TargetAddr(stack_at), &mut stack_bytes)
            .map_err(|cause| ProfileError::Memory {
                what: "a heap profile stack",
                cause,
            })?;
        let stack: Vec<u64> = stack_bytes
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
            .collect();
        let cycles = read_words::<16>(memory, stack_at + nstk * 8, "a heap profile record")?;
        // active, then future[0..3]: allocs, frees, alloc_bytes, free_bytes each.
        let mut sum = [cycles[0], cycles[1], cycles[2], cycles[3]];
        if let Some(index) = flushed {
            for (total, add) in sum.iter_mut().zip(&cycles[4 + index * 4..8 + index * 4]) {
                *total = total.wrapping_add(*add);
            }
        }
        let [allocs, frees, alloc_bytes, free_bytes] = sum;
        let (inuse_objects, inuse_bytes) = scale(
            allocs.saturating_sub(frees),
            alloc_bytes.saturating_sub(free_bytes),
            rate as u64,
        );
        let (alloc_objects, alloc_bytes) = scale(allocs, alloc_bytes, rate as u64);
        records.push(HeapRecord {
            stack,
            inuse_objects,
            inuse_bytes,
            alloc_objects,
            alloc_bytes,
        });
        at = allnext;
    }
    Ok((rate as u64, records))
}

/// pprof's `scaleHeapSample`: a sampled (count, size) at `rate` stands for
/// `1 / (1 - exp(-average size / rate))` times as much.
pub fn scale(count: u64, size: u64, rate: u64) -> (u64, u64) {
    if count == 0 || size == 0 {
        return (0, 0);
    }
    if rate <= 1 {
        return (count, size);
    }
    let average = size as f64 / count as f64;
    let factor = 1.0 / (1.0 - (-average / rate as f64).exp());
    (
        (count as f64 * factor) as u64,
        (size as f64 * factor) as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jit::hotspot::memory::FakeMemory;

    const SYMBOLS: ProfileSymbols = ProfileSymbols {
        mbuckets: 0x1000,
        rate: 0x1008,
        cycle: Some(0x1010),
    };

    fn bucket(allnext: u64, typ: u64, stack: &[u64], cycles: [u64; 16]) -> Vec<u8> {
        [0, allnext, typ, 0x99, 0, stack.len() as u64]
            .iter()
            .chain(stack)
            .chain(&cycles)
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }

    fn globals(head: u64, rate: u64, cycle: u32) -> Vec<u8> {
        let mut bytes: Vec<u8> = [head, rate].iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(&cycle.to_le_bytes());
        bytes
    }

    #[test]
    fn scales_as_pprof_does() {
        assert_eq!(scale(0, 10, 512 * 1024), (0, 0));
        assert_eq!(scale(3, 300, 1), (3, 300));
        // 1 MiB objects at 512 KiB: each is sampled with p = 1 - e^-2.
        let (n, bytes) = scale(100, 100 << 20, 512 << 10);
        assert_eq!(n, 115);
        assert!((bytes as f64 - (100u64 << 20) as f64 / (1.0 - (-2.0f64).exp())).abs() < 2.0);
    }

    #[test]
    fn walks_the_list_and_folds_the_flushed_cycle() {
        let mut memory = FakeMemory::new();
        // Cycle 4 (stored as 8 | 0): future[4 % 3] = future[1] is folded into active.
        memory.map(TargetAddr(0x1000), globals(0x2000, 1, 8));
        let mut cycles = [0u64; 16];
        cycles[..4].copy_from_slice(&[10, 4, 1000, 400]);
        cycles[8..12].copy_from_slice(&[2, 0, 200, 0]);
        cycles[4..8].copy_from_slice(&[50, 0, 5000, 0]); // future[0]: not yet flushed
        memory.map(
            TargetAddr(0x2000),
            bucket(0x3000, 1, &[0x401000, 0x402000], cycles),
        );
        memory.map(TargetAddr(0x3000), bucket(0, 1, &[0x403000], [0; 16]));
        let (rate, records) = read_profile(&memory, &SYMBOLS).unwrap();
        assert_eq!(rate, 1);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].stack, [0x401000, 0x402000]);
        assert_eq!((records[0].inuse_objects, records[0].inuse_bytes), (8, 800));
        assert_eq!(
            (records[0].alloc_objects, records[0].alloc_bytes),
            (12, 1200)
        );
        assert_eq!(records[1].inuse_bytes, 0);
    }

    #[test]
    fn crafted_lists_end_with_an_error_or_at_a_repeat() {
        let read = |rate: u64, bucket_bytes: Vec<u8>| {
            let mut memory = FakeMemory::new();
            memory.map(TargetAddr(0x1000), globals(0x2000, rate, 0));
            memory.map(TargetAddr(0x2000), bucket_bytes);
            read_profile(&memory, &SYMBOLS)
        };
        // A bucket that links to itself is read once.
        let looped = bucket(0x2000, 1, &[0x401000], [0; 16]);
        assert_eq!(read(512 << 10, looped).unwrap().1.len(), 1);
        // A block-profile bucket, or a stack of a million frames, is not believed.
        let block = bucket(0, 2, &[0x401000], [0; 16]);
        assert!(matches!(
            read(512 << 10, block),
            Err(ProfileError::Corrupt { .. })
        ));
        let mut huge = bucket(0, 1, &[0x401000], [0; 16]);
        huge[40..48].copy_from_slice(&1_000_000u64.to_le_bytes());
        assert!(matches!(
            read(512 << 10, huge),
            Err(ProfileError::Corrupt { .. })
        ));
        // Profiling off.
        let fine = bucket(0, 1, &[0x401000], [0; 16]);
        assert!(matches!(read(0, fine), Err(ProfileError::Off(0))));
    }
}
