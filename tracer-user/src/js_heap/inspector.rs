//! Node's inspector, opened the way Node documents (SIGUSR1), found on the target's own
//! listening socket, and spoken to over the Chrome DevTools Protocol (WebSocket). Runs on a
//! thread that has joined the target's network namespace, so `127.0.0.1` is the target's
//! loopback, also for a target in a container.
//!
//! Everything the socket sends is untrusted: messages are capped in size, every read has the
//! caller's deadline, and the address connected to is always the socket found in the
//! target's own tables, never one the target names (its `webSocketDebuggerUrl`).

use std::{
    collections::HashSet,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, protocol::WebSocketConfig};

use super::{profile, sockets};

/// A message from the inspector taken at most (a profile of a large application is a few
/// MiB of JSON).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// The `/json/list` reply read at most.
const MAX_LIST_BYTES: u64 = 1 << 20;
/// Messages that are not the reply awaited (protocol events) skipped at most per call.
const MAX_SKIPPED: usize = 10_000;
/// How long Node is given to open its listening socket after SIGUSR1 before leakhound looks
/// for one that was already open.
const OPEN_WAIT: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(20);
/// Where Node's inspector listens unless told otherwise.
const DEFAULT_PORT: u16 = 9229;
/// Node's `SIGUSR1`: starts the inspector (https://nodejs.org/en/learn/getting-started/debugging).
const SIGUSR1_BIT: u64 = 1 << (libc::SIGUSR1 - 1);

#[derive(Debug, thiserror::Error)]
pub enum InspectorError {
    #[error(
        "the process does not catch SIGUSR1 (not Node, or its inspector is disabled); no signal was sent"
    )]
    NoSigusr1Handler,
    #[error(
        "no new listening socket of the process answered as Node's inspector after SIGUSR1, nor one on port 9229 (an inspector already open on another port is not looked for)"
    )]
    NotFound,
    #[error(
        "an inspector client is already connected to {addr} ({clients} connection(s)); leakhound leaves it alone"
    )]
    ClientAttached { addr: SocketAddr, clients: usize },
    #[error(
        "{source}; the inspector that leakhound opened on {addr} stays open until the process exits"
    )]
    LeftOpen {
        addr: SocketAddr,
        source: Box<InspectorError>,
    },
    #[error("the inspector did not answer within the deadline")]
    Timeout,
    #[error("the inspector answered {method} with an error: {message}")]
    Refused { method: String, message: String },
    #[error("the inspector's reply is malformed: {0}")]
    Malformed(String),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    #[error("the inspector connection failed: {0}")]
    WebSocket(String),
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> InspectorError {
    move |source| InspectorError::Io { context, source }
}

/// Moves the calling thread into the process's network namespace (a no-op when it is ours).
pub fn enter_network_namespace(pid: u32) -> Result<(), InspectorError> {
    use std::os::unix::fs::MetadataExt;
    let target = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(io("the target's network namespace cannot be opened"))?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(io("our network namespace cannot be read"))?;
    let theirs = target
        .metadata()
        .map_err(io("the target's network namespace cannot be read"))?;
    if (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino()) {
        return Ok(());
    }
    // SAFETY: `target` is an open namespace descriptor; setns moves only this thread.
    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(InspectorError::Io {
            context: "cannot enter the target's network namespace",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Whether the process has a handler for SIGUSR1 (`SigCgt` in its status): Node installs one
/// to start its inspector; for most other programs the signal's default action kills them.
fn catches_sigusr1(pid: u32) -> Result<bool, InspectorError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(io("the target's status cannot be read"))?;
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| InspectorError::Malformed("no SigCgt in /proc/PID/status".into()))?;
    Ok(caught & SIGUSR1_BIT != 0)
}

fn listening(pid: u32) -> Result<Vec<sockets::TcpSocket>, InspectorError> {
    Ok(sockets::sockets_of(pid)
        .map_err(io("the target's sockets cannot be read"))?
        .into_iter()
        .filter(sockets::TcpSocket::is_listening)
        .collect())
}

fn remaining(deadline: Instant) -> Result<Duration, InspectorError> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(InspectorError::Timeout)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry {
    #[serde(default)]
    id: String,
    #[serde(default, rename = "type")]
    kind: String,
}

/// Asks `addr` for its `/json/list` and returns the target id of a Node inspector there.
fn node_target_id(addr: SocketAddr, deadline: Instant) -> Result<String, InspectorError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(remaining(deadline)?))
        // Loopback of the target's namespace: never through a proxy from our environment.
        .proxy(None)
        .max_redirects(0)
        .build()
        .into();
    let body = agent
        .get(format!("http://{addr}/json/list"))
        .call()
        .map_err(|e| InspectorError::Malformed(format!("GET /json/list: {e}")))?
        .body_mut()
        .with_config()
        .limit(MAX_LIST_BYTES)
        .read_to_vec()
        .map_err(|e| InspectorError::Malformed(format!("GET /json/list: {e}")))?;
    let entries: Vec<ListEntry> =
        serde_json::from_slice(&body).map_err(|e| InspectorError::Malformed(e.to_string()))?;
    entries
        .into_iter()
        .find(|e| e.kind == "node" && is_target_id(&e.id))
        .map(|e| e.id)
        .ok_or(InspectorError::NotFound)
}

/// Node's target ids are UUIDs; only such a path is put in the URL.
fn is_target_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// An open DevTools session with a Node process's inspector.
pub struct Inspector {
    pid: u32,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// The inspector's listening socket, as the target's table shows it.
    pub listening: SocketAddr,
    listening_inode: u64,
    /// Whether leakhound opened it (and so closes it at the end).
    pub opened: bool,
}

/// How the session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Leakhound opened the inspector, closed it, and its socket is gone.
    Closed,
    /// It was open before leakhound came: left open, as found.
    LeftOpen,
}

impl Inspector {
    /// Opens the inspector of `pid` (SIGUSR1) and connects to it, all before `deadline`. The
    /// calling thread must be in the target's network namespace.
    pub fn open(pid: u32, deadline: Instant) -> Result<Self, InspectorError> {
        if !catches_sigusr1(pid)? {
            return Err(InspectorError::NoSigusr1Handler);
        }
        let before: HashSet<u64> = listening(pid)?.iter().map(|s| s.inode).collect();
        // SAFETY: sends a signal; the process catches it (checked above).
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
            return Err(io("SIGUSR1 could not be sent")(
                std::io::Error::last_os_error(),
            ));
        }
        let asked = Instant::now();
        let (candidates, opened) = loop {
            let now = listening(pid)?;
            let new: Vec<_> = now
                .iter()
                .filter(|s| !before.contains(&s.inode))
                .copied()
                .collect();
            if !new.is_empty() {
                break (new, true);
            }
            if asked.elapsed() >= OPEN_WAIT {
                // No new socket: the inspector was open already (SIGUSR1 then does nothing).
                // Only Node's default port is asked: the process's other ports are its own
                // services, which must not be sent a request on its behalf.
                let default: Vec<_> = now
                    .into_iter()
                    .filter(|s| s.local.port() == DEFAULT_PORT)
                    .collect();
                if default.is_empty() {
                    return Err(InspectorError::NotFound);
                }
                break (default, false);
            }
            remaining(deadline)?;
            std::thread::sleep(POLL);
        };
        let listening_now = candidates.clone();
        Self::connect(pid, candidates, opened, deadline).map_err(|err| {
            // What leakhound opened and could not reach stays open: say so.
            match (opened, listening_now.first()) {
                (true, Some(socket)) => InspectorError::LeftOpen {
                    addr: socket.local,
                    source: Box::new(err),
                },
                _ => err,
            }
        })
    }

    fn connect(
        pid: u32,
        candidates: Vec<sockets::TcpSocket>,
        opened: bool,
        deadline: Instant,
    ) -> Result<Self, InspectorError> {
        let mut found = None;
        for socket in candidates {
            if let Ok(id) = node_target_id(sockets::connect_address(socket.local), deadline) {
                found = Some((socket, id));
                break;
            }
        }
        let (socket, id) = found.ok_or(InspectorError::NotFound)?;
        let clients = sockets::sockets_of(pid)
            .map_err(io("the target's sockets cannot be read"))?
            .iter()
            .filter(|s| s.is_established() && s.local.port() == socket.local.port())
            .count();
        if clients > 0 {
            return Err(InspectorError::ClientAttached {
                addr: socket.local,
                clients,
            });
        }
        let addr = sockets::connect_address(socket.local);
        let stream = TcpStream::connect_timeout(&addr, remaining(deadline)?)
            .map_err(io("the inspector's socket cannot be connected"))?;
        let left = remaining(deadline)?;
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(io("socket timeouts"))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let (ws, _) = tungstenite::client::client_with_config(
            format!("ws://{addr}/{id}"),
            stream,
            Some(config),
        )
        .map_err(|e| InspectorError::WebSocket(e.to_string()))?;
        Ok(Self {
            pid,
            ws,
            next_id: 1,
            listening: socket.local,
            listening_inode: socket.inode,
            opened,
        })
    }

    /// Sends one command and returns its reply's bytes (events before it are skipped).
    fn call(
        &mut self,
        method: &str,
        params: Value,
        deadline: Instant,
    ) -> Result<Vec<u8>, InspectorError> {
        #[derive(Deserialize)]
        struct Envelope {
            id: Option<u64>,
            error: Option<Value>,
        }
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params }).to_string();
        self.set_timeouts(deadline)?;
        self.ws
            .send(Message::text(request))
            .map_err(|e| websocket_error(e, deadline))?;
        for _ in 0..MAX_SKIPPED {
            self.set_timeouts(deadline)?;
            let bytes: Vec<u8> = match self.ws.read().map_err(|e| websocket_error(e, deadline))? {
                Message::Text(text) => text.as_bytes().to_vec(),
                Message::Binary(bytes) => bytes.to_vec(),
                Message::Close(_) => {
                    return Err(InspectorError::WebSocket("closed by the target".into()));
                }
                _ => continue,
            };
            // The envelope holds the profile's tree: its nesting is checked before serde
            // (whose recursion limit a real tree exceeds) reads it.
            if !profile::nesting_within(&bytes, profile::MAX_JSON_NESTING) {
                return Err(profile::ProfileError::TooDeep {
                    max: profile::MAX_DEPTH,
                }
                .into());
            }
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            de.disable_recursion_limit();
            let envelope = Envelope::deserialize(&mut de)
                .map_err(|e| InspectorError::Malformed(e.to_string()))?;
            if envelope.id != Some(id) {
                continue;
            }
            if let Some(error) = envelope.error {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("(no message)");
                return Err(InspectorError::Refused {
                    method: method.to_owned(),
                    message: crate::names::shown(message).into_owned(),
                });
            }
            return Ok(bytes);
        }
        Err(InspectorError::Malformed(format!(
            "no reply to {method} among {MAX_SKIPPED} messages"
        )))
    }

    fn set_timeouts(&mut self, deadline: Instant) -> Result<(), InspectorError> {
        let left = remaining(deadline)?;
        let stream = self.ws.get_mut();
        stream
            .set_read_timeout(Some(left))
            .and_then(|()| stream.set_write_timeout(Some(left)))
            .map_err(io("socket timeouts"))
    }

    /// Starts V8's sampling heap profiler: one sample per `interval` bytes allocated.
    pub fn start_sampling(
        &mut self,
        interval: u64,
        deadline: Instant,
    ) -> Result<(), InspectorError> {
        self.call("HeapProfiler.enable", json!({}), deadline)?;
        self.call(
            "HeapProfiler.startSampling",
            json!({ "samplingInterval": interval }),
            deadline,
        )?;
        Ok(())
    }

    /// The live objects sampled so far, by allocation stack.
    pub fn profile(
        &mut self,
        interval: u64,
        deadline: Instant,
    ) -> Result<Vec<profile::JsStack>, InspectorError> {
        let reply = self.call("HeapProfiler.getSamplingProfile", json!({}), deadline)?;
        Ok(profile::stacks_of_reply(&reply, interval)?)
    }

    /// Stops sampling and, when leakhound opened the inspector, closes it and waits until its
    /// socket is gone: the target is left as found.
    pub fn finish(mut self, deadline: Instant) -> Result<Ending, InspectorError> {
        let stopped = self
            .call("HeapProfiler.stopSampling", json!({}), deadline)
            .and_then(|_| self.call("HeapProfiler.disable", json!({}), deadline));
        if !self.opened {
            self.disconnect(deadline);
            return stopped.map(|_| Ending::LeftOpen);
        }
        // `inspector.close()` waits until no session is connected, so calling it while this
        // session waits for the reply would never return. It runs on a timer instead, after
        // the reply, and this session disconnects at once. `require` is the one Node gives
        // the console's command-line API; the timer is unref'd so it never keeps the
        // process alive.
        let close = "(r => setTimeout(() => r('inspector').close(), 20).unref())(require)";
        let evaluated = self.call(
            "Runtime.evaluate",
            json!({ "expression": close, "includeCommandLineAPI": true, "silent": true }),
            deadline,
        );
        self.disconnect(deadline);
        evaluated?;
        loop {
            let open = listening(self.pid)?
                .iter()
                .any(|s| s.inode == self.listening_inode);
            if !open {
                return stopped.map(|_| Ending::Closed);
            }
            remaining(deadline)?;
            std::thread::sleep(POLL);
        }
    }

    fn disconnect(&mut self, deadline: Instant) {
        if self.set_timeouts(deadline).is_ok() {
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
        }
        let _ = self.ws.get_ref().shutdown(std::net::Shutdown::Both);
    }
}

fn websocket_error(error: tungstenite::Error, deadline: Instant) -> InspectorError {
    match error {
        tungstenite::Error::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) || Instant::now() >= deadline =>
        {
            InspectorError::Timeout
        }
        other => InspectorError::WebSocket(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uuid_like_ids_go_into_the_url() {
        assert!(is_target_id("c522ff5a-ec62-4ef0-87d6-9bc50b12aefa"));
        assert!(!is_target_id("../json"));
        assert!(!is_target_id("x?y"));
        assert!(!is_target_id(""));
        assert!(!is_target_id(&"a".repeat(65)));
    }

    #[test]
    fn sigusr1_is_bit_9() {
        // SigCgt `0000000000000200` is SIGUSR1 alone.
        assert_eq!(SIGUSR1_BIT, 0x200);
    }
}
