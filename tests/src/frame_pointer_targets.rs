//! Targets built WITH frame pointers, for tests that need one stable stack per call site
//! (targets.rs builds without them, as real code usually is). Without frame pointers the
//! frames above the direct caller are garbage that varies per call, which splits one call
//! site into many stacks, each of which looks flat.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::paths;

const CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-pthread",
    "-Wall",
    "-Wextra",
];

/// targets/growth_shapes.c: a steady leak, a cache that fills then replaces, and churn.
pub fn growth_shapes() -> PathBuf {
    build("growth_shapes")
}

fn build(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
    let source = src_dir.join(format!("{name}.c"));
    let out_dir = paths::target_dir().join("leakhound-targets");
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", out_dir.display()));
    let output = out_dir.join(format!("{name}.fp"));
    // Built under a temporary name and renamed, so a concurrent `cargo test` never runs half a file.
    let partial = out_dir.join(format!("{name}.fp.partial.{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = Command::new(&cc)
        .args(CFLAGS)
        .arg("-o")
        .arg(&partial)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc} (install gcc): {e}"));
    assert!(
        out.status.success(),
        "{cc} {name}.c failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &output)
        .unwrap_or_else(|e| panic!("renaming to {}: {e}", output.display()));
    output
}
