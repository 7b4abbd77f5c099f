//! JIT frames of real runtimes: Node.js (V8's perf map) and OpenJDK 17 (a perf map that
//! leakhound asks HotSpot for through the attach mechanism). Each target keeps 64 KiB of native
//! memory per simulated connection from a named function; the folded report must name that
//! function with its bytes within 5% of the target's own count.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tests::container::{SETUP, inside, quote};
use tests::process::{Proc, TIMEOUT};
use tests::report::{FoldedLine, Truth, parse_folded};
use tests::runtimes::{self, bytes_through, within_percent};
use tests::targets::read_truth;
use tests::{Run, arg, paths, read_report, serial};

/// Returns from the test, with a printed skip, unless `program` runs here.
macro_rules! require_program {
    ($test:expr, $program:expr, $flag:expr) => {
        if !runtimes::available($program, $flag) {
            println!("skipped: {} needs {}", $test, $program);
            return;
        }
    };
}

struct Traced {
    truth: Truth,
    lines: Vec<FoldedLine>,
    stderr: Vec<String>,
    /// Whether /tmp/perf-<pid>.map was left after the target exited.
    perf_map_left: bool,
}

/// Where the target runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Host,
    /// New PID and mount namespaces with a /tmp of their own, as in a container: the runtime
    /// is PID 1 there, and its perf map and attach socket exist only under its root.
    Container,
}

/// Runs `cmd` in new PID and mount namespaces, with a private tmpfs on /tmp. The host's /tmp
/// stays reachable at /mnt inside (the mount is the namespace's own), and arguments under /tmp
/// are rewritten to it: the checkout, and so the runtime's script or classes, may be under /tmp.
fn in_container(cmd: &Command) -> Command {
    let mut script = format!("{SETUP} && exec");
    for word in std::iter::once(cmd.get_program()).chain(cmd.get_args()) {
        script.push(' ');
        script.push_str(&quote(&inside(Path::new(word))));
    }
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--mount", "--pid", "--fork", "sh", "-c"])
        .arg(script);
    for (var, value) in cmd.get_envs() {
        match value {
            Some(value) => unshare.env(var, value),
            None => unshare.env_remove(var),
        };
    }
    unshare
}

/// Starts the runtime (which prints `ready <pid>` and waits), attaches leakhound, lets the
/// target allocate, and stops leakhound with SIGINT while the target is still alive: runtimes
/// free their native memory while they exit.
fn trace(test: &str, target_cmd: Command, place: Place) -> Traced {
    let dir = paths::scratch(test);
    let out = dir.join("out.folded");
    let mut target_cmd = match place {
        Place::Host => target_cmd,
        Place::Container => in_container(&target_cmd),
    };
    // The JVM's attach trigger may be created in its working directory: keep it in scratch.
    target_cmd.current_dir(&dir);
    let mut target = Proc::spawn(target_cmd, test, true);
    let ready = target
        .stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("ready line");
    let pid = match place {
        Place::Host => {
            assert_eq!(ready.trim_end(), format!("ready {}", target.pid()));
            target.pid()
        }
        Place::Container => {
            assert_eq!(
                ready.trim_end(),
                "ready 1",
                "the runtime is PID 1 in its namespace"
            );
            tests::process::only_child(target.pid())
        }
    }
    .to_string();
    let mut run = Run::start(&["record", "--pid", &pid, "-o", arg(&out)]);
    run.wait_attached();
    target.write_line("go");
    let truth = read_truth(&target.stdout, test);
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();
    target.write_line("");
    let status = target.wait_exit(TIMEOUT);
    assert!(status.success(), "{test}: the target exited with {status}");
    // V8 leaves its perf map behind (leakhound removes the JVM's, which it asked for).
    let perf_map = Path::new("/tmp").join(format!("perf-{pid}.map"));
    let left = perf_map.exists();
    let _ = std::fs::remove_file(&perf_map);

    let report = read_report(&out);
    let lines = parse_folded(&report).unwrap_or_else(|e| panic!("{e}\n{report}"));
    Traced {
        truth,
        lines,
        stderr: outcome.stderr,
        perf_map_left: left,
    }
}

/// Bytes through `frame`, checked against the truth of `function` within `percent`.
fn assert_named(traced: &Traced, function: &str, frame: &str, percent: u64) -> u64 {
    let truth = traced.truth[function];
    let named = bytes_through(&traced.lines, frame);
    let top: Vec<String> = {
        let mut lines = traced.lines.clone();
        lines.sort_by_key(|line| std::cmp::Reverse(line.bytes));
        lines.iter().take(5).map(FoldedLine::to_folded).collect()
    };
    eprintln!("{frame}: truth {truth}, named {named}");
    assert!(
        within_percent(truth, named, percent),
        "stacks through {frame} hold {named} bytes, the target kept {truth} (more than {percent}% apart); \
         largest stacks:\n{}",
        top.join("\n")
    );
    named
}

fn node(test: &str, flags: &[&str]) -> Command {
    node_warmed_up(test, flags, 0)
}

/// Node running the target after `warm_up` calls of acceptConnection made before `ready`.
fn node_warmed_up(test: &str, flags: &[&str], warm_up: u32) -> Command {
    let mut cmd = Command::new("node");
    cmd.args(flags)
        .arg(runtimes::node_script())
        .arg("200")
        .arg(warm_up.to_string());
    // Flags must come from the command line, as the test says; not from the environment.
    cmd.env_remove("NODE_OPTIONS");
    eprintln!("{test}: {cmd:?}");
    cmd
}

fn java(classes: &Path, flags: &[&str]) -> Command {
    let mut cmd = Command::new("java");
    cmd.args(flags)
        .arg("-cp")
        .arg(classes)
        .args(["JitLeak", "200"]);
    for var in ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS"] {
        cmd.env_remove(var);
    }
    cmd
}

/// The line of the target's `input.on('line', ...)` handler, which calls acceptConnection:
/// V8 names the anonymous function by its place.
fn line_handler() -> String {
    let script = std::fs::read_to_string(runtimes::node_script()).unwrap();
    let line = script
        .lines()
        .position(|line| line.contains("input.on('line'"))
        .expect("the script's line handler")
        + 1;
    format!("(anonymous jit_leak.js:{line})")
}

/// Bytes of the stacks in which `callers` (outermost first) call `function` directly, one
/// after the other, checked against the truth of `function` within `percent`.
fn assert_called_by(traced: &Traced, function: &str, callers: &[&str], percent: u64) {
    let truth = traced.truth[function];
    let mut chain: Vec<&str> = callers.to_vec();
    chain.push(function);
    let held: u64 = traced
        .lines
        .iter()
        .filter(|line| {
            line.frames
                .windows(chain.len())
                .any(|window| window.iter().zip(&chain).all(|(frame, want)| frame == want))
        })
        .map(|line| line.bytes)
        .sum();
    eprintln!("{}: truth {truth}, named {held}", chain.join(";"));
    assert!(
        within_percent(truth, held, percent),
        "stacks through {} hold {held} bytes, the target kept {truth}; stacks:\n{}",
        chain.join(";"),
        traced
            .lines
            .iter()
            .filter(|line| line.frames.iter().any(|f| f == function))
            .take(5)
            .map(FoldedLine::to_folded)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// What every Node test asks: the function that keeps the buffers is named with its bytes,
/// called by the script's line handler, called by EventEmitter's emit; no frame is left to
/// the interpreter's trampoline, and no flag is asked for.
fn assert_node_named(traced: &Traced) {
    assert_named(traced, "acceptConnection", "acceptConnection", 5);
    assert_called_by(traced, "acceptConnection", &["emit", &line_handler()], 5);
    let trampoline = bytes_through(&traced.lines, "Builtins_InterpreterEntryTrampoline");
    assert_eq!(
        trampoline, 0,
        "the interpreter's trampoline stands in for a function"
    );
    assert!(
        !traced
            .stderr
            .iter()
            .any(|l| l.contains("--perf-basic-prof")),
        "no hint about flags: {:?}",
        traced.stderr
    );
}

/// Node started with no flag at all: every JavaScript frame is read from V8's own metadata.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_without_flags_names_the_js_function_and_its_callers() {
    let test = "node_without_flags_names_the_js_function_and_its_callers";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let traced = trace(test, node(test, &[]), Place::Host);
    assert_node_named(&traced);
}

/// With the flags that make V8 write a perf map, the same answer: where both name a frame,
/// V8's metadata wins, and the two agree.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_names_the_js_function_that_keeps_buffers() {
    let test = "node_names_the_js_function_that_keeps_buffers";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let traced = trace(
        test,
        node(
            test,
            &["--perf-basic-prof", "--interpreted-frames-native-stack"],
        ),
        Place::Host,
    );
    assert_node_named(&traced);
}

/// `--perf-basic-prof` alone used to leave the calls made while a function was interpreted to
/// `Builtins_InterpreterEntryTrampoline`; V8's metadata names them too.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_with_perf_basic_prof_alone_names_every_call() {
    let test = "node_with_perf_basic_prof_alone_names_every_call";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let traced = trace(test, node(test, &["--perf-basic-prof"]), Place::Host);
    assert_node_named(&traced);
}

/// A Node process that has run a while before the attach, with no flag: acceptConnection was
/// called 5,000 times before and V8 has optimized it (TurboFan) by the time it is traced.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_running_a_while_before_the_attach() {
    let test = "node_running_a_while_before_the_attach";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let traced = trace(test, node_warmed_up(test, &[], 5000), Place::Host);
    assert_node_named(&traced);
}

/// Runs the JVM target with only -XX:+PreserveFramePointer at `place`, and checks that the
/// Java method that keeps the memory is named with its bytes.
fn jvm_with_preserve_frame_pointer(test: &str, place: Place) -> Traced {
    let _serial = serial();
    let classes = runtimes::java_classes();
    let traced = trace(test, java(&classes, &["-XX:+PreserveFramePointer"]), place);
    assert_named(
        &traced,
        "JitLeak.acceptConnection",
        "JitLeak.acceptConnection",
        5,
    );
    traced
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jvm_names_the_java_method_with_preserve_frame_pointer() {
    let test = "jvm_names_the_java_method_with_preserve_frame_pointer";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let traced = jvm_with_preserve_frame_pointer(test, Place::Host);
    // The whole stack: through the compiled method and the interpreter to the VM's entry.
    let whole = traced.lines.iter().any(|line| {
        line.frames.iter().any(|f| f == "JitLeak.acceptConnection")
            && line
                .frames
                .iter()
                .any(|f| f.starts_with("JavaCalls::call_helper"))
    });
    assert!(
        whole,
        "stacks of acceptConnection reach JavaCalls::call_helper"
    );
    assert!(
        !traced.perf_map_left,
        "the perf map that leakhound asked for is removed"
    );
    // The attach trigger is removed; nothing is left in the target's directories.
    let leftovers: Vec<_> =
        std::fs::read_dir(paths::target_dir().join("leakhound-tests").join(test))
            .expect("scratch dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with(".attach_pid"))
            .collect();
    assert!(
        leftovers.is_empty(),
        "attach trigger left behind: {leftovers:?}"
    );
}

/// Without `-XX:+PreserveFramePointer` compiled Java methods keep no frame pointer; they are
/// unwound by the frame sizes HotSpot records, so the method is named with no flag, and the
/// user is not told to add one (that is only said where the JVM's metadata cannot be read).
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jvm_without_preserve_frame_pointer_still_names_the_caller_of_native_code() {
    let test = "jvm_without_preserve_frame_pointer_still_names_the_caller_of_native_code";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let _serial = serial();
    let classes = runtimes::java_classes();
    let traced = trace(test, java(&classes, &[]), Place::Host);
    assert_named(
        &traced,
        "JitLeak.acceptConnection",
        "JitLeak.acceptConnection",
        5,
    );
    assert!(
        !traced
            .stderr
            .iter()
            .any(|line| line.contains("-XX:+PreserveFramePointer")),
        "no hint to add -XX:+PreserveFramePointer where the metadata reads: {:?}",
        traced.stderr
    );
}

/// A JVM that runs as another user: HotSpot accepts an attach only from its own effective uid
/// and gid (or root, as its user namespace sees it), so leakhound connects with its
/// credentials.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jvm_running_as_another_user() {
    let test = "jvm_running_as_another_user";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    require_program!(test, "setpriv", "--version");
    let _serial = serial();
    let classes = runtimes::java_classes();
    let inner = java(&classes, &["-XX:+PreserveFramePointer"]);
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for var in ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS"] {
        cmd.env_remove(var);
    }
    let traced = trace(test, cmd, Place::Host);
    assert_named(
        &traced,
        "JitLeak.acceptConnection",
        "JitLeak.acceptConnection",
        5,
    );
}

/// A V8 built without postmortem metadata: one line says why its frames cannot be read that
/// way, and its perf map names them as before, every byte kept.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_without_v8dbg_symbols_says_why_and_falls_back_to_its_perf_map() {
    let test = "node_without_v8dbg_symbols_says_why_and_falls_back_to_its_perf_map";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let mut cmd = Command::new(runtimes::node_without_postmortem());
    cmd.args(["--perf-basic-prof", "--interpreted-frames-native-stack"])
        .arg(runtimes::node_script())
        .arg("200");
    cmd.env_remove("NODE_OPTIONS");
    let traced = trace(test, cmd, Place::Host);
    let why: Vec<&String> = traced
        .stderr
        .iter()
        .filter(|line| line.contains("v8dbg_*"))
        .collect();
    assert_eq!(
        why.len(),
        1,
        "one line says why; stderr:\n{:?}",
        traced.stderr
    );
    assert!(
        why[0].contains("exports no v8dbg_* symbols") && why[0].contains("perf map"),
        "{}",
        why[0]
    );
    assert_named(&traced, "acceptConnection", "acceptConnection", 5);
    // One level up only: Node's own functions, which come from its startup snapshot, have no
    // entry of their own even with --interpreted-frames-native-stack, so `emit` stays
    // Builtins_InterpreterEntryTrampoline in a perf map.
    assert_called_by(&traced, "acceptConnection", &[&line_handler()], 5);
}

/// V8's collector moves functions: with every full collection compacting (`--stress-compaction`)
/// and one after every round of calls, the SharedFunctionInfos the stacks point to change
/// address while they are traced. A frame may then go unnamed, but never under the other
/// function's name: the two functions keep buffers of sizes that no sum of the other's makes,
/// so every stack named after one holds a whole number of its buffers. And no byte is lost.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_names_no_function_wrongly_while_the_collector_moves_them() {
    let test = "node_names_no_function_wrongly_while_the_collector_moves_them";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let mut cmd = Command::new("node");
    cmd.args(["--expose-gc", "--stress-compaction"])
        .arg(runtimes::node_moving_gc_script())
        .arg("30");
    cmd.env_remove("NODE_OPTIONS");
    let traced = trace(test, cmd, Place::Host);
    // The buffers themselves: Node's allocator is the frame that calls malloc.
    let buffers: Vec<&FoldedLine> = traced
        .lines
        .iter()
        .filter(|line| {
            line.frames
                .last()
                .is_some_and(|leaf| leaf.starts_with("node::NodeArrayBufferAllocator::"))
        })
        .collect();
    let truth_total: u64 = traced.truth.values().sum();
    let kept: u64 = buffers.iter().map(|line| line.bytes).sum();
    eprintln!("buffers: truth {truth_total}, kept {kept}");
    assert!(
        within_percent(truth_total, kept, 5),
        "buffers kept {kept}, the target kept {truth_total}"
    );
    for (function, size) in [("acceptConnection", 65_536), ("openSession", 20_000)] {
        let named: Vec<&&FoldedLine> = buffers
            .iter()
            .filter(|line| line.frames.iter().any(|frame| frame == function))
            .collect();
        for line in &named {
            assert_eq!(
                line.bytes % size,
                0,
                "a stack named {function} holds another function's buffers: {}",
                line.to_folded()
            );
        }
        let bytes: u64 = named.iter().map(|line| line.bytes).sum();
        let truth = traced.truth[function];
        eprintln!("{function}: truth {truth}, named {bytes}");
        assert!(bytes <= truth, "{function}: {bytes} named, {truth} kept");
        // Measured: 30% to 70% here. Each round's code has moved, so its first stacks are
        // walked in user space from a copy, after the allocation, and a frame whose function
        // has moved by then keeps its return address: unnamed, not misnamed. The floor only
        // says that naming goes on while functions move.
        assert!(
            bytes * 10 >= truth,
            "{function}: only {bytes} of {truth} bytes named"
        );
    }
}

/// Node in a container, with no flag: its binary is read through its own root, its memory
/// by its host PID.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn node_in_its_own_pid_and_mount_namespaces() {
    let test = "node_in_its_own_pid_and_mount_namespaces";
    require_program!(test, "node", "--version");
    let _serial = serial();
    let traced = trace(test, node(test, &[]), Place::Container);
    assert_node_named(&traced);
}

/// A JVM in a container: PID 1 in its namespace, with its attach socket and perf map in a
/// /tmp of its own.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn jvm_in_its_own_pid_and_mount_namespaces() {
    let test = "jvm_in_its_own_pid_and_mount_namespaces";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    jvm_with_preserve_frame_pointer(test, Place::Container);
}
