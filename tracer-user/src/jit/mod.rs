//! Frames of JIT-compiled code: Node.js (V8) and the JVM (HotSpot).
//!
//! Both runtimes can describe their generated code in a perf map, `/tmp/perf-<pid>.map`, where
//! `<pid>` is the PID the runtime sees in its own namespace and `/tmp` is its own. leakhound
//! reads that file through `/proc/PID/root`, rereads it when it changes, and keeps what it read,
//! so the frames of a target that has exited can still be named. V8 writes the map as it
//! compiles when started with `--perf-basic-prof`; HotSpot writes it on request, which
//! [`Runtime`] makes through the attach mechanism before each report.

pub mod jvm_attach;
pub mod node;
pub mod perf_map;

use std::{
    fs::{self, File},
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{model::Frame, process::TargetProcess, symbolize::Modules};
use perf_map::PerfMap;

/// The PID a process sees itself as, in its innermost PID namespace (`NSpid`'s last field).
pub fn namespace_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))?
        .split_whitespace()
        .next_back()?
        .parse()
        .ok()
}

/// Which version of the file was read, and how far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileState {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    /// Bytes consumed: up to the end of the last complete line.
    consumed: u64,
}

/// The target's perf map file and everything read from it over the session.
#[derive(Debug, Default)]
pub struct PerfMaps {
    path: Option<PathBuf>,
    state: Option<FileState>,
    /// Set when the runtime rewrote the file in place (HotSpot does): read it all again.
    reread: bool,
    map: PerfMap,
}

impl PerfMaps {
    /// Rereads the map if it changed (size, modification time, or identity). Appended lines
    /// (V8) are read from where the last read stopped; a file that shrank, was replaced or was
    /// rewritten is read whole. Errors (no file, the target exited) keep what is known.
    pub fn refresh(&mut self, target: &TargetProcess) {
        let Some(path) = self.path(target) else {
            return;
        };
        let Ok(meta) = fs::metadata(&path) else {
            return;
        };
        let now = FileState {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            consumed: 0,
        };
        let from = match self.state {
            Some(old) if !self.reread && FileState { consumed: 0, ..old } == now => return,
            Some(old)
                if !self.reread
                    && (old.dev, old.ino) == (now.dev, now.ino)
                    && now.len >= old.consumed =>
            {
                old.consumed
            }
            _ => 0,
        };
        match read_lines_from(&path, from) {
            Ok((text, consumed)) => {
                let added = self.map.add_text(&text);
                log::debug!(
                    "{}: {added} entries from offset {from}, {} known",
                    path.display(),
                    self.map.len()
                );
                self.state = Some(FileState {
                    consumed: from + consumed,
                    ..now
                });
                self.reread = false;
            }
            Err(err) => log::debug!("reading {}: {err}", path.display()),
        }
    }

    /// The next refresh reads the whole file (after HotSpot rewrote it).
    pub fn reread_next(&mut self) {
        self.reread = true;
    }

    pub fn lookup(&self, addr: u64) -> Option<Frame> {
        self.map.lookup(addr).map(perf_map::frame)
    }

    pub fn covers(&self, addr: u64) -> bool {
        self.map.lookup(addr).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `/proc/PID/root/tmp/perf-<nspid>.map`, worked out once while the target lives.
    fn path(&mut self, target: &TargetProcess) -> Option<PathBuf> {
        if self.path.is_none() {
            self.path = perf_map_path(target);
        }
        self.path.clone()
    }
}

/// Where the target's runtime writes its perf map, as reached from here.
pub fn perf_map_path(target: &TargetProcess) -> Option<PathBuf> {
    let status = fs::read_to_string(format!("/proc/{}/status", target.pid)).ok()?;
    let nspid = namespace_pid(&status)?;
    Some(target.in_root(Path::new(&format!("/tmp/perf-{nspid}.map"))))
}

/// Reads the complete lines of `path` from byte `from`; returns them and how many bytes they
/// take. A line still being written is left for the next read.
fn read_lines_from(path: &Path, from: u64) -> std::io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    bytes.truncate(complete);
    Ok((
        String::from_utf8_lossy(&bytes).into_owned(),
        complete as u64,
    ))
}

/// The managed runtime in the target, once it is recognised from the files it maps.
#[derive(Debug, Default)]
pub enum Runtime {
    /// Not (yet) recognised; a launched command may not have mapped its runtime yet.
    #[default]
    Unknown,
    Node,
    Jvm(Jvm),
}

/// HotSpot, and when its perf map was last requested.
#[derive(Debug, Default)]
pub struct Jvm {
    last_request: Option<Instant>,
    failures: u32,
    /// The JVM cannot answer (attach disabled, no SIGQUIT handler, no such command): asking
    /// again would only send it more signals, each a thread dump in its log.
    gave_up: bool,
    /// The perf map that leakhound made the JVM write, when there was none before: removed
    /// after the last read, so that no file is left in the target's /tmp.
    map_made: Option<PathBuf>,
}

/// How often a running JVM is asked for a new perf map, besides before the report.
const JVM_REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How long the attach handshake may take.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// After this many failed handshakes in a row, only the final one before the report is tried.
const ATTACH_ATTEMPTS: u32 = 2;

impl Runtime {
    /// Called with every refresh of the target's code: recognises the runtime from the files
    /// it maps and says once what the user should know about it; asks a JVM for a new perf map
    /// now and then, and rereads the map it wrote.
    pub fn tick(&mut self, target: &TargetProcess, modules: &mut Modules) {
        if let Self::Unknown = self {
            *self = detect(target, modules.mapped_files());
            match self {
                Self::Node => warn_node(target),
                Self::Jvm(jvm) => jvm.gave_up = !warn_jvm(target),
                Self::Unknown => return,
            }
        }
        if let Self::Jvm(jvm) = self
            && !jvm.gave_up
            && jvm.failures < ATTACH_ATTEMPTS
            && jvm
                .last_request
                .is_none_or(|at| at.elapsed() >= JVM_REFRESH_EVERY)
            && jvm.request(target, &mut modules.perf_maps)
        {
            modules.perf_maps.refresh(target);
        }
    }

    /// Before the report: a JVM that still runs writes a current perf map, which is read.
    pub fn before_report(&mut self, target: &TargetProcess, modules: &mut Modules) {
        let Self::Jvm(jvm) = self else { return };
        if !jvm.gave_up && target.is_alive() && jvm.request(target, &mut modules.perf_maps) {
            modules.perf_maps.refresh(target);
        }
        if let Some(path) = jvm.map_made.take() {
            let _ = fs::remove_file(path);
        }
    }
}

impl Jvm {
    fn request(&mut self, target: &TargetProcess, perf_maps: &mut PerfMaps) -> bool {
        if self.last_request.is_none() {
            self.map_made = perf_map_path(target).filter(|path| !path.exists());
        }
        self.last_request = Some(Instant::now());
        let started = Instant::now();
        match jvm_attach::request_perf_map(target, ATTACH_TIMEOUT) {
            Ok(_) => {
                log::debug!(
                    "Compiler.perfmap in pid {} took {:.0} ms",
                    target.pid,
                    started.elapsed().as_secs_f64() * 1e3
                );
                self.failures = 0;
                perf_maps.reread_next();
                true
            }
            Err(err) => {
                self.failures += 1;
                self.gave_up = err.is_permanent();
                if self.failures == 1 {
                    eprintln!(
                        "leakhound: cannot get a perf map from the JVM (pid {}): {err}; Java frames will show as [anon]",
                        target.pid
                    );
                }
                false
            }
        }
    }
}

fn detect<'a>(target: &TargetProcess, mapped: impl IntoIterator<Item = &'a Path>) -> Runtime {
    let exe = fs::read_link(target.exe_link()).unwrap_or_default();
    let mapped: Vec<String> = mapped
        .into_iter()
        .map(|path| path.to_string_lossy().into_owned())
        .collect();
    if mapped.iter().any(|path| path.ends_with("/libjvm.so")) {
        Runtime::Jvm(Jvm::default())
    } else if node::is_node(&exe.to_string_lossy(), mapped.iter().map(String::as_str)) {
        Runtime::Node
    } else {
        Runtime::Unknown
    }
}

fn warn_node(target: &TargetProcess) {
    let cmdline = fs::read(format!("/proc/{}/cmdline", target.pid)).unwrap_or_default();
    let environ = fs::read(format!("/proc/{}/environ", target.pid)).unwrap_or_default();
    let has_map = perf_map_path(target).is_some_and(|path| path.exists());
    if let Some(advice) = node::advice(&cmdline, &environ, has_map) {
        eprintln!("leakhound: node (pid {}): {advice}", target.pid);
    }
}

/// Says what the JVM's flags mean for its stacks; returns whether it can be attached to.
fn warn_jvm(target: &TargetProcess) -> bool {
    let cmdline = fs::read(format!("/proc/{}/cmdline", target.pid)).unwrap_or_default();
    let environ = fs::read(format!("/proc/{}/environ", target.pid)).unwrap_or_default();
    let attachable = jvm_flag(&cmdline, &environ, "DisableAttachMechanism") != Some(true);
    if !attachable {
        eprintln!(
            "leakhound: java (pid {}) runs with -XX:+DisableAttachMechanism: no perf map can be requested, so Java frames will show as [anon]",
            target.pid
        );
    }
    if jvm_flag(&cmdline, &environ, "PreserveFramePointer") != Some(true) {
        eprintln!(
            "leakhound: java (pid {}) runs without -XX:+PreserveFramePointer: stacks may stop at the first JIT-compiled Java method",
            target.pid
        );
    }
    attachable
}

/// A boolean `-XX:` flag as the JVM's command line or the variables the launcher reads
/// (JAVA_TOOL_OPTIONS, JDK_JAVA_OPTIONS, _JAVA_OPTIONS) set it; the last mention wins.
pub fn jvm_flag(cmdline: &[u8], environ: &[u8], flag: &str) -> Option<bool> {
    let env_options = environ.split(|&b| b == 0).filter_map(|var| {
        ["JAVA_TOOL_OPTIONS=", "JDK_JAVA_OPTIONS=", "_JAVA_OPTIONS="]
            .iter()
            .find_map(|name| var.strip_prefix(name.as_bytes()))
    });
    let words: Vec<String> = env_options
        .flat_map(|options| {
            String::from_utf8_lossy(options)
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .chain(
            cmdline
                .split(|&b| b == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned()),
        )
        .collect();
    words.iter().rev().find_map(
        |word| match word.strip_prefix("-XX:")?.split_at_checked(1)? {
            ("+", name) if name == flag => Some(true),
            ("-", name) if name == flag => Some(false),
            _ => None,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_pid_is_the_innermost() {
        assert_eq!(namespace_pid("Name:\tx\nNSpid:\t4242\n"), Some(4242));
        assert_eq!(namespace_pid("NSpid:\t4242\t17\t1\n"), Some(1));
        assert_eq!(namespace_pid("Name:\tx\n"), None);
    }

    fn preserves_frame_pointer(cmdline: &[u8], environ: &[u8]) -> bool {
        jvm_flag(cmdline, environ, "PreserveFramePointer") == Some(true)
    }

    #[test]
    fn jvm_flags_absent_are_none() {
        assert_eq!(
            jvm_flag(b"java\0Main\0", b"", "DisableAttachMechanism"),
            None
        );
        assert_eq!(
            jvm_flag(
                b"java\0-XX:+DisableAttachMechanism\0Main\0",
                b"",
                "DisableAttachMechanism"
            ),
            Some(true)
        );
    }

    #[test]
    fn frame_pointer_flag_from_command_line_or_environment() {
        assert!(preserves_frame_pointer(
            b"java\0-XX:+PreserveFramePointer\0-cp\0.\0Main\0",
            b""
        ));
        assert!(preserves_frame_pointer(
            b"java\0Main\0",
            b"JAVA_TOOL_OPTIONS=-Xmx1g -XX:+PreserveFramePointer\0"
        ));
        assert!(!preserves_frame_pointer(
            b"java\0-XX:-PreserveFramePointer\0Main\0",
            b"JAVA_TOOL_OPTIONS=-XX:+PreserveFramePointer\0"
        ));
        assert!(!preserves_frame_pointer(b"java\0Main\0", b"PATH=/bin\0"));
    }

    #[test]
    fn appended_lines_are_read_incrementally_and_rewrites_whole() {
        let dir = std::env::temp_dir().join(format!("leakhound-perfmap-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf.map");
        fs::write(&path, "1000 10 first\n2000 10 sec").unwrap();
        let (text, consumed) = read_lines_from(&path, 0).unwrap();
        assert_eq!((text.as_str(), consumed), ("1000 10 first\n", 14));
        fs::write(&path, "1000 10 first\n2000 10 second\n").unwrap();
        let (text, consumed) = read_lines_from(&path, 14).unwrap();
        assert_eq!((text.as_str(), consumed), ("2000 10 second\n", 15));
        fs::remove_dir_all(&dir).unwrap();
    }
}
