//! leakhound's own costs with a million live blocks: attach, tracking, the report and its
//! phases, exit, peak RSS and the kernel memory of its maps.

use super::*;
pub(super) struct LiveReport {
    pub(super) attach_ms: f64,
    pub(super) track_s: f64,
    /// From SIGINT to the report's files written.
    pub(super) report_s: f64,
    /// The report's phases from leakhound's statistics ("N addresses symbolized in X ms", ...).
    pub(super) phases: Vec<String>,
    /// From SIGINT to exit: the probes' detach, which runs beside the report, is the rest.
    pub(super) exit_s: f64,
    pub(super) peak_rss_kib: i64,
    pub(super) maps: Vec<(String, u64)>,
    pub(super) summary: Vec<String>,
}

pub(super) fn live_report(leakhound: &Path, target: &Path, out: &Path) -> Result<LiveReport> {
    let mut target = Guard::spawn(
        Command::new(target)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )?;
    let mut stdin = target.child.stdin.take().context("target stdin")?;
    let lines = lines_of(target.child.stdout.take().context("target stdout")?);
    let ready = wait_line(&lines, |line| line.starts_with("ready "), PATIENCE)?;
    let pid = ready["ready ".len()..].trim().to_owned();
    let report = out.join("live-report.txt");
    let stats = out.join("live-stats.json");
    let _ = fs::remove_file(&stats);
    let mut tracer = Guard::spawn(
        Command::new(leakhound)
            .args(["record", "--pid", &pid, "-o"])
            .arg(&report)
            .arg("-o")
            .arg(out.join("live-report.folded"))
            .arg("--stats-json")
            .arg(&stats)
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )?;
    let stderr = lines_of(tracer.child.stderr.take().context("leakhound stderr")?);
    // The handshake; the attach time comes from the statistics.
    wait_line(
        &stderr,
        |line| line.starts_with("leakhound: attached"),
        PATIENCE,
    )?;

    let started = Instant::now();
    writeln!(stdin, "go")?;
    wait_line(
        &lines,
        |line| line.starts_with("done "),
        Duration::from_secs(180),
    )?;
    let track_s = started.elapsed().as_secs_f64();
    let maps = bpf_maps_of(tracer.child.id())?;

    // SAFETY: signalling a child that this process owns and has not yet reaped.
    unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    // The report's files are out when leakhound says it wrote them.
    wait_line(
        &stderr,
        |line| line.starts_with("leakhound: wrote"),
        PATIENCE,
    )?;
    let report_s = signalled.elapsed().as_secs_f64();
    thread::spawn(move || for _ in stderr {});
    let (status, peak_rss_kib) = tracer.wait_rusage()?;
    let exit_s = signalled.elapsed().as_secs_f64();
    ensure!(status == 0, "leakhound exited with status {status:#x}");
    let stats = LeakhoundStats::read(&stats)?;
    drop(stdin);
    target.wait(PATIENCE)?;

    let text = fs::read_to_string(&report).context("reading the live report")?;
    // The headline and every loss line (indented under `losses:`).
    let mut summary = Vec::new();
    let mut in_losses = false;
    for line in text.lines() {
        if line.starts_with("outstanding:") || line.starts_with("activity:") {
            summary.push(line.to_owned());
        }
        if line.starts_with("losses:") {
            in_losses = true;
            summary.push(line.to_owned());
        } else if in_losses && line.starts_with(' ') {
            summary.push(line.to_owned());
        } else {
            in_losses = false;
        }
    }
    Ok(LiveReport {
        attach_ms: stats.attach_ms,
        track_s,
        report_s,
        phases: stats.phases,
        exit_s,
        peak_rss_kib,
        maps,
        summary,
    })
}

/// The BPF maps that process `pid` holds, with the kernel memory that bpftool reports. The
/// process's map descriptors give the ids (`map_id:` in their fdinfo): Debian's bpftool is
/// built without the `pids` field.
pub(super) fn bpf_maps_of(pid: u32) -> Result<Vec<(String, u64)>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = fs::read_to_string(entry?.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|line| line.strip_prefix("map_id:"))
            .and_then(|id| id.trim().parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    let output = Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool")?;
    let maps: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut held: Vec<(String, u64)> = maps
        .as_array()
        .into_iter()
        .flatten()
        .filter(|map| map["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|map| {
            (
                map["name"].as_str().unwrap_or("?").to_owned(),
                map["bytes_memlock"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    held.sort_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    Ok(held)
}
