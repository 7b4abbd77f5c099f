//! Targets built WITH frame pointers, for tests that need one stable stack per call site
//! (targets.rs builds without them, as real code usually is). Without frame pointers the
//! frames above the direct caller are garbage that varies per call, which splits one call
//! site into many stacks, each of which looks flat.

use std::path::PathBuf;

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
    crate::targets::build_source(&format!("{name}.c"), &format!("{name}.fp"), CFLAGS, &[])
}
