//! Frames of JIT-compiled code: Node.js (V8) and the JVM (HotSpot).
//!
//! Both runtimes can describe their generated code in a perf map, `/tmp/perf-<pid>.map`, where
//! `<pid>` is the PID the runtime sees in its own namespace and `/tmp` is its own. leakhound
//! reads that file through `/proc/PID/root`, rereads it when it changes, and keeps what it read,
//! so the frames of a target that has exited can still be named. V8 writes the map as it
//! compiles when started with `--perf-basic-prof`; HotSpot writes it on request, which
//! [`Runtime`] makes through the attach mechanism before each report.

pub mod hotspot;
pub mod jvm_attach;
pub mod node;
pub mod per_target;
pub mod perf_map;
pub mod v8;

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    model::Frame,
    process::{
        TargetProcess,
        address_space::AddressSpace,
        root::{self, RootError, TargetRoot},
    },
    symbolize::NameSource,
};
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

/// The most of a perf map read at one refresh; the rest waits for the next one, so a huge
/// map costs time in slices and never a burst of memory.
const PERF_MAP_READ_BYTES: u64 = 16 << 20;
/// The most of a perf map ever read. A runtime writes about 100 bytes per compiled function;
/// this is some 2.5 million functions.
const PERF_MAP_MAX_BYTES: u64 = 256 << 20;
/// The longest line taken: a name past this is not a function's (V8 and HotSpot write
/// signatures of a few hundred bytes at most).
const PERF_MAP_MAX_LINE: usize = 4096;

/// Something about a target's perf map that the user should hear of once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PerfMapWarning {
    Unreadable,
    TooLarge,
    LongLines,
}

/// The target's perf map file and everything read from it over the session.
#[derive(Debug, Default)]
pub struct PerfMaps {
    /// The map as the target names it (`/tmp/perf-<nspid>.map`), resolved inside its root.
    path: Option<PathBuf>,
    state: Option<FileState>,
    /// Set when the runtime rewrote the file in place (HotSpot does): read it all again.
    reread: bool,
    /// The last read stopped inside an over-long line: skip to its end first.
    in_long_line: bool,
    long_lines: u64,
    warned: Vec<PerfMapWarning>,
    map: PerfMap,
}

impl PerfMaps {
    /// Rereads the map if it changed (size, modification time, or identity). Appended lines
    /// (V8) are read from where the last read stopped; a file that shrank, was replaced or was
    /// rewritten is read whole. Errors (no file, the target exited) keep what is known.
    ///
    /// The file is the target's to craft: it is resolved inside the target's root, only a
    /// regular file is opened, and every read is capped (module docs of `process::root`).
    pub fn refresh(&mut self, target: &TargetProcess) {
        let Some(path) = self.path(target) else {
            return;
        };
        let opened = TargetRoot::open(target.pid).and_then(|root| root.open_regular(&path));
        let mut file = match opened {
            Ok(file) => file,
            Err(err) if err.is_not_found() => return,
            Err(err) => {
                let shown = match err {
                    RootError::NotRegular { .. } => err.to_string(),
                    _ => format!("{err}; not read"),
                };
                self.warn(target, PerfMapWarning::Unreadable, &shown);
                return;
            }
        };
        let Ok(meta) = file.metadata() else {
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
            Some(old) if !self.reread && FileState { consumed: 0, ..old } == now => {
                if old.consumed >= old.len.min(PERF_MAP_MAX_BYTES) {
                    return;
                }
                old.consumed
            }
            Some(old)
                if !self.reread
                    && (old.dev, old.ino) == (now.dev, now.ino)
                    && now.len >= old.consumed =>
            {
                old.consumed
            }
            _ => {
                self.in_long_line = false;
                0
            }
        };
        if from >= PERF_MAP_MAX_BYTES {
            let shown = format!(
                "{} is over {} MiB; the rest is not read",
                path.display(),
                PERF_MAP_MAX_BYTES >> 20
            );
            self.warn(target, PerfMapWarning::TooLarge, &shown);
            return;
        }
        let budget = PERF_MAP_READ_BYTES.min(PERF_MAP_MAX_BYTES - from);
        match root::read_capped(&mut file, from, budget) {
            Ok((bytes, _)) => {
                let chunk = complete_lines(&bytes, self.in_long_line, budget);
                self.in_long_line = chunk.in_long_line;
                self.long_lines += chunk.long_lines;
                let mut added = 0;
                for line in chunk.text.split(|&b| b == b'\n') {
                    if line.len() > PERF_MAP_MAX_LINE {
                        continue;
                    }
                    if let Some(entry) = perf_map::parse_line(&String::from_utf8_lossy(line)) {
                        self.map.insert(&entry);
                        added += 1;
                    }
                }
                log::debug!(
                    "{}: {added} entries from offset {from}, {} known",
                    path.display(),
                    self.map.len()
                );
                if self.long_lines > 0 {
                    let shown = format!(
                        "{} has {} lines over {PERF_MAP_MAX_LINE} bytes; skipped",
                        path.display(),
                        self.long_lines
                    );
                    self.warn(target, PerfMapWarning::LongLines, &shown);
                }
                self.state = Some(FileState {
                    consumed: from + chunk.consumed,
                    ..now
                });
                self.reread = false;
            }
            Err(err) => log::debug!("reading {}: {err}", path.display()),
        }
    }

    fn warn(&mut self, target: &TargetProcess, warning: PerfMapWarning, what: &str) {
        if !self.warned.contains(&warning) {
            self.warned.push(warning);
            eprintln!("leakhound: perf map of pid {}: {what}", target.pid);
        }
    }

    /// The next refresh reads the whole file (after HotSpot rewrote it).
    pub fn reread_next(&mut self) {
        self.reread = true;
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// `/tmp/perf-<nspid>.map`, worked out once while the target lives.
    fn path(&mut self, target: &TargetProcess) -> Option<PathBuf> {
        if self.path.is_none() {
            self.path = perf_map_path(target);
        }
        self.path.clone()
    }
}

impl NameSource for PerfMaps {
    fn frames(&self, addr: u64) -> Option<Vec<Frame>> {
        self.map
            .lookup(addr)
            .map(|name| vec![perf_map::frame(name)])
    }

    fn covers(&self, addr: u64) -> bool {
        self.map.lookup(addr).is_some()
    }
}

/// Where the target's runtime writes its perf map, as the target names it: a path to resolve
/// inside its root ([`TargetRoot`]), never through `/proc/PID/root` with the host's links.
pub fn perf_map_path(target: &TargetProcess) -> Option<PathBuf> {
    let status = fs::read_to_string(format!("/proc/{}/status", target.pid)).ok()?;
    let nspid = namespace_pid(&status)?;
    Some(PathBuf::from(format!("/tmp/perf-{nspid}.map")))
}

/// Whether the target has a perf map, as a regular file inside its root.
fn has_perf_map(target: &TargetProcess) -> bool {
    perf_map_path(target).is_some_and(|path| {
        TargetRoot::open(target.pid).is_ok_and(|root| root.open_regular(&path).is_ok())
    })
}

/// What one read of a perf map yields: its complete lines (those over [`PERF_MAP_MAX_LINE`]
/// are counted here and skipped by the reader), how many bytes they take, and whether the read ended inside an over-long line.
#[derive(Debug, PartialEq, Eq)]
struct Chunk<'a> {
    text: &'a [u8],
    consumed: u64,
    long_lines: u64,
    in_long_line: bool,
}

/// Cuts `bytes` (read from where the last read stopped, at most `budget`) to complete lines.
/// A line still being written is left for the next read; a line longer than
/// [`PERF_MAP_MAX_LINE`] is consumed and counted but not kept, even when no end is in sight.
fn complete_lines(bytes: &[u8], mut in_long_line: bool, budget: u64) -> Chunk<'_> {
    let mut start = 0;
    if in_long_line {
        match bytes.iter().position(|&b| b == b'\n') {
            Some(end) => {
                start = end + 1;
                in_long_line = false;
            }
            None => {
                return Chunk {
                    text: &[],
                    consumed: bytes.len() as u64,
                    long_lines: 0,
                    in_long_line: true,
                };
            }
        }
    }
    let rest = &bytes[start..];
    let complete = rest.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = &rest[..complete];
    let mut consumed = (start + complete) as u64;
    let mut long_lines = lines
        .split(|&b| b == b'\n')
        .filter(|line| line.len() > PERF_MAP_MAX_LINE)
        .count() as u64;
    let tail = &rest[complete..];
    if tail.len() > PERF_MAP_MAX_LINE || (bytes.len() as u64 >= budget && complete == 0) {
        // No end in this read, and already too long to be a line: skip it whole.
        long_lines += 1;
        consumed = bytes.len() as u64;
        in_long_line = true;
    }
    Chunk {
        text: lines,
        consumed,
        long_lines,
        in_long_line,
    }
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
/// How long the attach handshake may take while tracing (on the refresher's thread).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the last handshake may take: the trace has ended and the report waits for it.
pub const FINAL_ATTACH_TIMEOUT: Duration = Duration::from_millis(600);
/// After this many failed handshakes in a row, only the final one before the report is tried.
const ATTACH_ATTEMPTS: u32 = 2;

impl Runtime {
    /// Called with every refresh of the target's code: recognises the runtime from the files
    /// it maps and says once what the user should know about it. Returns whether a JVM is due
    /// to be asked for a new perf map: the caller asks ([`Runtime::ask_jvm`]) without holding
    /// the modules, since the JVM may take its time or be an impostor that never answers.
    pub fn tick(&mut self, target: &TargetProcess, space: &AddressSpace) -> bool {
        if let Self::Unknown = self {
            *self = detect(target, space.mapped_files());
            match self {
                // V8's own metadata names its frames; only when it cannot be read does the
                // user hear of flags (`v8::V8Frames`).
                Self::Node => {}
                Self::Jvm(jvm) => jvm.gave_up = !warn_jvm(target),
                Self::Unknown => return false,
            }
        }
        matches!(self, Self::Jvm(jvm)
            if !jvm.gave_up
                && jvm.failures < ATTACH_ATTEMPTS
                && jvm.last_request.is_none_or(|at| at.elapsed() >= JVM_REFRESH_EVERY))
    }

    /// Asks a JVM to write its perf map now, waiting at most `timeout`; true when it did, and
    /// the map is then to be read again whole ([`PerfMaps::reread_next`]).
    pub fn ask_jvm(&mut self, target: &TargetProcess, timeout: Duration) -> bool {
        match self {
            Self::Jvm(jvm) if !jvm.gave_up && target.is_alive() => jvm.request(target, timeout),
            _ => false,
        }
    }

    /// After the last read: the perf map leakhound made the JVM write is removed, so that no
    /// file is left in the target's /tmp on its behalf.
    pub fn clean_up(&mut self, target: &TargetProcess) {
        if let Self::Jvm(jvm) = self
            && let Some(path) = jvm.map_made.take()
            && let Err(err) = remove_in_root(target, &path)
        {
            log::debug!("not removing {}: {err}", path.display());
        }
    }
}

/// Removes a regular file that leakhound had the target write, resolved inside the target's
/// root; a symlink or anything else put there since is left alone.
fn remove_in_root(target: &TargetProcess, path: &Path) -> std::io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str()))
    else {
        return Ok(());
    };
    let Some(name) = root::EntryName::new(name) else {
        return Ok(());
    };
    let dir = TargetRoot::open(target.pid)
        .and_then(|root| root.hold_dir(parent))
        .map_err(std::io::Error::other)?;
    match dir.stat_entry(&name) {
        Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFREG => dir.unlink_entry(&name),
        _ => Ok(()),
    }
}

impl Jvm {
    fn request(&mut self, target: &TargetProcess, timeout: Duration) -> bool {
        if self.last_request.is_none() && !has_perf_map(target) {
            self.map_made = perf_map_path(target);
        }
        self.last_request = Some(Instant::now());
        let started = Instant::now();
        match jvm_attach::request_perf_map(target, timeout) {
            Ok(_) => {
                log::debug!(
                    "Compiler.perfmap in pid {} took {:.0} ms",
                    target.pid,
                    started.elapsed().as_secs_f64() * 1e3
                );
                self.failures = 0;
                true
            }
            Err(err) => {
                self.failures += 1;
                self.gave_up = err.is_permanent();
                if self.failures == 1 {
                    eprintln!(
                        "leakhound: cannot get a perf map from the JVM (pid {}): {err}; Java frames are named from the JVM's own metadata only",
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

/// What to tell the user about a Node process whose V8 metadata cannot be read: the flags that
/// make V8 write a perf map, if it was not started with them.
pub fn node_advice(target: &TargetProcess) -> Option<&'static str> {
    let cmdline = fs::read(format!("/proc/{}/cmdline", target.pid)).unwrap_or_default();
    let environ = fs::read(format!("/proc/{}/environ", target.pid)).unwrap_or_default();
    node::advice(&cmdline, &environ, has_perf_map(target))
}

/// Says what the JVM's flags mean for its stacks; returns whether it can be attached to.
fn warn_jvm(target: &TargetProcess) -> bool {
    let cmdline = fs::read(format!("/proc/{}/cmdline", target.pid)).unwrap_or_default();
    let environ = fs::read(format!("/proc/{}/environ", target.pid)).unwrap_or_default();
    let attachable = jvm_flag(&cmdline, &environ, "DisableAttachMechanism") != Some(true);
    if !attachable {
        eprintln!(
            "leakhound: java (pid {}) runs with -XX:+DisableAttachMechanism: no perf map can be requested, so Java frames are named from the JVM's own metadata only",
            target.pid
        );
    }
    // -XX:+PreserveFramePointer is only mentioned where HotSpot's metadata cannot be read
    // (hotspot::frames): with it, compiled frames unwind by their recorded frame sizes.
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
    fn only_complete_lines_are_taken() {
        let chunk = complete_lines(b"1000 10 first\n2000 10 sec", false, 1 << 20);
        assert_eq!(chunk.text, b"1000 10 first\n");
        assert_eq!(
            (chunk.consumed, chunk.long_lines, chunk.in_long_line),
            (14, 0, false)
        );
        let chunk = complete_lines(b"", false, 1 << 20);
        assert_eq!((chunk.consumed, chunk.in_long_line), (0, false));
    }

    #[test]
    fn over_long_lines_are_counted_and_skipped_to_their_end() {
        let long = "x".repeat(PERF_MAP_MAX_LINE + 1);
        let text = format!("1000 10 a\n{long}\n2000 10 b\n");
        let chunk = complete_lines(text.as_bytes(), false, 1 << 20);
        assert_eq!(chunk.long_lines, 1);
        assert_eq!(chunk.consumed, text.len() as u64);
        // A line with no end in sight (a file of zeros, one 10 MiB line) is consumed whole.
        let endless = vec![0u8; 64 << 10];
        let chunk = complete_lines(&endless, false, 64 << 10);
        assert_eq!((chunk.consumed, chunk.long_lines), (64 << 10, 1));
        assert!(chunk.in_long_line && chunk.text.is_empty());
        // The next read skips to that line's end, then takes what follows.
        let chunk = complete_lines(b"xxxx\n3000 10 c\n", true, 1 << 20);
        assert_eq!(chunk.text, b"3000 10 c\n");
        assert!(!chunk.in_long_line);
        let chunk = complete_lines(b"xxxx", true, 1 << 20);
        assert_eq!((chunk.consumed, chunk.in_long_line), (4, true));
    }
}
