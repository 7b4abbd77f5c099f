//! Bounded reads of a target's memory.
//!
//! Everything read here is the target's to craft: a reader never allocates more than its
//! caller's cap, a string without its NUL within the cap is an error, and an address that does
//! not fit is an error rather than a wrap-around. [`ProcessMemory`] reads a live process with
//! `process_vm_readv`; `FakeMemory` serves tests from byte images.

use std::{fmt, io};

use thiserror::Error;

/// An address in the target's address space. Never dereferenced here: only read through a
/// [`Memory`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetAddr(pub u64);

impl TargetAddr {
    pub const NULL: Self = Self(0);

    pub fn is_null(self) -> bool {
        self.0 == 0
    }

    /// `self + offset`, or an error when that leaves the address space.
    pub fn offset(self, offset: u64) -> Result<Self, MemoryError> {
        self.0
            .checked_add(offset)
            .map(Self)
            .ok_or(MemoryError::Overflow { addr: self, offset })
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// What went wrong reading a target's memory; the OS error is a `cause` for the reason given
/// at [`super::HotspotError`].
#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("cannot read {len} bytes at {addr}: {cause}")]
    Read {
        addr: TargetAddr,
        len: usize,
        cause: io::Error,
    },
    #[error("only {got} of {len} bytes readable at {addr}")]
    Short {
        addr: TargetAddr,
        len: usize,
        got: usize,
    },
    #[error("{addr} + {offset:#x} overflows the address space")]
    Overflow { addr: TargetAddr, offset: u64 },
    #[error("no NUL within {cap} bytes of the string at {addr}")]
    Unterminated { addr: TargetAddr, cap: usize },
    #[error("the string at {addr} is not UTF-8")]
    NotUtf8 { addr: TargetAddr },
}

/// Reads of a target's memory. One call reads exactly `buf.len()` bytes or fails.
pub trait Memory {
    fn read(&self, addr: TargetAddr, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// Reads as much of `buf` as is readable from `addr`, in order; how many bytes that was.
    /// Only the bytes up to the first unreadable page count.
    fn read_partial(&self, addr: TargetAddr, buf: &mut [u8]) -> usize;

    fn read_u8(&self, addr: TargetAddr) -> Result<u8, MemoryError> {
        let mut bytes = [0; 1];
        self.read(addr, &mut bytes)?;
        Ok(bytes[0])
    }

    fn read_u16(&self, addr: TargetAddr) -> Result<u16, MemoryError> {
        let mut bytes = [0; 2];
        self.read(addr, &mut bytes)?;
        Ok(u16::from_le_bytes(bytes))
    }

    fn read_u32(&self, addr: TargetAddr) -> Result<u32, MemoryError> {
        let mut bytes = [0; 4];
        self.read(addr, &mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn read_u64(&self, addr: TargetAddr) -> Result<u64, MemoryError> {
        let mut bytes = [0; 8];
        self.read(addr, &mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn read_addr(&self, addr: TargetAddr) -> Result<TargetAddr, MemoryError> {
        self.read_u64(addr).map(TargetAddr)
    }

    /// `len` bytes; the caller caps `len`.
    fn read_vec(&self, addr: TargetAddr, len: usize) -> Result<Vec<u8>, MemoryError> {
        let mut bytes = vec![0; len];
        self.read(addr, &mut bytes)?;
        Ok(bytes)
    }

    /// A NUL-terminated UTF-8 string of at most `cap` bytes before its NUL. Read in small
    /// pieces that never cross a page, each as far as readable, so a short string at the end
    /// of a mapping reads.
    fn read_c_string(&self, addr: TargetAddr, cap: usize) -> Result<String, MemoryError> {
        const PIECE: u64 = 64;
        let mut bytes = Vec::new();
        let mut at = addr;
        while bytes.len() <= cap {
            let to_page_end = 4096 - at.0 % 4096;
            let want = PIECE.min(to_page_end) as usize;
            let mut piece = [0u8; PIECE as usize];
            let got = self.read_partial(at, &mut piece[..want]);
            if let Some(nul) = piece[..got].iter().position(|&b| b == 0) {
                bytes.extend_from_slice(&piece[..nul]);
                if bytes.len() > cap {
                    break;
                }
                return String::from_utf8(bytes).map_err(|_| MemoryError::NotUtf8 { addr });
            }
            if got < want {
                // The string runs into memory that cannot be read.
                self.read(at.offset(got as u64)?, &mut piece[got..want])?;
            }
            bytes.extend_from_slice(&piece[..want]);
            at = at.offset(want as u64)?;
        }
        Err(MemoryError::Unterminated { addr, cap })
    }
}

/// A live process's memory, through `process_vm_readv` (no ptrace stop: the target runs on,
/// so a structure read in several reads may change between them; callers check what they read).
#[derive(Clone, Copy, Debug)]
pub struct ProcessMemory {
    pid: libc::pid_t,
}

impl ProcessMemory {
    pub fn new(pid: u32) -> Self {
        Self {
            pid: pid as libc::pid_t,
        }
    }

    fn readv(&self, addr: TargetAddr, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let local = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let remote = libc::iovec {
            iov_base: addr.0 as *mut libc::c_void,
            iov_len: buf.len(),
        };
        // SAFETY: `local` describes `buf`, which is valid for writes of its length for the
        // whole call; `remote` is only an address in the other process, which the kernel
        // checks.
        let got = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(got as usize)
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: TargetAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len();
        match self.readv(addr, buf) {
            Ok(got) if got == len => Ok(()),
            Ok(got) => Err(MemoryError::Short { addr, len, got }),
            Err(cause) => Err(MemoryError::Read { addr, len, cause }),
        }
    }

    fn read_partial(&self, addr: TargetAddr, buf: &mut [u8]) -> usize {
        // process_vm_readv stops at the first page it cannot read, which is what is wanted.
        self.readv(addr, buf).unwrap_or(0)
    }
}

/// Byte images at fixed addresses, for tests: a read must lie inside one image.
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub struct FakeMemory {
    regions: Vec<(TargetAddr, Vec<u8>)>,
}

#[cfg(test)]
impl FakeMemory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `bytes` at `addr`.
    pub fn map(&mut self, addr: TargetAddr, bytes: Vec<u8>) -> &mut Self {
        self.regions.push((addr, bytes));
        self
    }

    /// The image holding `addr`, mutable, and the offset of `addr` in it.
    pub fn at_mut(&mut self, addr: TargetAddr) -> Option<(&mut [u8], usize)> {
        self.regions.iter_mut().find_map(|(start, bytes)| {
            let offset = addr.0.checked_sub(start.0)? as usize;
            (offset < bytes.len()).then_some((bytes.as_mut_slice(), offset))
        })
    }

    /// Writes `bytes` at `addr`, inside an image placed before.
    pub fn write(&mut self, addr: TargetAddr, bytes: &[u8]) {
        let (image, offset) = self.at_mut(addr).expect("write inside a mapped image");
        image[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    pub fn write_u64(&mut self, addr: TargetAddr, value: u64) {
        self.write(addr, &value.to_le_bytes());
    }

    fn find(&self, addr: TargetAddr) -> Option<&[u8]> {
        self.regions.iter().find_map(|(start, bytes)| {
            let offset = addr.0.checked_sub(start.0)? as usize;
            bytes.get(offset..).filter(|rest| !rest.is_empty())
        })
    }
}

#[cfg(test)]
impl Memory for FakeMemory {
    fn read(&self, addr: TargetAddr, buf: &mut [u8]) -> Result<(), MemoryError> {
        let got = self.read_partial(addr, buf);
        if got == buf.len() {
            Ok(())
        } else if got == 0 {
            Err(MemoryError::Read {
                addr,
                len: buf.len(),
                cause: io::Error::from_raw_os_error(libc::EFAULT),
            })
        } else {
            Err(MemoryError::Short {
                addr,
                len: buf.len(),
                got,
            })
        }
    }

    fn read_partial(&self, addr: TargetAddr, buf: &mut [u8]) -> usize {
        let Some(rest) = self.find(addr) else {
            return 0;
        };
        let got = rest.len().min(buf.len());
        buf[..got].copy_from_slice(&rest[..got]);
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_capped_and_terminated() {
        let mut memory = FakeMemory::new();
        memory.map(TargetAddr(0x1000), b"nmethod\0".to_vec());
        memory.map(TargetAddr(0x2000), vec![b'a'; 300]);
        memory.map(TargetAddr(0x3000), vec![b'b'; 10]);
        assert_eq!(
            memory.read_c_string(TargetAddr(0x1000), 64).unwrap(),
            "nmethod"
        );
        // Too long for the cap although terminated later, unterminated, and cut by the end of
        // readable memory.
        let mut long = vec![b'c'; 100];
        long.push(0);
        memory.map(TargetAddr(0x4000), long);
        assert!(matches!(
            memory.read_c_string(TargetAddr(0x4000), 64),
            Err(MemoryError::Unterminated { .. })
        ));
        assert!(matches!(
            memory.read_c_string(TargetAddr(0x2000), 200),
            Err(MemoryError::Unterminated { .. })
        ));
        assert!(matches!(
            memory.read_c_string(TargetAddr(0x2000), 1000),
            Err(MemoryError::Read { .. })
        ));
        assert!(memory.read_c_string(TargetAddr(0x3000), 256).is_err());
    }

    #[test]
    fn a_string_at_the_end_of_a_page_reads_without_touching_the_next() {
        let mut memory = FakeMemory::new();
        memory.map(TargetAddr(0x1ffc), b"abc\0".to_vec());
        assert_eq!(memory.read_c_string(TargetAddr(0x1ffc), 64).unwrap(), "abc");
    }

    #[test]
    fn addresses_do_not_wrap() {
        assert!(TargetAddr(u64::MAX - 1).offset(2).is_err());
        assert_eq!(TargetAddr(1).offset(2).unwrap(), TargetAddr(3));
    }

    #[test]
    fn reads_a_live_process() {
        let value: u64 = 0x1122_3344_5566_7788;
        let memory = ProcessMemory::new(std::process::id());
        let addr = TargetAddr(&raw const value as u64);
        assert_eq!(memory.read_u64(addr).unwrap(), value);
        assert!(memory.read_u64(TargetAddr(8)).is_err());
    }
}
