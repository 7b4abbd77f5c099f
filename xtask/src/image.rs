//! `cargo xtask image`: an OCI image with the static binary and nothing else, for a debug pod
//! (deploy/), saved as an archive that `podman load` and `docker load` read.
//!
//! Built by podman from Debian's packages, `FROM scratch`: nothing is pulled (this machine
//! kind reaches no registry), and a build with no `RUN` step starts no container, which is
//! what fails here (the OCI runtimes cannot set rlimits on this machine kind).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, ensure};

use crate::{bench::ensure_packages, dist, run};

/// The image's name, as the manifests under deploy/ give it.
pub fn tag() -> String {
    format!("leakhound:{}", env!("CARGO_PKG_VERSION"))
}

const CONTAINERFILE: &str = "\
FROM scratch
COPY leakhound /leakhound
ENTRYPOINT [\"/leakhound\"]
LABEL org.opencontainers.image.title=\"leakhound\" \\
      org.opencontainers.image.description=\"eBPF native-allocation leak tracer: one static binary (see deploy/ and the README's Kubernetes section)\"
";

/// Builds the image and saves it to `target/image/leakhound-VERSION.tar`.
pub fn image(root: &Path) -> Result<PathBuf> {
    let binary = dist::dist(root)?;
    ensure_packages(&["podman"])?;
    let context = root.join("target/image/context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    fs::copy(&binary, context.join("leakhound"))?;
    fs::write(context.join("Containerfile"), CONTAINERFILE)?;
    let tag = tag();
    run(Command::new("podman")
        .args(["build", "--pull=never", "--tag", &tag, "--file"])
        .arg(context.join("Containerfile"))
        .arg(&context))?;
    let archive = root.join(format!(
        "target/image/leakhound-{}.tar",
        env!("CARGO_PKG_VERSION")
    ));
    let _ = fs::remove_file(&archive);
    // docker-archive: the format both `docker load` and `podman load` read.
    run(Command::new("podman")
        .args(["save", "--format", "docker-archive", "--output"])
        .arg(&archive)
        .arg(&tag))?;
    let files = layer_files(&archive)?;
    ensure!(
        files == ["leakhound"],
        "the image should hold only /leakhound, it holds {files:?}"
    );
    eprintln!(
        "xtask: image {tag} ({mib:.1} MiB, one layer: /leakhound): {path}\n  load it with: podman load -i {path}  (or docker load -i {path})",
        mib = fs::metadata(&archive)?.len() as f64 / (1 << 20) as f64,
        path = archive.display()
    );
    Ok(archive)
}

/// The files of every layer of a docker-archive, as `tar` lists them.
fn layer_files(archive: &Path) -> Result<Vec<String>> {
    let manifest = output(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("manifest.json"),
    )?;
    let manifest: serde_json::Value =
        serde_json::from_str(&manifest).context("the archive's manifest.json")?;
    let layers = manifest[0]["Layers"]
        .as_array()
        .context("no Layers in manifest.json")?;
    let mut files = Vec::new();
    for layer in layers {
        let layer = layer.as_str().context("a layer name")?;
        let listing = output(Command::new("sh").arg("-c").arg(format!(
            "tar -xOf '{}' '{layer}' | tar -t",
            archive.display()
        )))?;
        files.extend(
            listing
                .lines()
                .map(|line| line.trim_start_matches("./").to_owned())
                .filter(|line| !line.is_empty()),
        );
    }
    Ok(files)
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(out.status.success(), "{command:?} failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
