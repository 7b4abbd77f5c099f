//! Managed runtimes for the JIT tests: Node.js and OpenJDK, from the machine's packages. The
//! targets (`targets/jit_leak.js`, `targets/JitLeak.java`) keep 64 KiB of native memory per
//! simulated connection and print their truth as the C targets do (truth.h).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::paths;
use crate::report::FoldedLine;

/// Whether `program` runs (`program version_flag` succeeds); a test prints a skip otherwise.
pub fn available(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

pub fn node_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/jit_leak.js")
}

/// Two functions keeping Buffers while V8's collector compacts between calls.
pub fn node_moving_gc_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/moving_gc.js")
}

/// A copy of the machine's `node` whose `v8dbg_*` symbols are renamed, as a V8 built without
/// postmortem metadata: nothing looks those symbols up, so it runs as before. Made once, unless
/// `node` is newer; returns its path.
pub fn node_without_postmortem() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let node = which("node");
    let out = paths::target_dir().join("leakhound-targets/node-without-v8dbg");
    let copy = out.join("node");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if mtime(&copy).is_some_and(|made| mtime(&node).is_some_and(|src| src <= made)) {
        return copy;
    }
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    let bytes = std::fs::read(&node).unwrap_or_else(|e| panic!("reading {}: {e}", node.display()));
    let renamed = replace_all(&bytes, b"v8dbg_", b"v8nop_");
    let partial = out.join("node.partial");
    std::fs::write(&partial, renamed).unwrap_or_else(|e| panic!("writing the copy: {e}"));
    std::fs::set_permissions(
        &partial,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap_or_else(|e| panic!("making the copy executable: {e}"));
    std::fs::rename(&partial, &copy).unwrap_or_else(|e| panic!("placing the copy: {e}"));
    copy
}

/// `program` as found on PATH, with symbolic links resolved.
fn which(program: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::fs::canonicalize(found).ok())
        .unwrap_or_else(|| panic!("{program} is not on PATH"))
}

/// `bytes` with every `from` replaced by `to`, of the same length.
fn replace_all(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut at = 0;
    while let Some(found) = out[at..].windows(from.len()).position(|w| w == from) {
        out[at + found..at + found + to.len()].copy_from_slice(to);
        at += found + from.len();
    }
    out
}

/// Compiles `targets/JitLeak.java` with javac, unless the class is newer; returns the class
/// directory for `-cp`.
pub fn java_classes() -> PathBuf {
    java_classes_of("JitLeak")
}

/// Compiles `targets/<class>.java` with javac, unless the class is newer; returns the class
/// directory for `-cp`.
pub fn java_classes_of(class_name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("targets/{class_name}.java"));
    let out = paths::target_dir().join("leakhound-targets/java");
    let class = out.join(format!("{class_name}.class"));
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if mtime(&class).is_some_and(|built| mtime(&source).is_some_and(|src| src <= built)) {
        return out;
    }
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("creating {}: {e}", out.display()));
    // sun.misc.Unsafe is internal API: javac warns, which is expected.
    let output = Command::new("javac")
        .args(["-nowarn", "-XDignore.symbol.file", "-d"])
        .arg(&out)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run javac: {e}"));
    assert!(
        output.status.success(),
        "javac {} failed: {}\n{}",
        source.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// Bytes of the stacks that pass through a frame named exactly `name`.
pub fn bytes_through(lines: &[FoldedLine], name: &str) -> u64 {
    lines
        .iter()
        .filter(|line| line.frames.iter().any(|frame| frame == name))
        .map(|line| line.bytes)
        .sum()
}

/// Within `percent` of the truth.
pub fn within_percent(truth: u64, traced: u64, percent: u64) -> bool {
    u128::from(truth.abs_diff(traced)) * 100 <= u128::from(truth) * u128::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::parse_folded;

    #[test]
    fn counts_stacks_through_a_frame_by_exact_name() {
        let lines = parse_folded(
            "main;acceptConnection;malloc 100\n\
             main;acceptConnectionSlowly;malloc 7\n\
             acceptConnection;x;acceptConnection;malloc 5\n\
             main;other 1\n",
        )
        .unwrap();
        assert_eq!(bytes_through(&lines, "acceptConnection"), 105);
        assert_eq!(bytes_through(&lines, "missing"), 0);
    }

    #[test]
    fn replaces_every_occurrence_in_place() {
        assert_eq!(
            replace_all(b"v8dbg_a v8dbg_b v8db", b"v8dbg_", b"v8nop_"),
            b"v8nop_a v8nop_b v8db"
        );
    }

    #[test]
    fn tolerance_is_relative() {
        assert!(within_percent(1000, 950, 5));
        assert!(within_percent(1000, 1050, 5));
        assert!(!within_percent(1000, 949, 5));
        assert!(!within_percent(0, 1, 5));
        assert!(within_percent(0, 0, 5));
    }
}
