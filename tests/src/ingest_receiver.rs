//! A loopback HTTP server that speaks Pyroscope's ingest API as leakhound's pushes use it:
//! `POST /ingest?name=...&from=...&until=...&format=pprof` with a `multipart/form-data` body
//! whose `profile` part is a gzipped pprof. Every request is kept for the test to check; the
//! first `failures` are answered 503, as a store that is away would.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct Ingested {
    /// The request target: path and query.
    pub target: String,
    pub content_type: String,
    pub body: Vec<u8>,
    pub at: Instant,
    /// Whether it was answered 200 (else 503).
    pub accepted: bool,
}

impl Ingested {
    /// A query parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name).then(|| percent_decode(value))
        })
    }

    /// The `profile` part of the multipart body.
    pub fn profile(&self) -> Vec<u8> {
        let boundary = self
            .content_type
            .split_once("boundary=")
            .map(|(_, b)| b.trim_matches('"'))
            .expect("a multipart boundary");
        let delimiter = format!("--{boundary}");
        let body = &self.body;
        let starts: Vec<usize> = find_all(body, delimiter.as_bytes());
        for pair in starts.windows(2) {
            let part = &body[pair[0] + delimiter.len()..pair[1]];
            let Some(head_end) = find_all(part, b"\r\n\r\n").first().copied() else {
                continue;
            };
            let head = String::from_utf8_lossy(&part[..head_end]);
            if head.contains("name=\"profile\"") {
                let content = &part[head_end + 4..];
                // The part ends with the CRLF before the next delimiter.
                return content.strip_suffix(b"\r\n").unwrap_or(content).to_vec();
            }
        }
        panic!("no profile part in the body");
    }
}

fn find_all(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        if bytes[i] == b'%'
            && let Some(byte) = hex
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct Receiver {
    pub url: String,
    received: Arc<Mutex<Vec<Ingested>>>,
}

impl Receiver {
    pub fn start(failures: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("its address"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&received);
        std::thread::spawn(move || {
            let mut failures = failures;
            for stream in listener.incoming().flatten() {
                let accept = failures == 0;
                failures = failures.saturating_sub(1);
                if let Some(request) = serve(stream, accept) {
                    kept.lock().unwrap().push(request);
                }
            }
        });
        Self { url, received }
    }

    pub fn received(&self) -> Vec<Ingested> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `count` requests were accepted.
    pub fn wait_accepted(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.received().iter().filter(|r| r.accepted).count() >= count {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// Reads one request (Content-Length or chunked body) and answers it.
fn serve(stream: TcpStream, accept: bool) -> Option<Ingested> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut words = line.split_whitespace();
    let (method, target) = (words.next()?.to_owned(), words.next()?.to_owned());
    let (mut length, mut chunked, mut content_type) = (0usize, false, String::new());
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().ok()?,
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "content-type" => content_type = value.to_owned(),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).ok()?;
    }
    let status = if accept && method == "POST" {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    Some(Ingested {
        target,
        content_type,
        body,
        at: Instant::now(),
        accepted: accept && method == "POST",
    })
}
