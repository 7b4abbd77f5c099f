//! Harness for leakhound's integration tests: C targets that know their own outstanding bytes
//! (targets/*.c), the real leakhound binary run against them, and the comparison of the two.
//!
//! Tests that need root are `#[ignore]`d with that reason (`cargo xtask test` runs them as root,
//! with `--include-ignored`); every test that runs leakhound holds
//! [`serial()`], since the machine has 2 cores and the probe checks need no other tracer.

pub mod container;
pub mod empty_root;
pub mod fake_jvm;
pub mod frame_pointer_targets;
pub mod ingest_receiver;
pub mod memory_cgroup;
pub mod pprof;
pub mod probes;
pub mod process;
pub mod report;
pub mod runtimes;
pub mod targets;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use process::{Proc, TIMEOUT};
use report::Truth;

pub mod paths {
    use std::path::{Path, PathBuf};

    /// Cargo's target directory, found from the test binary (`<target>/<profile>/deps/<bin>`),
    /// so that CARGO_TARGET_DIR is honoured.
    pub fn target_dir() -> PathBuf {
        let exe = std::env::current_exe().expect("current_exe");
        exe.ancestors()
            .nth(3)
            .filter(|dir| dir.join("CACHEDIR.TAG").exists())
            .map_or_else(|| workspace().join("target"), Path::to_path_buf)
    }

    pub fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_path_buf()
    }

    /// A fresh, empty directory for one test's outputs.
    pub fn scratch(test: &str) -> PathBuf {
        let dir = target_dir().join("leakhound-tests").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dir
    }
}

/// The leakhound binary: $LEAKHOUND_BIN, else target/release, else target/debug.
pub fn leakhound_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LEAKHOUND_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "LEAKHOUND_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    let mut dirs = vec![paths::target_dir()];
    let default = paths::workspace().join("target");
    if !dirs.contains(&default) {
        dirs.push(default);
    }
    let candidates: Vec<PathBuf> = ["release", "debug"]
        .iter()
        .flat_map(|profile| dirs.iter().map(move |d| d.join(profile).join("leakhound")))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "no leakhound binary (looked at {candidates:?}); run `cargo build --release -p tracer-user` \
             first, or set LEAKHOUND_BIN"
        )
    })
}

/// The leakhound binary built with the `fault-injection` feature, for the tests that make
/// attaching fail on purpose: $LEAKHOUND_FAULT_BIN, else `leakhound-fault-injection` beside
/// the binary of [`leakhound_bin`] (`cargo xtask test` builds it there). The shipped binary
/// has no fault injection, so these tests cannot use it.
pub fn leakhound_fault_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("LEAKHOUND_FAULT_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "LEAKHOUND_FAULT_BIN={} does not exist",
            bin.display()
        );
        return bin;
    }
    let bin = leakhound_bin().with_file_name(FAULT_BIN_NAME);
    assert!(
        bin.is_file(),
        "no {} (the binary with fault injection); `cargo xtask test` builds it, or: \
         cargo build --release -p tracer-user --features fault-injection && \
         cp target/release/leakhound target/release/{FAULT_BIN_NAME} && \
         cargo build --release -p tracer-user",
        bin.display()
    );
    bin
}

/// The file name of the binary with fault injection, beside the plain one.
pub const FAULT_BIN_NAME: &str = "leakhound-fault-injection";

/// Serializes every test that runs leakhound, across the threads of one test binary and across
/// concurrent `cargo test` processes (the flock).
pub struct Serial {
    _thread: MutexGuard<'static, ()>,
    _file: File,
}

pub fn serial() -> Serial {
    static LOCK: Mutex<()> = Mutex::new(());
    let thread = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = paths::target_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join("leakhound-tests.lock");
    let file = File::create(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    // SAFETY: flock takes an fd we own for the whole call; the lock is released when the file
    // is closed, which Serial's drop does.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    Serial {
        _thread: thread,
        _file: file,
    }
}

/// A running leakhound, its stderr forwarded to the test's stderr.
pub struct Run {
    pub proc: Proc,
}

impl Run {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(leakhound_bin()), args)
    }

    /// Runs leakhound through `cmd` (setpriv, say), which must already name the binary.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Self {
        probes::assert_clean("already loaded before this leakhound run started");
        cmd.args(args);
        eprintln!("running {cmd:?}");
        Run {
            proc: Proc::spawn(cmd, "leakhound", true),
        }
    }

    /// Waits for the single `leakhound: attached` line; returns it.
    pub fn wait_attached(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while let Some(line) = self.proc.stderr.next(deadline, "`leakhound: attached`") {
            if line.starts_with("leakhound: attached") {
                return line;
            }
        }
        let status = self.proc.wait_exit(TIMEOUT);
        panic!(
            "leakhound exited ({status}) without attaching; stderr:\n{}",
            self.proc.stderr.snapshot().join("\n")
        );
    }

    pub fn signal(&self, sig: libc::c_int) {
        self.proc.signal(sig);
    }

    /// Waits for exit (killing it at the timeout), then checks that no probe outlived it.
    pub fn finish(mut self) -> Outcome {
        let status = self.proc.wait_exit(TIMEOUT);
        // A launched target may share leakhound's stdin, stdout and stderr: closing the stdin
        // lets a target that still waits for "go" leave, so the pipes reach EOF.
        self.proc.close_stdin();
        let deadline = Instant::now() + TIMEOUT;
        let stderr = self.proc.stderr.drain(deadline);
        let stdout = self.proc.stdout.drain(deadline);
        let attached = stderr
            .iter()
            .filter(|l| l.starts_with("leakhound: attached"))
            .count();
        assert!(
            attached <= 1,
            "leakhound printed `leakhound: attached` {attached} times"
        );
        probes::assert_clean("left behind after leakhound exited");
        Outcome {
            status,
            stdout,
            stderr,
        }
    }
}

/// How a leakhound run ended.
pub struct Outcome {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Outcome {
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "leakhound exited with {}; stderr:\n{}",
            self.status,
            self.stderr.join("\n")
        );
    }

    /// The lines from `leakhound: error:` on: the cause, then the hint.
    fn error_text(&self) -> String {
        let stderr = self.stderr.join("\n");
        let code = self.status.code();
        assert!(
            code.is_some_and(|c| c != 0),
            "leakhound should have failed with an exit code, got {}; stderr:\n{stderr}",
            self.status
        );
        let at = stderr
            .find("leakhound: error:")
            .unwrap_or_else(|| panic!("no `leakhound: error:` line in stderr:\n{stderr}"));
        let text = &stderr[at..];
        assert!(
            text.lines().skip(1).any(|l| l.starts_with("  hint: ")),
            "no `  hint: ` line after the error line in stderr:\n{stderr}"
        );
        text.to_owned()
    }

    /// Failed with an error whose cause or hint contains `keyword` (any case).
    pub fn assert_error(&self, keyword: &str) {
        let text = self.error_text();
        assert!(
            text.to_lowercase().contains(&keyword.to_lowercase()),
            "the error should mention {keyword:?}; it said:\n{text}"
        );
    }

    /// Failed with an error whose hint contains `word` exactly.
    pub fn assert_hint_mentions(&self, word: &str) {
        let text = self.error_text();
        let hint = &text[text.find("\n  hint: ").map_or(0, |i| i + 1)..];
        assert!(
            hint.contains(word),
            "the hint should mention {word:?}; it said:\n{text}"
        );
    }

    /// Failed (usage errors come from the argument parser and need not follow the error format).
    pub fn assert_failed(&self) {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "leakhound should have refused, got {}; stderr:\n{}",
            self.status,
            self.stderr.join("\n")
        );
        assert!(
            !self.stderr.is_empty(),
            "leakhound failed without saying why"
        );
    }
}

/// A truth target that leakhound is attached to by PID, after it allocated and told its truth.
pub struct AttachedTrace {
    pub target: targets::Target,
    pub run: Run,
    pub truth: Truth,
    /// The folded report leakhound writes when it stops.
    pub out: PathBuf,
}

/// Starts `exe`, attaches `leakhound record --pid PID -o <scratch>/out.folded` and `extra`,
/// lets the target allocate and reads its truth. The caller ends the trace its own way.
pub fn attach_to_truth_target(test: &str, exe: &Path, extra: &[&str]) -> AttachedTrace {
    let out = paths::scratch(test).join("out.folded");
    let mut target = targets::Target::start(exe, &[]);
    let pid = target.pid().to_string();
    let mut args = vec!["record", "--pid", &pid, "-o", arg(&out)];
    args.extend_from_slice(extra);
    let mut run = Run::start(&args);
    run.wait_attached();
    target.go();
    let truth = target.read_truth();
    AttachedTrace {
        target,
        run,
        truth,
        out,
    }
}

/// The usual attached trace: attach, allocate, SIGINT, check that leakhound succeeded and that
/// the target still exits cleanly. Returns the truth and the folded report.
pub fn trace_attached(test: &str, exe: &Path, extra: &[&str]) -> (Truth, String) {
    let AttachedTrace {
        mut target,
        run,
        truth,
        out,
    } = attach_to_truth_target(test, exe, extra);
    run.signal(libc::SIGINT);
    run.finish().assert_success();
    let folded = read_report(&out);
    target.release();
    (truth, folded)
}

/// Launches `exe --now --exit` under `leakhound record -o <scratch>/out.folded` and `extra`,
/// through `via` (a command such as `unshare ...` that runs leakhound) when given. The target's
/// truth comes through leakhound's stdout. Returns the truth and the folded report.
pub fn trace_launched(
    test: &str,
    via: Option<Command>,
    exe: &Path,
    extra: &[&str],
) -> (Truth, String) {
    let out = paths::scratch(test).join("out.folded");
    let mut args = vec!["record", "-o", arg(&out)];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", arg(exe), "--now", "--exit"]);
    let run = match via {
        Some(cmd) => Run::start_with(cmd, &args),
        None => Run::start(&args),
    };
    let truth = targets::read_truth(&run.proc.stdout, test);
    run.finish().assert_success();
    (truth, read_report(&out))
}

pub fn read_report(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("leakhound's report {}: {e}", path.display()))
}

/// Parses a folded report and checks every known function against the truth, printing the table.
pub fn assert_matches_truth(truth: &Truth, folded: &str) {
    let lines =
        report::parse_folded(folded).unwrap_or_else(|e| panic!("{e}\nwhole report:\n{folded}"));
    let known: BTreeSet<String> = truth.keys().cloned().collect();
    let attribution = report::attribute(&lines, &known);
    match report::compare(truth, &attribution) {
        Ok(table) => eprintln!("{table}"),
        Err(table) => panic!("traced bytes differ from the truth:\n{table}"),
    }
}

/// Path as &str, for argument lists.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
