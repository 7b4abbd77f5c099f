//! What one probe costs on this machine, measured at attach rather than guessed: a trap that
//! the kernel emulates costs about 1 µs, but one that it single-steps out of line costs a
//! second trap, 4 µs on one host and 25 µs on another (a VM). leakhound's own programs are
//! attached for a moment to three tiny functions of leakhound itself, scoped to its own
//! process, where they return at once (the process is not the target): the cost of the
//! trap, the kernel's dispatch and an empty program. About 20 ms in all.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use tracer_common::entry_args::{IN_PLACE, MOVABLE};

use super::Probes;
use crate::{
    errors::TracerError,
    process::elf::{Hook, HookPoint},
};

// Three functions whose first instruction is known: `push %rbx` is emulated by the kernel,
// `mov %rdi,%rax` is single-stepped (arch/x86/kernel/uprobes.c: `push_setup_xol_ops`,
// `branch_setup_xol_ops`). One function per hook: two hooks at one address would both fire.
std::arch::global_asm!(
    ".pushsection .text.leakhound_probe_cost,\"ax\",@progbits",
    ".p2align 4",
    ".globl leakhound_cost_entry",
    ".type leakhound_cost_entry,@function",
    "leakhound_cost_entry:",
    "push %rbx",
    "pop %rbx",
    "ret",
    ".size leakhound_cost_entry, .-leakhound_cost_entry",
    ".p2align 4",
    ".globl leakhound_cost_call",
    ".type leakhound_cost_call,@function",
    "leakhound_cost_call:",
    "push %rbx",
    "pop %rbx",
    "ret",
    ".size leakhound_cost_call, .-leakhound_cost_call",
    ".p2align 4",
    ".globl leakhound_cost_stepped",
    ".type leakhound_cost_stepped,@function",
    "leakhound_cost_stepped:",
    "mov %rdi, %rax",
    "ret",
    ".size leakhound_cost_stepped, .-leakhound_cost_stepped",
    ".popsection",
    options(att_syntax)
);

unsafe extern "C" {
    fn leakhound_cost_entry(x: u64) -> u64;
    fn leakhound_cost_call(x: u64) -> u64;
    fn leakhound_cost_stepped(x: u64) -> u64;
}

/// The three functions above, callable: each takes and returns a u64 and touches nothing
/// else (`stepped` returns its argument, the others an unspecified value).
fn run_cost_function(function: unsafe extern "C" fn(u64) -> u64, x: u64) -> u64 {
    // SAFETY: `function` is one of the functions above, which follow the C calling
    // convention, read only their argument and write only %rax (and %rbx, restored).
    unsafe { function(x) }
}

/// Nanoseconds per call that probes add, measured here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeCosts {
    /// An entry probe on an instruction the kernel emulates.
    pub emulated_ns: f64,
    /// An entry probe on an instruction the kernel single-steps.
    pub stepped_ns: f64,
    /// A return probe (with its entry's share of the trap), beyond an emulated entry.
    pub return_ns: f64,
}

impl ProbeCosts {
    /// What a call of a function with `point`'s probes costs.
    pub fn per_call_ns(&self, point: &HookPoint) -> f64 {
        let entry = if point.emulated {
            self.emulated_ns
        } else {
            self.stepped_ns
        };
        match point.hook {
            Hook::Free | Hook::MapDone(_) => entry,
            Hook::Alloc(_) | Hook::Map(_) | Hook::MapCall(_) => entry + self.return_ns,
        }
    }
}

/// `~1.1 µs`.
fn micros(ns: f64) -> String {
    if ns >= 10_000.0 {
        format!("~{:.0} µs", ns / 1000.0)
    } else {
        format!("~{:.1} µs", ns / 1000.0)
    }
}

/// The attach notices for one hooked object (`shown`, as the reports name it): what its
/// `malloc` and `free` cost per call, and which probes the kernel single-steps, with their
/// cost: `probe cost in libjemalloc.so.2: malloc ~2.1 µs, free ~1.0 µs per call (emulated)`.
pub fn cost_notices(shown: &str, points: &[HookPoint], costs: &ProbeCosts) -> Vec<String> {
    let mut notices = Vec::new();
    let hot: Vec<String> = ["malloc", "free"]
        .iter()
        .filter_map(|name| points.iter().find(|point| point.name == *name))
        .map(|point| format!("{} {}", point.name, micros(costs.per_call_ns(point))))
        .collect();
    let stepped: Vec<&str> = points
        .iter()
        .filter(|point| !point.emulated)
        .map(|point| point.name.as_str())
        .collect();
    if !hot.is_empty() {
        let how = if ["malloc", "free"].iter().any(|name| stepped.contains(name)) {
            "(single-stepped where noted below)"
        } else {
            "(emulated)"
        };
        notices.push(format!(
            "probe cost in {shown}: {} per call {how}",
            hot.join(", ")
        ));
    }
    if !stepped.is_empty() {
        notices.push(format!(
            "single-stepped in {shown}, no point the kernel emulates is provably equivalent to the entry: {} ({} per call instead of {})",
            stepped.join(", "),
            micros(costs.stepped_ns),
            micros(costs.emulated_ns),
        ));
    }
    notices
}

/// Nanoseconds that one allocation call and one free cost in probes, at most, over the
/// hooked objects (which of them a call goes to is not known here).
pub fn cost_per_call(objects: &[&[HookPoint]], costs: &ProbeCosts) -> (f64, f64) {
    let mut alloc: f64 = 0.0;
    let mut free: f64 = 0.0;
    for point in objects.iter().flat_map(|points| points.iter()) {
        let ns = costs.per_call_ns(point);
        match point.hook {
            Hook::Alloc(_) if ["malloc", "_Znwm"].contains(&point.name.as_str()) => {
                alloc = alloc.max(ns)
            }
            Hook::Free if ["free", "_ZdlPv"].contains(&point.name.as_str()) => free = free.max(ns),
            _ => {}
        }
    }
    (alloc, free)
}

/// How long each kind of probe is timed.
const BUDGET: Duration = Duration::from_millis(6);

impl Probes {
    /// Times leakhound's programs on an emulated entry, a single-stepped entry, and an
    /// entry with its return probe, each for a few milliseconds, then detaches them.
    pub fn measure_probe_costs(&mut self) -> Result<ProbeCosts, TracerError> {
        let entry = leakhound_cost_entry as *const () as u64;
        let call = leakhound_cost_call as *const () as u64;
        let stepped = leakhound_cost_stepped as *const () as u64;
        let (exe, [entry_at, call_at, stepped_at]) = file_offsets([entry, call, stepped])
            .ok_or_else(|| {
                TracerError::Io(std::io::Error::other(
                    "leakhound's own code is not in its mappings",
                ))
            })?;
        let point = |name: &str, hook, file_offset, emulated| HookPoint {
            name: name.into(),
            hook,
            file_offset,
            skip: 0,
            args: [IN_PLACE; MOVABLE],
            emulated,
        };
        let points = [
            point("cost_entry", Hook::Free, entry_at, true),
            point(
                "cost_call",
                Hook::Alloc(tracer_common::AllocKind::Malloc),
                call_at,
                true,
            ),
            point("cost_stepped", Hook::Free, stepped_at, false),
        ];
        let baseline = time_calls(|x| run_cost_function(leakhound_cost_entry, x));
        let own_pid = std::process::id();
        let timed = self.with_temporary_hooks(Path::new(&exe), &points, own_pid, || {
            [
                time_calls(|x| run_cost_function(leakhound_cost_entry, x)),
                time_calls(|x| run_cost_function(leakhound_cost_call, x)),
                time_calls(|x| run_cost_function(leakhound_cost_stepped, x)),
            ]
        })?;
        let [entry_ns, call_ns, stepped_ns] = timed.map(|ns| (ns - baseline).max(0.0));
        Ok(ProbeCosts {
            emulated_ns: entry_ns,
            stepped_ns,
            return_ns: (call_ns - entry_ns).max(0.0),
        })
    }
}

/// Mean nanoseconds per call of `f`, over [`BUDGET`].
fn time_calls(f: impl Fn(u64) -> u64) -> f64 {
    let started = Instant::now();
    let mut calls = 0u64;
    let mut sink = 0u64;
    while started.elapsed() < BUDGET {
        for _ in 0..16 {
            sink = sink.wrapping_add(f(std::hint::black_box(calls)));
            calls += 1;
        }
    }
    std::hint::black_box(sink);
    started.elapsed().as_nanos() as f64 / calls as f64
}

/// The file that maps `addresses` in this process and their offsets in it, from
/// /proc/self/maps (leakhound's own, trusted).
fn file_offsets<const N: usize>(addresses: [u64; N]) -> Option<(String, [u64; N])> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut path = None;
    let mut offsets = [0; N];
    for (address, offset) in addresses.iter().zip(&mut offsets) {
        let (file, at) = maps.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            if !(start..end).contains(address) {
                return None;
            }
            let _perms = fields.next()?;
            let file_offset = u64::from_str_radix(fields.next()?, 16).ok()?;
            let file = fields.nth(2)?;
            Some((file.to_owned(), address - start + file_offset))
        })?;
        if path.get_or_insert_with(|| file.clone()) != &file {
            return None;
        }
        *offset = at;
    }
    Some((path?, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cost_functions_start_as_the_measurement_assumes() {
        let code = |f: u64| {
            // SAFETY: the first bytes of a function of this binary, mapped executable.
            unsafe { std::slice::from_raw_parts(f as *const u8, 3) }.to_vec()
        };
        assert_eq!(code(leakhound_cost_entry as *const () as u64)[0], 0x53);
        assert_eq!(code(leakhound_cost_call as *const () as u64)[0], 0x53);
        assert_eq!(
            code(leakhound_cost_stepped as *const () as u64),
            [0x48, 0x89, 0xf8]
        );
        assert_eq!(run_cost_function(leakhound_cost_stepped, 7), 7);
    }

    #[test]
    fn own_code_is_found_in_its_mapping() {
        let (file, [offset]) =
            file_offsets([leakhound_cost_stepped as *const () as u64]).expect("mapped");
        let data = std::fs::read(&file).expect("readable");
        assert_eq!(
            &data[offset as usize..offset as usize + 3],
            [0x48, 0x89, 0xf8]
        );
    }

    #[test]
    fn notices_name_the_cost_and_every_single_stepped_probe() {
        let costs = ProbeCosts {
            emulated_ns: 1100.0,
            stepped_ns: 25_000.0,
            return_ns: 1000.0,
        };
        let point = |name: &str, hook, emulated| HookPoint {
            name: name.into(),
            hook,
            file_offset: 0,
            skip: 0,
            args: [IN_PLACE; MOVABLE],
            emulated,
        };
        let malloc = Hook::Alloc(tracer_common::AllocKind::Malloc);
        let points = [
            point("malloc", malloc, true),
            point("free", Hook::Free, true),
            point(
                "munmap",
                Hook::Map(tracer_common::MapEventKind::Unmap),
                false,
            ),
        ];
        assert_eq!(
            cost_notices("libc.so.6", &points, &costs),
            [
                "probe cost in libc.so.6: malloc ~2.1 µs, free ~1.1 µs per call (emulated)",
                "single-stepped in libc.so.6, no point the kernel emulates is provably equivalent to the entry: munmap (~25 µs per call instead of ~1.1 µs)",
            ]
        );
        assert_eq!(cost_per_call(&[&points], &costs), (2100.0, 1100.0));
        let points = [point("free", Hook::Free, false)];
        assert_eq!(
            cost_notices("x.so", &points, &costs)[0],
            "probe cost in x.so: free ~25 µs per call (single-stepped where noted below)"
        );
    }

    #[test]
    fn a_call_costs_its_probes() {
        let costs = ProbeCosts {
            emulated_ns: 1000.0,
            stepped_ns: 25_000.0,
            return_ns: 900.0,
        };
        let point = |hook, emulated| HookPoint {
            name: "f".into(),
            hook,
            file_offset: 0,
            skip: 0,
            args: [IN_PLACE; MOVABLE],
            emulated,
        };
        assert_eq!(costs.per_call_ns(&point(Hook::Free, true)), 1000.0);
        assert_eq!(costs.per_call_ns(&point(Hook::Free, false)), 25_000.0);
        let malloc = Hook::Alloc(tracer_common::AllocKind::Malloc);
        assert_eq!(costs.per_call_ns(&point(malloc, true)), 1900.0);
        assert_eq!(costs.per_call_ns(&point(malloc, false)), 25_900.0);
    }
}
