//! Live JavaScript heap by allocation stack, from V8's sampling heap profiler, reached
//! through Node's inspector (`--js-heap`, opt-in: it opens the inspector).
//!
//! A thread of its own joins the target's network namespace, opens the inspector
//! ([`inspector`]), starts sampling at the first sample and fetches the profile at every
//! sample after, so the stacks (origin `js-heap`) get histories, trends and every format like
//! any other. At the end it fetches the last profile, stops sampling and closes the inspector
//! again. The session never waits on it except at the end, and then within one deadline.
//!
//! The js-heap bytes are V8's estimates of live objects inside the V8 heap, whose pages the
//! `mmap` stacks already count: they are not added to the outstanding total.

pub mod inspector;
pub mod profile;
pub mod sockets;

use std::{
    collections::{HashMap, hash_map::DefaultHasher},
    hash::{Hash, Hasher},
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    analysis::history::Timeline,
    model::{Frame, FrameData, Origin, ProcessMemory, StackRecord},
};

use inspector::{Ending, Inspector};
use profile::{JsFrame, JsStack};

/// Bytes between samples of V8's sampling heap profiler (its default is 32 KiB too): about
/// one sample per four 8 KiB objects, a few per millisecond of a busy allocator.
pub const SAMPLING_INTERVAL: u64 = 32 << 10;
/// Opening the inspector and starting the profiler.
const SETUP_DEADLINE: Duration = Duration::from_secs(5);
/// One profile during the trace.
const PROFILE_DEADLINE: Duration = Duration::from_secs(2);
/// The end: the last profile, stopping the profiler and closing the inspector.
pub const END_DEADLINE: Duration = Duration::from_secs(3);
/// Distinct stacks kept over the whole trace.
const MAX_STACKS: usize = 1 << 16;
/// The parser of a profile recurses once per level of the tree (bounded by
/// [`profile::MAX_DEPTH`]); this leaves it ample room.
const THREAD_STACK: usize = 16 << 20;

enum Request {
    Profile,
    /// The last profile, then stop and close.
    Finish,
}

enum Reply {
    Started { listening: String, opened: bool },
    Failed(String),
    Profile(Result<Vec<JsStack>, String>),
    Ended(Result<Ending, String>),
}

/// Samples a Node target's JavaScript heap through its inspector.
pub struct JsHeapSampler {
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    _thread: JoinHandle<()>,
    /// A profile was asked for and has not come yet.
    waiting: bool,
    running: bool,
    /// Every stack seen, by key.
    frames: HashMap<u64, Vec<JsFrame>>,
    /// The latest profile: bytes and objects by key.
    current: HashMap<u64, (u64, u64)>,
    timeline: Timeline<u64>,
    dropped_stacks: u64,
    said_profile_error: bool,
    /// What to say on stderr, taken by the session.
    notices: Vec<String>,
}

impl JsHeapSampler {
    /// Starts the thread that opens the inspector; it does not wait for it.
    pub fn start(pid: u32) -> std::io::Result<Self> {
        let (requests, requested) = mpsc::channel();
        let (reply, replies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("js-heap".into())
            .stack_size(THREAD_STACK)
            .spawn(move || run(pid, &requested, &reply))?;
        Ok(Self {
            requests,
            replies,
            _thread: thread,
            waiting: false,
            running: true,
            frames: HashMap::new(),
            current: HashMap::new(),
            timeline: Timeline::default(),
            dropped_stacks: 0,
            said_profile_error: false,
            notices: Vec::new(),
        })
    }

    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    fn handle(&mut self, reply: Reply) -> Option<Result<Ending, String>> {
        match reply {
            Reply::Started { listening, opened } => {
                log::info!(
                    "js-heap: sampling through the inspector on {listening} ({})",
                    if opened {
                        "opened by leakhound"
                    } else {
                        "already open"
                    }
                );
            }
            Reply::Failed(why) => {
                self.running = false;
                self.notices
                    .push(format!("--js-heap: {why}; js-heap stacks are missing"));
            }
            Reply::Profile(result) => {
                self.waiting = false;
                match result {
                    Ok(stacks) => self.take_profile(stacks),
                    Err(why) if !self.said_profile_error => {
                        self.said_profile_error = true;
                        self.notices.push(format!(
                            "--js-heap: a heap profile could not be read: {why}; js-heap stacks keep the last one read"
                        ));
                    }
                    Err(_) => {}
                }
            }
            Reply::Ended(ending) => return Some(ending),
        }
        None
    }

    fn take_profile(&mut self, stacks: Vec<JsStack>) {
        self.current.clear();
        for stack in stacks {
            let key = key_of(&stack.frames);
            if !self.frames.contains_key(&key) {
                if self.frames.len() >= MAX_STACKS {
                    self.dropped_stacks += 1;
                    continue;
                }
                self.frames.insert(key, stack.frames);
            }
            let entry = self.current.entry(key).or_default();
            entry.0 = entry.0.saturating_add(stack.bytes);
            entry.1 = entry.1.saturating_add(stack.objects);
        }
    }

    fn drain(&mut self) {
        while let Ok(reply) = self.replies.try_recv() {
            self.handle(reply);
        }
    }

    fn values(&self) -> Vec<(u64, u64)> {
        self.current.iter().map(|(k, (b, _))| (*k, *b)).collect()
    }

    /// One sample, at the same time as the stacks' timeline. It holds the latest profile
    /// that has come (asked for at the sample before), and asks for the next one.
    pub fn sample(&mut self, secs: f64, memory: Option<ProcessMemory>) {
        self.drain();
        let values = self.values();
        self.timeline.offer(secs, memory, values);
        if self.running && !self.waiting {
            self.waiting = self.requests.send(Request::Profile).is_ok();
        }
    }

    /// A sample at which nothing is read (after an exec).
    pub fn skip(&mut self, secs: f64) {
        let none: [(u64, u64); 0] = [];
        self.timeline.push(secs, None, none);
    }

    /// The last sample: the last profile, then the profiler stopped and the inspector closed,
    /// all within [`END_DEADLINE`] (and a little for the thread's own deadline to pass).
    pub fn last_sample(&mut self, secs: f64, memory: Option<ProcessMemory>) {
        self.drain();
        // No memory: the target has exited, and its inspector with it; the thread ends when
        // this sampler is dropped.
        let alive = memory.is_some();
        if alive && self.running && self.requests.send(Request::Finish).is_ok() {
            let deadline = Instant::now() + END_DEADLINE + Duration::from_millis(500);
            let ended = loop {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break None;
                };
                match self.replies.recv_timeout(left) {
                    Ok(reply) => {
                        if let Some(ended) = self.handle(reply) {
                            break Some(ended);
                        }
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break None,
                }
            };
            match ended {
                Some(Ok(Ending::Closed)) => log::info!("js-heap: the inspector is closed again"),
                Some(Ok(Ending::LeftOpen)) => {
                    log::info!("js-heap: the inspector was open before; left open")
                }
                Some(Err(why)) => self.notices.push(format!(
                    "--js-heap: the inspector was not closed cleanly: {why}; it may stay open until the process exits"
                )),
                // Setup failures end the thread with a notice of their own.
                None if !self.running => {}
                None => self.notices.push(format!(
                    "--js-heap: the inspector did not finish within {:.1} s; js-heap stacks are from the last profile read, and the inspector may stay open until the process exits",
                    END_DEADLINE.as_secs_f64()
                )),
            }
        }
        if self.dropped_stacks > 0 {
            self.notices.push(format!(
                "--js-heap: {} stacks past the first {MAX_STACKS} were left out",
                self.dropped_stacks
            ));
        }
        let values = self.values();
        self.timeline.push(secs, memory, values);
    }

    /// The stacks as of the last profile read, root frame first.
    pub fn stacks(&self) -> Vec<StackRecord> {
        self.frames
            .iter()
            .filter_map(|(key, frames)| {
                let history = self.timeline.series(key);
                let (bytes, objects) = self.current.get(key).copied().unwrap_or_default();
                if bytes == 0 && history.iter().all(|b| *b == 0) {
                    return None;
                }
                Some(StackRecord {
                    origin: Origin::JsHeap,
                    frames: frames.iter().map(frame_of).collect(),
                    live_bytes: bytes,
                    live_allocations: objects,
                    // The profile holds live objects only: what was allocated and collected is
                    // not known.
                    total_bytes: bytes,
                    total_allocations: objects,
                    history,
                    ages: None,
                    live_bytes_variance: None,
                })
            })
            .collect()
    }
}

fn key_of(frames: &[JsFrame]) -> u64 {
    let mut hasher = DefaultHasher::new();
    frames.hash(&mut hasher);
    hasher.finish()
}

fn frame_of(frame: &JsFrame) -> Frame {
    FrameData {
        name: frame.display_name(),
        module: None,
        file: (!frame.url.is_empty()).then(|| frame.url.clone()),
        line: frame.line,
        inlined: false,
    }
    .into()
}

/// The thread: joins the target's network namespace, opens the inspector, starts sampling,
/// answers requests, and always stops and closes what it opened before it ends.
fn run(pid: u32, requests: &Receiver<Request>, replies: &Sender<Reply>) {
    let setup = || -> Result<Inspector, inspector::InspectorError> {
        inspector::enter_network_namespace(pid)?;
        let deadline = Instant::now() + SETUP_DEADLINE;
        let mut inspector = Inspector::open(pid, deadline)?;
        if let Err(err) = inspector.start_sampling(SAMPLING_INTERVAL, deadline) {
            // Leave it as found: close what was opened.
            let _ = inspector.finish(Instant::now() + END_DEADLINE);
            return Err(err);
        }
        Ok(inspector)
    };
    let mut inspector = match setup() {
        Ok(inspector) => inspector,
        Err(err) => {
            let _ = replies.send(Reply::Failed(err.to_string()));
            return;
        }
    };
    let _ = replies.send(Reply::Started {
        listening: inspector.listening.to_string(),
        opened: inspector.opened,
    });
    // A `Finish`, or the session gone: either way the last profile, then stop and close.
    while let Ok(Request::Profile) = requests.recv() {
        let asked = Instant::now();
        let profile = inspector
            .profile(SAMPLING_INTERVAL, asked + PROFILE_DEADLINE)
            .map_err(|e| e.to_string());
        log::debug!(
            "js-heap: profile read in {:.1} ms",
            asked.elapsed().as_secs_f64() * 1e3
        );
        let _ = replies.send(Reply::Profile(profile));
    }
    let deadline = Instant::now() + END_DEADLINE;
    let profile = inspector
        .profile(SAMPLING_INTERVAL, deadline)
        .map_err(|e| e.to_string());
    let _ = replies.send(Reply::Profile(profile));
    let ended = inspector.finish(deadline).map_err(|e| e.to_string());
    let _ = replies.send(Reply::Ended(ended));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(function: &str, line: u32) -> JsFrame {
        JsFrame {
            function: function.into(),
            url: "file:///srv/app.js".into(),
            line: Some(line),
        }
    }

    #[test]
    fn profiles_become_stacks_with_histories() {
        let (_requests, requested) = mpsc::channel::<Request>();
        let (_reply, replies) = mpsc::channel();
        drop(requested);
        let mut sampler = JsHeapSampler {
            requests: _requests,
            replies,
            _thread: std::thread::spawn(|| {}),
            waiting: false,
            running: false,
            frames: HashMap::new(),
            current: HashMap::new(),
            timeline: Timeline::default(),
            dropped_stacks: 0,
            said_profile_error: false,
            notices: Vec::new(),
        };
        let grows = vec![js("onData", 30), js("addMessageListener", 20)];
        let gone = vec![js("parse", 5)];
        let profile = |n: u64| {
            let mut stacks = vec![JsStack {
                frames: grows.clone(),
                bytes: n * 8192,
                objects: n,
            }];
            if n < 3 {
                stacks.push(JsStack {
                    frames: gone.clone(),
                    bytes: 100,
                    objects: 1,
                });
            }
            stacks
        };
        sampler.sample(0.5, None);
        for n in 1..=4 {
            sampler.handle(Reply::Profile(Ok(profile(n))));
            sampler.sample(0.5 + n as f64 * 0.5, None);
        }
        sampler.last_sample(3.0, None);
        let mut stacks = sampler.stacks();
        stacks.sort_by_key(|s| std::cmp::Reverse(s.live_bytes));
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].origin, Origin::JsHeap);
        assert_eq!(stacks[0].history, [0, 8192, 16384, 24576, 32768, 32768]);
        assert_eq!(stacks[0].live_bytes, 32768);
        assert_eq!(stacks[0].frames[1].name, "addMessageListener");
        assert_eq!(stacks[0].frames[1].line, Some(20));
        // A stack that the last profile no longer holds is kept with its history and 0 live.
        assert_eq!(stacks[1].live_bytes, 0);
        assert_eq!(stacks[1].history, [0, 100, 100, 0, 0, 0]);
    }

    /// A js-heap stack goes through every format and the trend classifier, its name escaped,
    /// and stays out of the outstanding total.
    #[test]
    fn js_heap_stacks_reach_every_format() {
        use crate::model::{Recording, Sample};
        use crate::report::{Format, Report};
        let mut frames = [js("onData", 30), js("evil;name\x1b[2J 42", 20)];
        frames[1].url = "file:///srv/a b.js".into();
        let stack = StackRecord {
            origin: Origin::JsHeap,
            frames: frames.iter().map(frame_of).collect(),
            live_bytes: 40_000,
            live_allocations: 5,
            total_bytes: 40_000,
            total_allocations: 5,
            history: vec![0, 10_000, 20_000, 30_000, 40_000],
            ages: None,
            live_bytes_variance: None,
        };
        let malloc = StackRecord {
            origin: Origin::Malloc,
            frames: vec![Frame::named("main"), Frame::named("leak")],
            live_bytes: 64,
            live_allocations: 1,
            total_bytes: 64,
            total_allocations: 1,
            history: vec![64; 5],
            ages: None,
            live_bytes_variance: None,
        };
        let recording = Recording {
            pid: 7,
            command: "node server.js".into(),
            duration_secs: 5.0,
            ended_by: "SIGINT".into(),
            samples: (1..=5)
                .map(|i| Sample {
                    secs: f64::from(i),
                    memory: None,
                })
                .collect(),
            stacks: vec![malloc, stack],
            ..Recording::default()
        };
        assert_eq!(recording.live_bytes(), 64);
        let report = Report::new(&recording);
        let render = |format: Format| {
            let mut out = Vec::new();
            format.renderer(10).render(&report, &mut out).unwrap();
            out
        };
        let text = String::from_utf8(render(Format::Text)).unwrap();
        assert!(text.contains("[js-heap]"), "{text}");
        assert!(text.contains("js heap live ~39.1 KiB"), "{text}");
        assert!(text.contains("evil;name\\x1b[2J 42"), "{text}");
        let json: serde_json::Value = serde_json::from_slice(&render(Format::Json)).unwrap();
        let js = json["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["origin"] == "js-heap")
            .expect("a js-heap stack");
        assert_eq!(js["trend"]["class"], "growing");
        assert_eq!(js["bytes"], 40_000);
        assert_eq!(json["totals"]["bytes"], 64);
        let folded = String::from_utf8(render(Format::Folded)).unwrap();
        assert!(
            folded.contains("onData;evil\\x3bname\\x1b[2J\\x2042 40000"),
            "{folded}"
        );
        let diff = String::from_utf8(render(Format::Diff)).unwrap();
        assert!(diff.contains("onData;evil\\x3bname"), "{diff}");
        let svg = String::from_utf8(render(Format::Svg)).unwrap();
        assert!(svg.contains("onData"));
        let mut pprof = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&render(Format::Pprof)[..]),
            &mut pprof,
        )
        .unwrap();
        assert!(pprof.windows(7).any(|w| w == b"js-heap"));
    }
}
