//! The thread that sends profiles, so that tracing never waits for the network.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{ATTEMPTS, QUEUE, ingest::IngestRequest};

/// The first pause after a failed push; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// One request's whole budget: connect, send, answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of the profiles offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushTally {
    pub pushed: u64,
    /// Given up after [`ATTEMPTS`] tries, or when the end's wait ran out.
    pub failed: u64,
    /// Pushed out of a full queue by a newer profile.
    pub dropped: u64,
}

#[derive(Default)]
struct State {
    pending: VecDeque<IngestRequest>,
    /// No more offers; drain until `deadline`.
    deadline: Option<Instant>,
    tally: PushTally,
    last_error: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Pusher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Pusher {
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        let thread = std::thread::Builder::new().name("push".into()).spawn({
            let shared = Arc::clone(&shared);
            move || run(&shared, &agent)
        })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues a profile; a full queue loses its oldest. Never waits for the network.
    pub fn offer(&self, request: IngestRequest) {
        let mut state = self.shared.lock();
        if state.pending.len() >= QUEUE {
            state.pending.pop_front();
            state.tally.dropped += 1;
        }
        state.pending.push_back(request);
        log::debug!("profile queued ({} waiting)", state.pending.len());
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Stops taking profiles and waits at most `wait` for the queue to drain; what is left
    /// then counts as failed. Returns the tally and the last error, if any.
    pub fn finish(mut self, wait: Duration) -> (PushTally, Option<String>) {
        self.shared.lock().deadline = Some(Instant::now() + wait);
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let state = self.shared.lock();
        (state.tally, state.last_error.clone())
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shared.lock().deadline = Some(Instant::now());
            self.shared.wake.notify_all();
        }
    }
}

fn run(shared: &Shared, agent: &ureq::Agent) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempts = 0;
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && state.deadline.is_none() {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let Some(request) = state.pending.front().cloned() else {
            return; // closed and drained
        };
        if state
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            state.tally.failed += state.pending.len() as u64;
            state.pending.clear();
            return;
        }
        drop(state);
        let result = send(agent, &request);
        let mut state = shared.lock();
        match result {
            Ok(()) => {
                // The front is still this request: offers push at the back, and drop the
                // front only when the queue is full, which a sent request no longer counts in.
                if state.pending.front() == Some(&request) {
                    state.pending.pop_front();
                }
                state.tally.pushed += 1;
                log::debug!("profile pushed ({} waiting)", state.pending.len());
                backoff = FIRST_BACKOFF;
                attempts = 0;
            }
            Err(error) => {
                log::warn!("push to the profile store failed: {error}");
                state.last_error = Some(error);
                attempts += 1;
                if attempts >= ATTEMPTS {
                    if state.pending.front() == Some(&request) {
                        state.pending.pop_front();
                    }
                    state.tally.failed += 1;
                    attempts = 0;
                    backoff = FIRST_BACKOFF;
                    continue;
                }
                // The pause ends early only when the end of the trace runs out of time.
                let pause = match state.deadline {
                    Some(deadline) => {
                        backoff.min(deadline.saturating_duration_since(Instant::now()))
                    }
                    None => backoff,
                };
                let _ = shared.wake.wait_timeout(state, pause);
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

fn send(agent: &ureq::Agent, request: &IngestRequest) -> Result<(), String> {
    agent
        .post(&request.url)
        .header("Content-Type", &request.content_type)
        .send(&request.body[..])
        .map(drop)
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        net::TcpListener,
    };

    use super::*;

    /// A loopback server answering 503 to the first `refuse` requests and 200 after; returns
    /// its URL and the bodies it accepted.
    fn server(refuse: usize) -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().flatten().enumerate() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let status = if n < refuse {
                    "503 Unavailable"
                } else {
                    "200 OK"
                };
                if n >= refuse {
                    kept.lock().unwrap().push(body);
                }
                let mut stream = stream;
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        (url, accepted)
    }

    fn request(url: &str, body: &[u8]) -> IngestRequest {
        IngestRequest {
            url: format!("{url}/ingest"),
            content_type: "application/octet-stream".into(),
            body: body.to_vec(),
        }
    }

    #[test]
    fn a_refused_profile_comes_again_and_every_offer_is_pushed_in_order() {
        let (url, accepted) = server(1);
        let pusher = Pusher::start().unwrap();
        pusher.offer(request(&url, b"one"));
        std::thread::sleep(Duration::from_millis(200));
        pusher.offer(request(&url, b"two"));
        pusher.offer(request(&url, b"three"));
        let (tally, _) = pusher.finish(Duration::from_secs(5));
        assert_eq!(
            tally,
            PushTally {
                pushed: 3,
                failed: 0,
                dropped: 0
            }
        );
        assert_eq!(
            *accepted.lock().unwrap(),
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_the_end_gives_up_in_time() {
        // Nothing listens here: every push fails at once.
        let pusher = Pusher::start().unwrap();
        for n in 0..QUEUE + 2 {
            pusher.offer(request("http://127.0.0.1:9", n.to_string().as_bytes()));
        }
        let started = Instant::now();
        let (tally, error) = pusher.finish(Duration::from_millis(500));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the end waits about as asked"
        );
        assert_eq!(tally.pushed, 0);
        assert!(tally.dropped >= 1, "{tally:?}");
        assert_eq!(tally.failed + tally.dropped, QUEUE as u64 + 2, "{tally:?}");
        assert!(error.is_some());
    }
}
