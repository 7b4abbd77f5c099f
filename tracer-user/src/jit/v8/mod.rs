//! V8's own metadata, read from a running Node.js process: no flags, no restart.
//!
//! A `node` binary exports its heap layout for debuggers as `v8dbg_*` constants
//! ([`postmortem`]). With them the kernel walk reads, from each JavaScript frame, the function
//! it runs: the frame holds its JSFunction at a fixed offset from `rbp`, the JSFunction its
//! SharedFunctionInfo (SFI). The walk records the SFI's address with 16 bits of one of its
//! fields as a check ([`frame_layout`]); [`names`] turns that into `function at file:line`
//! by reading the SFI, its ScopeInfo and its Script ([`heap`]) from the target's memory.
//!
//! Which return addresses are JavaScript frames: those in anonymous executable memory of a
//! Node process (V8's compiled code: baseline, Maglev, TurboFan, and the per-function copies
//! of the interpreter's entry that `--interpreted-frames-native-stack` makes), and those in
//! V8's embedded builtins, among them `Builtins_InterpreterEntryTrampoline`, whose frame is
//! the interpreted function's. The walk's own checks (a Smi in the context slot marks a typed
//! frame, the object found must be an SFI) leave every other frame as it was.
//!
//! V8's collector moves objects. An SFI lives in old space and moves only when its page is
//! compacted; the name is read promptly after the stack is first seen, and a name is only
//! given to an SFI still at the address whose check field still matches
//! ([`frames::V8Frames::name`]).

pub mod frames;
pub mod heap;
pub mod names;
pub mod postmortem;

use std::path::{Path, PathBuf};

use thiserror::Error;
use tracer_common::V8FrameLayout;

use crate::{
    jit::hotspot::memory::{MemoryError, ProcessMemory, TargetAddr},
    process::{
        TargetProcess,
        mapped_object::{self, MappedObjectError},
        maps::Mapping,
        root,
    },
};
pub use frames::V8Frames;
use heap::{Heap, V8Layout};
use names::{FunctionName, Namer};

/// Why V8's metadata could not be read or followed; one line each.
#[derive(Debug, Error)]
pub enum V8Error {
    #[error("no node binary or libnode.so is mapped in the process")]
    NoV8,
    #[error("cannot read the process's mappings: {0}")]
    Maps(String),
    #[error("cannot open {}: {cause}", path.display())]
    Open {
        path: PathBuf,
        cause: root::RootError,
    },
    #[error("cannot read {} as ELF: {detail}", path.display())]
    Elf { path: PathBuf, detail: String },
    #[error("{} exports no v8dbg_* symbols (a V8 built without postmortem metadata)", path.display())]
    NoPostmortem { path: PathBuf },
    #[error("V8's postmortem metadata lacks {0}")]
    MissingConstants(String),
    #[error("V8's heap layout is not supported: {0}")]
    Unsupported(String),
    #[error("cannot read the target's memory: {0}")]
    Memory(MemoryError),
    #[error("implausible V8 object: {0}")]
    Corrupt(String),
}

/// What the kernel walk needs to read a JavaScript frame's function, from the postmortem
/// constants. The check is `name_or_scope_info`, a pointer to the function's ScopeInfo, which
/// differs from function to function: an SFI that the collector put at an older one's address
/// is told apart, but for 1 in 2^13 (the low 3 bits are the tag and alignment).
pub fn frame_layout(layout: &V8Layout) -> V8FrameLayout {
    // Object offsets, which `V8Layout::from_postmortem` bounds to 16 bits.
    let small = |offset: u64| offset as u32;
    V8FrameLayout {
        function_at: layout.fp_function,
        context_at: layout.fp_context,
        shared_at: small(layout.function_shared),
        map_at: small(layout.map),
        instance_type_at: small(layout.map_instance_type),
        sfi_type: u32::from(layout.type_sfi),
        check_at: small(layout.sfi_name_or_scope_info) as i32,
        valid: 1,
    }
}

/// A Node process's V8, read: its layout, where its builtins are, and its memory.
#[derive(Debug)]
pub struct V8Vm {
    pub path: PathBuf,
    pub layout: V8Layout,
    pub frame_layout: V8FrameLayout,
    /// The embedded builtins in the target's addresses (`None` for a stripped binary: then
    /// only compiled code is read, interpreted frames keep the trampoline's name).
    pub builtins: Option<std::ops::Range<u64>>,
    memory: ProcessMemory,
    namer: Namer,
}

/// Whether a mapped file is, by its name, where V8 lives: node itself, or libnode.so.
fn is_v8_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    matches!(name, "node" | "nodejs") || name.starts_with("libnode.so")
}

impl V8Vm {
    /// Reads the metadata of the V8 in process `pid`: in a file named as Node's, or else in
    /// the executable if it exports V8's symbols (Node built into a program of another name).
    /// A process with neither is [`V8Error::NoV8`], said to no one.
    pub fn attach(pid: u32) -> Result<Self, V8Error> {
        let target = TargetProcess::open(pid).map_err(|e| V8Error::Maps(e.to_string()))?;
        let maps = target.maps().map_err(|e| V8Error::Maps(e.to_string()))?;
        let at_start = |m: &&Mapping| m.offset == 0 && m.path.is_some();
        if let Some(mapping) = maps
            .iter()
            .filter(at_start)
            .find(|m| m.path.as_deref().is_some_and(is_v8_file))
        {
            return Self::open(pid, mapping);
        }
        let exe = std::fs::read_link(target.exe_link()).unwrap_or_default();
        let mapping = maps
            .iter()
            .filter(at_start)
            .find(|m| m.path.as_deref() == Some(exe.as_path()))
            .ok_or(V8Error::NoV8)?;
        match Self::open(pid, mapping) {
            Err(V8Error::NoPostmortem { .. }) => Err(V8Error::NoV8),
            other => other,
        }
    }

    fn open(pid: u32, mapping: &Mapping) -> Result<Self, V8Error> {
        let path = mapping.path.clone().unwrap_or_default();
        let elf_error = |detail: String| V8Error::Elf {
            path: path.clone(),
            detail,
        };
        let cache = mapped_object::open(pid, mapping).map_err(|err| match err {
            MappedObjectError::Open(cause) => V8Error::Open {
                path: path.clone(),
                cause,
            },
            MappedObjectError::Elf(detail) => elf_error(detail),
        })?;
        let binary = postmortem::read_binary(&cache).map_err(elf_error)?;
        if binary.exported == 0 {
            return Err(V8Error::NoPostmortem { path });
        }
        let bias = mapped_object::load_bias(&cache, mapping).map_err(elf_error)?;
        let layout = V8Layout::from_postmortem(&binary.constants)?;
        Ok(Self {
            frame_layout: frame_layout(&layout),
            layout,
            builtins: binary
                .builtins
                .map(|r| r.start.wrapping_add(bias)..r.end.wrapping_add(bias)),
            path,
            memory: ProcessMemory::new(pid),
            namer: Namer::default(),
        })
    }

    /// The function whose SFI is at `sfi` (untagged), if the object there is still an SFI
    /// whose check field's low 16 bits are `check`.
    pub fn function(&mut self, sfi: u64, check: u16) -> Result<FunctionName, V8Error> {
        let heap = Heap {
            memory: &self.memory,
            layout: &self.layout,
        };
        let at = TargetAddr(sfi);
        let ty = heap.instance_type(at)?;
        if ty != self.layout.type_sfi {
            return Err(V8Error::Corrupt(format!(
                "{at}: type {ty}, no longer an SFI (moved by the collector)"
            )));
        }
        let word = heap.field(at, self.layout.sfi_name_or_scope_info)?;
        if word as u16 != check {
            return Err(V8Error::Corrupt(format!(
                "{at}: another SFI than the stack's (moved by the collector)"
            )));
        }
        self.namer.function(&heap, at)
    }
}
