#!/usr/bin/env bash
# Installs everything leakhound needs to build and test, idempotently.
# Measured facts behind each step: shared/TOOLCHAIN.md (kernel 6.18, Debian 12, root).
set -euo pipefail

# The eBPF crate needs nightly for `-Z build-std=core`. Pinned by date: bpf-linker is built
# against this toolchain's own libLLVM (22), and a later nightly may move to another LLVM major.
NIGHTLY="${LEAKHOUND_NIGHTLY:-nightly-2026-05-20}"
BPF_LINKER_VERSION=0.13.0
# Builds and runs the fuzz targets in fuzz/ (`cargo xtask fuzz`), with the nightly above.
CARGO_FUZZ_VERSION=0.13.2
CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
export PATH="$CARGO_HOME/bin:$PATH"

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages the build and the tests use. gcc/g++ build the ground-truth targets;
# bpftool lets the tests check that no BPF link outlives a run; golang provides `go tool pprof`
# and builds the Go target; jemalloc (shared and static), tcmalloc and mimalloc are the
# allocators tests/tests/allocators.rs traces; binutils strips the static target.
DEB_PACKAGES=(gcc g++ libc6-dev binutils bpftool golang-go libjemalloc2 libjemalloc-dev libtcmalloc-minimal4 libmimalloc2.0)
# musl-gcc builds a target against musl, whose mapping functions differ from glibc's
# (tests/tests/committed.rs).
DEB_PACKAGES+=(musl-tools)
# The runtimes whose JIT frames tests/tests/runtimes.rs names (javac compiles its target).
DEB_PACKAGES+=(nodejs openjdk-17-jdk-headless)
# `ip` brings up the loopback of the network namespace that tests/tests/js_heap.rs gives Node.
DEB_PACKAGES+=(iproute2)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# clippy with it, to lint the eBPF crate for its real target (cargo xtask test).
installed="$(rustup component list --toolchain "$NIGHTLY" --installed 2>/dev/null || true)"
if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1 ||
    ! grep -q '^rust-src' <<<"$installed" || ! grep -q '^clippy' <<<"$installed"; then
    log "installing $NIGHTLY with rust-src and clippy"
    rustup toolchain install "$NIGHTLY" --profile minimal --component rust-src --component clippy
fi

# The static build (`cargo xtask dist`): Rust's musl target links musl into the binary, so a
# debug pod needs no libc. Every C part of leakhound's dependencies is pure Rust, so no musl
# C toolchain is needed.
STATIC_TARGET=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$STATIC_TARGET"; then
    log "installing the Rust target $STATIC_TARGET"
    rustup target add "$STATIC_TARGET"
fi

if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    # bpf-linker links against any libLLVM found under LLVM_PREFIX. The nightly ships its own
    # libLLVM; expose it as <prefix>/lib/libLLVM.so plus a link named by its soname. The
    # binary's RUNPATH points at the prefix, so it lives under CARGO_HOME, not /tmp.
    sysroot="$(rustup run "$NIGHTLY" rustc --print sysroot)"
    libllvm="$(find "$sysroot/lib" -maxdepth 1 -name 'libLLVM.so.*' | head -n1)"
    [[ -n "$libllvm" ]] || { log "no libLLVM.so.* in $sysroot/lib"; exit 1; }
    prefix="$CARGO_HOME/leakhound-llvm"
    mkdir -p "$prefix/lib"
    ln -sf "$libllvm" "$prefix/lib/libLLVM.so"
    ln -sf "$libllvm" "$prefix/lib/$(basename "$libllvm")"
    llvm_major="$(basename "$libllvm" | sed -E 's/libLLVM\.so\.([0-9]+).*/\1/')"
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM $llvm_major ($libllvm)"
    LLVM_PREFIX="$prefix" cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked \
        --no-default-features --features "llvm-$llvm_major" --quiet
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install "cargo-fuzz@$CARGO_FUZZ_VERSION" --locked --quiet
fi
log "ready: $(rustup run "$NIGHTLY" rustc --version), $(bpf-linker --version), $(cargo fuzz --version)"
