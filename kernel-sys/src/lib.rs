//! The one place where leakhound calls bpf(2) and perf_event_open(2) itself, for what aya 0.14
//! lacks: batched map reads, programs loaded for multi-uprobe links and the links themselves,
//! and (for the benchmark's floor) raw programs on raw uprobe events. Callers of bpf(2) take a
//! [`Bpf`], so that tests stand in for the kernel with a fake that checks the attributes and
//! answers with the errors a kernel gives (ENOSPC, ENOENT, EINVAL), as aya's `sys/` module
//! lets its tests override `syscall`.
//!
//! A crate of its own so that `cargo xtask bench` uses this same layer without building the
//! eBPF object that tracer-user embeds.

use std::{
    ffi::CStr,
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya_obj::generated::{
    BPF_F_UPROBE_MULTI_RETURN, bpf_attach_type::BPF_TRACE_UPROBE_MULTI,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE,
};
pub use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_insn};

/// `enum bpf_cmd` values used with attribute blocks of leakhound's own (include/uapi/linux/bpf.h).
pub mod cmd {
    pub const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;
}

/// bpf(2).
pub trait Bpf {
    /// Runs `cmd` with the attribute block `attr`, `size` bytes long; returns what the call
    /// returned (a descriptor for some commands), or the error it set.
    ///
    /// # Safety
    /// `attr` must point at `size` writable bytes laid out as `union bpf_attr` for `cmd`, and
    /// every address inside it must point at a buffer as large as the command needs.
    unsafe fn call(&self, cmd: libc::c_int, attr: *mut u8, size: u32) -> io::Result<i64>;

    /// [`Bpf::call`] for the commands that return a new descriptor.
    ///
    /// # Safety
    /// As for [`Bpf::call`].
    unsafe fn call_for_fd(
        &self,
        cmd: libc::c_int,
        attr: *mut u8,
        size: u32,
    ) -> io::Result<OwnedFd> {
        // SAFETY: the caller's contract is this function's.
        let fd = unsafe { self.call(cmd, attr, size) }?;
        let fd = RawFd::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The running kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl Bpf for Kernel {
    unsafe fn call(&self, cmd: libc::c_int, attr: *mut u8, size: u32) -> io::Result<i64> {
        // SAFETY: the caller guarantees that `attr` is a valid bpf_attr of `size` bytes for
        // `cmd`.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc)
    }
}

/// An all-zero `bpf_attr`, the kernel's "nothing set".
fn empty_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a plain C union of integers; all zeros is its documented empty value.
    unsafe { std::mem::zeroed() }
}

/// bpf(2) with a whole `bpf_attr`, for a command that returns a new descriptor.
fn call_for_fd(bpf: &impl Bpf, cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a bpf_attr, of the size passed; the callers below set only the member
    // that `cmd` reads, and every pointer in it refers to a buffer that outlives the call.
    unsafe {
        bpf.call_for_fd(
            cmd as libc::c_int,
            std::ptr::from_mut(attr).cast(),
            size_of::<bpf_attr>() as u32,
        )
    }
}

/// One instruction with registers r0 (dst and src): enough for the benchmark's empty program.
pub fn instruction(code: u8, imm: i32) -> bpf_insn {
    bpf_insn {
        code,
        _bitfield_align_1: [],
        _bitfield_1: bpf_insn::new_bitfield_1(0, 0),
        off: 0,
        imm,
    }
}

/// Function or line info records of a program, as the object's BTF.ext holds them.
#[derive(Clone, Copy, Debug, Default)]
pub struct InfoRecords<'a> {
    pub record_size: u32,
    pub count: u32,
    pub bytes: &'a [u8],
}

/// `BPF_TRACE_UPROBE_SESSION` in `enum bpf_attach_type` (include/uapi/linux/bpf.h, Linux
/// 6.12+), which aya-obj 0.3's bindings predate: a multi-uprobe link whose program runs at
/// the entry and, unless the entry returned 1, at the return.
pub const BPF_TRACE_UPROBE_SESSION: u32 = 57;

/// How a multi-uprobe link runs its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiUprobe {
    /// At each function's entry.
    Entry,
    /// At each function's return (`BPF_F_UPROBE_MULTI_RETURN`).
    Return,
    /// At the entry, and at the return unless the entry returned 1 (a uprobe session).
    Session,
}

impl MultiUprobe {
    /// The attach type a program for such links is loaded with, and the link is made with.
    pub fn attach_type(self) -> u32 {
        match self {
            Self::Entry | Self::Return => BPF_TRACE_UPROBE_MULTI as u32,
            Self::Session => BPF_TRACE_UPROBE_SESSION,
        }
    }
}

/// A program that uprobes run (`BPF_PROG_TYPE_KPROBE`).
#[derive(Clone, Copy, Debug)]
pub struct UprobeProgram<'a> {
    pub name: &'a str,
    pub instructions: &'a [bpf_insn],
    pub license: &'a CStr,
    /// The multi-uprobe links it is loaded for (their attach type), or none: one perf event
    /// per probe.
    pub for_multi_links: Option<MultiUprobe>,
    /// The object's BTF, with the function and line info that refer to it.
    pub btf: Option<BorrowedFd<'a>>,
    pub func_info: InfoRecords<'a>,
    pub line_info: InfoRecords<'a>,
}

/// Loads `program`; `log`, when not empty, receives the verifier's log.
pub fn load_uprobe_program(
    bpf: &impl Bpf,
    program: &UprobeProgram<'_>,
    log: &mut [u8],
) -> io::Result<OwnedFd> {
    let mut attr = empty_attr();
    // SAFETY: writing the union member that BPF_PROG_LOAD reads.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    load.prog_type = BPF_PROG_TYPE_KPROBE as u32;
    if let Some(multi) = program.for_multi_links {
        load.expected_attach_type = multi.attach_type();
    }
    load.insns = program.instructions.as_ptr() as u64;
    load.insn_cnt = program.instructions.len() as u32;
    load.license = program.license.as_ptr() as u64;
    for (slot, byte) in load.prog_name.iter_mut().zip(program.name.bytes().take(15)) {
        *slot = byte as core::ffi::c_char;
    }
    if let Some(btf) = program.btf {
        load.prog_btf_fd = btf.as_raw_fd() as u32;
        let func = program.func_info;
        if func.count > 0 {
            load.func_info_rec_size = func.record_size;
            load.func_info_cnt = func.count;
            load.func_info = func.bytes.as_ptr() as u64;
        }
        let line = program.line_info;
        if line.count > 0 {
            load.line_info_rec_size = line.record_size;
            load.line_info_cnt = line.count;
            load.line_info = line.bytes.as_ptr() as u64;
        }
    }
    if !log.is_empty() {
        load.log_level = 1;
        load.log_buf = log.as_mut_ptr() as u64;
        load.log_size = log.len() as u32;
    }
    call_for_fd(bpf, bpf_cmd::BPF_PROG_LOAD, &mut attr)
}

/// Loads BTF (an object's, for the function info of its programs).
pub fn load_btf(bpf: &impl Bpf, bytes: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = empty_attr();
    // SAFETY: writing the union member that BPF_BTF_LOAD reads; `bytes` outlives the call.
    let btf = unsafe { &mut attr.__bindgen_anon_7 };
    btf.btf = bytes.as_ptr() as u64;
    btf.btf_size = bytes.len() as u32;
    call_for_fd(bpf, bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

/// One multi-uprobe link (Linux 6.6+): `program` at every offset of `path`, in process `pid`.
#[derive(Clone, Copy, Debug)]
pub struct UprobeMultiLink<'a> {
    pub program: BorrowedFd<'a>,
    pub path: &'a CStr,
    /// File offsets.
    pub offsets: &'a [u64],
    /// One per offset, or none (all zero).
    pub cookies: &'a [u64],
    pub kind: MultiUprobe,
    pub pid: u32,
}

/// Creates the link; closing the descriptor detaches every probe of it after one RCU grace
/// period.
pub fn link_uprobe_multi(bpf: &impl Bpf, link: &UprobeMultiLink<'_>) -> io::Result<OwnedFd> {
    if !link.cookies.is_empty() && link.cookies.len() != link.offsets.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut attr = empty_attr();
    // SAFETY: writing the union member that BPF_LINK_CREATE reads.
    let create = unsafe { &mut attr.link_create };
    create.__bindgen_anon_1.prog_fd = link.program.as_raw_fd() as u32;
    create.attach_type = link.kind.attach_type();
    // SAFETY: the uprobe_multi member is the one both multi-uprobe attach types read.
    let multi = unsafe { &mut create.__bindgen_anon_3.uprobe_multi };
    multi.path = link.path.as_ptr() as u64;
    multi.offsets = link.offsets.as_ptr() as u64;
    // The kernel reads `cnt` cookies from a non-null pointer: none is null.
    multi.cookies = if link.cookies.is_empty() {
        0
    } else {
        link.cookies.as_ptr() as u64
    };
    multi.cnt = link.offsets.len() as u32;
    multi.flags = if link.kind == MultiUprobe::Return {
        BPF_F_UPROBE_MULTI_RETURN
    } else {
        0
    };
    multi.pid = link.pid;
    call_for_fd(bpf, bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Raw uprobe perf events, which aya attaches for leakhound; the benchmark's floor places its
/// empty programs with them.
pub mod perf {
    use super::*;

    /// A uprobe (or uretprobe) event at `offset` of `library`, in process `pid`, through the
    /// uprobe PMU.
    pub fn uprobe_event(
        library: &Path,
        offset: u64,
        retprobe: bool,
        pid: u32,
    ) -> io::Result<OwnedFd> {
        let pmu: u32 = std::fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")?
            .trim()
            .parse()
            .map_err(io::Error::other)?;
        let path = std::ffi::CString::new(library.as_os_str().as_encoded_bytes())
            .map_err(io::Error::other)?;
        // struct perf_event_attr: type, size, config (bit 0: retprobe, per
        // /sys/bus/event_source/devices/uprobe/format/retprobe), config1 = path,
        // config2 = offset.
        const SIZE: usize = 128;
        let mut attr = [0u8; SIZE];
        attr[0..4].copy_from_slice(&pmu.to_ne_bytes());
        attr[4..8].copy_from_slice(&(SIZE as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&u64::from(retprobe).to_ne_bytes());
        attr[16..24].copy_from_slice(&1u64.to_ne_bytes()); // sample_period
        attr[56..64].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
        attr[64..72].copy_from_slice(&offset.to_ne_bytes());
        // SAFETY: attr is a valid perf_event_attr whose path pointer outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                pid as libc::pid_t,
                -1,
                -1,
                libc::c_ulong::from(8u32), // PERF_FLAG_FD_CLOEXEC
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// Runs `program` on `event`, and enables the event.
    pub fn attach_program(event: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
        // PERF_EVENT_IOC_SET_BPF and PERF_EVENT_IOC_ENABLE (include/uapi/linux/perf_event.h).
        // The request's type is glibc's `unsigned long` and musl's `int` (the static build).
        const SET_BPF: libc::Ioctl = 0x4004_2408;
        const ENABLE: libc::Ioctl = 0x2400;
        // SAFETY: both descriptors are open for the call.
        let ok = unsafe {
            libc::ioctl(event.as_raw_fd(), SET_BPF, program.as_raw_fd()) == 0
                && libc::ioctl(event.as_raw_fd(), ENABLE, 0) == 0
        };
        if ok {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::RefCell, os::fd::AsFd as _};

    use super::*;

    /// Keeps a copy of each attribute block and answers with a descriptor of /dev/null.
    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<(libc::c_int, bpf_attr)>>,
    }

    impl Bpf for Recorder {
        unsafe fn call(&self, cmd: libc::c_int, attr: *mut u8, size: u32) -> io::Result<i64> {
            assert_eq!(size as usize, size_of::<bpf_attr>());
            // SAFETY: the helpers above pass a whole bpf_attr.
            let attr = unsafe { attr.cast::<bpf_attr>().read() };
            self.calls.borrow_mut().push((cmd, attr));
            let file = std::fs::File::open("/dev/null")?;
            Ok(i64::from(std::os::fd::IntoRawFd::into_raw_fd(file)))
        }
    }

    #[test]
    fn a_return_link_without_cookies_passes_none() {
        let bpf = Recorder::default();
        let program = std::fs::File::open("/dev/null").expect("a descriptor");
        let offsets = [0x10, 0x20];
        let link = UprobeMultiLink {
            program: program.as_fd(),
            path: c"/lib/libc.so.6",
            offsets: &offsets,
            cookies: &[],
            kind: MultiUprobe::Return,
            pid: 42,
        };
        link_uprobe_multi(&bpf, &link).expect("linked");
        let calls = bpf.calls.borrow();
        let (cmd, attr) = &calls[0];
        assert_eq!(*cmd, bpf_cmd::BPF_LINK_CREATE as libc::c_int);
        // SAFETY: the member BPF_LINK_CREATE with BPF_TRACE_UPROBE_MULTI uses.
        let multi = unsafe { attr.link_create.__bindgen_anon_3.uprobe_multi };
        // SAFETY: as above.
        let attach_type = unsafe { attr.link_create.attach_type };
        assert_eq!(attach_type, BPF_TRACE_UPROBE_MULTI as u32);
        assert_eq!(multi.cnt, 2);
        assert_eq!(multi.cookies, 0);
        assert_eq!(multi.flags, BPF_F_UPROBE_MULTI_RETURN);
        assert_eq!(multi.pid, 42);
        assert_eq!(multi.offsets, offsets.as_ptr() as u64);
    }

    #[test]
    fn cookies_must_match_the_offsets() {
        let bpf = Recorder::default();
        let program = std::fs::File::open("/dev/null").expect("a descriptor");
        let link = UprobeMultiLink {
            program: program.as_fd(),
            path: c"/lib/libc.so.6",
            offsets: &[1, 2],
            cookies: &[7],
            kind: MultiUprobe::Entry,
            pid: 1,
        };
        let err = link_uprobe_multi(&bpf, &link).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(bpf.calls.borrow().is_empty(), "nothing reached the kernel");
    }

    #[test]
    fn a_program_for_multi_links_carries_their_attach_type_and_name() {
        let bpf = Recorder::default();
        let instructions = [instruction(0xb7, 0), instruction(0x95, 0)];
        let program = UprobeProgram {
            name: "a_rather_long_program_name",
            instructions: &instructions,
            license: c"GPL",
            for_multi_links: Some(MultiUprobe::Entry),
            btf: None,
            func_info: InfoRecords::default(),
            line_info: InfoRecords::default(),
        };
        load_uprobe_program(&bpf, &program, &mut []).expect("loaded");
        let calls = bpf.calls.borrow();
        let (cmd, attr) = &calls[0];
        assert_eq!(*cmd, bpf_cmd::BPF_PROG_LOAD as libc::c_int);
        // SAFETY: the member BPF_PROG_LOAD uses.
        let load = unsafe { attr.__bindgen_anon_3 };
        assert_eq!(load.prog_type, BPF_PROG_TYPE_KPROBE as u32);
        assert_eq!(load.expected_attach_type, BPF_TRACE_UPROBE_MULTI as u32);
        assert_eq!(load.insn_cnt, 2);
        assert_eq!(load.log_level, 0);
        let name: Vec<u8> = load.prog_name.iter().map(|&c| c as u8).collect();
        // Fifteen bytes and the terminating zero.
        assert_eq!(&name[..16], b"a_rather_long_p\0");
    }
}
