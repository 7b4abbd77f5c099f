//! HotSpot's own metadata, read from a running JVM's memory: no flags, no agent, no attach.
//!
//! libjvm.so exports a description of the VM's structures for debuggers ([`vmstructs`]). With
//! it leakhound finds the CodeBlob that holds a pc ([`codecache`]), and for a compiled method
//! the `Method*` it was compiled from, which it names as `package.Class.method` ([`names`]).
//! This is the foundation for naming and unwinding Java frames without a perf map; nothing in
//! the trace uses it yet.
//!
//! The target is untrusted: every read goes through [`memory::Memory`] with a cap, and what a
//! read returns is checked before it is followed. The target also runs on while it is read,
//! so code can be freed between two reads; caches key blobs by their compile id and methods by
//! their identity ([`codecache::BlobKey`], [`names::MethodKey`]).

pub mod codecache;
pub mod debug;
pub mod flags;
pub mod frames;
pub mod libjvm;
pub mod memory;
pub mod names;
pub mod scopes;
pub mod vmstructs;

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use thiserror::Error;
use tracer_common::JvmFrameLayout;

use codecache::{BlobNames, CodeBlob, CodeCacheLayout, CodeHeap};
use libjvm::Libjvm;
pub use memory::{Memory, MemoryError, ProcessMemory, TargetAddr};
use names::{MethodKey, MethodLayout, MethodName};
use scopes::{LineLayout, ScopeLayout};
use vmstructs::{TableSymbols, VmStructs};

use crate::process::root::RootError;

/// Why a JVM's metadata could not be read or followed. One line each: an inner error is part
/// of the message and so is a `cause`, not a `source`, which `{:#}` would print a second time.
#[derive(Debug, Error)]
pub enum HotspotError {
    #[error("no {} is mapped in the process", libjvm::LIBJVM)]
    NoLibjvm,
    #[error("cannot read the process's mappings: {0}")]
    Maps(String),
    #[error("cannot open {}: {cause}", path.display())]
    Open { path: PathBuf, cause: RootError },
    #[error("cannot read {} as ELF: {detail}", path.display())]
    Elf { path: PathBuf, detail: String },
    #[error("libjvm.so does not export {name} (stripped, or not HotSpot)")]
    MissingSymbol { name: &'static str },
    #[error("cannot read {what}: {cause}")]
    Memory {
        what: &'static str,
        cause: MemoryError,
    },
    #[error("{table} is malformed: {detail}")]
    BadTable { table: &'static str, detail: String },
    #[error("the VM's tables have no field {type_name}::{field}")]
    MissingField { type_name: String, field: String },
    #[error("the VM's tables have no type {type_name}")]
    MissingType { type_name: String },
    #[error("implausible {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

/// The most method names kept; past it the cache starts over (a JVM that loads and unloads
/// classes without end must not grow leakhound without end).
const MAX_CACHED_METHODS: usize = 1 << 16;

/// A JVM whose metadata was read: the layouts it needs and the code heaps as last seen.
#[derive(Debug)]
pub struct HotspotVm<M> {
    memory: M,
    pub libjvm: Option<Libjvm>,
    pub structs: VmStructs,
    code_cache: CodeCacheLayout,
    methods: MethodLayout,
    /// `None` on JDKs whose inlining records this reader does not know.
    scopes: Option<ScopeLayout>,
    /// `None` where HotSpot does not describe its line-number tables.
    lines: Option<LineLayout>,
    heaps: Vec<CodeHeap>,
    blob_names: BlobNames,
    method_names: HashMap<MethodKey, Arc<MethodName>>,
    /// Lines of interpreted frames by method and bytecode index.
    lines_seen: HashMap<(MethodKey, i32), Option<u32>>,
}

/// One Java frame at a pc in compiled code.
#[derive(Clone, Debug)]
pub struct JavaFrame {
    pub name: Arc<MethodName>,
    pub bci: Option<i32>,
    pub line: Option<u32>,
    /// Inlined into the frame before it.
    pub inlined: bool,
}

/// A pc resolved: its blob and, for compiled Java code, the method's name.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub blob: CodeBlob,
    pub method: Option<Result<Arc<MethodName>, Arc<HotspotError>>>,
}

impl HotspotVm<ProcessMemory> {
    /// Reads the metadata of the JVM in process `pid`.
    pub fn attach(pid: u32) -> Result<Self, HotspotError> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|err| HotspotError::Maps(err.to_string()))?;
        let maps = crate::process::maps::parse(&maps);
        let mapping = libjvm::find_mapping(&maps).ok_or(HotspotError::NoLibjvm)?;
        let libjvm = Libjvm::open(pid, mapping)?;
        let mut vm = Self::from_symbols(ProcessMemory::new(pid), &libjvm.symbols)?;
        vm.libjvm = Some(libjvm);
        Ok(vm)
    }
}

impl<M: Memory> HotspotVm<M> {
    /// Reads the tables through `memory`, from the exported variables at `symbols`.
    pub fn from_symbols(memory: M, symbols: &TableSymbols) -> Result<Self, HotspotError> {
        let structs = VmStructs::read(&memory, symbols)?;
        Self::new(memory, structs)
    }

    /// The layouts from tables already read.
    pub fn new(memory: M, structs: VmStructs) -> Result<Self, HotspotError> {
        let code_cache = CodeCacheLayout::new(&structs)?;
        let methods = MethodLayout::new(&structs)?;
        let scopes = ScopeLayout::new(&structs);
        let lines = LineLayout::new(&structs)
            .inspect_err(|err| log::debug!("no line numbers: {err}"))
            .ok();
        let heaps = code_cache.read_heaps(&memory)?;
        Ok(Self {
            memory,
            libjvm: None,
            structs,
            code_cache,
            methods,
            scopes,
            lines,
            heaps,
            blob_names: BlobNames::default(),
            method_names: HashMap::new(),
            lines_seen: HashMap::new(),
        })
    }

    /// The JVM's memory, for readers of other structures the tables describe.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    pub fn heaps(&self) -> &[CodeHeap] {
        &self.heaps
    }

    /// Reads the code heaps again (they grow as the JVM commits more code memory).
    pub fn refresh_heaps(&mut self) -> Result<(), HotspotError> {
        self.heaps = self.code_cache.read_heaps(&self.memory)?;
        Ok(())
    }

    /// The blob holding `pc`. A pc in no known heap makes one re-read of the heaps.
    pub fn find_blob(&mut self, pc: TargetAddr) -> Result<Option<CodeBlob>, HotspotError> {
        if !self.heaps.iter().any(|heap| heap.code.contains(&pc.0)) {
            self.refresh_heaps()?;
        }
        self.code_cache
            .find_blob(&self.memory, &self.heaps, &mut self.blob_names, pc)
    }

    /// The name of the method at `method`, cached by the method's identity.
    pub fn method_name(&mut self, method: TargetAddr) -> Result<Arc<MethodName>, HotspotError> {
        // The identity needs one read; the name several. A stale entry (same Method*, other
        // ConstMethod*) misses and is replaced.
        let const_method = self.methods.const_method(&self.memory, method)?;
        let key = MethodKey {
            method,
            const_method,
        };
        if let Some(name) = self.method_names.get(&key) {
            return Ok(name.clone());
        }
        let name = Arc::new(self.methods.name(&self.memory, method)?);
        if self.method_names.len() >= MAX_CACHED_METHODS {
            self.method_names.clear();
        }
        self.method_names.insert(name.key, name.clone());
        Ok(name)
    }

    /// The Java frames at `pc` in the nmethod `blob`, outermost first: the nmethod's own
    /// method, then each method inlined into the one before, each with its line where the
    /// class has line numbers. Without inlining records (another JDK, or a record that does
    /// not read), the nmethod's method alone.
    pub fn java_frames(
        &mut self,
        blob: &CodeBlob,
        pc: TargetAddr,
    ) -> Result<Vec<JavaFrame>, HotspotError> {
        let Some(nmethod) = &blob.nmethod else {
            return Ok(Vec::new());
        };
        let scopes = match &self.scopes {
            Some(layout) => layout
                .scopes(&self.memory, blob, pc)
                .inspect_err(|err| log::debug!("scopes at {pc}: {err}"))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        // The outermost scope is the nmethod's own method; if the record says otherwise it is
        // not believed.
        if scopes
            .last()
            .is_none_or(|outer| outer.method != nmethod.method)
        {
            let name = self.method_name(nmethod.method)?;
            return Ok(vec![JavaFrame {
                name,
                bci: None,
                line: None,
                inlined: false,
            }]);
        }
        let mut frames = Vec::with_capacity(scopes.len());
        for (depth, scope) in scopes.iter().rev().enumerate() {
            let name = self.method_name(scope.method)?;
            let line = match &self.scopes {
                Some(layout) => layout
                    .line(&self.memory, scope.method, scope.bci)
                    .unwrap_or(None),
                None => None,
            };
            frames.push(JavaFrame {
                name,
                bci: Some(scope.bci),
                line,
                inlined: depth > 0,
            });
        }
        Ok(frames)
    }

    /// The frame of an interpreted method: its name and the line of bytecode index `bci`
    /// (read from the frame by the kernel walk), where the class has line numbers.
    pub fn interpreted_frame(
        &mut self,
        method: TargetAddr,
        bci: Option<u16>,
    ) -> Result<JavaFrame, HotspotError> {
        let name = self.method_name(method)?;
        let bci = bci.map(i32::from);
        let line = match (&self.lines, bci) {
            (Some(layout), Some(bci)) => {
                // The name's key says which method is there now; its lines do not change.
                let key = (name.key, bci);
                match self.lines_seen.get(&key) {
                    Some(line) => *line,
                    None => {
                        let line = layout.line(&self.memory, method, bci).unwrap_or(None);
                        if self.lines_seen.len() >= MAX_CACHED_METHODS {
                            self.lines_seen.clear();
                        }
                        self.lines_seen.insert(key, line);
                        line
                    }
                }
            }
            _ => None,
        };
        Ok(JavaFrame {
            name,
            bci,
            line,
            inlined: false,
        })
    }

    /// Where an interpreted frame keeps its method and bytecode pointer, for the kernel walk.
    /// HotSpot exports the two slots nearest the frame pointer
    /// (`frame::interpreter_frame_last_sp_offset`, in words); on x86-64 the `Method*` is the
    /// next word below (`interpreter_frame_method_offset`) and the bytecode pointer five below
    /// that, after the mirror, the MDP, the constant-pool cache and the locals
    /// (`frame_x86.hpp`, the same from JDK 9 to 25). `None` where HotSpot does not describe
    /// itself enough.
    pub fn interpreter_layout(&self) -> Option<JvmFrameLayout> {
        let last_sp = *self
            .structs
            .int_constants
            .get("frame::interpreter_frame_last_sp_offset")?;
        let const_method_at = self.structs.offset("Method", "_constMethod").ok()?;
        let bytecodes_at = self.structs.size_of("ConstMethod").ok()?;
        // The one value HotSpot 9 to 25 has here; anything else is another frame layout.
        if last_sp != -2 {
            return None;
        }
        Some(JvmFrameLayout {
            method_at: (last_sp - 1) * 8,
            bcp_at: (last_sp - 6) * 8,
            const_method_at: u32::try_from(const_method_at).ok()?,
            bytecodes_at: u32::try_from(bytecodes_at).ok()?,
            valid: 1,
            _pad: 0,
        })
    }

    /// The value of a boolean `-XX:` flag in the JVM (`None`: no such flag, or no flag table).
    pub fn bool_flag(&self, name: &str) -> Result<Option<bool>, HotspotError> {
        match flags::FlagLayout::new(&self.structs) {
            Ok(layout) => layout.bool_flag(&self.memory, name),
            Err(_) => Ok(None),
        }
    }

    /// The blob holding `pc` and, for an nmethod, its method's name.
    pub fn resolve(&mut self, pc: TargetAddr) -> Result<Option<Resolved>, HotspotError> {
        let Some(blob) = self.find_blob(pc)? else {
            return Ok(None);
        };
        let method = blob
            .nmethod
            .as_ref()
            .map(|nmethod| self.method_name(nmethod.method).map_err(Arc::new));
        Ok(Some(Resolved { blob, method }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codecache::{BlobKind, tests as cc};
    use names::tests as nm;
    use vmstructs::tests::FakeJvm;

    #[test]
    fn resolves_a_pc_to_a_named_method_and_caches_by_identity() {
        let mut jvm = FakeJvm::new();
        cc::declare(&mut jvm);
        nm::declare(&mut jvm);
        let (mut memory, symbols) = jvm.build();
        cc::heap_images(&mut memory);
        nm::method_images(&mut memory);
        let (_, code) = cc::place_blob(&mut memory, 3, 8, cc::NAMES, nm::METHOD, 7);
        let mut vm = HotspotVm::from_symbols(memory, &symbols).unwrap();
        let resolved = vm.resolve(TargetAddr(code.start.0 + 1)).unwrap().unwrap();
        assert_eq!(resolved.blob.kind, BlobKind::Nmethod);
        let name = resolved.method.unwrap().unwrap();
        assert_eq!(name.qualified(), "com.example.Server.run");
        let again = vm.method_name(TargetAddr(nm::METHOD)).unwrap();
        assert!(Arc::ptr_eq(&name, &again));
        assert!(vm.resolve(TargetAddr(0x1234)).unwrap().is_none());
    }
}
