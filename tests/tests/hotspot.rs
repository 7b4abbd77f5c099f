//! HotSpot's own metadata, checked against the JVM itself. A JVM 17 started with no flags at
//! all writes its perf map on request (`jcmd PID Compiler.perfmap`); every compiled Java
//! method in it must resolve, through leakhound's walk of the code heaps (`leakhound
//! debug-jvm`), to a blob with the same code bounds and the same `package.Class.method`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tests::process::{Proc, TIMEOUT};
use tests::report::parse_folded;
use tests::runtimes::{bytes_through, within_percent};
use tests::targets::{build_source, read_truth};
use tests::{Run, arg, leakhound_bin, paths, read_report, runtimes, serial};

macro_rules! require_program {
    ($test:expr, $program:expr, $flag:expr) => {
        if !runtimes::available($program, $flag) {
            println!("skipped: {} needs {}", $test, $program);
            return;
        }
    };
}

/// One line of the perf map.
struct MapEntry {
    start: u64,
    size: u64,
    name: String,
}

fn parse_perf_map(text: &str) -> Vec<MapEntry> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ' ');
            Some(MapEntry {
                start: hex(fields.next()?)?,
                size: hex(fields.next()?)?,
                name: fields.next()?.to_owned(),
            })
        })
        .collect()
}

/// `void pkg.Class.method(int, long)` → `pkg.Class.method`; `None` for stubs and such.
fn java_method(name: &str) -> Option<&str> {
    let (_, rest) = name.split_once(' ')?;
    let (method, params) = rest.split_once('(')?;
    (params.ends_with(')') && method.contains('.')).then_some(method)
}

/// One line of `leakhound debug-jvm --pcs`: kind, code bounds, name and source by pc.
struct Resolved {
    kind: String,
    code: (u64, u64),
    name: String,
    source: String,
    /// The Java frames at the pc, outermost first, `;` between, each `:line` where known.
    frames: String,
}

fn parse_resolved(stdout: &str) -> HashMap<u64, Resolved> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    stdout
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let pc = hex(fields.first()?)?;
            let resolved = if fields.len() >= 9 {
                Resolved {
                    kind: fields[1].to_owned(),
                    code: (hex(fields[3])?, hex(fields[4])?),
                    name: fields[7].to_owned(),
                    source: fields[8].to_owned(),
                    frames: fields.get(9).copied().unwrap_or_default().to_owned(),
                }
            } else {
                Resolved {
                    kind: fields.get(1..)?.join(" "),
                    code: (0, 0),
                    name: String::new(),
                    source: String::new(),
                    frames: String::new(),
                }
            };
            Some((pc, resolved))
        })
        .collect()
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn compiled_java_methods_resolve_through_the_code_heaps_of_a_jvm_without_flags() {
    let test = "compiled_java_methods_resolve_through_the_code_heaps_of_a_jvm_without_flags";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    require_program!(test, "jcmd", "-h");
    let _serial = serial();
    check_jvm(test, Path::new("java"), Path::new("jcmd"));
}

/// The same against every other JDK installed under /usr/lib/jvm (Temurin 25 here), whose
/// CodeBlob layout differs: offsets instead of pointers, and a kind field.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn compiled_java_methods_resolve_in_other_installed_jdks() {
    let test = "compiled_java_methods_resolve_in_other_installed_jdks";
    require_program!(test, "javac", "-version");
    for_other_jdks(test, |home| {
        check_jvm(test, &home.join("bin/java"), &home.join("bin/jcmd"));
    });
}

/// Runs `check` on the home of every other installed JDK, under the serial lock; a machine
/// with none says so and passes.
fn for_other_jdks(test: &str, mut check: impl FnMut(&Path)) {
    let others = other_jdks();
    if others.is_empty() {
        println!("skipped: {test} found no JDK but the default one under /usr/lib/jvm");
        return;
    }
    let _serial = serial();
    for home in others {
        eprintln!("{test}: {}", home.display());
        check(&home);
    }
}

/// JDK homes under /usr/lib/jvm of another major version than the default `java`'s, one per
/// version (Debian installs the same JDK under several names).
fn other_jdks() -> Vec<PathBuf> {
    let major = |release: &str| -> Option<String> {
        let line = release
            .lines()
            .find_map(|l| l.strip_prefix("JAVA_VERSION="))?;
        Some(line.trim_matches('"').split('.').next()?.to_owned())
    };
    let default = std::fs::canonicalize(
        Command::new("sh")
            .args(["-c", "readlink -f \"$(command -v java)\""])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
    )
    .ok()
    .and_then(|java| Some(java.parent()?.parent()?.join("release")))
    .and_then(|release| std::fs::read_to_string(release).ok())
    .and_then(|text| major(&text));
    let mut seen = Vec::new();
    let mut homes = Vec::new();
    let Ok(dir) = std::fs::read_dir("/usr/lib/jvm") else {
        return homes;
    };
    let mut entries: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
    entries.sort();
    for home in entries {
        let Some(version) = std::fs::read_to_string(home.join("release"))
            .ok()
            .and_then(|text| major(&text))
        else {
            continue;
        };
        if Some(&version) == default.as_ref()
            || seen.contains(&version)
            || !home.join("bin/java").is_file()
            || !home.join("bin/jcmd").is_file()
        {
            continue;
        }
        seen.push(version);
        homes.push(home);
    }
    homes
}

/// Starts JitLeak under `java` with no flags, has `jcmd` make it write its perf map, and checks
/// leakhound's resolution of every compiled Java method and of the interpreter against it.
fn check_jvm(test: &str, java: &Path, jcmd: &Path) {
    let dir = paths::scratch(test);
    let classes = runtimes::java_classes();

    // No flags beyond a small heap: the point is a JVM as it is usually started.
    let mut cmd = Command::new(java);
    cmd.arg("-Xmx64m")
        .arg("-cp")
        .arg(&classes)
        .args(["JitLeak", "10"])
        .current_dir(&dir);
    for var in ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS"] {
        cmd.env_remove(var);
    }
    let mut jvm = Proc::spawn(cmd, "java", true);
    let ready = jvm
        .stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("ready line");
    let pid = jvm.pid();
    assert_eq!(ready.trim_end(), format!("ready {pid}"));

    // The ground truth: the JVM's own list of its code.
    let jcmd = Command::new(jcmd)
        .args(["-J-Xmx64m", &pid.to_string(), "Compiler.perfmap"])
        .output()
        .expect("running jcmd");
    assert!(
        jcmd.status.success(),
        "jcmd failed: {}",
        String::from_utf8_lossy(&jcmd.stderr)
    );
    let map_path = Path::new("/tmp").join(format!("perf-{pid}.map"));
    let map_text = std::fs::read_to_string(&map_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", map_path.display()));
    let _ = std::fs::remove_file(&map_path);
    let entries = parse_perf_map(&map_text);
    let java: Vec<&MapEntry> = entries
        .iter()
        .filter(|e| java_method(&e.name).is_some())
        .collect();
    let interpreter = entries
        .iter()
        .find(|e| e.name == "Interpreter")
        .expect("an Interpreter entry in the perf map");
    assert!(
        java.len() >= 20,
        "only {} compiled Java methods in the perf map",
        java.len()
    );

    // The first and the last byte of each compiled method, and the interpreter's middle.
    let mut pcs: Vec<u64> = Vec::new();
    for entry in &java {
        pcs.push(entry.start);
        pcs.push(entry.start + entry.size - 1);
    }
    let interpreter_middle = interpreter.start + interpreter.size / 2;
    pcs.extend([interpreter.start, interpreter_middle]);
    let pcs_file = dir.join("pcs.txt");
    let listed: Vec<String> = pcs.iter().map(|pc| format!("{pc:#x}")).collect();
    std::fs::write(&pcs_file, listed.join("\n")).expect("writing the pcs");

    let started = Instant::now();
    let output = Command::new(leakhound_bin())
        .args([
            "debug-jvm",
            "--pid",
            &pid.to_string(),
            "--pcs",
            arg(&pcs_file),
        ])
        .output()
        .expect("running leakhound debug-jvm");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "leakhound debug-jvm failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in stdout.lines().filter(|l| !l.starts_with("0x")) {
        eprintln!("{line}");
    }
    // The JVM's own flag table, read from its memory: this JVM runs without the flag.
    assert!(
        stdout
            .lines()
            .any(|l| l == "flags\tPreserveFramePointer=false"),
        "the flag as the JVM has it:\n{stdout}"
    );
    let resolved = parse_resolved(&stdout);

    let mut matched = 0;
    let mut misses = Vec::new();
    for entry in &java {
        let want = java_method(&entry.name).expect("a Java method");
        let end = entry.start + entry.size;
        // The outermost of the frames at a pc is the nmethod's own method.
        let outermost = |r: &Resolved| {
            let first = r.frames.split(';').next().unwrap_or_default();
            first.split(':').next() == Some(want)
        };
        let ok = [entry.start, end - 1].iter().all(|pc| {
            resolved.get(pc).is_some_and(|r| {
                r.kind == "Nmethod"
                    && r.code == (entry.start, end)
                    && r.name == want
                    && outermost(r)
            })
        });
        if ok {
            matched += 1;
        } else {
            let got = resolved
                .get(&entry.start)
                .map_or("nothing".to_owned(), |r| {
                    format!("{} {:#x}-{:#x} {}", r.kind, r.code.0, r.code.1, r.name)
                });
            misses.push(format!(
                "{:#x}-{end:#x} {}: got {got}",
                entry.start, entry.name
            ));
        }
    }
    let share = matched as f64 * 100.0 / java.len() as f64;
    eprintln!(
        "{matched} of {} compiled Java methods matched ({share:.1}%), {} pcs resolved in {} ms \
         (leakhound's whole run, reading libjvm and the tables included)",
        java.len(),
        pcs.len(),
        took.as_millis()
    );
    assert!(
        share >= 95.0,
        "only {share:.1}% of the perf map's compiled methods resolved to the same blob and name; \
         misses:\n{}",
        misses.join("\n")
    );

    // The method that the target compiled while warming up, with its source file.
    let accept = java
        .iter()
        .find(|e| java_method(&e.name) == Some("JitLeak.acceptConnection"))
        .expect("JitLeak.acceptConnection was compiled");
    assert_eq!(resolved[&accept.start].source, "JitLeak.java");

    for pc in [interpreter.start, interpreter_middle] {
        let r = resolved.get(&pc).expect("the interpreter pc resolved");
        assert_eq!(r.kind, "Interpreter", "pc {pc:#x}");
        assert_eq!(
            r.code,
            (interpreter.start, interpreter.start + interpreter.size)
        );
    }

    jvm.write_line("go");
    jvm.write_line("");
    let status = jvm.wait_exit(TIMEOUT);
    assert!(status.success(), "the JVM exited with {status}");
}

#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_process_without_a_jvm_is_one_clear_error() {
    let output = Command::new(leakhound_bin())
        .args(["debug-jvm", "--pid", &std::process::id().to_string()])
        .output()
        .expect("running leakhound debug-jvm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("leakhound: error:") && stderr.contains("no libjvm.so is mapped"),
        "{stderr}"
    );
    assert!(stderr.contains("  hint: "), "{stderr}");
}

/// Runs JitLeak under `java` with `flags` (and a small heap), attaches `leakhound record`, lets
/// it allocate and stops leakhound while the JVM still runs. Returns the target's truth for
/// `JitLeak.acceptConnection`, the folded report's stacks and the text report.
fn trace_jvm(test: &str, flags: &[&str]) -> (u64, Vec<tests::report::FoldedLine>, String) {
    trace_jvm_with(test, Path::new("java"), flags)
}

/// [`trace_jvm`] with the `java` launcher of a given JDK.
fn trace_jvm_with(
    test: &str,
    java: &Path,
    flags: &[&str],
) -> (u64, Vec<tests::report::FoldedLine>, String) {
    let dir = paths::scratch(test);
    let out = dir.join("out.folded");
    let (mut jvm, pid) = start_jit_leak(test, java, flags, &dir);

    let text = dir.join("out.txt");
    let mut run = Run::start(&["record", "--pid", &pid, "-o", arg(&out), "-o", arg(&text)]);
    run.wait_attached();
    jvm.write_line("go");
    let truth = read_truth(&jvm.stdout, test);
    run.signal(libc::SIGINT);
    let outcome = run.finish();
    outcome.assert_success();
    jvm.write_line("");
    let status = jvm.wait_exit(TIMEOUT);
    assert!(status.success(), "the JVM exited with {status}");
    // A map left by the JVM (leakhound removes the one it asked for).
    let _ = std::fs::remove_file(Path::new("/tmp").join(format!("perf-{pid}.map")));
    let report = read_report(&out);
    let lines = parse_folded(&report).unwrap_or_else(|e| panic!("{e}\n{report}"));
    (truth["JitLeak.acceptConnection"], lines, read_report(&text))
}

/// A JVM that refuses attach can never be asked for a perf map; its compiled Java methods are
/// still named, from its own metadata. With frame pointers kept, the stacks reach the method
/// that keeps the memory, and its bytes match the target's own count within 5%.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_jvm_that_refuses_attach_is_named_from_its_metadata() {
    let test = "a_jvm_that_refuses_attach_is_named_from_its_metadata";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let _serial = serial();
    let (kept, lines, report) = trace_jvm(
        test,
        &["-XX:+DisableAttachMechanism", "-XX:+PreserveFramePointer"],
    );
    let named = bytes_through(&lines, "JitLeak.acceptConnection");
    eprintln!("JitLeak.acceptConnection: truth {kept}, named {named}");
    assert!(
        within_percent(kept, named, 5),
        "stacks through JitLeak.acceptConnection hold {named} bytes, the target kept {kept}; \
         report:\n{report}"
    );
}

/// Without -XX:+PreserveFramePointer, compiled Java methods use rbp as an ordinary register,
/// so a frame-pointer walk stops, goes astray, or (when the method left rbp alone) skips the
/// method's caller. Unwound by the frame size HotSpot records for each compiled method, every
/// frame is there: `main` and `serve` (each run once, so interpreted) between the VM's entry
/// and the compiled `acceptConnection`, with all of the method's bytes.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_jvm_without_flags_gets_whole_stacks_through_compiled_frames() {
    let test = "a_jvm_without_flags_gets_whole_stacks_through_compiled_frames";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let _serial = serial();
    let (kept, lines, report) = trace_jvm(test, &[]);
    assert_whole_stacks(kept, &lines, &report);

    assert_inlined_chain(kept, &lines, &report);
}

/// What the JIT inlined at the call is there too, as the source says: acceptConnection calls
/// sun.misc.Unsafe.allocateMemory, which calls the internal Unsafe's, which calls the native
/// allocateMemory0. Each frame has its line (the nmethod's scope records and each method's
/// line table).
fn assert_inlined_chain(kept: u64, lines: &[tests::report::FoldedLine], report: &str) {
    let chain = [
        "JitLeak.acceptConnection",
        "sun.misc.Unsafe.allocateMemory",
        "jdk.internal.misc.Unsafe.allocateMemory",
        "jdk.internal.misc.Unsafe.allocateMemory0",
    ];
    let inlined: u64 = lines
        .iter()
        .filter(|line| line.frames.windows(chain.len()).any(|w| w == chain))
        .map(|line| line.bytes)
        .sum();
    assert!(
        within_percent(kept, inlined, 5),
        "stacks with the inlined chain {chain:?} hold {inlined} bytes, the target kept {kept}; \
         report:\n{report}"
    );
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/JitLeak.java"))
            .expect("JitLeak.java");
    let call_line = source
        .lines()
        .position(|line| line.contains("unsafe.allocateMemory("))
        .expect("the allocating call in JitLeak.java")
        + 1;
    for expected in [
        format!("JitLeak.acceptConnection at JitLeak.java:{call_line}"),
        "sun.misc.Unsafe.allocateMemory (inlined) at Unsafe.java:".to_owned(),
        "jdk.internal.misc.Unsafe.allocateMemory (inlined) at Unsafe.java:".to_owned(),
    ] {
        assert!(
            report.contains(&expected),
            "the text report should show {expected:?}; it is:\n{report}"
        );
    }
}

/// With `-Xint` nothing is compiled: every Java method runs in HotSpot's one interpreter, whose
/// return addresses say nothing of the method. The kernel walk reads each interpreted frame's
/// `Method*` and bytecode index, so the leaking method and its callers are named, each at the
/// line of its call, with all of the method's bytes.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn interpreted_java_methods_are_named_from_their_frames() {
    let test = "interpreted_java_methods_are_named_from_their_frames";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let _serial = serial();
    let (kept, lines, report) = trace_jvm(test, &["-Xint"]);
    assert_interpreted_frames_named(kept, &lines, &report);
}

/// The same with every other JDK installed under /usr/lib/jvm (JDK 21 and later keep their
/// method flags and line tables in another form).
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn interpreted_java_methods_are_named_in_other_installed_jdks() {
    let test = "interpreted_java_methods_are_named_in_other_installed_jdks";
    require_program!(test, "javac", "-version");
    for_other_jdks(test, |home| {
        let (kept, lines, report) = trace_jvm_with(test, &home.join("bin/java"), &["-Xint"]);
        assert_interpreted_frames_named(kept, &lines, &report);
    });
}

/// All of `kept` is in stacks through the interpreted `main`, `serve` and `acceptConnection`,
/// each named at the line of its call, and no interpreted frame is left unnamed.
fn assert_interpreted_frames_named(kept: u64, lines: &[tests::report::FoldedLine], report: &str) {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("targets/JitLeak.java"))
            .expect("JitLeak.java");
    // The line of the first line holding `needle` after the one holding `after`.
    let line_of = |after: &str, needle: &str| {
        let start = source
            .lines()
            .position(|line| line.contains(after))
            .unwrap_or_else(|| panic!("{after:?} in JitLeak.java"));
        source
            .lines()
            .skip(start)
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} after {after:?} in JitLeak.java"))
            + start
            + 1
    };
    // Root first, as the folded report has them.
    let chain = ["JitLeak.main", "JitLeak.serve", "JitLeak.acceptConnection"];
    let named: u64 = lines
        .iter()
        .filter(|line| line.frames.windows(chain.len()).any(|w| w == chain))
        .map(|line| line.bytes)
        .sum();
    eprintln!("JitLeak.acceptConnection interpreted: truth {kept}, named {named}");
    assert!(
        within_percent(kept, named, 5),
        "stacks through {chain:?} hold {named} bytes, the target kept {kept}; report:\n{report}"
    );
    // Each at the line of its call, from the bytecode index read from its frame.
    for expected in [
        format!(
            "JitLeak.acceptConnection at JitLeak.java:{}",
            line_of("static void acceptConnection", "unsafe.allocateMemory(")
        ),
        format!(
            "JitLeak.serve at JitLeak.java:{}",
            line_of("static void serve", "acceptConnection(id);")
        ),
        format!(
            "JitLeak.main at JitLeak.java:{}",
            line_of("public static void main", "serve(connections);")
        ),
    ] {
        assert!(
            report.contains(&expected),
            "the text report should show {expected:?}; it is:\n{report}"
        );
    }
    assert!(
        !report.contains("    Interpreter in [jit]"),
        "no interpreted frame is left unnamed; report:\n{report}"
    );
}

/// The same with every other JDK installed under /usr/lib/jvm.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn whole_stacks_through_compiled_frames_in_other_installed_jdks() {
    let test = "whole_stacks_through_compiled_frames_in_other_installed_jdks";
    require_program!(test, "javac", "-version");
    for_other_jdks(test, |home| {
        let (kept, lines, report) = trace_jvm_with(test, &home.join("bin/java"), &[]);
        assert_whole_stacks(kept, &lines, &report);
        assert_inlined_chain(kept, &lines, &report);
    });
}

/// All of `kept` is in stacks that run from the VM's entry through `main` and `serve` in the
/// interpreter, each named (no bare `Interpreter` frame), to the compiled
/// `JitLeak.acceptConnection`.
fn assert_whole_stacks(kept: u64, lines: &[tests::report::FoldedLine], report: &str) {
    // Root first: the VM's entry, then main and serve in the interpreter, then the method.
    let whole: u64 = lines
        .iter()
        .filter(|line| {
            let at = |name: &str| line.frames.iter().position(|f| f.starts_with(name));
            let (Some(entry), Some(method)) =
                (at("JavaCalls::call_helper"), at("JitLeak.acceptConnection"))
            else {
                return false;
            };
            // Interpreted frames are named by the Method* the kernel walk read from each.
            let between = line.frames.get(entry + 1..method).unwrap_or_default();
            let named: Vec<&str> = between
                .iter()
                .filter(|f| f.starts_with("JitLeak."))
                .map(|f| f.split(' ').next().unwrap_or(f))
                .collect();
            named == ["JitLeak.main", "JitLeak.serve"]
                && !between.iter().any(|f| f == "Interpreter")
        })
        .map(|line| line.bytes)
        .sum();
    eprintln!("JitLeak.acceptConnection: truth {kept}, in whole stacks {whole}");
    assert!(
        within_percent(kept, whole, 5),
        "stacks from JavaCalls::call_helper through the named interpreted frames JitLeak.main \
         and JitLeak.serve to JitLeak.acceptConnection hold {whole} bytes, the target kept {kept}; report:\n{report}"
    );
}

/// A process that maps a crafted libjvm.so (targets/crafted_libjvm.c): stripped of the table
/// symbols, or exporting tables that lie. Each gets one clear error line and a hint, quickly:
/// no panic, no hang, no walk past the caps.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_crafted_libjvm_is_one_clear_error() {
    let test = "a_crafted_libjvm_is_one_clear_error";
    let dir = paths::scratch(test);
    let host = build_source("fake_jvm_host.c", "fake_jvm_host", &["-O1"], &["-ldl"]);
    for (variant, says) in [
        ("STRIPPED", "does not export gHotSpotVMStructs"),
        ("EMPTY", "no field"),
        ("HUGE_STRIDE", "entry stride"),
        ("OFFSET_OUTSIDE", "leaves the"),
        ("ENDLESS", "no end within"),
        ("UNTERMINATED", "no NUL within"),
        ("NULL_TABLE", "pointer is NULL"),
        ("WILD_POINTER", "at 0xdead0000 is unreadable"),
    ] {
        let flag = format!(
            "-D{}",
            if variant == "STRIPPED" {
                "STRIPPED".to_owned()
            } else {
                format!("VARIANT_{variant}")
            }
        );
        let built = build_source(
            "crafted_libjvm.c",
            &format!("crafted_libjvm_{}.so", variant.to_lowercase()),
            &["-O1", "-shared", "-fPIC", &flag],
            &[],
        );
        // leakhound looks for a mapping named libjvm.so.
        let place = dir.join(variant.to_lowercase());
        std::fs::create_dir_all(&place).expect("scratch");
        let library = place.join("libjvm.so");
        std::fs::copy(&built, &library).expect("copying the crafted library");

        let mut cmd = Command::new(&host);
        cmd.arg(&library);
        let mut target = Proc::spawn(cmd, variant, true);
        let ready = target
            .stdout
            .next(Instant::now() + TIMEOUT, "`ready <pid>`")
            .expect("ready line");
        assert_eq!(ready.trim_end(), format!("ready {}", target.pid()));

        let started = Instant::now();
        let mut cmd = Command::new(leakhound_bin());
        cmd.args(["debug-jvm", "--pid", &target.pid().to_string()]);
        let mut run = Proc::spawn(cmd, "leakhound debug-jvm", false);
        let status = run.wait_exit(TIMEOUT);
        let took = started.elapsed();
        let stderr = run.stderr.drain(Instant::now() + TIMEOUT);
        eprintln!("{variant}: {} ms: {}", took.as_millis(), stderr.join(" | "));
        assert!(!status.success(), "{variant}: leakhound should fail");
        assert_eq!(
            status.code(),
            Some(1),
            "{variant}: an error exit, not a crash: {status}"
        );
        let errors: Vec<&String> = stderr
            .iter()
            .filter(|l| l.starts_with("leakhound: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{variant}: one error line: {stderr:?}");
        assert!(
            errors[0].contains(says),
            "{variant}: the error should say {says:?}: {}",
            errors[0]
        );
        assert!(
            stderr.iter().any(|l| l.starts_with("  hint: ")),
            "{variant}: a hint: {stderr:?}"
        );
        assert!(took.as_secs() < 5, "{variant}: took {took:?}");
        target.write_line("");
        target.wait_exit(TIMEOUT);
    }
}

/// A JVM that exits before the report, with no perf map to fall back on (attach disabled) and
/// no frame pointers: its compiled frames were named when their stacks were first walked, so
/// the report made after it exited still names the method and its inlined callees.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn a_jvm_that_exits_before_the_report_keeps_its_java_frames() {
    let test = "a_jvm_that_exits_before_the_report_keeps_its_java_frames";
    require_program!(test, "java", "-version");
    require_program!(test, "javac", "-version");
    let _serial = serial();
    let dir = paths::scratch(test);
    let out = dir.join("out.folded");
    let (mut jvm, pid) = start_jit_leak(
        test,
        Path::new("java"),
        &["-XX:+DisableAttachMechanism"],
        &dir,
    );
    // Progress lines every 250 ms tell when leakhound's loop has gone round since the target
    // allocated, answering the kernel's requests for unwind rules (and naming the frames
    // then): a JVM that exits before that leaves nothing to read.
    let mut run = Run::start(&["record", "--pid", &pid, "-i", "250ms", "-o", arg(&out)]);
    run.wait_attached();
    jvm.write_line("go");
    let truth = read_truth(&jvm.stdout, test);
    let deadline = Instant::now() + TIMEOUT;
    let mut progress = 0;
    while progress < 2 {
        let line = run
            .proc
            .stderr
            .next(deadline, "progress lines")
            .expect("leakhound's progress lines");
        if line.contains("outstanding") {
            progress += 1;
        }
    }
    // The JVM exits; that ends the trace, and the report is made after it is gone.
    jvm.write_line("");
    let status = jvm.wait_exit(TIMEOUT);
    assert!(status.success(), "the JVM exited with {status}");
    let outcome = run.finish();
    outcome.assert_success();
    let report = read_report(&out);
    let lines = parse_folded(&report).unwrap_or_else(|e| panic!("{e}\n{report}"));
    let kept = truth["JitLeak.acceptConnection"];
    let chain = [
        "JitLeak.acceptConnection",
        "sun.misc.Unsafe.allocateMemory",
        "jdk.internal.misc.Unsafe.allocateMemory",
    ];
    let named: u64 = lines
        .iter()
        .filter(|line| line.frames.windows(chain.len()).any(|w| w == chain))
        .map(|line| line.bytes)
        .sum();
    eprintln!("JitLeak.acceptConnection: truth {kept}, named after exit {named}");
    assert!(
        within_percent(kept, named, 5),
        "stacks through {chain:?} hold {named} bytes after the JVM exited, the target kept \
         {kept}; report:\n{report}"
    );
    // The interpreter and stubs are named by their blobs, with no perf map.
    let unnamed: Vec<&tests::report::FoldedLine> = lines
        .iter()
        .filter(|line| line.frames.iter().any(|f| f == chain[0]))
        .filter(|line| line.frames.iter().any(|f| f == "[anon]"))
        .collect();
    assert!(
        unnamed.is_empty(),
        "JIT frames left [anon] after the JVM exited:\n{report}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.frames.iter().filter(|f| *f == "Interpreter").count() == 2),
        "main and serve named as Interpreter frames:\n{report}"
    );
}

/// `JitLeak 200` on `java` with `flags` and a 64 MiB heap, none of the launcher's option
/// variables, in `dir`; returns it once it said `ready`, with its PID.
fn start_jit_leak(test: &str, java: &Path, flags: &[&str], dir: &Path) -> (Proc, String) {
    let mut cmd = Command::new(java);
    cmd.arg("-Xmx64m")
        .args(flags)
        .arg("-cp")
        .arg(runtimes::java_classes())
        .args(["JitLeak", "200"])
        .current_dir(dir);
    for var in ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS"] {
        cmd.env_remove(var);
    }
    let jvm = Proc::spawn(cmd, test, true);
    let ready = jvm
        .stdout
        .next(Instant::now() + TIMEOUT, "`ready <pid>`")
        .expect("ready line");
    let pid = jvm.pid().to_string();
    assert_eq!(ready.trim_end(), format!("ready {pid}"));
    (jvm, pid)
}
