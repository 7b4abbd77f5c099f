//! Which mapped objects hold the allocator: every ELF object of the process (the executable
//! included) that defines `malloc`, with or without a known prefix, plus the ones the user
//! names with `--alloc-lib PATH[:PREFIX]`. Hooking several is safe: only the outermost
//! allocation call on a thread counts (tracer-ebpf's depth), so jemalloc's `malloc` reached
//! through glibc's `reallocarray`, or mimalloc's `malloc` calling `mi_malloc`, count once.

use std::{
    collections::HashSet,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{
    elf::{self, Hook, HookPoint},
    root::RootError,
};
use crate::errors::TracerError;
use tracer_common::MapEventKind;

/// `--alloc-lib PATH[:PREFIX]`: an allocator to hook that leakhound would not find by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocLib {
    /// The file as the target sees it; a bare file name matches any mapped object of that name.
    pub path: PathBuf,
    /// The symbol prefix of its functions (`myalloc_` for `myalloc_malloc`), if any.
    pub prefix: Option<String>,
}

impl AllocLib {
    /// `PATH` or `PATH:PREFIX`. The text after the last `:` is a prefix only when it contains
    /// no `/`, so a path with a colon in a directory name still works; a path whose file name
    /// has a colon needs a trailing `:` (an empty prefix).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (path, prefix) = match text.rsplit_once(':') {
            Some((path, prefix)) if !prefix.contains('/') => (path, Some(prefix)),
            _ => (text, None),
        };
        if path.is_empty() {
            return Err(format!("'{text}' names no file (use PATH or PATH:PREFIX)"));
        }
        if let Some(prefix) = prefix
            && !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$')
        {
            return Err(format!(
                "'{prefix}' is not a symbol prefix (letters, digits and _ only)"
            ));
        }
        Ok(Self {
            path: PathBuf::from(path),
            prefix: prefix.filter(|p| !p.is_empty()).map(str::to_owned),
        })
    }

    fn matches(&self, shown: &Path) -> bool {
        if self.path.components().count() > 1 {
            self.path == shown
        } else {
            shown.file_name() == Some(self.path.as_os_str())
        }
    }
}

/// One object to hook.
#[derive(Clone, Debug)]
pub struct HookedObject {
    /// The very file whose symbols were read, held open so that the kernel attaches to it
    /// and to nothing the target could swap in under its name.
    pub file: Arc<File>,
    /// The object as the target names it, for messages.
    pub shown: PathBuf,
    pub points: Vec<HookPoint>,
}

impl HookedObject {
    /// The path the kernel is given to attach to: the open descriptor's `/proc/self/fd`
    /// link, which it follows to the inode read here.
    pub fn kernel_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// Whether libc's mapping wrappers are hooked (some object's `mmap` is), so that the
/// syscall tracepoints are not needed to see the mapping calls: every `munmap`, `mremap` and
/// `mprotect` defined beside them then has a probe after its system call
/// ([`Hook::MapDone`]) or at its entry and return ([`Hook::MapCall`]). `false` with no such
/// object: a Go program's raw syscalls are seen only at the tracepoints.
pub fn mapping_wrappers_hooked(objects: &[HookedObject]) -> bool {
    objects.iter().any(|object| {
        object
            .points
            .iter()
            .any(|point| point.hook == Hook::Map(MapEventKind::Map))
    })
}

/// A file the target has mapped (or will map): as it names it, and opened (through
/// `/proc/PID/map_files`, or resolved inside the target's root), or why it could not be.
#[derive(Debug)]
pub struct Candidate {
    pub shown: PathBuf,
    pub file: Result<File, RootError>,
}

/// The objects among `candidates` that define an allocator, then every `--alloc-lib` that
/// matched none of them (a library the target will `dlopen`: a uprobe on a file applies when
/// it is mapped later). `open_unmapped` opens such a path as the target would see it.
pub fn find(
    candidates: Vec<Candidate>,
    extra: &[AllocLib],
    open_unmapped: impl Fn(&Path) -> Result<File, RootError>,
) -> Result<Vec<HookedObject>, TracerError> {
    let mut seen = HashSet::new();
    let mut used = vec![false; extra.len()];
    let mut objects = Vec::new();
    for candidate in candidates {
        if !seen.insert(candidate.shown.clone()) {
            continue;
        }
        let named = extra.iter().position(|lib| lib.matches(&candidate.shown));
        if let Some(i) = named {
            used[i] = true;
        }
        let prefix = named.and_then(|i| extra[i].prefix.as_deref());
        let points = match candidate
            .file
            .as_ref()
            .map_err(|err| unreadable(&candidate.shown, err))
            .and_then(|file| elf::hook_points(file, &candidate.shown, prefix))
        {
            Ok(points) => points,
            // Not ELF, or unreadable: only an object the user named is worth an error.
            Err(err) if named.is_some() => return Err(err),
            Err(err) => {
                log::debug!("skipping {}: {err}", candidate.shown.display());
                continue;
            }
        };
        if named.is_some() {
            require_allocator(&points, &extra[named.unwrap_or_default()])?;
        }
        if points.iter().any(HookPoint::allocates)
            && let Ok(file) = candidate.file
        {
            objects.push(HookedObject {
                file: Arc::new(file),
                shown: candidate.shown,
                points,
            });
        }
    }
    for (lib, _) in extra.iter().zip(used).filter(|(_, used)| !used) {
        let file = open_unmapped(&lib.path).map_err(|err| unreadable(&lib.path, &err))?;
        let points = elf::hook_points(&file, &lib.path, lib.prefix.as_deref())?;
        require_allocator(&points, lib)?;
        objects.push(HookedObject {
            file: Arc::new(file),
            shown: lib.path.clone(),
            points,
        });
    }
    Ok(objects)
}

fn unreadable(shown: &Path, err: &RootError) -> TracerError {
    TracerError::ReadElf {
        path: shown.to_owned(),
        source: err.to_string().into(),
    }
}

fn require_allocator(points: &[HookPoint], lib: &AllocLib) -> Result<(), TracerError> {
    let malloc = format!("{}malloc", lib.prefix.as_deref().unwrap_or_default());
    if points.iter().any(|point| point.name == malloc) {
        return Ok(());
    }
    Err(TracerError::AllocLibWithoutMalloc {
        path: lib.path.clone(),
        symbol: malloc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_lib_takes_an_optional_prefix() {
        let lib = AllocLib::parse("/opt/lib/libmy.so:my_").unwrap();
        assert_eq!(lib.path, Path::new("/opt/lib/libmy.so"));
        assert_eq!(lib.prefix.as_deref(), Some("my_"));
        let lib = AllocLib::parse("/opt/lib/libmy.so").unwrap();
        assert_eq!(lib.prefix, None);
        // A colon in a directory is part of the path.
        let lib = AllocLib::parse("/opt/a:b/libmy.so").unwrap();
        assert_eq!(lib.path, Path::new("/opt/a:b/libmy.so"));
        assert_eq!(lib.prefix, None);
        let lib = AllocLib::parse("lib:odd.so:").unwrap();
        assert_eq!(lib.path, Path::new("lib:odd.so"));
        assert_eq!(lib.prefix, None);
        assert!(AllocLib::parse(":je_").is_err());
        assert!(AllocLib::parse("/x.so:bad prefix").is_err());
    }

    #[test]
    fn long_paths_and_names_are_kept_whole() {
        let long = format!("/{}/lib.so", "d".repeat(5000));
        let lib = AllocLib::parse(&format!("{long}:{}", "p".repeat(300))).unwrap();
        assert_eq!(lib.path.as_os_str().len(), long.len());
        assert_eq!(lib.prefix.map(|p| p.len()), Some(300));
    }

    #[test]
    fn a_bare_name_matches_any_directory() {
        let lib = AllocLib::parse("libjemalloc.so.2").unwrap();
        assert!(lib.matches(Path::new("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")));
        assert!(!lib.matches(Path::new("/usr/lib/libjemalloc.so.1")));
        let lib = AllocLib::parse("/usr/lib/libjemalloc.so.2").unwrap();
        assert!(!lib.matches(Path::new("/opt/libjemalloc.so.2")));
    }

    /// Real allocators from Debian's packages, when installed: every hot function gets a probe
    /// point that the kernel emulates (a single-stepped probe costs 25 µs on some hosts).
    #[test]
    fn hot_functions_of_real_allocators_are_emulated() {
        let libs = [
            ("/lib/x86_64-linux-gnu/libc.so.6", &["malloc", "free"][..]),
            (
                "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                &["malloc", "free", "calloc", "realloc", "_Znwm", "_ZdlPv"],
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                &["malloc", "free", "calloc", "realloc", "_Znwm"],
            ),
            (
                "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2",
                &["malloc", "free", "calloc", "realloc", "_Znwm"],
            ),
        ];
        for (lib, hot) in libs {
            let path = Path::new(lib);
            if !path.exists() {
                eprintln!("skipped: no {lib}");
                continue;
            }
            let points = elf::hook_points(&File::open(path).expect("opens"), path, None)
                .expect("hook points");
            for point in &points {
                eprintln!(
                    "{lib}: {} +{} {:?} {}",
                    point.name,
                    point.skip,
                    point.args,
                    if point.emulated {
                        "emulated"
                    } else {
                        "single-stepped"
                    }
                );
            }
            for name in hot {
                let point = points
                    .iter()
                    .find(|point| point.name == *name)
                    .unwrap_or_else(|| panic!("{lib} lacks {name}"));
                assert!(point.emulated, "{lib}: {name} is single-stepped");
            }
        }
    }

    /// Real allocators from Debian's packages, when installed: the whole family is found,
    /// aliases at one address get one probe, and functions an allocator lacks are absent.
    #[test]
    fn real_allocators() {
        let dir = Path::new("/usr/lib/x86_64-linux-gnu");
        let names = |file: &str| -> Option<Vec<String>> {
            let path = dir.join(file);
            path.exists().then(|| {
                elf::hook_points(&File::open(&path).expect("opens"), &path, None)
                    .expect("hook points")
                    .into_iter()
                    .map(|p| p.name)
                    .collect()
            })
        };
        if let Some(je) = names("libjemalloc.so.2") {
            for f in [
                "malloc", "free", "calloc", "realloc", "mallocx", "sdallocx", "_Znwm",
            ] {
                assert!(je.iter().any(|n| n == f), "jemalloc lacks {f}: {je:?}");
            }
            assert!(!je.iter().any(|n| n == "pvalloc"), "{je:?}");
        }
        if let Some(tc) = names("libtcmalloc_minimal.so.4") {
            // free, cfree, tc_free, tc_cfree and operator delete are one function: one probe.
            assert!(tc.iter().any(|n| n == "free"), "{tc:?}");
            for alias in ["cfree", "tc_free", "tc_cfree", "_ZdlPv", "tc_malloc"] {
                assert!(
                    !tc.iter().any(|n| n == alias),
                    "{alias} probed apart: {tc:?}"
                );
            }
        }
        if let Some(mi) = names("libmimalloc.so.2") {
            assert!(mi.iter().any(|n| n == "malloc"), "{mi:?}");
            // mi_malloc is malloc's alias; mi_memalign is its own function.
            assert!(!mi.iter().any(|n| n == "mi_malloc"), "{mi:?}");
        }
    }
}
