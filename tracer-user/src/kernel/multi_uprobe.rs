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
use kernel_sys::{InfoRecords, Kernel, MultiUprobe, UprobeMultiLink, UprobeProgram, bpf_insn};

use super::attach::{Flavor, UprobeGroup};

/// The uprobe programs, loaded for multi-uprobe links.
pub struct MultiUprobePrograms {
    programs: HashMap<String, OwnedFd>,
    /// The object's BTF, which the programs' function info refers to.
    _btf: Option<OwnedFd>,
}

impl MultiUprobePrograms {
    /// Loads the programs `names` of `object`, relocated against the maps that `ebpf` (loaded
    /// from the same object) created, and `session` for uprobe sessions when the kernel has
    /// them (see [`MultiUprobePrograms::has`]).
    pub fn load(
        ebpf: &Ebpf,
        object: &[u8],
        names: &[&str],
        session: Option<&str>,
    ) -> io::Result<Self> {
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
        let session_is_return = session.map(|_| session_kfunc());
        let sessions = session.into_iter().map(|name| (name, true));
        for (name, session) in names.iter().map(|name| (*name, false)).chain(sessions) {
            let program = obj
                .programs
                .get(name)
                .ok_or_else(|| io::Error::other(format!("no program {name}")))?;
            let function = &obj.functions[&program.function_key()];
            let mut instructions = function.instructions.clone();
            let kind = if session {
                match &session_is_return {
                    Some(Ok(id)) => rewrite_placeholder(&mut instructions, *id),
                    Some(Err(err)) => {
                        log::info!("uprobe sessions are not available: {err}");
                        continue;
                    }
                    None => unreachable!("looked up whenever a session program is asked for"),
                }
                MultiUprobe::Session
            } else {
                MultiUprobe::Entry
            };
            let (func_info, line_info) = (
                function.func_info.func_info_bytes(),
                function.line_info.line_info_bytes(),
            );
            let program = UprobeProgram {
                name,
                instructions: &instructions,
                license: &obj.license,
                for_multi_links: Some(kind),
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
            let fd = match load_program(&program) {
                Ok(fd) => fd,
                // A kernel before 6.12 has no sessions: the separate entry and return
                // programs serve instead.
                Err(err) if session => {
                    log::info!("uprobe sessions are not available: {err}");
                    continue;
                }
                Err(err) => return Err(err),
            };
            programs.insert(name.to_owned(), fd);
        }
        Ok(Self {
            programs,
            _btf: btf,
        })
    }

    /// Whether `program` is loaded (a session program is only where the kernel has sessions).
    pub fn has(&self, program: &str) -> bool {
        self.programs.contains_key(program)
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
            kind: match group.flavor {
                Flavor::Entry => MultiUprobe::Entry,
                Flavor::Return => MultiUprobe::Return,
                Flavor::Session => MultiUprobe::Session,
            },
            pid,
        };
        kernel_sys::link_uprobe_multi(&Kernel, &link)
    }
}

/// `BPF_PSEUDO_KFUNC_CALL`: a call instruction's `src_reg` for a kernel function, whose `imm`
/// is the function's id in the kernel's BTF (include/uapi/linux/bpf.h).
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// The id of `bpf_session_is_return` in the running kernel's BTF.
fn session_kfunc() -> io::Result<u32> {
    let btf = aya_obj::btf::Btf::from_sys_fs().map_err(io::Error::other)?;
    btf.id_by_type_name_kind("bpf_session_is_return", aya_obj::btf::BtfKind::Func)
        .map_err(|err| io::Error::other(format!("bpf_session_is_return: {err}")))
}

/// Turns every call of tracer_common::SESSION_IS_RETURN_PLACEHOLDER into a call of the
/// kernel function `kfunc` (a BTF id of vmlinux, so the BTF descriptor index in `off` is 0).
fn rewrite_placeholder(instructions: &mut [bpf_insn], kfunc: u32) {
    // BPF_JMP | BPF_CALL
    const CALL: u8 = 0x85;
    for instruction in instructions {
        if instruction.code == CALL
            && instruction.src_reg() == 0
            && instruction.imm == tracer_common::SESSION_IS_RETURN_PLACEHOLDER
        {
            instruction.set_src_reg(BPF_PSEUDO_KFUNC_CALL);
            instruction.off = 0;
            instruction.imm = kfunc as i32;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(imm: i32) -> bpf_insn {
        // SAFETY: bpf_insn is plain data; all zeros is a valid value.
        let mut instruction: bpf_insn = unsafe { std::mem::zeroed() };
        instruction.code = 0x85;
        instruction.imm = imm;
        instruction
    }

    /// Only calls of the placeholder become kfunc calls; helper calls stay as they are.
    #[test]
    fn the_placeholder_call_becomes_the_kfunc_call() {
        let mut instructions = [
            call(174), // bpf_get_attach_cookie
            call(tracer_common::SESSION_IS_RETURN_PLACEHOLDER),
        ];
        rewrite_placeholder(&mut instructions, 12345);
        assert_eq!((instructions[0].src_reg(), instructions[0].imm), (0, 174));
        assert_eq!(
            (
                instructions[1].src_reg(),
                instructions[1].off,
                instructions[1].imm
            ),
            (BPF_PSEUDO_KFUNC_CALL, 0, 12345)
        );
    }
}
