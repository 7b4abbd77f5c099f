//! Multi-uprobe links (Linux 6.6+): all the functions of one library go to one program in one
//! `BPF_LINK_CREATE`, and closing the link detaches them all after a single RCU grace period.
//! One perf event per probe, as aya 0.14 attaches them, waits out one grace period per probe
//! under the kernel's event mutex when closed: about 75 ms each, 2 to 3 s for 29 probes. A
//! multi-uprobe link also runs its program straight from the uprobe, without the perf event's
//! trace machinery in between.
//!
//! The kernel only accepts programs loaded with the `BPF_TRACE_UPROBE_MULTI` attach type for
//! such links, and aya 0.14 loads uprobe programs without one. So the uprobe programs are
//! loaded here a second time from the same object, relocated against the maps aya created
//! (they share every map and global), with the object's BTF (`bpf_loop` callbacks need its
//! function info). Any failure leaves the caller to attach through aya instead.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
};

use aya::{Ebpf, maps::Map};
use aya_obj::{Object, btf::BtfFeatures};
use kernel_sys::{InfoRecords, Kernel, UprobeMultiLink, UprobeProgram};

use super::attach::{Flavor, UprobeGroup};

/// The uprobe programs, loaded for multi-uprobe links.
pub struct MultiUprobePrograms {
    programs: HashMap<String, OwnedFd>,
    /// The object's BTF, which the programs' function info refers to.
    _btf: Option<OwnedFd>,
}

impl MultiUprobePrograms {
    /// Loads the programs `names` of `object`, relocated against the maps that `ebpf` (loaded
    /// from the same object) created.
    pub fn load(ebpf: &Ebpf, object: &[u8], names: &[&str]) -> io::Result<Self> {
        let mut obj = Object::parse(object).map_err(io::Error::other)?;
        // Everything the object's BTF uses is in Linux 6.6, which multi-uprobes need anyway.
        let btf_features = BtfFeatures::new(true, true, true, true, true, true, true, true);
        let btf = match obj
            .fixup_and_sanitize_btf(&btf_features)
            .map_err(io::Error::other)?
        {
            Some(btf) => Some(kernel_sys::load_btf(&Kernel, &btf.to_bytes())?),
            None => None,
        };
        let features = aya_obj::Features::new(
            true,  // program and map names
            true,  // bpf_probe_read_kernel
            true,  // perf links
            true,  // global data
            true,  // attach cookies
            false, // cpumap program ids (no such maps here)
            false, // devmap program ids (no such maps here)
            Some(btf_features),
        );
        // Relocating borrows the object mutably: the map definitions are cloned out first.
        let maps = obj
            .maps
            .iter()
            .map(|(name, map)| {
                let loaded = ebpf
                    .map(name)
                    .ok_or_else(|| io::Error::other(format!("map {name} is not loaded")))?;
                Ok((name.clone(), map_fd(loaded)?, map.clone()))
            })
            .collect::<io::Result<Vec<(String, RawFd, aya_obj::Map)>>>()?;
        let text_sections: HashSet<usize> = obj.functions.keys().map(|(index, _)| *index).collect();
        obj.relocate_maps(
            maps.iter().map(|(name, fd, map)| (name.as_str(), *fd, map)),
            &text_sections,
        )
        .map_err(io::Error::other)?;
        obj.relocate_calls(&text_sections)
            .map_err(io::Error::other)?;
        obj.sanitize_functions(&features);

        let mut programs = HashMap::new();
        for name in names {
            let program = obj
                .programs
                .get(*name)
                .ok_or_else(|| io::Error::other(format!("no program {name}")))?;
            let function = &obj.functions[&program.function_key()];
            let (func_info, line_info) = (
                function.func_info.func_info_bytes(),
                function.line_info.line_info_bytes(),
            );
            let program = UprobeProgram {
                name,
                instructions: &function.instructions,
                license: &obj.license,
                for_multi_links: true,
                btf: btf.as_ref().map(|btf| btf.as_fd()),
                func_info: InfoRecords {
                    record_size: function.func_info_rec_size as u32,
                    count: function.func_info.len() as u32,
                    bytes: &func_info,
                },
                line_info: InfoRecords {
                    record_size: function.line_info_rec_size as u32,
                    // `num_info` is not updated when called functions are linked in.
                    count: function.line_info.len() as u32,
                    bytes: &line_info,
                },
            };
            let fd = load_program(&program)?;
            programs.insert((*name).to_owned(), fd);
        }
        Ok(Self {
            programs,
            _btf: btf,
        })
    }

    /// Attaches the group's program at its offsets (file offsets) of its library for the
    /// process `pid`, each with its cookie. Closing the returned link detaches them.
    pub fn attach(&self, group: &UprobeGroup<'_>, pid: u32) -> io::Result<OwnedFd> {
        let UprobeGroup {
            program,
            library,
            offsets,
            cookies,
            ..
        } = group;
        let prog = self
            .programs
            .get(*program)
            .ok_or_else(|| io::Error::other(format!("no program {program}")))?;
        let path = CString::new(library.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let link = UprobeMultiLink {
            program: prog.as_fd(),
            path: &path,
            offsets,
            cookies,
            returns: group.flavor == Flavor::Return,
            pid,
        };
        kernel_sys::link_uprobe_multi(&Kernel, &link)
    }
}

/// The descriptor of a map that aya created.
fn map_fd(map: &Map) -> io::Result<RawFd> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::RingBuf(data)
        | Map::StackTraceMap(data) => data,
        _ => return Err(io::Error::other("a map of a type leakhound does not use")),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

/// Loads one program; the verifier's log is asked for only to explain a refusal, since
/// logging slows verification down.
fn load_program(program: &UprobeProgram<'_>) -> io::Result<OwnedFd> {
    kernel_sys::load_uprobe_program(&Kernel, program, &mut []).or_else(|_| {
        let mut log = vec![0u8; 1 << 20];
        kernel_sys::load_uprobe_program(&Kernel, program, &mut log).map_err(|err| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let tail = String::from_utf8_lossy(&log[end.saturating_sub(2000)..end]).into_owned();
            io::Error::new(
                err.kind(),
                format!("loading {}: {err}\n{tail}", program.name),
            )
        })
    })
}
