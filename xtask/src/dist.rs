//! `cargo xtask dist`: leakhound as one static executable, for a debug pod or a machine with
//! nothing else on it (no libc, no toolchain, no `/usr/share`).
//!
//! Built for the musl target: Rust's musl target links musl itself statically, and every C
//! part of leakhound's dependencies is pure Rust (zlib for blazesym is `zlib-rs`, gzip for
//! pprof is `miniz_oxide`), so no C toolchain for musl is needed. The eBPF object is embedded
//! by tracer-user's build.rs, as in the glibc build.

use std::{fs, path::Path, path::PathBuf};

use anyhow::{Context as _, Result, ensure};

use crate::{cargo, run};

/// The Rust target of the static build.
pub const TARGET: &str = "x86_64-unknown-linux-musl";

/// Where the static binary is left: a fixed path that the README names.
pub fn dist_path(root: &Path) -> PathBuf {
    root.join("target/dist/leakhound")
}

/// Builds the static binary and copies it to `target/dist/leakhound`, after checking that it
/// really is static: an ELF with no program interpreter and no needed libraries.
pub fn dist(root: &Path) -> Result<PathBuf> {
    run(cargo().args([
        "build",
        "--release",
        "--package",
        "tracer-user",
        "--target",
        TARGET,
    ]))?;
    let built = root.join("target").join(TARGET).join("release/leakhound");
    let bytes = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    check_static(&bytes).with_context(|| format!("{} is not static", built.display()))?;
    let out = dist_path(root);
    fs::create_dir_all(out.parent().expect("dist path has a parent"))?;
    // Copied to a new name first and renamed, so a running copy is never rewritten in place.
    let staging = out.with_extension("new");
    fs::copy(&built, &staging)?;
    fs::rename(&staging, &out)?;
    eprintln!(
        "xtask: static leakhound ({:.1} MiB): {}",
        bytes.len() as f64 / (1 << 20) as f64,
        out.display()
    );
    Ok(out)
}

/// An ELF executable with no `PT_INTERP` and no `DT_NEEDED` entry runs with nothing beside it.
fn check_static(bytes: &[u8]) -> Result<()> {
    use object::read::elf::{Dyn as _, ElfFile64, ProgramHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(bytes)?;
    let endian = elf.endian();
    let mut needed = 0;
    for header in elf.elf_program_headers() {
        ensure!(
            header.p_type(endian) != object::elf::PT_INTERP,
            "it names a program interpreter (dynamic loader)"
        );
        if let Some(dynamic) = header.dynamic(endian, bytes)? {
            needed += dynamic
                .iter()
                .filter(|entry| entry.d_tag(endian) == u64::from(object::elf::DT_NEEDED))
                .count();
        }
    }
    ensure!(needed == 0, "it needs {needed} shared libraries");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_refused() {
        // This test binary is linked against the host's libc, dynamically.
        let own = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_static(&own).is_err());
    }
}
