//! Builds the eBPF object with the pinned nightly and embeds it, so that one binary is all a
//! user copies.

fn main() -> anyhow::Result<()> {
    // The fuzz targets (fuzz/, built by cargo-fuzz with sanitizer flags) use only pure parsers
    // and never load the object: they set LEAKHOUND_SKIP_EBPF=1 and get an empty one, rather
    // than a nested eBPF build under their instrumentation flags.
    println!("cargo:rerun-if-env-changed=LEAKHOUND_SKIP_EBPF");
    if std::env::var_os("LEAKHOUND_SKIP_EBPF").is_some_and(|v| v == "1") {
        let out =
            std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        std::fs::write(out.join("tracer-ebpf"), [])?;
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    // Must match scripts/setup.sh: bpf-linker is built against this nightly's libLLVM.
    println!("cargo:rerun-if-env-changed=LEAKHOUND_NIGHTLY");
    let nightly = option_env!("LEAKHOUND_NIGHTLY").unwrap_or("nightly-2026-05-20");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "tracer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(nightly),
    )
}
