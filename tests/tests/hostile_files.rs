//! Files a hostile container plants for root's leakhound: perf maps that are symlinks to host
//! files, FIFOs, devices, sparse giants or one endless line (S2, S3), and mapped libraries
//! whose path was turned into a link to a host file or a FIFO (S4). Each run must read nothing
//! from the host, end on time with every report written, stay small, and keep the target's
//! bytes exact.

use std::time::{Duration, Instant};

use tests::container::{Container, HostFile, peak_rss_bytes};
use tests::report::Truth;
use tests::{Outcome, Run, arg, assert_matches_truth, paths, read_report, serial};

/// A trace of the container's target by host PID, for `duration`.
struct Traced {
    truth: Truth,
    outcome: Outcome,
    folded: String,
    text: String,
    json: serde_json::Value,
    /// From starting leakhound to its exit.
    wall: Duration,
    /// leakhound's peak RSS, read near the end of the trace.
    peak_rss: u64,
}

const DURATION_SECS: f64 = 3.0;

fn trace(test: &str, container: &mut Container, extra: &[&str]) -> Traced {
    let dir = paths::scratch(test);
    let (folded, text, json) = (
        dir.join("out.folded"),
        dir.join("out.txt"),
        dir.join("out.json"),
    );
    let pid = container.host_pid.to_string();
    let duration = format!("{DURATION_SECS}s");
    let mut args = vec![
        "record",
        "--pid",
        &pid,
        "--duration",
        &duration,
        "-o",
        arg(&folded),
        "-o",
        arg(&text),
        "-o",
        arg(&json),
    ];
    args.extend_from_slice(extra);
    let started = Instant::now();
    let mut run = Run::start(&args);
    run.wait_attached();
    container.go();
    let truth = container.read_truth();
    // The perf map is reread every second: by now it was read at least twice.
    std::thread::sleep(
        Duration::from_secs_f64(DURATION_SECS - 0.6).saturating_sub(started.elapsed()),
    );
    let peak_rss = peak_rss_bytes(run.proc.pid() as u32).unwrap_or(0);
    let outcome = run.finish();
    let wall = started.elapsed();
    outcome.assert_success();
    let json_text = read_report(&json);
    Traced {
        truth,
        outcome,
        folded: read_report(&folded),
        text: read_report(&text),
        json: serde_json::from_str(&json_text).expect("the JSON report is valid"),
        wall,
        peak_rss,
    }
}

impl Traced {
    /// On time, small, exact, and no frame name that is not a name.
    fn assert_sound(&self) {
        let traced = self.json["duration_secs"].as_f64().expect("duration_secs");
        eprintln!(
            "traced {traced:.2} s, leakhound ran {:.2} s, peak RSS {} MiB",
            self.wall.as_secs_f64(),
            self.peak_rss >> 20
        );
        assert!(
            traced <= DURATION_SECS + 1.0,
            "the trace took {traced:.2} s for a {DURATION_SECS} s duration"
        );
        // Attach, the report and the detach come on top of the duration.
        assert!(
            self.wall.as_secs_f64() <= DURATION_SECS + 3.0,
            "leakhound ran {:.2} s",
            self.wall.as_secs_f64()
        );
        assert!(
            self.peak_rss < 150 << 20,
            "leakhound's peak RSS was {} MiB",
            self.peak_rss >> 20
        );
        assert_matches_truth(&self.truth, &self.folded);
        for line in self.folded.lines() {
            for frame in line.split(';') {
                assert!(frame.len() <= 4200, "a frame of {} bytes", frame.len());
            }
        }
    }

    fn assert_never_mentions(&self, secret: &str) {
        for (what, text) in [
            ("folded", &self.folded),
            ("text", &self.text),
            ("stderr", &self.outcome.stderr.join("\n")),
            ("stdout", &self.outcome.stdout.join("\n")),
        ] {
            assert!(!text.contains(secret), "the {what} output holds {secret:?}");
        }
    }
}

/// S2: the container's perf map is a symlink to a host-only, root-only file.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn perf_map_linked_to_a_host_file_is_not_read() {
    let _serial = serial();
    let secret = "HOST_SECRET_FRAME";
    let host = HostFile::new(
        "s2",
        "secret.map",
        format!("0 7fffffffffff {secret}\n").as_bytes(),
    );
    let mut container = Container::start(&tests::targets::anon_code());
    container.run(&format!("ln -s {} /tmp/perf-1.map", host.path.display()));
    let traced = trace("perf_map_linked_to_a_host_file", &mut container, &[]);
    traced.assert_sound();
    traced.assert_never_mentions(secret);
    host.assert_unchanged();
    container.release();
}

/// The control for S2: the container's own perf map, a regular file, names its code.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn perf_map_inside_the_container_names_its_code() {
    let _serial = serial();
    let mut container = Container::start(&tests::targets::anon_code());
    let stub = container
        .preamble
        .iter()
        .find_map(|line| line.strip_prefix("stub "))
        .expect("the target printed where its stub is")
        .trim()
        .to_owned();
    container.run(&format!(
        "echo '{stub} JS:*containerStub /app/stub.js:1:1' > /tmp/perf-1.map"
    ));
    let traced = trace("perf_map_inside_the_container", &mut container, &[]);
    traced.assert_sound();
    assert!(
        traced
            .folded
            .lines()
            .any(|l| l.contains(";leak_via_anon_code;containerStub ")),
        "the stub is named from the container's perf map:\n{}",
        traced.folded
    );
    container.release();
}

/// S3: perf maps that would hang a reader or exhaust its memory.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn perf_maps_that_are_fifos_devices_or_giants_neither_hang_nor_exhaust() {
    let _serial = serial();
    let cases = [
        ("fifo", "mkfifo /tmp/perf-1.map"),
        ("device", "ln -s /dev/zero /tmp/perf-1.map"),
        ("sparse", "truncate -s 2G /tmp/perf-1.map"),
        (
            "one_line",
            "head -c 10485760 /dev/zero | tr '\\0' x > /tmp/perf-1.map",
        ),
    ];
    for (case, plant) in cases {
        eprintln!("case {case}: {plant}");
        let mut container = Container::start(&tests::targets::anon_code());
        container.run(plant);
        let traced = trace(&format!("hostile_perf_map_{case}"), &mut container, &[]);
        traced.assert_sound();
        if matches!(case, "fifo" | "device") {
            assert!(
                traced
                    .outcome
                    .stderr
                    .iter()
                    .any(|l| l.contains("not a regular file")),
                "a {case} perf map is refused with a warning"
            );
        }
        container.release();
    }
}

/// S4: after the target mapped libc, the container turns libc's path into a link to a host
/// file (a copy of libc that the target never mapped). leakhound attaches to what is mapped.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn mapped_library_turned_into_a_link_to_a_host_file() {
    let _serial = serial();
    let libc_path = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let host = HostFile::new(
        "s4",
        "libc.so.6",
        &std::fs::read(libc_path).expect("the host's libc"),
    );
    let mut container = Container::start(&tests::targets::anon_code());
    // Staged first: once the library directory is covered, nothing there can run.
    container.run(&format!(
        "mkdir /tmp/stage && ln -s {} /tmp/stage/libc.so.6 \
         && mount --bind /tmp/stage /usr/lib/x86_64-linux-gnu",
        host.path.display()
    ));
    let traced = trace("mapped_library_link", &mut container, &[]);
    traced.assert_sound();
    host.assert_unchanged();
    container.release();
}

/// S4 without `/proc/PID/map_files` (it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE): the
/// mapped path is resolved inside the container, where the link leads nowhere and a FIFO is
/// refused unopened. leakhound then says it found no allocator, and never attaches to the host
/// file or hangs.
#[test]
#[ignore = "needs root: attaches real probes (cargo xtask test runs it)"]
fn without_map_files_a_planted_library_path_is_resolved_in_the_container() {
    let _serial = serial();
    let host = HostFile::new(
        "s4-fallback",
        "libc.so.6",
        &std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").expect("the host's libc"),
    );
    for (case, plant) in [
        (
            "link",
            format!("ln -s {} /tmp/stage/libc.so.6", host.path.display()),
        ),
        ("fifo", "mkfifo /tmp/stage/libc.so.6".to_owned()),
    ] {
        eprintln!("case {case}");
        let container = Container::start(&tests::targets::anon_code());
        container.run(&format!(
            "mkdir /tmp/stage && {plant} && mount --bind /tmp/stage /usr/lib/x86_64-linux-gnu"
        ));
        let mut setpriv = std::process::Command::new("setpriv");
        setpriv
            .args([
                "--bounding-set=-sys_admin,-checkpoint_restore",
                "--inh-caps=-sys_admin,-checkpoint_restore",
            ])
            .arg(tests::leakhound_bin());
        let pid = container.host_pid.to_string();
        let out = paths::scratch(&format!("s4_fallback_{case}")).join("out.folded");
        let started = Instant::now();
        let run = Run::start_with(
            setpriv,
            &["record", "--pid", &pid, "--duration", "2s", "-o", arg(&out)],
        );
        let outcome = run.finish();
        let wall = started.elapsed();
        eprintln!("leakhound ran {:.2} s", wall.as_secs_f64());
        assert!(wall < Duration::from_secs(5), "no hang: {wall:?}");
        outcome.assert_error("no allocator");
        host.assert_unchanged();
        container.abandon();
    }
}
