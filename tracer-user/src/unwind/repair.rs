//! Answers the kernel walk's misses, and moves the allocations they concern to their whole
//! stacks.
//!
//! A miss carries the registers and a copy of the stack at an allocation's return. The copy is
//! walked here with rules from the modules' CFI; every rule used goes into the kernel, so the
//! next allocation from that site is walked whole there. The whole stack is stored in the
//! kernel's stack map under the key the kernel would give it, and the allocation (known by its
//! address) is remembered, so that the report counts its bytes under the whole stack rather
//! than the partial one: totals are conserved, nothing is dropped.

use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    sync::Mutex,
};

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tracer_common::{
    FrameIdentity, MAX_STACK_DEPTH, Regs, RuntimeLayout, StackFrames, Truncation, UnwindMiss,
    UnwindRule, identity_word,
};

use super::{
    CfiRules, StackCopy,
    ledger::{Repair, RepairLedger},
    stack_key, unwind_copy,
};
use crate::{
    code_refresh::TargetCode,
    errors::TracerError,
    identities::{FrameKinds as _, publish_layout},
    jit::hotspot::{Memory as _, ProcessMemory, TargetAddr},
    kernel::maps::KernelMaps,
    process::{TargetProcess, address_space::AddressSpace},
};

pub struct MissHandler {
    ring: AsyncFd<RingBuf<MapData>>,
    rules: CfiRules,
    repairs: RepairLedger,
    /// Return addresses whose rule the kernel already has: a miss's walk reuses many.
    in_kernel: HashSet<u64>,
    /// Partial stacks already read from the kernel's stack map, by key: a burst from one call
    /// site sends many misses with the same partial stack, and a map read is a system call.
    /// A key's frames never change (the key is their hash) and the map never drops a stack.
    partials: HashMap<u64, Vec<u64>>,
    /// Whole stacks already stored in the kernel's stack map, by key, for the same reason.
    stored: HashSet<u64>,
    /// Return addresses in no mapping even after the mappings were read again (garbage in a
    /// stack, code unmapped since): they do not make every later miss reread the mappings,
    /// which takes milliseconds while requests pile up.
    unmapped: HashSet<u64>,
    /// When frame-size rules of compiled Java code were last checked against the code cache.
    jit_checked: Option<std::time::Instant>,
    /// The rule generation last written to the kernel (`RULE_GENERATION`).
    rule_generation: u64,
    /// The runtimes' frame layout as last written to the kernel.
    layout_written: RuntimeLayout,
    /// A wait before each answer, injected by tests (`kernel::faults`).
    answer_delay: Option<std::time::Duration>,
}

/// The longest one call of [`MissHandler::drain`] answers for while tracing: a storm of
/// misses must not keep the session from its samples, signals and pushes. What is left waits
/// for the next call, which the session makes as soon as its other work allows.
pub const DRAIN_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// How often frame-size rules are checked against the code cache.
const JIT_RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl MissHandler {
    /// Answers the requests that arrive on the kernel's unwind ring buffer.
    pub fn new(ring: RingBuf<MapData>) -> Result<Self, TracerError> {
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|err| TracerError::Io(err.into()))?;
        Ok(Self {
            ring,
            rules: CfiRules::default(),
            repairs: RepairLedger::default(),
            in_kernel: HashSet::new(),
            partials: HashMap::new(),
            stored: HashSet::new(),
            unmapped: HashSet::new(),
            jit_checked: None,
            rule_generation: 0,
            layout_written: RuntimeLayout::default(),
            answer_delay: crate::kernel::faults::Faults::injected().unwind_answer_delay(),
        })
    }

    /// Gives the kernel the runtimes' frame layout as soon as it is known (at attach, and at
    /// each refresh), so that the first requests already carry the frames' functions.
    pub fn publish_layout(&mut self, maps: &mut KernelMaps, code: &Mutex<TargetCode>) {
        let Some(code) =
            crate::code_refresh::lock_within(code, std::time::Duration::from_millis(100))
        else {
            return;
        };
        publish_layout(&mut self.layout_written, maps, &code.frame_kinds());
    }

    /// See [`CfiRules::prepare`].
    pub fn prepare(&mut self, space: &AddressSpace) {
        self.rules.prepare(space);
    }

    pub fn ring(&mut self) -> &mut AsyncFd<RingBuf<MapData>> {
        &mut self.ring
    }

    /// Removes from the kernel the frame-size rules of compiled Java code that HotSpot freed
    /// or replaced since they were made (checked at most every [`JIT_RECHECK_EVERY`]): code put
    /// at the same address has another frame size, and a stale rule would read a wrong caller
    /// off the stack. The next allocation through such an address asks for its rule again.
    pub fn forget_stale_jit_rules(&mut self, maps: &mut KernelMaps, code: &Mutex<TargetCode>) {
        if !self.rules.has_jit_rules()
            || self
                .jit_checked
                .is_some_and(|at| at.elapsed() < JIT_RECHECK_EVERY)
        {
            return;
        }
        self.jit_checked = Some(std::time::Instant::now());
        let stale = {
            let code = crate::code_refresh::lock(code);
            self.rules
                .forget_stale_jit_rules(|pc| code.hotspot.blob_key(pc))
        };
        for pc in &stale {
            let _ = maps.rules.remove(pc);
            self.in_kernel.remove(pc);
        }
        if !stale.is_empty() {
            // After the removals: a walk that began before them may still cache an old rule,
            // as it could use one without the cache.
            self.rule_generation += 1;
            if let Err(err) = maps.rule_generation.set(0, self.rule_generation, 0) {
                log::warn!("the kernel's rule caches were not told of removed rules: {err}");
            }
        }
        log::debug!("forgot {} stale frame-size rules", stale.len());
    }

    /// Answers the misses waiting in the ring buffer, each as soon as it is read: its rules go
    /// into the kernel at once, so that in a burst of allocations from a new call site the
    /// kernel stops missing after the first answer instead of refilling the buffer while a
    /// backlog is read. Stops after `budget` (every miss when `None`); returns whether it
    /// stopped with misses possibly left.
    pub fn drain(
        &mut self,
        maps: &mut KernelMaps,
        modules: &Mutex<TargetCode>,
        target: &TargetProcess,
        budget: Option<std::time::Duration>,
    ) -> bool {
        let started = std::time::Instant::now();
        let mut count = 0usize;
        let mut left = false;
        loop {
            if budget.is_some_and(|budget| started.elapsed() >= budget) {
                left = true;
                break;
            }
            let miss = {
                let Some(item) = self.ring.get_mut().next() else {
                    break;
                };
                let Some(miss) = read_miss(&item) else {
                    continue;
                };
                miss
            };
            count += 1;
            if let Err(err) = self.answer(&miss, maps, modules, target) {
                log::debug!("unwind miss at {:#x}: {err}", miss.ip);
            }
        }
        if count > 0 {
            log::debug!("answered {count} unwind misses in {:?}", started.elapsed());
        }
        left
    }

    fn answer(
        &mut self,
        miss: &UnwindMiss,
        maps: &mut KernelMaps,
        modules: &Mutex<TargetCode>,
        target: &TargetProcess,
    ) -> Result<(), TracerError> {
        if let Some(delay) = self.answer_delay {
            std::thread::sleep(delay);
        }
        let copied = (miss.copied as usize).min(miss.stack.len());
        log::trace!(
            "miss at {:#x} (in kernel: {}), {copied} bytes",
            miss.ip,
            self.in_kernel.contains(&miss.ip)
        );
        let copy = StackCopy {
            sp: miss.sp,
            bytes: &miss.stack[..copied],
        };
        let mut code = crate::code_refresh::lock(modules);
        let mut used: Vec<(u64, UnwindRule)> = Vec::new();
        let memory = ProcessMemory::new(target.pid);
        let walk = |code: &TargetCode, used: &mut Vec<(u64, UnwindRule)>, rules: &mut CfiRules| {
            let mut unknown = None;
            let regs = Regs {
                pc: miss.ip,
                sp: miss.sp,
                bp: miss.bp,
            };
            let kinds = code.frame_kinds();
            // The layout the kernel is given below, so that this walk reads the frames' slots
            // as the kernel walk will. A runtime's metadata is read at its first frame, while
            // this walk asks for rules, so the layout is taken when a frame needs it.
            let mut layout = RuntimeLayout::default();
            let walked = unwind_copy(
                regs,
                &copy,
                |pc| {
                    let rule = rules
                        .rule_for(&code.space, &code.hotspot, &kinds, pc)
                        .unwrap_or_else(|| {
                            unknown = Some(pc);
                            CfiRules::stop()
                        });
                    used.push((pc, rule));
                    Some(rule)
                },
                // A frame's slots are in the copy; what they point to is read from the target.
                |kind, bp| {
                    // A burst of allocations from a new site is all answered here, so this
                    // walk names JavaScript frames too, with what the kernel read of them at
                    // the allocation: V8 may have moved the functions since.
                    // A request sent before the layout reached the kernel has none of them:
                    // then the function is read now, and its check must still hold.
                    if kind == FrameIdentity::V8Js && miss.identified_count > 0 {
                        return js_frame_at_miss(miss, bp);
                    }
                    kinds.fill_layout(&mut layout);
                    identity_word(kind, &layout, bp, |at| {
                        copy.read(at)
                            .or_else(|| memory.read_u64(TargetAddr(at)).ok())
                    })
                },
            );
            (walked, unknown)
        };
        let (mut walked, unknown) = walk(&code, &mut used, &mut self.rules);
        if let Some(pc) = unknown
            && !self.unmapped.contains(&pc)
        {
            // Code mapped since the last refresh (a library loaded late, a launched command
            // that just started): read the mappings and walk again.
            code.space.refresh(target);
            used.clear();
            let (again, still_unknown) = walk(&code, &mut used, &mut self.rules);
            walked = again;
            if let Some(pc) = still_unknown {
                self.unmapped.insert(pc);
            }
        }
        if used
            .iter()
            .any(|(_, rule)| rule.identity != FrameIdentity::None as u32)
        {
            publish_layout(&mut self.layout_written, maps, &code.frame_kinds());
        }
        drop(code);

        for (pc, rule) in used {
            if !self.in_kernel.contains(&pc) && maps.rules.insert(pc, rule, 0).is_ok() {
                self.in_kernel.insert(pc);
            }
        }

        // The walk stopped at `miss.ip`, the last frame of the partial stack; the frames
        // below it are the partial stack's.
        let Some(partial) = self.partial(maps, miss.partial_key) else {
            log::debug!(
                "miss at {:#x}: partial stack {:#x} unreadable",
                miss.ip,
                miss.partial_key
            );
            return Ok(());
        };
        let Some((&last, below)) = partial.split_last() else {
            return Ok(());
        };
        if last != miss.ip {
            log::debug!(
                "miss at {:#x}: the partial stack ends at {last:#x}",
                miss.ip
            );
            return Ok(());
        }
        let (ips, truncation) = join(below, &walked.ips, walked.truncation);
        let whole = stack_key(&ips);
        if !self.stored.contains(&whole) {
            let mut frames = StackFrames {
                len: ips.len() as u32,
                truncated: truncation.into(),
                ips: [0; MAX_STACK_DEPTH],
            };
            frames.ips[..ips.len()].copy_from_slice(&ips);
            maps.stacks
                .insert(whole, frames, 0)
                .map_err(|source| TracerError::Map {
                    map: "STACKS",
                    source: Box::new(source),
                })?;
            self.stored.insert(whole);
        }
        if miss.tag != 0 && whole != miss.partial_key {
            self.repairs.record(
                miss.tag,
                Repair {
                    partial: miss.partial_key,
                    whole,
                },
            );
        }
        Ok(())
    }

    /// The frames of the partial stack stored under `key`, from the cache or the kernel.
    fn partial(&mut self, maps: &KernelMaps, key: u64) -> Option<&[u64]> {
        let frames = match self.partials.entry(key) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(slot) => {
                let frames = maps.stacks.get(&key, 0).ok()?;
                let len = (frames.len as usize).min(MAX_STACK_DEPTH);
                slot.insert(frames.ips[..len].to_vec())
            }
        };
        Some(frames)
    }

    /// The repairs made so far, for the report.
    pub fn ledger(&self) -> &RepairLedger {
        &self.repairs
    }
}

/// A request as the kernel sent it: the fields before the stack copy, then the bytes it
/// copied. `None` for a record too short to hold them.
fn read_miss(record: &[u8]) -> Option<Box<UnwindMiss>> {
    if record.len() < UnwindMiss::STACK_AT || record.len() > size_of::<UnwindMiss>() {
        return None;
    }
    // SAFETY: UnwindMiss is plain old data, for which all zeroes is a value.
    let mut miss: Box<UnwindMiss> = unsafe { Box::new_zeroed().assume_init() };
    // SAFETY: the record fits in the value (checked above), and any bytes are a value.
    unsafe {
        std::ptr::copy_nonoverlapping(
            record.as_ptr(),
            std::ptr::from_mut(miss.as_mut()).cast::<u8>(),
            record.len(),
        );
    }
    // The copy's bytes are those that came; `copied` cannot claim more.
    miss.copied = miss
        .copied
        .min((record.len() - UnwindMiss::STACK_AT) as u64);
    Some(miss)
}

/// The identity word the kernel read, at the allocation, for the JavaScript frame whose frame
/// pointer is `bp`; `None` where it read none (not a JavaScript frame, or beyond its reach).
fn js_frame_at_miss(miss: &UnwindMiss, bp: u64) -> Option<u64> {
    let count = (miss.identified_count as usize).min(miss.identified.len());
    miss.identified[..count]
        .iter()
        .find(|[fp, _]| *fp == bp)
        .map(|[_, word]| *word)
        .filter(|word| *word != 0)
}

/// The frames below the miss followed by those walked from it, at most [`MAX_STACK_DEPTH`]
/// (cut and marked truncated beyond).
fn join(below: &[u64], walked: &[u64], truncation: Truncation) -> (Vec<u64>, Truncation) {
    let mut ips: Vec<u64> = below.iter().chain(walked).copied().collect();
    if ips.len() > MAX_STACK_DEPTH {
        ips.truncate(MAX_STACK_DEPTH);
        return (ips, Truncation::DepthLimit);
    }
    (ips, truncation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_stacks_join_the_partial_frames_and_the_walk() {
        assert_eq!(
            join(&[1, 2], &[3, 4], Truncation::Complete),
            (vec![1, 2, 3, 4], Truncation::Complete)
        );
        let long = vec![7; MAX_STACK_DEPTH];
        let (ips, truncation) = join(&[1], &long, Truncation::Complete);
        assert_eq!(
            (ips.len(), ips[0], truncation),
            (MAX_STACK_DEPTH, 1, Truncation::DepthLimit)
        );
    }
}
