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

/// Three empty BPF programs on malloc's entry and return and on free, scoped to one process as
/// leakhound and bpftrace scope theirs, placed through leakhound's own bpf(2) and
/// perf_event_open layer (`kernel-sys`). Dropping it closes the descriptors, which detaches
/// everything.
pub(super) struct NoopProbes {
    pub(super) _fds: Vec<OwnedFd>,
}

impl NoopProbes {
    /// One perf event per probe, as leakhound attaches where multi-uprobe links are missing.
    pub(super) fn attach(libc: &Libc, skips: Skips, pid: u32) -> Result<Self> {
        let program = load_noop_program(false)?;
        let mut fds = Vec::new();
        for (offset, retprobe) in [
            (libc.malloc + skips.malloc, false),
            (libc.malloc + skips.malloc, true),
            (libc.free + skips.free, false),
        ] {
            let event = kernel_sys::perf::uprobe_event(&libc.path, offset, retprobe, pid)
                .context("perf_event_open (uprobe)")?;
            kernel_sys::perf::attach_program(event.as_fd(), program.as_fd())
                .context("attaching the no-op program")?;
            fds.push(event);
        }
        fds.push(program);
        Ok(Self { _fds: fds })
    }

    /// The same three probes as two multi-uprobe links (entries, and malloc's return), as
    /// leakhound attaches its own.
    pub(super) fn attach_multi(libc: &Libc, skips: Skips, pid: u32) -> Result<Self> {
        let program = load_noop_program(true)?;
        let path = std::ffi::CString::new(libc.path.as_os_str().as_encoded_bytes())?;
        let mut fds = Vec::new();
        for (offsets, kind) in [
            (
                vec![libc.malloc + skips.malloc, libc.free + skips.free],
                kernel_sys::MultiUprobe::Entry,
            ),
            (
                vec![libc.malloc + skips.malloc],
                kernel_sys::MultiUprobe::Return,
            ),
        ] {
            let link = kernel_sys::UprobeMultiLink {
                program: program.as_fd(),
                path: &path,
                offsets: &offsets,
                cookies: &[],
                kind,
                pid,
            };
            fds.push(
                kernel_sys::link_uprobe_multi(&kernel_sys::Kernel, &link)
                    .context("creating a multi-uprobe link")?,
            );
        }
        fds.push(program);
        Ok(Self { _fds: fds })
    }
}

/// `r0 = 0; exit`, as a program that uprobes run; `multi`: for multi-uprobe links.
pub(super) fn load_noop_program(multi: bool) -> Result<OwnedFd> {
    let instructions = [
        // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
        kernel_sys::instruction(0xb7, 0),
        // BPF_JMP | BPF_EXIT
        kernel_sys::instruction(0x95, 0),
    ];
    let program = kernel_sys::UprobeProgram {
        name: "bench_noop",
        instructions: &instructions,
        license: c"GPL",
        for_multi_links: multi.then_some(kernel_sys::MultiUprobe::Entry),
        btf: None,
        func_info: kernel_sys::InfoRecords::default(),
        line_info: kernel_sys::InfoRecords::default(),
    };
    kernel_sys::load_uprobe_program(&kernel_sys::Kernel, &program, &mut [])
        .context("loading the no-op program")
}
