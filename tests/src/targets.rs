//! Building the C ground-truth targets, and driving one through the protocol of truth.h.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::paths;
use crate::process::{Proc, TIMEOUT};
use crate::report::{Truth, TruthLine, parse_truth_line};

/// Flags from the brief: -O2 without frame pointers is how the tracer meets real code, and
/// -g gives the symbolizer the function names.
const CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fomit-frame-pointer",
    "-pthread",
    "-Wall",
    "-Wextra",
];

/// The dynamically linked target with one function per hooked allocation call.
pub fn alloc_family() -> PathBuf {
    build("alloc_family", false)
}

/// A trivial target linked with -static: no libc.so, but glibc's malloc is in its .symtab.
pub fn static_target() -> PathBuf {
    build("static_target", true)
}

/// [`static_target`] without its symbol table: no allocator leakhound can find.
pub fn static_target_stripped() -> PathBuf {
    let built = static_target();
    let stripped = built.with_file_name("static_target.stripped");
    if newer_than(&stripped, &[&built]) {
        return stripped;
    }
    let out = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&built)
        .output()
        .unwrap_or_else(|e| panic!("cannot run strip (binutils): {e}"));
    assert!(out.status.success(), "strip failed: {out:?}");
    stripped
}

/// Debian's static jemalloc (libjemalloc-dev), which [`alloc_family_jemalloc_static`] links.
pub const JEMALLOC_ARCHIVE: &str = "/usr/lib/x86_64-linux-gnu/libjemalloc_pic.a";

/// alloc_family.c with jemalloc linked into the executable: its malloc is the executable's.
pub fn alloc_family_jemalloc_static() -> PathBuf {
    build_source(
        "alloc_family.c",
        "alloc_family.jemalloc-static",
        CFLAGS,
        &[JEMALLOC_ARCHIVE, "-lm"],
    )
}

/// Compiles `targets/<name>.c` unless the binary is newer than its sources.
fn build(name: &str, static_link: bool) -> PathBuf {
    let flags: Vec<&str> = CFLAGS
        .iter()
        .copied()
        .chain(static_link.then_some("-static"))
        .collect();
    build_source(&format!("{name}.c"), name, &flags, &[])
}

/// `targets/anon_code.c`: malloc called from a stub in anonymous executable memory, as JIT
/// code calls it; with frame pointers, so the walk goes on past the stub.
pub fn anon_code() -> PathBuf {
    let flags: Vec<&str> = CFLAGS
        .iter()
        .map(|f| match *f {
            "-fomit-frame-pointer" => "-fno-omit-frame-pointer",
            other => other,
        })
        .collect();
    build_source("anon_code.c", "anon_code", &flags, &[])
}

/// `targets/call_chain.c`: main -> level_one -> level_two -> malloc, and another path into
/// level_two, -O2 without frame pointers.
pub fn call_chain() -> PathBuf {
    build("call_chain", false)
}

/// `targets/sampled_mix.c`: 100,000s of blocks of known sizes, for byte sampling.
pub fn sampled_mix() -> PathBuf {
    build("sampled_mix", false)
}

/// `targets/call_site_burst.c`: 120,000 allocations from 1,200 call paths, in one burst.
pub fn call_site_burst() -> PathBuf {
    build("call_site_burst", false)
}

/// `targets/job_control.c`: leaks a block and prints `tick N` every 20 ms until a line
/// arrives on stdin, for stopping and continuing it under leakhound.
pub fn job_control() -> PathBuf {
    build("job_control", false)
}

/// `targets/exec_after_leak.c`: leaks 10 blocks of 1000 bytes, then execs `/bin/sleep 60`
/// on a line from stdin.
pub fn exec_after_leak() -> PathBuf {
    build("exec_after_leak", false)
}

/// `targets/oom_leak.c`: holds 100 blocks of 1000 bytes, then leaks 1 MiB blocks (filled)
/// until the OOM killer ends it.
pub fn oom_leak() -> PathBuf {
    build("oom_leak", false)
}

/// `targets/committed.c`: memory opened with mprotect inside PROT_NONE reservations (one
/// made before attach), closed again, unmapped and replaced, per function.
pub fn committed() -> PathBuf {
    build("committed", false)
}

/// `targets/thread_stacks.c`: six threads with stacks of 256 KiB to 1.5 MiB, kept alive.
pub fn thread_stacks() -> PathBuf {
    build("thread_stacks", false)
}

/// `targets/thread_entry.c`: allocations on three threads, -O2 without frame pointers.
pub fn thread_entry() -> PathBuf {
    build("thread_entry", false)
}

/// `targets/hostile_names.c`: allocations through stubs in anonymous executable memory that
/// its own perf map names with terminal escapes, markup, separators and a huge name.
pub fn hostile_names() -> PathBuf {
    build("hostile_names", false)
}

/// `targets/cxx_strings.cc`: std::string and strdup from C++ built -O2 without frame pointers.
pub fn cxx_strings() -> PathBuf {
    let flags: Vec<&str> = CFLAGS.iter().copied().filter(|f| *f != "-Wextra").collect();
    build_source("cxx_strings.cc", "cxx_strings", &flags, &[])
}

/// Compiles `targets/<source>` (C, or C++ by its `.cc` extension) with `flags`, and `libs`
/// after the source, into `<target dir>/leakhound-targets/<output>`, unless that is newer
/// than its sources.
pub fn build_source(source: &str, output: &str, flags: &[&str], libs: &[&str]) -> PathBuf {
    build_source_with(None, source, output, flags, libs)
}

/// `targets/committed.c` built against musl (`musl-gcc`, Debian's musl-tools), dynamically
/// linked: its mapping functions have another shape than glibc's.
pub fn committed_musl() -> PathBuf {
    build_source_with(
        Some("musl-gcc"),
        "committed.c",
        "committed_musl",
        CFLAGS,
        &[],
    )
}

/// [`build_source`] with `compiler` instead of `$CC`/`$CXX` or `cc`/`c++`.
fn build_source_with(
    compiler: Option<&str>,
    source: &str,
    output: &str,
    flags: &[&str],
    libs: &[&str],
) -> PathBuf {
    // Tests in one binary run on parallel threads; one compiler at a time is plenty.
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
    let source_path = src_dir.join(source);
    let header = src_dir.join("truth.h");
    let out_dir = paths::target_dir().join("leakhound-targets");
    let output_path = out_dir.join(output);
    if newer_than(&output_path, &[&source_path, &header]) {
        return output_path;
    }
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", out_dir.display()));
    // Built under a temporary name and renamed, so a concurrent `cargo test` never runs half a file.
    let partial = out_dir.join(format!("{output}.partial.{}", std::process::id()));
    let (variable, default) = if source.ends_with(".cc") {
        ("CXX", "c++")
    } else {
        ("CC", "cc")
    };
    let cc = compiler.map_or_else(
        || std::env::var(variable).unwrap_or_else(|_| default.to_owned()),
        str::to_owned,
    );
    let mut cmd = Command::new(&cc);
    cmd.args(flags)
        .arg("-o")
        .arg(&partial)
        .arg(&source_path)
        .args(libs);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc} (install gcc and g++): {e}"));
    let diagnostics = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{diagnostics}",
        out.status
    );
    if !diagnostics.trim().is_empty() {
        eprintln!("{cc} warnings for {source}:\n{diagnostics}");
    }
    std::fs::rename(&partial, &output_path)
        .unwrap_or_else(|e| panic!("renaming to {}: {e}", output_path.display()));
    output_path
}

pub(crate) fn newer_than(output: &Path, sources: &[&Path]) -> bool {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(output) else {
        return false;
    };
    sources
        .iter()
        .all(|s| mtime(s).unwrap_or(SystemTime::UNIX_EPOCH) <= built)
}

/// A running target that has printed `ready <pid>` and waits for "go".
pub struct Target {
    pub proc: Proc,
}

impl Target {
    pub fn start(exe: &Path, args: &[&str]) -> Self {
        Self::start_with_env(exe, args, &[])
    }

    /// [`Target::start`] with extra environment variables (`LD_PRELOAD`, say).
    pub fn start_with_env(exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let name = exe
            .file_name()
            .map_or_else(|| "target".to_owned(), |n| n.to_string_lossy().into_owned());
        let mut cmd = Command::new(exe);
        cmd.args(args);
        cmd.envs(env.iter().copied());
        let proc = Proc::spawn_ready(cmd, &name);
        Target { proc }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.proc.pid()
    }

    /// Lets the target allocate.
    pub fn go(&mut self) {
        self.proc.write_line("go");
    }

    pub fn read_truth(&self) -> Truth {
        read_truth(&self.proc.stdout, self.proc.name())
    }

    /// Traces the target's work: `record --pid` with a sample every 500 ms writing `outputs`,
    /// attached before "go" and stopped with SIGINT once the target has printed its truth
    /// (while it still runs); then the target is released. Returns the truth.
    pub fn record_its_work(mut self, outputs: &[&Path]) -> Truth {
        let pid = self.pid().to_string();
        let mut args = vec!["record", "--pid", &pid, "--interval", "500ms"];
        for output in outputs {
            args.extend(["-o", crate::arg(output)]);
        }
        let mut run = crate::Run::start(&args);
        run.wait_attached();
        self.go();
        let truth = self.read_truth();
        run.signal(libc::SIGINT);
        run.finish().assert_success();
        self.release();
        truth
    }

    /// Ends a target that waits after `done` and checks that it exits cleanly; a probe left
    /// behind in it (a uretprobe's trampoline, say) tends to show up here as a crash.
    pub fn release(&mut self) {
        if let Some(status) = self.proc.try_status() {
            panic!(
                "{} ended ({status}) before it was released",
                self.proc.name()
            );
        }
        self.proc.write_line("");
        let status = self.proc.wait_exit(TIMEOUT);
        assert!(
            status.success(),
            "{} exited with {status} after tracing",
            self.proc.name()
        );
    }
}

/// Reads `truth` lines until `done`, skipping other lines (`ready`, ...).
pub fn read_truth(lines: &crate::process::Lines, name: &str) -> Truth {
    let deadline = Instant::now() + TIMEOUT;
    let mut truth = Truth::new();
    loop {
        let line = lines
            .next(deadline, "truth lines and `done`")
            .unwrap_or_else(|| panic!("{name}'s output ended before `done`; got {truth:?}"));
        match parse_truth_line(&line).unwrap_or_else(|e| panic!("{name}: {e}")) {
            TruthLine::Truth { function, bytes } => {
                truth.insert(function, bytes);
            }
            TruthLine::Done => break,
            TruthLine::Other => {}
        }
    }
    assert!(
        !truth.is_empty(),
        "{name} printed `done` without any truth line"
    );
    truth
}

/// targets/go_heap/main.go, built with Debian's golang-go: a Go program without cgo, so
/// statically linked with no libc and no malloc, whose heap grows through the runtime's mmap.
pub fn go_heap() -> PathBuf {
    go_program("go_heap")
}

/// targets/go_sub_slices/main.go: keeps 1 MiB buffers alive through 1-byte sub-slices beside
/// a path that churns as many; without cgo.
pub fn go_sub_slices() -> PathBuf {
    go_program("go_sub_slices")
}

/// Builds `targets/<name>/main.go` without cgo, unless the binary is newer than its source.
fn go_program(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _guard = BUILD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("targets/{name}/main.go"));
    let out_dir = paths::target_dir().join("leakhound-targets");
    let output = out_dir.join(name);
    if newer_than(&output, &[&source]) {
        return output;
    }
    std::fs::create_dir_all(&out_dir)
        .unwrap_or_else(|e| panic!("creating {}: {e}", out_dir.display()));
    let partial = out_dir.join(format!("{name}.partial.{}", std::process::id()));
    // One file and the standard library only: no module, and caches under target/ so that
    // the build needs no HOME.
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(&source)
        .env("CGO_ENABLED", "0")
        .env("GO111MODULE", "off")
        .env("GOCACHE", out_dir.join("go-cache"))
        .env("GOPATH", out_dir.join("go-path"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run go (Debian package golang-go): {e}"));
    assert!(
        out.status.success(),
        "go build failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&partial, &output)
        .unwrap_or_else(|e| panic!("renaming to {}: {e}", output.display()));
    output
}

/// `targets/fake_jvm.c`: a process that passes for a JVM and sets traps for the attach
/// handshake (see [`crate::fake_jvm`]).
pub fn fake_jvm() -> PathBuf {
    build("fake_jvm", false)
}

/// `targets/fake_libjvm.c` as a shared object named `libjvm.so`, for [`fake_jvm`] to map.
pub fn fake_libjvm() -> PathBuf {
    build_source(
        "fake_libjvm.c",
        "libjvm.so",
        &["-O2", "-shared", "-fPIC", "-Wall", "-Wextra"],
        &[],
    )
}
