//! Checks that no probe outlives leakhound: neither a tracefs uprobe event nor one of its BPF
//! programs (shared/TOOLCHAIN.md: a leaked uprobe stays listed in tracefs or in bpftool).

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// leakhound's BPF program names; the kernel keeps 15 characters of a name, all of these fit.
pub const PROGRAMS: &[&str] = &[
    "alloc_enter",
    "malloc_enter",
    "malloc_in_rax",
    "malloc_in_rbx",
    "malloc_in_rcx",
    "malloc_in_rdx",
    "malloc_in_rsi",
    "malloc_in_rbp",
    "malloc_in_r8",
    "malloc_in_r9",
    "malloc_in_r10",
    "malloc_in_r11",
    "malloc_in_r12",
    "malloc_in_r13",
    "malloc_in_r14",
    "malloc_in_r15",
    "alloc_exit",
    "alloc_session",
    "free_enter",
    "free_enter_moved",
    "mmap_enter",
    "munmap_enter",
    "mremap_enter",
    "mprotect_enter",
    "mapping_exit",
    "map_call_enter",
    "map_syscall_done",
    "map_call_exit",
    "exec_notice",
    "thread_exit",
    "oom_notice",
];

const UPROBE_EVENTS: &str = "/sys/kernel/tracing/uprobe_events";

/// What is still loaded; empty when clean.
fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    // Unreadable (no tracefs, not root): nothing to check there.
    if let Ok(events) = std::fs::read_to_string(UPROBE_EVENTS) {
        found.extend(
            events
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{UPROBE_EVENTS}: {l}")),
        );
    }
    if let Some(other) = other_tracer() {
        // Their programs carry the same names, and this bpftool cannot say who holds a
        // program: the check is only meaningful when no other tracer runs.
        eprintln!("note: {other} is running; not checking for leftover BPF programs");
        return found;
    }
    if let Some(names) = bpf_program_names() {
        found.extend(
            names
                .into_iter()
                .filter(|n| PROGRAMS.contains(&n.as_str()))
                .map(|n| format!("BPF program {n}")),
        );
    }
    found
}

/// Another leakhound or bpftrace that is alive now (not one of ours that already exited).
fn other_tracer() -> Option<String> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            if pid == me {
                return None;
            }
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            let state = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // A zombie holds no programs.
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            (matches!(comm, "leakhound" | "bpftrace") && !zombie)
                .then(|| format!("{comm} (pid {pid})"))
        })
}

/// Names from `bpftool -j prog show`, or None (with a note, once) when bpftool is missing.
fn bpf_program_names() -> Option<Vec<String>> {
    static HAVE_BPFTOOL: OnceLock<bool> = OnceLock::new();
    let have = *HAVE_BPFTOOL.get_or_init(|| {
        let found = Command::new("bpftool").arg("version").output().is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("note: bpftool not found (Debian package bpftool); not checking for leftover BPF programs");
        }
        found
    });
    if !have {
        return None;
    }
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "note: `bpftool prog show` failed ({}); not checking BPF programs",
            out.status
        );
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("`bpftool -j prog show` printed invalid JSON: {e}"));
    let progs = json.as_array().map(Vec::as_slice).unwrap_or_default();
    Some(
        progs
            .iter()
            .filter_map(|p| p.get("name")?.as_str().map(str::to_owned))
            .collect(),
    )
}

/// Panics unless the machine is clean. `when` says which run this is about.
///
/// The kernel drops a program when the last fd to it closes, which happens during exit but
/// may finish on a workqueue just after; so leftovers get a short, bounded grace period.
pub fn assert_clean(when: &str) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(5);
    let mut first_seen = None;
    loop {
        let found = leftovers();
        if found.is_empty() {
            if let Some(seen) = first_seen {
                // Not a failure, but worth seeing when runs are slow or a tracer runs beside us.
                eprintln!(
                    "note: probes {when} went away after {:?}: {seen:?}",
                    start.elapsed()
                );
            }
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "probes {when}:\n  {}\n(is another leakhound or bpftrace running? `bpftool prog show` and \
                 {UPROBE_EVENTS} show them)",
                found.join("\n  ")
            );
        }
        first_seen.get_or_insert(found);
        std::thread::sleep(Duration::from_millis(50));
    }
}
