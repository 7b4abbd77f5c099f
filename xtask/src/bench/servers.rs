//! Real servers from Debian's packages, each driven by its own load generator on loopback:
//! redis-server, which Debian links with jemalloc, under redis-benchmark; and memcached,
//! which allocates with glibc's malloc, under memcslap (libmemcached-tools). Throughput
//! traced ÷ untraced, with full tracking and with byte sampling, rounds interleaved so that
//! the ratios hold on a noisy machine.

use std::net::TcpStream;

use super::*;

/// Rounds per server; each runs every configuration once, on a fresh server process.
const SERVER_ROUNDS: usize = 3;

pub(super) struct ServerRow {
    pub(super) name: &'static str,
    pub(super) allocator: &'static str,
    pub(super) untraced: f64,
    pub(super) full: f64,
    pub(super) sampled: f64,
}

struct Server {
    name: &'static str,
    allocator: &'static str,
    port: u16,
    /// The server's command line, listening on 127.0.0.1:`port`.
    start: fn(u16) -> Command,
    /// Runs the load and returns operations per second.
    load: fn(u16) -> Result<f64>,
}

const SERVERS: [Server; 2] = [
    Server {
        name: "redis-server 7.0 (redis-benchmark: SET, GET, LPUSH, LPOP)",
        allocator: "jemalloc",
        port: 16_379,
        start: |port| {
            let mut command = Command::new("redis-server");
            command.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            command
        },
        load: redis_load,
    },
    Server {
        name: "memcached 1.6 (memcslap: set)",
        allocator: "glibc",
        port: 16_211,
        start: |port| {
            let mut command = Command::new("memcached");
            command.args([
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-l",
                "127.0.0.1",
                "-u",
                "root",
            ]);
            command
        },
        load: memcached_load,
    },
];

pub(super) fn server_rows(leakhound: &Path) -> Result<Vec<ServerRow>> {
    ensure_packages(&["redis-server", "memcached", "libmemcached-tools"])?;
    let mut rows = Vec::new();
    for server in &SERVERS {
        let mut figures: [Vec<f64>; 3] = Default::default();
        for _ in 0..SERVER_ROUNDS {
            let configurations: [Option<&[&str]>; 3] =
                [None, Some(&[]), Some(&["--sample-bytes", SAMPLE_BYTES])];
            for (figure, options) in figures.iter_mut().zip(configurations) {
                figure.push(server.measure(leakhound, options)?);
            }
        }
        let [untraced, full, sampled] = figures.map(|mut values| median(&mut values));
        rows.push(ServerRow {
            name: server.name,
            allocator: server.allocator,
            untraced,
            full,
            sampled,
        });
    }
    Ok(rows)
}

impl Server {
    /// Operations per second of one load run on a fresh server, traced by leakhound with
    /// `options` when given.
    fn measure(&self, leakhound: &Path, options: Option<&[&str]>) -> Result<f64> {
        let mut server = Guard::spawn(
            (self.start)(self.port)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        self.wait_listening()?;
        let pid = server.child.id();
        let mut tracer = None;
        if let Some(options) = options {
            let mut child = Guard::spawn(
                Command::new(leakhound)
                    .args(["record", "--pid", &pid.to_string(), "-f", "text"])
                    .args(options)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped()),
            )?;
            let stderr = lines_of(child.child.stderr.take().context("leakhound stderr")?);
            wait_line(
                &stderr,
                |line| line.starts_with("leakhound: attached"),
                PATIENCE,
            )
            .context("leakhound did not attach to the server")?;
            thread::spawn(move || {
                for line in stderr {
                    if line.contains("probe cost") || line.contains("single-stepped") {
                        eprintln!("bench: {line}");
                    }
                }
            });
            tracer = Some(child);
        }
        let ops = (self.load)(self.port);
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let _ = server.wait(PATIENCE);
        // leakhound ends when its target exits.
        if let Some(mut tracer) = tracer {
            tracer.wait(PATIENCE)?;
        }
        let ops = ops?;
        eprintln!(
            "bench: {} {}: {ops:.0} ops/s",
            self.name,
            match options {
                None => "untraced".to_owned(),
                Some([]) => "leakhound".to_owned(),
                Some(options) => format!("leakhound {}", options.join(" ")),
            }
        );
        Ok(ops)
    }

    /// Polls until the server accepts connections: it has no handshake line of its own.
    fn wait_listening(&self) -> Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "{} did not listen on port {}",
                self.name,
                self.port
            );
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

/// redis-benchmark's CSV: `"TEST","RPS",...` per test; the mean of the tests' rates.
fn redis_load(port: u16) -> Result<f64> {
    let out = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "--csv",
            "-c",
            "20",
            "-n",
            "40000",
        ])
        .args(["-t", "set,get,lpush,lpop"])
        .output()
        .context("running redis-benchmark")?;
    ensure!(
        out.status.success(),
        "redis-benchmark failed: {}",
        out.status
    );
    let rates: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').nth(1)?.trim_matches('"').parse().ok())
        .collect();
    ensure!(!rates.is_empty(), "redis-benchmark printed no rates");
    Ok(rates.iter().sum::<f64>() / rates.len() as f64)
}

/// memcslap's `Time to set N keys by T threads: S seconds.`: keys over seconds.
fn memcached_load(port: u16) -> Result<f64> {
    let out = Command::new("memcslap")
        .arg(format!("--servers=127.0.0.1:{port}"))
        .args(["--concurrency=20", "--execute-number=2000"])
        .output()
        .context("running memcslap")?;
    ensure!(out.status.success(), "memcslap failed: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with("Time to set"))
        .context("memcslap printed no timing")?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let keys: f64 = words.get(3).context("no key count")?.parse()?;
    let seconds: f64 = words.iter().rev().nth(1).context("no seconds")?.parse()?;
    Ok(keys / seconds)
}

pub(super) fn print_server_table(rows: &[ServerRow]) {
    println!(
        "\nreal servers on loopback, operations per second (median of {SERVER_ROUNDS} rounds, each on a fresh server)\n"
    );
    println!(
        "| server | allocator | untraced | leakhound | traced ÷ untraced | --sample-bytes {SAMPLE_BYTES} | traced ÷ untraced |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0}% | {:.0} | {:.0}% |",
            row.name,
            row.allocator,
            row.untraced,
            row.full,
            100.0 * row.full / row.untraced,
            row.sampled,
            100.0 * row.sampled / row.untraced,
        );
    }
    for row in rows.iter().filter(|row| row.allocator == "jemalloc") {
        let full = row.full / row.untraced;
        let sampled = row.sampled / row.untraced;
        println!(
            "  goal: a jemalloc server keeps ≥ 40% under full tracking: {:.0}% {}; ≥ 55% under --sample-bytes {SAMPLE_BYTES}: {:.0}% {}",
            100.0 * full,
            if full >= 0.40 { "met" } else { "MISSED" },
            100.0 * sampled,
            if sampled >= 0.55 { "met" } else { "MISSED" },
        );
    }
}
