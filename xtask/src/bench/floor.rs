//! The no-op floor at any offset: empty BPF programs at exactly leakhound's probe points,
//! attached with raw `bpf(2)` and `perf_event_open(2)` calls.

use super::*;
/// An allocator as the benchmark maps it (libc, or a preloaded one): its path and the file
/// offsets of malloc and free.
pub(super) struct Libc {
    pub(super) path: PathBuf,
    pub(super) malloc: u64,
    pub(super) free: u64,
}

impl Libc {
    pub(super) fn inspect(path: Option<&Path>) -> Result<Self> {
        use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};
        let path = path.context("leakhound did not name the library it hooked")?;
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = object::File::parse(&*data)?;
        let offset_of = |name: &str| -> Result<u64> {
            let symbol = file
                .dynamic_symbols()
                .find(|symbol| symbol.name() == Ok(name))
                .with_context(|| format!("no {name} in {}", path.display()))?;
            let address = symbol.address();
            file.segments()
                .find(|segment| {
                    (segment.address()..segment.address() + segment.size()).contains(&address)
                })
                .map(|segment| address - segment.address() + segment.file_range().0)
                .with_context(|| format!("{name} is in no segment"))
        };
        Ok(Self {
            path: path.to_owned(),
            malloc: offset_of("malloc")?,
            free: offset_of("free")?,
        })
    }
}

/// Three empty BPF programs attached through perf_event_open's uprobe PMU, scoped to one
/// process as leakhound and bpftrace scope theirs. Dropping it closes the descriptors, which
/// detaches everything.
pub(super) struct NoopProbes {
    pub(super) _fds: Vec<OwnedFd>,
}

impl NoopProbes {
    pub(super) fn attach(libc: &Libc, skips: Skips, pid: u32) -> Result<Self> {
        let program = load_noop_program(false)?;
        let mut fds = Vec::new();
        for (offset, retprobe) in [
            (libc.malloc + skips.malloc, false),
            (libc.malloc + skips.malloc, true),
            (libc.free + skips.free, false),
        ] {
            let event = uprobe_event(&libc.path, offset, retprobe, pid)?;
            // PERF_EVENT_IOC_SET_BPF and PERF_EVENT_IOC_ENABLE (include/uapi/linux/perf_event.h).
            const SET_BPF: libc::c_ulong = 0x4004_2408;
            const ENABLE: libc::c_ulong = 0x2400;
            // SAFETY: both descriptors are open and owned here.
            let ok = unsafe {
                libc::ioctl(event.as_raw_fd(), SET_BPF, program.as_raw_fd()) == 0
                    && libc::ioctl(event.as_raw_fd(), ENABLE, 0) == 0
            };
            ensure!(
                ok,
                "attaching the no-op program: {}",
                std::io::Error::last_os_error()
            );
            fds.push(event);
        }
        fds.push(program);
        Ok(Self { _fds: fds })
    }
}

impl NoopProbes {
    /// The same three probes as two multi-uprobe links (entries, and malloc's return), as
    /// leakhound attaches its own.
    pub(super) fn attach_multi(libc: &Libc, skips: Skips, pid: u32) -> Result<Self> {
        let program = load_noop_program(true)?;
        let path = std::ffi::CString::new(libc.path.as_os_str().as_encoded_bytes())?;
        let mut fds = Vec::new();
        for (offsets, retprobe) in [
            (
                vec![libc.malloc + skips.malloc, libc.free + skips.free],
                false,
            ),
            (vec![libc.malloc + skips.malloc], true),
        ] {
            // union bpf_attr for BPF_LINK_CREATE: prog_fd, target_fd, attach_type, flags, then
            // uprobe_multi: path, offsets, ref_ctr_offsets, cookies, cnt, flags, pid.
            let mut attr = [0u8; 128];
            attr[0..4].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
            attr[8..12].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_ne_bytes());
            attr[16..24].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
            attr[24..32].copy_from_slice(&(offsets.as_ptr() as u64).to_ne_bytes());
            attr[48..52].copy_from_slice(&(offsets.len() as u32).to_ne_bytes());
            attr[52..56].copy_from_slice(&u32::from(retprobe).to_ne_bytes()); // BPF_F_UPROBE_MULTI_RETURN
            attr[56..60].copy_from_slice(&pid.to_ne_bytes());
            // SAFETY: attr is a valid bpf_attr for BPF_LINK_CREATE (28) whose pointers outlive
            // the call.
            let fd = unsafe {
                libc::syscall(libc::SYS_bpf, 28, attr.as_ptr(), attr.len() as libc::c_uint)
            };
            ensure!(
                fd >= 0,
                "creating a multi-uprobe link: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a new descriptor that nothing else owns.
            fds.push(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        fds.push(program);
        Ok(Self { _fds: fds })
    }
}

/// `enum bpf_attach_type` in include/uapi/linux/bpf.h.
pub(super) const BPF_TRACE_UPROBE_MULTI: u32 = 48;

/// `r0 = 0; exit`, as a kprobe-type program (which uprobes run).
pub(super) fn load_noop_program(multi: bool) -> Result<OwnedFd> {
    let instructions: [u64; 2] = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
        0xb7, // BPF_JMP | BPF_EXIT
        0x95,
    ];
    let license = c"GPL";
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&2u32.to_ne_bytes()); // BPF_PROG_TYPE_KPROBE
    attr[4..8].copy_from_slice(&(instructions.len() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    if multi {
        // expected_attach_type = BPF_TRACE_UPROBE_MULTI, which multi-uprobe links require.
        attr[68..72].copy_from_slice(&BPF_TRACE_UPROBE_MULTI.to_ne_bytes());
    }
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_LOAD (5) whose pointers outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len() as libc::c_uint) };
    ensure!(
        fd >= 0,
        "loading the no-op program: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub(super) fn uprobe_event(
    library: &Path,
    offset: u64,
    retprobe: bool,
    pid: u32,
) -> Result<OwnedFd> {
    let pmu: u32 = fs::read_to_string("/sys/bus/event_source/devices/uprobe/type")
        .context("no uprobe PMU")?
        .trim()
        .parse()?;
    let path = std::ffi::CString::new(library.as_os_str().as_encoded_bytes())?;
    // struct perf_event_attr: type, size, config (bit 0: retprobe, per
    // /sys/bus/event_source/devices/uprobe/format/retprobe), config1 = path, config2 = offset.
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
    ensure!(
        fd >= 0,
        "perf_event_open (uprobe): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
