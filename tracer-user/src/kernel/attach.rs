//! Which program goes where, as one table. Every hook (an allocator function at a file
//! offset, or a tracepoint) becomes rows of [`Attachment`]: the program it runs, the site,
//! and the cookie the program reads (`bpf_get_attach_cookie`). The loader walks the rows and
//! places each with the mechanism the kernel offers ([`Mechanism`]), so a new hook is a new
//! row here, and a new way of attaching is a new [`Mechanism`] with its arm in the loader.

use std::path::Path;

use serde::Serialize;

use tracer_common::{
    AllocKind,
    entry_args::{self, MALLOC_MOVED_PROGRAMS},
};

use crate::process::elf::{Hook, HookPoint};

/// Where a uprobe program runs in the function it is placed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// At the probe point (the function's entry, or a later equivalent point).
    Entry,
    /// When the function returns (a uretprobe).
    Return,
    /// Both, one program (a uprobe session, Linux 6.12+): the entry may cancel the return.
    Session,
}

/// Where one row's program is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site<'a> {
    /// A uprobe at a file offset of `library` (a path this process can open, such as one
    /// under `/proc/PID/root`), in the traced process only.
    Uprobe {
        library: &'a Path,
        offset: u64,
        flavor: Flavor,
    },
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
}

/// One row of the table: `program` at `site`, reading `cookie`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment<'a> {
    pub program: &'static str,
    pub site: Site<'a>,
    pub cookie: u64,
    /// What an error names: the hooked function, or the tracepoint.
    pub what: &'a str,
}

/// How the kernel was asked to run a program at its site. A new kind (uprobe sessions, Linux
/// 6.12+: one program at entry and return) is a variant here, a [`Flavor`] for its rows in
/// [`programs`], the program load and link attributes in `kernel-sys`, and its arm in
/// `Probes::attach_table`; grouping ([`uprobe_groups`]) and the detach guarantee are shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// One `BPF_LINK_CREATE` per program and library for all its offsets (Linux 6.6+).
    MultiUprobeLink,
    /// One perf event per uprobe, as aya attaches them (any kernel with uprobes).
    PerfEvent,
    /// A tracepoint's perf event.
    Tracepoint,
}

/// The uprobe programs of the eBPF object, each loaded once per mechanism that needs it: these,
/// and malloc's entries for a moved size ([`MALLOC_MOVED_PROGRAMS`]).
const BASE_UPROBE_PROGRAMS: [&str; 8] = [
    "alloc_enter",
    "malloc_enter",
    "alloc_exit",
    "free_enter",
    "free_enter_moved",
    "map_call_enter",
    "map_call_exit",
    "map_syscall_done",
];

pub const UPROBE_PROGRAMS: [&str; BASE_UPROBE_PROGRAMS.len() + MALLOC_MOVED_PROGRAMS.len()] = {
    let mut all = [""; BASE_UPROBE_PROGRAMS.len() + MALLOC_MOVED_PROGRAMS.len()];
    let mut n = 0;
    while n < BASE_UPROBE_PROGRAMS.len() {
        all[n] = BASE_UPROBE_PROGRAMS[n];
        n += 1;
    }
    let mut m = 0;
    while m < MALLOC_MOVED_PROGRAMS.len() {
        all[n + m] = MALLOC_MOVED_PROGRAMS[m].1;
        m += 1;
    }
    all
};

/// The program after a mapping wrapper's syscall ([`Hook::MapDone`]).
const MAP_SYSCALL_DONE: &str = "map_syscall_done";

/// malloc's entry and return programs where a moved probe finds the size in another
/// register, in the order of [`MALLOC_MOVED_PROGRAMS`].
const MALLOC_MOVED: [[(&str, Flavor); 2]; MALLOC_MOVED_PROGRAMS.len()] = {
    let mut all =
        [[("", Flavor::Entry), ("alloc_exit", Flavor::Return)]; MALLOC_MOVED_PROGRAMS.len()];
    let mut n = 0;
    while n < MALLOC_MOVED_PROGRAMS.len() {
        all[n][0].0 = MALLOC_MOVED_PROGRAMS[n].1;
        n += 1;
    }
    all
};

/// The session program that stands for an allocation hook's entry and return programs
/// where the kernel has uprobe sessions and byte sampling makes them worth it.
pub const ALLOC_SESSION: &str = "alloc_session";

/// An allocation hook's programs, for any function of the family: the cookie says which.
const ALLOC_PROGRAMS: [(&str, Flavor); 2] = [
    ("alloc_enter", Flavor::Entry),
    ("alloc_exit", Flavor::Return),
];

/// The programs a hook runs, in the order they are attached. The cookie they read
/// ([`HookPoint::cookie`]) tells the shared programs which function of the family ran, and
/// where a moved probe finds its arguments. Where the cookie says only what the program
/// knows already (malloc's and free's arguments in their own registers), a program of their
/// own does without reading it: the read is a helper call, about 20 ns a call here. So does a
/// malloc whose size a moved probe finds in another register: one program per register.
fn programs(hook: Hook, cookie: u64) -> &'static [(&'static str, Flavor)] {
    let in_place = cookie >> 32 == 0;
    match hook {
        Hook::Alloc(AllocKind::Malloc) if in_place => &[
            ("malloc_enter", Flavor::Entry),
            ("alloc_exit", Flavor::Return),
        ],
        Hook::Alloc(AllocKind::Malloc) => MALLOC_MOVED_PROGRAMS
            .iter()
            .position(|&(register, _)| register == entry_args::location(cookie, 0))
            .map_or(&ALLOC_PROGRAMS, |n| &MALLOC_MOVED[n]),
        Hook::Alloc(_) => &ALLOC_PROGRAMS,
        Hook::Free if in_place => &[("free_enter", Flavor::Entry)],
        Hook::Free => &[("free_enter_moved", Flavor::Entry)],
        Hook::Map(_) | Hook::MapCall(_) => &[
            ("map_call_enter", Flavor::Entry),
            ("map_call_exit", Flavor::Return),
        ],
        Hook::MapDone(_) => &[(MAP_SYSCALL_DONE, Flavor::Entry)],
    }
}

/// The rows for the allocator functions `points` of `library`; with `sessions`, one
/// session row per allocation hook instead of its entry and return rows.
pub fn uprobe_table<'a>(
    library: &'a Path,
    points: &'a [HookPoint],
    sessions: bool,
) -> Vec<Attachment<'a>> {
    points
        .iter()
        .flat_map(|point| {
            let cookie = point.cookie();
            let programs: &[(&str, Flavor)] = match point.hook {
                Hook::Alloc(_) if sessions => &[(ALLOC_SESSION, Flavor::Session)],
                hook => programs(hook, cookie),
            };
            programs.iter().map(move |&(program, flavor)| Attachment {
                program,
                site: Site::Uprobe {
                    library,
                    offset: point.file_offset,
                    flavor,
                },
                cookie,
                what: &point.name,
            })
        })
        .collect()
}

/// `table` with every session row replaced by the entry and return rows it stands for, for
/// a mechanism without sessions (perf events).
pub fn without_sessions<'a>(table: &[Attachment<'a>]) -> Vec<Attachment<'a>> {
    table
        .iter()
        .flat_map(|row| match row.site {
            Site::Uprobe {
                library,
                offset,
                flavor: Flavor::Session,
            } => programs(alloc_hook_of(row.cookie), row.cookie)
                .iter()
                .map(|&(program, flavor)| Attachment {
                    program,
                    site: Site::Uprobe {
                        library,
                        offset,
                        flavor,
                    },
                    ..*row
                })
                .collect(),
            _ => vec![*row],
        })
        .collect()
}

/// The allocation hook whose cookie is `cookie` (its low half is the function's kind).
fn alloc_hook_of(cookie: u64) -> Hook {
    AllocKind::try_from(cookie as u32).map_or(Hook::Alloc(AllocKind::Calloc), Hook::Alloc)
}

const fn tracepoint(
    program: &'static str,
    category: &'static str,
    event: &'static str,
) -> Attachment<'static> {
    Attachment {
        program,
        site: Site::Tracepoint { category, event },
        cookie: 0,
        what: event,
    }
}

/// The target's exec (see tracer-ebpf's lifecycle module), and its threads' exits, which give
/// back their state's slots (tracer-ebpf's threads module). They need tracefs; the loader
/// attaches all of them or none.
pub const TRACEPOINTS: [Attachment<'static>; 2] = [
    tracepoint("exec_notice", "sched", "sched_process_exec"),
    tracepoint("thread_exit", "sched", "sched_process_exit"),
];

/// The mapping syscalls, for a target that makes them without libc's wrappers (Go's runtime,
/// a static executable), or when asked for (`--syscall-tracepoints`). While any syscall
/// tracepoint is attached, every system call on the machine takes the kernel's traced path,
/// the `uretprobe` call that ends each return probe (Linux 6.11+) included: about 95 ns of
/// each malloc here. Elsewhere libc's wrappers are seen after their syscall
/// ([`Hook::MapDone`]).
pub const SYSCALL_TRACEPOINTS: [Attachment<'static>; 8] = [
    tracepoint("mmap_enter", "syscalls", "sys_enter_mmap"),
    tracepoint("munmap_enter", "syscalls", "sys_enter_munmap"),
    tracepoint("mremap_enter", "syscalls", "sys_enter_mremap"),
    tracepoint("mprotect_enter", "syscalls", "sys_enter_mprotect"),
    tracepoint("mapping_exit", "syscalls", "sys_exit_mmap"),
    tracepoint("mapping_exit", "syscalls", "sys_exit_munmap"),
    tracepoint("mapping_exit", "syscalls", "sys_exit_mremap"),
    tracepoint("mapping_exit", "syscalls", "sys_exit_mprotect"),
];

/// The OOM killer's choice of victim (see tracer-ebpf's lifecycle module). Optional: a kernel
/// without the event still traces, and the report then cannot say that an OOM kill ended it.
pub const OOM_TRACEPOINT: Attachment<'static> = tracepoint("oom_notice", "oom", "mark_victim");

/// The uprobe programs to load: the probe after a wrapper's syscall only where the syscall
/// tracepoints are not attached.
pub fn uprobe_programs(syscall_tracepoints: bool) -> Vec<&'static str> {
    UPROBE_PROGRAMS
        .into_iter()
        .filter(|&name| !(syscall_tracepoints && name == MAP_SYSCALL_DONE))
        .collect()
}

/// The tracepoint programs to load, each once: the mapping syscalls' only with
/// `syscall_tracepoints`.
pub fn tracepoint_programs(syscall_tracepoints: bool) -> Vec<&'static str> {
    let syscalls: &[Attachment<'static>] = if syscall_tracepoints {
        &SYSCALL_TRACEPOINTS
    } else {
        &[]
    };
    let mut names: Vec<&'static str> = syscalls
        .iter()
        .chain(&TRACEPOINTS)
        .map(|row| row.program)
        .collect();
    names.dedup();
    names.push(OOM_TRACEPOINT.program);
    names
}

/// Uprobe rows that one multi-uprobe link can carry: the same program, library and flavor.
#[derive(Debug, PartialEq, Eq)]
pub struct UprobeGroup<'a> {
    pub program: &'static str,
    pub library: &'a Path,
    pub flavor: Flavor,
    pub offsets: Vec<u64>,
    pub cookies: Vec<u64>,
}

impl UprobeGroup<'_> {
    /// Whether `row` is one of this group's.
    pub fn holds(&self, row: &Attachment<'_>) -> bool {
        matches!(row.site, Site::Uprobe { library, flavor, .. }
            if row.program == self.program && library == self.library && flavor == self.flavor)
    }
}

/// The uprobe rows of `table` grouped for multi-uprobe links, in the order each group first
/// appears; tracepoint rows are not in any group.
pub fn uprobe_groups<'a>(table: &[Attachment<'a>]) -> Vec<UprobeGroup<'a>> {
    let mut groups: Vec<UprobeGroup<'a>> = Vec::new();
    for row in table {
        let Site::Uprobe {
            library,
            offset,
            flavor,
        } = row.site
        else {
            continue;
        };
        let position = groups.iter().position(|group| {
            group.program == row.program && group.library == library && group.flavor == flavor
        });
        let group = match position {
            Some(index) => &mut groups[index],
            None => {
                groups.push(UprobeGroup {
                    program: row.program,
                    library,
                    flavor,
                    offsets: Vec::new(),
                    cookies: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        group.offsets.push(offset);
        group.cookies.push(row.cookie);
    }
    groups
}

/// One placed probe, for the attach statistics (`--stats-json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Placed {
    pub program: &'static str,
    /// The hooked function, or the tracepoint's event.
    pub what: String,
    /// For a uprobe: the library as opened, and the file offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flavor: Option<Flavor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracepoint: Option<String>,
    pub cookie: u64,
    pub mechanism: Mechanism,
}

impl Placed {
    pub fn new(row: &Attachment<'_>, mechanism: Mechanism) -> Self {
        let (library, offset, flavor, tracepoint) = match row.site {
            Site::Uprobe {
                library,
                offset,
                flavor,
            } => (
                // The descriptor leakhound opened names the file as this process sees it.
                Some(
                    std::fs::read_link(library)
                        .unwrap_or_else(|_| library.to_owned())
                        .display()
                        .to_string(),
                ),
                Some(offset),
                Some(flavor),
                None,
            ),
            Site::Tracepoint { category, event } => {
                (None, None, None, Some(format!("{category}/{event}")))
            }
        };
        Self {
            program: row.program,
            what: row.what.to_owned(),
            library,
            offset,
            flavor,
            tracepoint,
            cookie: row.cookie,
            mechanism,
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::MapEventKind;

    use super::*;

    fn point(name: &str, hook: Hook, file_offset: u64) -> HookPoint {
        HookPoint {
            name: name.into(),
            hook,
            file_offset,
            skip: 0,
            args: [tracer_common::entry_args::IN_PLACE; tracer_common::entry_args::MOVABLE],
            emulated: true,
        }
    }

    /// With sessions, an allocation hook is one session row; without them (perf events) that
    /// row stands for the entry and return rows it replaced, cookie and site kept.
    #[test]
    fn a_session_row_stands_for_an_allocation_hooks_entry_and_return() {
        let library = Path::new("/lib/libc.so.6");
        let points = [
            point("malloc", Hook::Alloc(AllocKind::Malloc), 0x100),
            point("free", Hook::Free, 0x204),
        ];
        let with = uprobe_table(library, &points, true);
        let programs: Vec<(&str, Flavor)> = with
            .iter()
            .map(|row| match row.site {
                Site::Uprobe { flavor, .. } => (row.program, flavor),
                Site::Tracepoint { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(
            programs,
            [
                (ALLOC_SESSION, Flavor::Session),
                ("free_enter", Flavor::Entry)
            ]
        );
        assert_eq!(
            without_sessions(&with),
            uprobe_table(library, &points, false)
        );
    }

    #[test]
    fn each_hook_runs_its_programs_with_its_kind_as_cookie() {
        let points = [
            point("malloc", Hook::Alloc(AllocKind::Malloc), 0x100),
            point("free", Hook::Free, 0x204),
            point("calloc", Hook::Alloc(AllocKind::Calloc), 0x300),
            point("mmap", Hook::Map(MapEventKind::Map), 0x400),
        ];
        let library = Path::new("/lib/libc.so.6");
        let rows: Vec<(&str, u64, Flavor, u64)> = uprobe_table(library, &points, false)
            .iter()
            .map(|row| match row.site {
                Site::Uprobe { offset, flavor, .. } => (row.program, offset, flavor, row.cookie),
                Site::Tracepoint { .. } => panic!("a tracepoint among uprobes"),
            })
            .collect();
        let malloc = AllocKind::Malloc as u64;
        let calloc = AllocKind::Calloc as u64;
        let map = MapEventKind::Map as u64;
        assert_eq!(
            rows,
            [
                ("malloc_enter", 0x100, Flavor::Entry, malloc),
                ("alloc_exit", 0x100, Flavor::Return, malloc),
                ("free_enter", 0x204, Flavor::Entry, 0),
                ("alloc_enter", 0x300, Flavor::Entry, calloc),
                ("alloc_exit", 0x300, Flavor::Return, calloc),
                ("map_call_enter", 0x400, Flavor::Entry, map),
                ("map_call_exit", 0x400, Flavor::Return, map),
            ]
        );
    }

    #[test]
    fn every_program_of_the_table_is_loaded() {
        let hooks = [
            Hook::Alloc(AllocKind::Malloc),
            Hook::Free,
            Hook::Map(MapEventKind::Map),
            Hook::Map(MapEventKind::Protect),
            Hook::MapDone(MapEventKind::Unmap),
            Hook::MapCall(MapEventKind::Remap),
        ];
        for syscall_tracepoints in [false, true] {
            let loaded = uprobe_programs(syscall_tracepoints);
            for hook in hooks {
                if !hook.probed(false, syscall_tracepoints) {
                    continue;
                }
                for (program, _) in [0, 1 << 32]
                    .into_iter()
                    .flat_map(|cookie| programs(hook, cookie))
                {
                    assert!(loaded.contains(program), "{program} is not loaded");
                }
            }
        }
        assert!(!uprobe_programs(true).contains(&MAP_SYSCALL_DONE));
        assert_eq!(
            tracepoint_programs(true),
            [
                "mmap_enter",
                "munmap_enter",
                "mremap_enter",
                "mprotect_enter",
                "mapping_exit",
                "exec_notice",
                "thread_exit",
                "oom_notice"
            ]
        );
        assert_eq!(
            tracepoint_programs(false),
            ["exec_notice", "thread_exit", "oom_notice"]
        );
    }

    #[test]
    fn groups_gather_one_program_per_library_and_flavor() {
        let points = [
            point("malloc", Hook::Alloc(AllocKind::Malloc), 0x100),
            point("free", Hook::Free, 0x204),
            point("calloc", Hook::Alloc(AllocKind::Calloc), 0x300),
        ];
        let libc = Path::new("/lib/libc.so.6");
        let other = Path::new("/lib/libjemalloc.so.2");
        let mut table = uprobe_table(libc, &points, false);
        table.extend(uprobe_table(other, &points[..1], false));
        table.extend(TRACEPOINTS);
        let groups = uprobe_groups(&table);
        let summary: Vec<(&str, &Path, Vec<u64>, Vec<u64>)> = groups
            .into_iter()
            .map(|g| (g.program, g.library, g.offsets, g.cookies))
            .collect();
        let (malloc, calloc) = (AllocKind::Malloc as u64, AllocKind::Calloc as u64);
        assert_eq!(
            summary,
            [
                ("malloc_enter", libc, vec![0x100], vec![malloc]),
                ("alloc_exit", libc, vec![0x100, 0x300], vec![malloc, calloc]),
                ("free_enter", libc, vec![0x204], vec![0]),
                ("alloc_enter", libc, vec![0x300], vec![calloc]),
                ("malloc_enter", other, vec![0x100], vec![malloc]),
                ("alloc_exit", other, vec![0x100], vec![malloc]),
            ]
        );
    }

    /// A moved probe whose argument is in another register reads the cookie to find it: the
    /// programs that know their cookie are attached only where it is what they know (malloc's
    /// size in a given register has a program per register).
    #[test]
    fn moved_arguments_go_to_the_programs_that_read_the_cookie() {
        let moved = |name: &str, hook| HookPoint {
            args: [
                tracer_common::entry_args::RAX,
                tracer_common::entry_args::IN_PLACE,
                tracer_common::entry_args::IN_PLACE,
                tracer_common::entry_args::IN_PLACE,
            ],
            ..point(name, hook, 0x100)
        };
        let points = [
            moved("malloc", Hook::Alloc(AllocKind::Malloc)),
            moved("calloc", Hook::Alloc(AllocKind::Calloc)),
            moved("free", Hook::Free),
        ];
        let table = uprobe_table(Path::new("/lib/libjemalloc.so.2"), &points, false);
        let programs: Vec<&str> = table.iter().map(|row| row.program).collect();
        assert_eq!(
            programs,
            [
                "malloc_in_rax",
                "alloc_exit",
                "alloc_enter",
                "alloc_exit",
                "free_enter_moved"
            ]
        );
        assert!(table.iter().all(|row| row.cookie >> 32 != 0));
    }

    /// Each register a moved malloc size can be in has its program, which is loaded.
    #[test]
    fn a_moved_malloc_size_has_a_program_for_its_register() {
        for &(register, name) in &MALLOC_MOVED_PROGRAMS {
            let cookie = entry_args::cookie(AllocKind::Malloc as u32, [register, 0, 0, 0]);
            assert_eq!(
                programs(Hook::Alloc(AllocKind::Malloc), cookie),
                [(name, Flavor::Entry), ("alloc_exit", Flavor::Return)]
            );
            assert!(UPROBE_PROGRAMS.contains(&name));
        }
        let registers: std::collections::HashSet<u8> = MALLOC_MOVED_PROGRAMS
            .iter()
            .map(|&(register, _)| register)
            .collect();
        // Every register but malloc's own, %rdi, which is no move.
        assert_eq!(registers.len(), 14);
        assert!(!registers.contains(&entry_args::RDI));
        assert!(!registers.contains(&entry_args::IN_PLACE));
    }

    #[test]
    fn placed_probes_say_where_they_went() {
        let points = [point("free", Hook::Free, 0x204)];
        let table = uprobe_table(Path::new("/lib/libc.so.6"), &points, false);
        let placed = Placed::new(&table[0], Mechanism::MultiUprobeLink);
        assert_eq!(
            serde_json::to_value(&placed).expect("json"),
            serde_json::json!({
                "program": "free_enter", "what": "free", "library": "/lib/libc.so.6",
                "offset": 0x204, "flavor": "entry", "cookie": 0,
                "mechanism": "multi-uprobe-link",
            })
        );
        let placed = Placed::new(&TRACEPOINTS[0], Mechanism::Tracepoint);
        assert_eq!(
            placed.tracepoint.as_deref(),
            Some("sched/sched_process_exec")
        );
    }
}
