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
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
};
use tokio::io::unix::AsyncFd;
use tracer_common::{AllocInfo, MAX_STACK_DEPTH, StackFrames, StackTotals, UnwindMiss, UnwindRule};

use super::{CfiRules, StackCopy, stack_key, unwind_copy};
use crate::{errors::TracerError, process::TargetProcess, symbolize::Modules};

/// The partial and the whole stack of one allocation or mapping, by its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repair {
    pub partial: u64,
    pub whole: u64,
}

pub struct MissHandler {
    ring: AsyncFd<RingBuf<MapData>>,
    rules: CfiRules,
    repairs: HashMap<u64, Repair>,
    /// Return addresses whose rule the kernel already has: a miss's walk reuses many.
    in_kernel: HashSet<u64>,
    /// Return addresses in no mapping even after the mappings were read again (garbage in a
    /// stack, code unmapped since): they do not make every later miss reread the mappings,
    /// which takes milliseconds while requests pile up.
    unmapped: HashSet<u64>,
    /// When frame-size rules of compiled Java code were last checked against the code cache.
    jit_checked: Option<std::time::Instant>,
}

/// How often frame-size rules are checked against the code cache.
const JIT_RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl MissHandler {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, TracerError> {
        let map_error = |source| TracerError::Map {
            map: "UNWIND_MISSES",
            source: Box::new(source),
        };
        let ring = ebpf.take_map("UNWIND_MISSES").ok_or_else(|| {
            map_error(aya::maps::MapError::InvalidName {
                name: "UNWIND_MISSES".into(),
            })
        })?;
        let ring = RingBuf::try_from(ring).map_err(map_error)?;
        // SAFETY: the ring buffer owns its descriptor and keeps it open while registered.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|err| TracerError::Io(err.into()))?;
        Ok(Self {
            ring,
            rules: CfiRules::default(),
            repairs: HashMap::new(),
            in_kernel: HashSet::new(),
            unmapped: HashSet::new(),
            jit_checked: None,
        })
    }

    /// See [`CfiRules::prepare`].
    pub fn prepare(&mut self, modules: &Modules) {
        self.rules.prepare(modules);
    }

    pub fn ring(&mut self) -> &mut AsyncFd<RingBuf<MapData>> {
        &mut self.ring
    }

    /// Removes from the kernel the frame-size rules of compiled Java code that HotSpot freed
    /// or replaced since they were made (checked at most every [`JIT_RECHECK_EVERY`]): code put
    /// at the same address has another frame size, and a stale rule would read a wrong caller
    /// off the stack. The next allocation through such an address asks for its rule again.
    pub fn forget_stale_jit_rules(&mut self, ebpf: &mut Ebpf, modules: &Mutex<Modules>) {
        if !self.rules.has_jit_rules()
            || self
                .jit_checked
                .is_some_and(|at| at.elapsed() < JIT_RECHECK_EVERY)
        {
            return;
        }
        self.jit_checked = Some(std::time::Instant::now());
        let stale = {
            let modules = modules.lock().expect("modules lock");
            self.rules
                .forget_stale_jit_rules(|pc| modules.hotspot.blob_key(pc))
        };
        if stale.is_empty() {
            return;
        }
        let Some(map) = ebpf.map_mut("UNWIND_RULES") else {
            return;
        };
        let Ok(mut rules) = BpfHashMap::<&mut MapData, u64, UnwindRule>::try_from(map) else {
            return;
        };
        for pc in &stale {
            let _ = rules.remove(pc);
            self.in_kernel.remove(pc);
        }
        log::debug!("forgot {} stale frame-size rules", stale.len());
    }

    /// Answers every miss waiting in the ring buffer, each as soon as it is read: its rules go
    /// into the kernel at once, so that in a burst of allocations from a new call site the
    /// kernel stops missing after the first answer instead of refilling the buffer while a
    /// backlog is read.
    pub fn drain(&mut self, ebpf: &mut Ebpf, modules: &Mutex<Modules>, target: &TargetProcess) {
        let started = std::time::Instant::now();
        let mut count = 0usize;
        loop {
            let miss = {
                let Some(item) = self.ring.get_mut().next() else {
                    break;
                };
                if item.len() < size_of::<UnwindMiss>() {
                    continue;
                }
                // SAFETY: the record holds one UnwindMiss, a plain-old-data type; read unaligned.
                Box::new(unsafe { item.as_ptr().cast::<UnwindMiss>().read_unaligned() })
            };
            count += 1;
            if let Err(err) = self.answer(&miss, ebpf, modules, target) {
                log::debug!("unwind miss at {:#x}: {err}", miss.ip);
            }
        }
        if count > 0 {
            log::debug!("answered {count} unwind misses in {:?}", started.elapsed());
        }
    }

    fn answer(
        &mut self,
        miss: &UnwindMiss,
        ebpf: &mut Ebpf,
        modules: &Mutex<Modules>,
        target: &TargetProcess,
    ) -> Result<(), TracerError> {
        let copied = (miss.copied as usize).min(miss.stack.len());
        let copy = StackCopy {
            sp: miss.sp,
            bytes: &miss.stack[..copied],
        };
        let mut modules = modules.lock().expect("modules lock");
        let mut used: Vec<(u64, UnwindRule)> = Vec::new();
        let walk = |modules: &Modules, used: &mut Vec<(u64, UnwindRule)>, rules: &mut CfiRules| {
            let mut unknown = None;
            let walked = unwind_copy((miss.ip, miss.sp, miss.bp), &copy, |pc| {
                let rule = rules.rule_for(modules, pc).unwrap_or_else(|| {
                    unknown = Some(pc);
                    CfiRules::stop()
                });
                used.push((pc, rule));
                Some(rule)
            });
            (walked, unknown)
        };
        let (mut walked, unknown) = walk(&modules, &mut used, &mut self.rules);
        if let Some(pc) = unknown
            && !self.unmapped.contains(&pc)
        {
            // Code mapped since the last refresh (a library loaded late, a launched command
            // that just started): read the mappings and walk again.
            modules.refresh(target);
            used.clear();
            let (again, still_unknown) = walk(&modules, &mut used, &mut self.rules);
            walked = again;
            if let Some(pc) = still_unknown {
                self.unmapped.insert(pc);
            }
        }
        drop(modules);

        let mut rules: BpfHashMap<&mut MapData, u64, UnwindRule> = BpfHashMap::try_from(
            ebpf.map_mut("UNWIND_RULES")
                .ok_or_else(|| missing("UNWIND_RULES"))?,
        )
        .map_err(|source| TracerError::Map {
            map: "UNWIND_RULES",
            source: Box::new(source),
        })?;
        for (pc, rule) in used {
            if !self.in_kernel.contains(&pc) && rules.insert(pc, rule, 0).is_ok() {
                self.in_kernel.insert(pc);
            }
        }

        let mut stacks: BpfHashMap<&mut MapData, u64, StackFrames> =
            BpfHashMap::try_from(ebpf.map_mut("STACKS").ok_or_else(|| missing("STACKS"))?)
                .map_err(|source| TracerError::Map {
                    map: "STACKS",
                    source: Box::new(source),
                })?;
        // The walk stopped at `miss.ip`, the last frame of the partial stack; the frames
        // below it are the partial stack's.
        let Ok(partial) = stacks.get(&miss.partial_key, 0) else {
            log::debug!(
                "miss at {:#x}: partial stack {:#x} unreadable",
                miss.ip,
                miss.partial_key
            );
            return Ok(());
        };
        let below = &partial.ips[..(partial.len as usize).min(MAX_STACK_DEPTH)];
        let Some((&last, below)) = below.split_last() else {
            return Ok(());
        };
        if last != miss.ip {
            log::debug!(
                "miss at {:#x}: the partial stack ends at {last:#x}",
                miss.ip
            );
            return Ok(());
        }
        let (ips, truncated) = join(below, &walked.ips, walked.truncated);
        let whole = stack_key(&ips);
        let mut frames = StackFrames {
            len: ips.len() as u32,
            truncated,
            ips: [0; MAX_STACK_DEPTH],
        };
        frames.ips[..ips.len()].copy_from_slice(&ips);
        stacks
            .insert(whole, frames, 0)
            .map_err(|source| TracerError::Map {
                map: "STACKS",
                source: Box::new(source),
            })?;
        if miss.tag != 0 && whole != miss.partial_key {
            self.repairs.insert(
                miss.tag,
                Repair {
                    partial: miss.partial_key,
                    whole,
                },
            );
        }
        Ok(())
    }

    /// Moves repaired allocations that are still live from their partial stack to their whole
    /// one, in the live list and in the totals read from the kernel.
    pub fn repair_allocations(
        &self,
        totals: &mut HashMap<u64, StackTotals>,
        live: &mut [(u64, AllocInfo)],
    ) -> u64 {
        let mut moved = 0;
        for (addr, info) in live.iter_mut() {
            let Some(repair) = self.repairs.get(addr) else {
                continue;
            };
            // The address may have been freed and reused by an allocation of another stack.
            if info.stack_key != repair.partial {
                continue;
            }
            info.stack_key = repair.whole;
            move_bytes(totals, repair, info.weight_bytes, info.weight_count);
            moved += 1;
        }
        moved
    }

    /// The repairs for mappings, by start address.
    pub fn repairs(&self) -> impl Iterator<Item = (u64, Repair)> + '_ {
        self.repairs.iter().map(|(addr, repair)| (*addr, *repair))
    }
}

/// The frames below the miss followed by those walked from it, at most [`MAX_STACK_DEPTH`]
/// (cut and marked truncated beyond).
fn join(below: &[u64], walked: &[u64], truncated: u32) -> (Vec<u64>, u32) {
    let mut ips: Vec<u64> = below.iter().chain(walked).copied().collect();
    if ips.len() > MAX_STACK_DEPTH {
        ips.truncate(MAX_STACK_DEPTH);
        return (ips, 1);
    }
    (ips, truncated)
}

/// Moves what one allocation stands for (`bytes`, `count`: its size and 1, or its weights
/// under byte sampling).
fn move_bytes(totals: &mut HashMap<u64, StackTotals>, repair: &Repair, bytes: u64, count: u64) {
    if let Some(partial) = totals.get_mut(&repair.partial) {
        partial.live_bytes = partial.live_bytes.wrapping_sub(bytes);
        partial.live_allocations = partial.live_allocations.wrapping_sub(count);
        partial.total_bytes = partial.total_bytes.saturating_sub(bytes);
        partial.total_allocations = partial.total_allocations.saturating_sub(count);
    }
    let whole = totals.entry(repair.whole).or_default();
    whole.live_bytes = whole.live_bytes.wrapping_add(bytes);
    whole.live_allocations = whole.live_allocations.wrapping_add(count);
    whole.total_bytes += bytes;
    whole.total_allocations += count;
}

fn missing(map: &'static str) -> TracerError {
    TracerError::Map {
        map,
        source: Box::new(aya::maps::MapError::InvalidName { name: map.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_stacks_join_the_partial_frames_and_the_walk() {
        assert_eq!(join(&[1, 2], &[3, 4], 0), (vec![1, 2, 3, 4], 0));
        let long = vec![7; MAX_STACK_DEPTH];
        let (ips, truncated) = join(&[1], &long, 0);
        assert_eq!((ips.len(), ips[0], truncated), (MAX_STACK_DEPTH, 1, 1));
    }

    #[test]
    fn repairs_move_live_allocations_and_conserve_totals() {
        let repair = Repair {
            partial: 1,
            whole: 2,
        };
        let mut totals = HashMap::from([(
            1,
            StackTotals {
                live_bytes: 300,
                live_allocations: 3,
                total_bytes: 300,
                total_allocations: 3,
            },
        )]);
        move_bytes(&mut totals, &repair, 100, 1);
        assert_eq!(totals[&1].live_bytes + totals[&2].live_bytes, 300);
        assert_eq!(
            (totals[&1].live_allocations, totals[&2].live_allocations),
            (2, 1)
        );
        assert_eq!(totals[&2].total_bytes, 100);
    }
}
