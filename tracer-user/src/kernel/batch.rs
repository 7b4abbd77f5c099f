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

use super::sys::{Bpf, cmd::BPF_MAP_LOOKUP_BATCH};

/// The `batch` member of `union bpf_attr`. The kernel accepts an attr shorter than its own
/// union and treats the rest as zero.
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct BatchAttr {
    pub(super) in_batch: u64,
    pub(super) out_batch: u64,
    pub(super) keys: u64,
    pub(super) values: u64,
    pub(super) count: u32,
    pub(super) map_fd: u32,
    pub(super) elem_flags: u64,
    pub(super) flags: u64,
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
    bpf: &impl Bpf,
    fd: BorrowedFd<'_>,
    chunk: u32,
) -> Result<Vec<(K, V)>, BatchError> {
    lookup_prefix(bpf, fd, chunk, usize::MAX)
}

/// The first `limit` entries of a map in the kernel's order (an array's: by index), in
/// batches of at most `chunk`: an array used only as far as an index handed out is read only
/// that far.
pub fn lookup_prefix<K: Pod, V: Pod>(
    bpf: &impl Bpf,
    fd: BorrowedFd<'_>,
    chunk: u32,
    limit: usize,
) -> Result<Vec<(K, V)>, BatchError> {
    let mut chunk = (chunk.max(1) as usize).min(limit.max(1));
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
        let result = unsafe {
            bpf.call(
                BPF_MAP_LOOKUP_BATCH,
                (&raw mut attr).cast(),
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = result.err();
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
        if done || entries.len() >= limit {
            entries.truncate(limit);
            return Ok(entries);
        }
        std::mem::swap(&mut token_in, &mut token_out);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, os::fd::AsFd as _};

    use super::*;

    /// A hash map as `htab_map_lookup_batch` walks it: buckets of (key, value) entries; the
    /// token is the next bucket's index. `first_error` answers the first call instead.
    struct FakeMap {
        buckets: Vec<Vec<(u64, u64)>>,
        first_error: Option<i32>,
        calls: RefCell<Vec<u32>>,
    }

    impl Bpf for FakeMap {
        unsafe fn call(&self, cmd: libc::c_int, attr: *mut u8, size: u32) -> io::Result<i64> {
            assert_eq!(cmd, BPF_MAP_LOOKUP_BATCH);
            assert_eq!(size as usize, size_of::<BatchAttr>());
            // SAFETY: lookup_all passes a BatchAttr.
            let attr = unsafe { &mut *attr.cast::<BatchAttr>() };
            self.calls.borrow_mut().push(attr.count);
            if let Some(errno) = self.first_error.filter(|_| self.calls.borrow().len() == 1) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            let mut bucket = if attr.in_batch == 0 {
                0
            } else {
                // SAFETY: the token buffer holds at least a u64.
                unsafe { (attr.in_batch as *const u64).read_unaligned() as usize }
            };
            let room = attr.count as usize;
            let mut written = 0;
            while bucket < self.buckets.len() {
                let entries = &self.buckets[bucket];
                if written + entries.len() > room {
                    break;
                }
                for (key, value) in entries {
                    // SAFETY: lookup_all made room for `count` keys and values.
                    unsafe {
                        (attr.keys as *mut u64).add(written).write_unaligned(*key);
                        (attr.values as *mut u64)
                            .add(written)
                            .write_unaligned(*value);
                    }
                    written += 1;
                }
                bucket += 1;
            }
            attr.count = written as u32;
            // SAFETY: the token buffer holds at least a u64.
            unsafe { (attr.out_batch as *mut u64).write_unaligned(bucket as u64) };
            if bucket == self.buckets.len() {
                return Err(io::Error::from_raw_os_error(libc::ENOENT));
            }
            if written == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            Ok(0)
        }
    }

    fn map(buckets: &[usize]) -> FakeMap {
        let mut next = 0;
        FakeMap {
            buckets: buckets
                .iter()
                .map(|&n| {
                    (0..n)
                        .map(|_| {
                            next += 1;
                            (next, next * 10)
                        })
                        .collect()
                })
                .collect(),
            first_error: None,
            calls: RefCell::new(Vec::new()),
        }
    }

    fn read(fake: &FakeMap, chunk: u32) -> Result<Vec<(u64, u64)>, BatchError> {
        let fd = std::fs::File::open("/dev/null").expect("a descriptor to pass");
        lookup_all::<u64, u64>(fake, fd.as_fd(), chunk)
    }

    #[test]
    fn reads_every_entry_across_calls_and_ends_on_enoent() {
        let fake = map(&[3, 0, 2, 4, 1]);
        let entries = read(&fake, 4).expect("read");
        assert_eq!(entries.len(), 10);
        assert!(entries.iter().all(|(k, v)| *v == k * 10));
        assert_eq!(fake.calls.borrow().len(), 4, "{:?}", fake.calls.borrow());
    }

    #[test]
    fn a_bucket_larger_than_the_chunk_doubles_it_after_enospc() {
        let fake = map(&[2, 9, 1]);
        let entries = read(&fake, 2).expect("read");
        assert_eq!(entries.len(), 12);
        // 2 fit, then 9 do not fit in 2, 4 or 8 (ENOSPC each), then 16 holds the rest.
        assert_eq!(*fake.calls.borrow(), [2, 2, 4, 8, 16]);
    }

    #[test]
    fn a_prefix_stops_once_it_has_its_entries() {
        // An array as the kernel walks it: one entry per "bucket", by index.
        let fake = map(&[1; 100]);
        let fd = std::fs::File::open("/dev/null").expect("a descriptor to pass");
        let entries = lookup_prefix::<u64, u64>(&fake, fd.as_fd(), 8, 12).expect("read");
        assert_eq!(
            entries.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            (1..=12).collect::<Vec<_>>()
        );
        // 8, then 8 more (4 of them past the prefix): not the other 84 entries.
        assert_eq!(*fake.calls.borrow(), [8, 8]);
    }

    #[test]
    fn an_empty_map_ends_at_once() {
        let fake = map(&[]);
        assert!(read(&fake, 8).expect("read").is_empty());
    }

    #[test]
    fn no_batch_support_says_so_on_the_first_call_only() {
        let mut fake = map(&[1, 1]);
        fake.first_error = Some(libc::EINVAL);
        assert!(matches!(read(&fake, 8), Err(BatchError::Unsupported(_))));
        let mut fake = map(&[1, 1]);
        fake.first_error = Some(libc::EPERM);
        assert!(matches!(read(&fake, 8), Err(BatchError::Failed(_))));
    }
}
