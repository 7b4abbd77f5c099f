//! What a region of the target's memory is, named by its owner.

use serde::{Deserialize, Serialize};

use crate::model::Frame;

/// The kinds the RSS is split into. `Other` is what nothing explains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegionKind {
    /// glibc's brk heap and arenas.
    Malloc,
    /// Anonymous memory that a traced mmap or mprotect made, by the stack that made it.
    TrackedAnonymous,
    JavaHeap,
    JavaMetaspace,
    CodeCache,
    V8Heap,
    GoHeap,
    ThreadStacks,
    FileBacked,
    Other,
}

impl RegionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malloc => "malloc",
            Self::TrackedAnonymous => "tracked-anonymous",
            Self::JavaHeap => "java-heap",
            Self::JavaMetaspace => "java-metaspace",
            Self::CodeCache => "code-cache",
            Self::V8Heap => "v8-heap",
            Self::GoHeap => "go-heap",
            Self::ThreadStacks => "thread-stacks",
            Self::FileBacked => "file-backed",
            Self::Other => "other",
        }
    }

    /// Whether the kind says whose memory it is (`Other` does not).
    pub fn is_named(self) -> bool {
        self != Self::Other
    }
}

/// The kind of memory a stack mapped or committed, from its frames' names (root first). A
/// stack through no runtime's heap code is tracked anonymous memory of the program's own.
pub fn kind_of_stack(frames: &[Frame]) -> RegionKind {
    let has = |pred: &dyn Fn(&str) -> bool| frames.iter().any(|f| pred(&f.name));
    if has(&|n| {
        // glibc's symbol table names it `__pthread_create_2_1`, its dynamic symbols
        // `pthread_create@@GLIBC_2.34`.
        n.trim_start_matches('_').starts_with("pthread_create") || n == "allocate_stack"
    }) {
        RegionKind::ThreadStacks
    } else if has(&|n| {
        // A partial stack may end at V8's own page-permission call.
        n.starts_with("v8::internal::")
            || n.starts_with("v8::base::OS::")
            || n.starts_with("v8::base::PageAllocator::")
    }) {
        RegionKind::V8Heap
    } else if has(&|n| n == "runtime.sysMap" || n.starts_with("runtime.(*mheap).")) {
        RegionKind::GoHeap
    } else if has(&|n| n.contains("Metaspace") || n.starts_with("metaspace::")) {
        RegionKind::JavaMetaspace
    } else if has(&|n| n.starts_with("CodeCache::") || n.starts_with("CodeHeap::")) {
        RegionKind::CodeCache
    } else if has(&|n| {
        n.starts_with("G1")
            || n.starts_with("CollectedHeap::")
            || n.starts_with("ParallelScavengeHeap::")
            || n.starts_with("PSVirtualSpace::")
            || n.starts_with("SerialHeap::")
            || n.starts_with("GenCollectedHeap::")
            || n.starts_with("CardTable")
            || n.starts_with("Universe::initialize_heap")
    }) {
        RegionKind::JavaHeap
    } else {
        RegionKind::TrackedAnonymous
    }
}

/// A short label for a tracked stack: the deepest frame that is not the mapping call or the
/// allocator itself, so `commit_heap` rather than `mprotect`.
pub fn stack_label(frames: &[Frame]) -> String {
    const PLUMBING: &[&str] = &["mmap", "mmap64", "mprotect", "mremap", "syscall"];
    frames
        .iter()
        .rev()
        .map(|f| f.name.as_str())
        .find(|name| {
            // glibc's aliases: `__GI___mmap64`, `__mprotect`.
            let bare = name.strip_prefix("__GI_").unwrap_or(name);
            let bare = bare.trim_start_matches('_');
            !PLUMBING.contains(&bare) && !bare.starts_with("runtime.sysMmap")
        })
        .unwrap_or("[unknown stack]")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(names: &[&str]) -> Vec<Frame> {
        names.iter().map(|n| Frame::named(*n)).collect()
    }

    #[test]
    fn stacks_name_their_owner() {
        let v8 = frames(&[
            "main",
            "v8::internal::Heap::AllocateRaw",
            "v8::internal::MemoryAllocator::AllocatePage",
            "v8::base::OS::SetPermissions",
            "mprotect",
        ]);
        assert_eq!(kind_of_stack(&v8), RegionKind::V8Heap);
        let thread = frames(&["main", "start_threads", "pthread_create@@GLIBC_2.34"]);
        assert_eq!(kind_of_stack(&thread), RegionKind::ThreadStacks);
        let symtab = frames(&["main", "start_threads", "__pthread_create_2_1"]);
        assert_eq!(kind_of_stack(&symtab), RegionKind::ThreadStacks);
        let go = frames(&[
            "main.main",
            "runtime.mallocgc",
            "runtime.sysMap",
            "runtime.sysMmap",
        ]);
        assert_eq!(kind_of_stack(&go), RegionKind::GoHeap);
        let meta = frames(&["ClassLoader", "metaspace::VirtualSpaceNode::commit_range"]);
        assert_eq!(kind_of_stack(&meta), RegionKind::JavaMetaspace);
        let own = frames(&["main", "commit_heap", "mprotect"]);
        assert_eq!(kind_of_stack(&own), RegionKind::TrackedAnonymous);
        assert_eq!(stack_label(&own), "commit_heap");
        assert_eq!(stack_label(&frames(&["__GI___mmap64"])), "[unknown stack]");
    }
}
