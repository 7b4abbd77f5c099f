//! Builds the eBPF object with the pinned nightly and embeds it, so that one binary is all a
//! user copies.

fn main() -> anyhow::Result<()> {
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
