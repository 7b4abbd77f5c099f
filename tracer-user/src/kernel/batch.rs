//! Reads a whole BPF hash map with `BPF_MAP_LOOKUP_BATCH`: thousands of entries per syscall,
//! where aya 0.14's iterator costs two syscalls per entry (about 4 s for a million live
//! allocations). aya 0.14 has no batch API, so this calls bpf(2) directly.
//!
//! Kernel side: `generic_map_lookup_batch` / `htab_map_lookup_batch` in kernel/bpf/syscall.c
//! and kernel/bpf/hashtab.c (Linux 5.6+). The batch token of a hash map is a bucket index; a
//! bucket is never split across calls, so a call with room for fewer entries than one bucket
//! holds fails with ENOSPC, and the last call ends with ENOENT (possibly with entries).

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` from `enum bpf_cmd` (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;

/// The `batch` member of `union bpf_attr`. The kernel accepts an attr shorter than its own
/// union and treats the rest as zero.
#[repr(C)]
#[derive(Debug, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Entries asked for per call: 24 bytes of key and value each for the allocation map, so a
/// call moves about 100 KiB.
pub const DEFAULT_CHUNK: u32 = 4096;

#[derive(Debug)]
pub enum BatchError {
    /// The kernel or the map type has no batch lookup (EINVAL, ENOTSUP on the first call):
    /// read the map another way.
    Unsupported(io::Error),
    Failed(io::Error),
}

/// Every entry of the hash map `fd`, whose keys are `K` and values `V` (the caller checks the
/// sizes, as aya's typed maps do). Not for per-CPU maps, whose values are per CPU.
pub fn lookup_all<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    chunk: u32,
) -> Result<Vec<(K, V)>, BatchError> {
    let mut chunk = chunk.max(1) as usize;
    let mut entries = Vec::new();
    let mut keys: Vec<u8> = Vec::new();
    let mut values: Vec<u8> = Vec::new();
    // The token is a u32 bucket index for hash maps; give it the room of a key or a u64.
    let token_len = size_of::<K>().max(size_of::<u64>());
    let (mut token_in, mut token_out) = (vec![0u8; token_len], vec![0u8; token_len]);
    let mut first = true;
    loop {
        keys.resize(chunk * size_of::<K>(), 0);
        values.resize(chunk * size_of::<V>(), 0);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_LOOKUP_BATCH; every pointer in
        // it refers to a live buffer with room for `count` keys, `count` values and one token,
        // and the kernel writes no further than that. The kernel also writes `attr.count`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = (rc < 0).then(io::Error::last_os_error);
        let errno = error.as_ref().and_then(io::Error::raw_os_error);
        let got = (attr.count as usize).min(chunk);
        let done = match (error, errno) {
            (None, _) => false,
            (Some(_), Some(libc::ENOENT)) => true,
            (Some(_), Some(libc::ENOSPC)) if got == 0 => {
                // One bucket holds more than `chunk` entries: ask for more at once.
                chunk *= 2;
                continue;
            }
            // ENOTSUP is EOPNOTSUPP on Linux.
            (Some(err), Some(libc::EINVAL | libc::EOPNOTSUPP)) if first => {
                return Err(BatchError::Unsupported(err));
            }
            (Some(err), _) => return Err(BatchError::Failed(err)),
        };
        entries.reserve(got);
        for i in 0..got {
            // SAFETY: the kernel filled `got` keys and values; K and V are Pod, so any bytes
            // are valid, and read_unaligned copes with the byte buffer's alignment.
            let (key, value) = unsafe {
                (
                    keys.as_ptr()
                        .add(i * size_of::<K>())
                        .cast::<K>()
                        .read_unaligned(),
                    values
                        .as_ptr()
                        .add(i * size_of::<V>())
                        .cast::<V>()
                        .read_unaligned(),
                )
            };
            entries.push((key, value));
        }
        if done {
            return Ok(entries);
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}
