//! One sync session over one link: the state machine described in the crate docs.

use std::collections::VecDeque;

use meshsync_core::{Change, DeviceId, Dot, VersionVector};
use meshsync_wire::{self as wire, Batch, Envelope, GroupId, Hello, Message, PeerAddrs, WireError};

/// Tunables of a session.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Most changes per batch.
    pub batch_changes_max: usize,
    /// Approximate bytes per batch before compression.
    pub batch_bytes_max: usize,
    /// Most batches sent and not yet acknowledged.
    pub window: usize,
    /// Interval between pings.
    pub heartbeat_interval_ms: u64,
    /// Silence after which the peer is considered gone.
    pub dead_after_ms: u64,
    /// Time allowed for the peer's `Hello`.
    pub handshake_timeout_ms: u64,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            batch_changes_max: 16_384,
            batch_bytes_max: 4 << 20,
            window: 4,
            heartbeat_interval_ms: 2_000,
            dead_after_ms: 8_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

impl SessionConfig {
    /// A config with the given heartbeat interval; a peer is dead after four silent intervals.
    pub fn with_heartbeat(heartbeat_interval_ms: u64) -> SessionConfig {
        SessionConfig { heartbeat_interval_ms, dead_after_ms: heartbeat_interval_ms * 4, ..SessionConfig::default() }
    }
}

/// Decides whether a peer's `Hello` admits it, and which scopes it may receive.
/// `Ok(None)` means every scope; `Err` is the reason for refusing.
pub type Admission = Box<dyn Fn(&Hello) -> Result<Option<Vec<String>>, String> + Send>;

/// What we learned about the peer in its `Hello`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerInfo {
    /// Its device id (checked against its TLS certificate).
    pub device: DeviceId,
    /// Its name.
    pub name: String,
    /// Its vector when the session opened.
    pub vector: VersionVector,
    /// The port it accepts connections on.
    pub listen_port: Option<u16>,
    /// Scopes it may receive (`None`: all).
    pub scopes: Option<Vec<String>>,
}

/// Why a session ended on our side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The peer sent bytes that do not decode or break a rule.
    #[error("bad frame from peer: {0}")]
    Wire(#[from] WireError),
    /// The peer broke the protocol's order.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer was not admitted.
    #[error("peer refused: {0}")]
    Refused(String),
    /// The peer went silent.
    #[error("peer silent for {silent_ms} ms")]
    Timeout {
        /// How long.
        silent_ms: u64,
    },
    /// The peer closed the link.
    #[error("peer closed the link: {0}")]
    ClosedByPeer(String),
    /// We closed it.
    #[error("closed: {0}")]
    Closed(String),
}

/// Something the driver must act on or may report.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The handshake completed.
    Established(PeerInfo),
    /// Apply these changes durably, raise the vector to `advance`, then call
    /// [`Session::applied`] with `seq`.
    Apply {
        /// Batch number, to pass back to `applied`.
        seq: u64,
        /// The changes.
        changes: Vec<Change>,
        /// Dots the vector may rise to once applied.
        advance: Vec<Dot>,
        /// Changes the peer still has queued for us.
        remaining: u64,
        /// Whether this batch completes the initial catch-up.
        caught_up: bool,
    },
    /// The peer acknowledged changes: it now durably has everything up to `acked`.
    Acked {
        /// What the peer is known to hold.
        acked: VersionVector,
        /// Changes acknowledged by this ack.
        changes: u64,
    },
    /// An ephemeral message arrived.
    Message(Envelope),
    /// The peer told us where other members are.
    Peers(Vec<PeerAddrs>),
    /// A round trip was measured.
    Rtt(u64),
    /// The session ended.
    Closed(SessionError),
}

/// A request to the driver for changes to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Want {
    /// Send changes above this vector.
    pub cursor: VersionVector,
    /// Within these scopes (`None`: all).
    pub scopes: Option<Vec<String>>,
    /// At most this many.
    pub limit: usize,
    /// About this many bytes.
    pub bytes_max: usize,
}

/// The driver's answer to a [`Want`].
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The changes, in (origin, seq) order.
    pub changes: Vec<Change>,
    /// Where the next page starts.
    pub cursor: VersionVector,
    /// Nothing remains above `cursor`.
    pub exhausted: bool,
    /// Estimate of what remains.
    pub remaining: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    Open,
    Closed,
}

struct InFlight {
    seq: u64,
    cursor: VersionVector,
    count: u64,
}

/// One sync session. See the crate docs.
pub struct Session {
    config: SessionConfig,
    hello: Hello,
    expected_peer: DeviceId,
    admission: Admission,
    state: State,
    peer: Option<PeerInfo>,
    outbox: VecDeque<Message>,
    events: VecDeque<SessionEvent>,
    // Sending side.
    cursor: VersionVector,
    acked: VersionVector,
    next_seq: u64,
    in_flight: VecDeque<InFlight>,
    want_outstanding: bool,
    changed_during_want: bool,
    more_to_send: bool,
    caught_up_sent: bool,
    paused: bool,
    // Receiving side.
    expected_batch: u64,
    applying: VecDeque<u64>,
    /// Batches received while paused, applied on resume.
    held: VecDeque<SessionEvent>,
    // Liveness.
    started_ms: u64,
    last_heard_ms: u64,
    last_ping_ms: u64,
    ping: Option<(u64, u64)>,
    nonce: u64,
}

impl Session {
    /// A session on a fresh link to `expected_peer` (the device its TLS certificate proves).
    /// `hello` is what we announce; `admission` judges the peer's.
    pub fn new(
        config: SessionConfig,
        hello: Hello,
        expected_peer: DeviceId,
        admission: Admission,
        now_ms: u64,
    ) -> Session {
        let mut session = Session {
            config,
            hello: hello.clone(),
            expected_peer,
            admission,
            state: State::AwaitHello,
            peer: None,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            cursor: VersionVector::new(),
            acked: VersionVector::new(),
            next_seq: 1,
            in_flight: VecDeque::new(),
            want_outstanding: false,
            changed_during_want: false,
            more_to_send: true,
            caught_up_sent: false,
            paused: false,
            expected_batch: 1,
            applying: VecDeque::new(),
            held: VecDeque::new(),
            started_ms: now_ms,
            last_heard_ms: now_ms,
            last_ping_ms: now_ms,
            ping: None,
            nonce: u64::from_le_bytes(hello.device.0[..8].try_into().expect("8 bytes")),
        };
        session.outbox.push_back(Message::Hello(hello));
        session
    }

    /// The peer, once the handshake completed.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Whether the session is open (handshake done, not closed).
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// What the peer is known to hold durably (its hello vector plus acknowledged batches).
    pub fn acked(&self) -> &VersionVector {
        &self.acked
    }

    /// Whether everything we had has been sent at least once.
    pub fn caught_up_sent(&self) -> bool {
        self.caught_up_sent
    }

    /// Our group, as announced.
    pub fn group(&self) -> GroupId {
        self.hello.group
    }

    /// Handles one frame from the peer.
    pub fn handle_frame(&mut self, now_ms: u64, bytes: &[u8]) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        self.last_heard_ms = now_ms;
        let message = match wire::decode(bytes) {
            Ok(message) => message,
            Err(e) => return Err(self.fail(SessionError::Wire(e))),
        };
        let result = self.handle_message(now_ms, message);
        result.map_err(|e| self.fail(e))
    }

    fn handle_message(&mut self, now_ms: u64, message: Message) -> Result<(), SessionError> {
        match (&self.state, message) {
            (State::AwaitHello, Message::Hello(hello)) => self.on_hello(hello),
            (State::AwaitHello, Message::Close { reason }) => Err(SessionError::ClosedByPeer(reason)),
            (State::AwaitHello, other) => Err(SessionError::Protocol(format!("{} before hello", kind(&other)))),
            (State::Open, Message::Hello(_)) => Err(SessionError::Protocol("second hello".into())),
            (State::Open, Message::Batch(batch)) => self.on_batch(batch),
            (State::Open, Message::Ack { seq }) => self.on_ack(seq),
            (State::Open, Message::Ping { nonce }) => {
                self.outbox.push_back(Message::Pong { nonce });
                Ok(())
            }
            (State::Open, Message::Pong { nonce }) => {
                if let Some((sent_nonce, sent_ms)) = self.ping {
                    if sent_nonce == nonce {
                        self.ping = None;
                        self.events.push_back(SessionEvent::Rtt(now_ms.saturating_sub(sent_ms)));
                    }
                }
                Ok(())
            }
            (State::Open, Message::Message(envelope)) => {
                self.events.push_back(SessionEvent::Message(envelope));
                Ok(())
            }
            (State::Open, Message::Peers(peers)) => {
                self.events.push_back(SessionEvent::Peers(peers));
                Ok(())
            }
            (State::Open, Message::Close { reason }) => Err(SessionError::ClosedByPeer(reason)),
            (State::Closed, _) => Ok(()),
        }
    }

    fn on_hello(&mut self, hello: Hello) -> Result<(), SessionError> {
        if hello.device != self.expected_peer {
            return Err(SessionError::Refused(format!(
                "hello names device {} but the TLS certificate is {}",
                hello.device, self.expected_peer
            )));
        }
        if hello.device == self.hello.device {
            return Err(SessionError::Refused("connected to ourselves".into()));
        }
        if hello.group != self.hello.group {
            return Err(SessionError::Refused("peer belongs to another group".into()));
        }
        let scopes = (self.admission)(&hello).map_err(SessionError::Refused)?;
        self.cursor = hello.vector.clone();
        self.acked = hello.vector.clone();
        let info = PeerInfo {
            device: hello.device,
            name: hello.name,
            vector: hello.vector,
            listen_port: hello.listen_port,
            scopes,
        };
        self.peer = Some(info.clone());
        self.state = State::Open;
        self.events.push_back(SessionEvent::Established(info));
        Ok(())
    }

    fn on_batch(&mut self, batch: Batch) -> Result<(), SessionError> {
        if batch.seq != self.expected_batch {
            return Err(SessionError::Protocol(format!(
                "batch {} out of order (expected {})",
                batch.seq, self.expected_batch
            )));
        }
        if self.applying.len() > self.config.window.max(1) * 4 {
            return Err(SessionError::Protocol("peer ignores the window".into()));
        }
        self.expected_batch += 1;
        let changes = wire::unpack_changes(&batch)?;
        // What the peer sends us, it has: never send it back.
        for dot in &batch.advance {
            self.cursor.observe(*dot);
            self.acked.observe(*dot);
        }
        for change in &changes {
            self.cursor.observe(change.dot);
            self.acked.observe(change.dot);
        }
        self.applying.push_back(batch.seq);
        let apply = SessionEvent::Apply {
            seq: batch.seq,
            changes,
            advance: batch.advance,
            remaining: batch.remaining,
            caught_up: batch.caught_up,
        };
        // While paused nothing is applied or acknowledged: the sender's window fills and it stops.
        if self.paused {
            self.held.push_back(apply);
        } else {
            self.events.push_back(apply);
        }
        Ok(())
    }

    fn on_ack(&mut self, seq: u64) -> Result<(), SessionError> {
        let Some(front) = self.in_flight.front() else {
            return Err(SessionError::Protocol(format!("ack {seq} with nothing in flight")));
        };
        if front.seq != seq {
            return Err(SessionError::Protocol(format!("ack {seq} out of order (expected {})", front.seq)));
        }
        let done = self.in_flight.pop_front().expect("checked above");
        self.acked.merge(&done.cursor);
        self.events.push_back(SessionEvent::Acked { acked: self.acked.clone(), changes: done.count });
        Ok(())
    }

    /// The driver applied batch `seq` durably: acknowledge it.
    pub fn applied(&mut self, seq: u64) {
        if self.state != State::Open {
            return;
        }
        if let Some(position) = self.applying.iter().position(|s| *s == seq) {
            self.applying.remove(position);
            self.outbox.push_back(Message::Ack { seq });
        }
    }

    /// New changes were committed locally (written here or received from another peer).
    pub fn notify_changes(&mut self) {
        self.more_to_send = true;
        // A page being read now may predate these changes: read again after it.
        self.changed_during_want |= self.want_outstanding;
    }

    /// Stops (`true`) or resumes (`false`) sync traffic both ways: nothing is sent, and what
    /// arrives is held unapplied and unacknowledged, so the peer stops too once its window is
    /// full. Heartbeats and messages go on. Resuming applies what was held and catches up.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
        if !paused {
            self.more_to_send = true;
            self.events.extend(self.held.drain(..));
        }
    }

    /// What changes the session wants to send next, if any. Answer with [`Session::send_page`].
    pub fn poll_want(&mut self) -> Option<Want> {
        let ready = self.state == State::Open
            && !self.paused
            && self.more_to_send
            && !self.want_outstanding
            && self.in_flight.len() < self.config.window.max(1);
        if !ready {
            return None;
        }
        self.want_outstanding = true;
        Some(Want {
            cursor: self.cursor.clone(),
            scopes: self.peer.as_ref().and_then(|p| p.scopes.clone()),
            limit: self.config.batch_changes_max,
            bytes_max: self.config.batch_bytes_max,
        })
    }

    /// The driver's answer to the last [`Want`]: queues a batch if there is anything to say.
    pub fn send_page(&mut self, page: Page) {
        self.want_outstanding = false;
        if self.state != State::Open {
            return;
        }
        // The peer may have told us of some of these meanwhile: drop what it already has.
        let changes: Vec<Change> = page.changes.into_iter().filter(|c| !self.acked_or_sent(&c.dot)).collect();
        let first_catch_up = page.exhausted && !self.caught_up_sent;
        let advance: Vec<Dot> = page
            .cursor
            .iter()
            .filter(|(o, s)| **s > self.cursor.get(o))
            .map(|(o, s)| Dot { origin: *o, seq: *s })
            .collect();
        self.cursor.merge(&page.cursor);
        self.more_to_send = !page.exhausted || std::mem::take(&mut self.changed_during_want);
        if changes.is_empty() && advance.is_empty() && !first_catch_up {
            return;
        }
        if page.exhausted {
            self.caught_up_sent = true;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let count = changes.len() as u64;
        self.in_flight.push_back(InFlight { seq, cursor: page.cursor.clone(), count });
        self.outbox.push_back(Message::Batch(Batch {
            seq,
            payload: wire::pack_changes(&changes),
            count: changes.len() as u32,
            advance,
            remaining: page.remaining,
            caught_up: first_catch_up,
        }));
    }

    fn acked_or_sent(&self, dot: &Dot) -> bool {
        self.cursor.covers(dot)
    }

    /// Sends an ephemeral message to the peer.
    pub fn send_message(&mut self, envelope: Envelope) {
        if self.state == State::Open {
            self.outbox.push_back(Message::Message(envelope));
        }
    }

    /// Tells the peer where other members are.
    pub fn send_peers(&mut self, peers: Vec<PeerAddrs>) {
        if self.state == State::Open && !peers.is_empty() {
            self.outbox.push_back(Message::Peers(peers));
        }
    }

    /// Drives time: pings, and gives up on a silent peer.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        match self.state {
            State::Closed => {}
            State::AwaitHello => {
                if now_ms.saturating_sub(self.started_ms) >= self.config.handshake_timeout_ms {
                    let error = SessionError::Timeout { silent_ms: now_ms - self.started_ms };
                    self.fail(error);
                }
            }
            State::Open => {
                let silent_ms = now_ms.saturating_sub(self.last_heard_ms);
                if silent_ms >= self.config.dead_after_ms {
                    self.fail(SessionError::Timeout { silent_ms });
                    return;
                }
                if now_ms.saturating_sub(self.last_ping_ms) >= self.config.heartbeat_interval_ms {
                    self.nonce = self.nonce.wrapping_add(1);
                    self.ping = Some((self.nonce, now_ms));
                    self.last_ping_ms = now_ms;
                    self.outbox.push_back(Message::Ping { nonce: self.nonce });
                }
            }
        }
    }

    /// When `handle_timeout` next has something to do.
    pub fn next_timeout(&self) -> Option<u64> {
        match self.state {
            State::Closed => None,
            State::AwaitHello => Some(self.started_ms + self.config.handshake_timeout_ms),
            State::Open => Some(
                (self.last_ping_ms + self.config.heartbeat_interval_ms)
                    .min(self.last_heard_ms + self.config.dead_after_ms),
            ),
        }
    }

    /// Closes the session, telling the peer why.
    pub fn close(&mut self, reason: &str) {
        if self.state != State::Closed {
            self.outbox.push_back(Message::Close { reason: close_reason(reason) });
            self.state = State::Closed;
            self.events.push_back(SessionEvent::Closed(SessionError::Closed(reason.to_string())));
        }
    }

    fn fail(&mut self, error: SessionError) -> SessionError {
        if self.state != State::Closed {
            if !matches!(error, SessionError::ClosedByPeer(_) | SessionError::Timeout { .. }) {
                self.outbox.push_back(Message::Close { reason: close_reason(&error.to_string()) });
            }
            self.state = State::Closed;
            self.events.push_back(SessionEvent::Closed(error.clone()));
        }
        error
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.outbox.pop_front().map(|m| wire::encode_ref(&m))
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }
}

/// Longest close reason sent, in bytes: enough to say why, well within the wire's text limit.
const CLOSE_REASON_BYTES_MAX: usize = 200;
const _: () = assert!(CLOSE_REASON_BYTES_MAX <= wire::TEXT_BYTES_MAX);

/// A reason the peer will read: `wire` refuses text with control characters or over its length
/// limit, and reasons come from errors that may quote anything (store errors, names, addresses).
/// Control characters become spaces; the text is cut on a character boundary.
fn close_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(CLOSE_REASON_BYTES_MAX));
    for c in reason.chars().map(|c| if c.is_control() { ' ' } else { c }) {
        if out.len() + c.len_utf8() > CLOSE_REASON_BYTES_MAX {
            break;
        }
        out.push(c);
    }
    out
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "hello",
        Message::Batch(_) => "batch",
        Message::Ack { .. } => "ack",
        Message::Ping { .. } => "ping",
        Message::Pong { .. } => "pong",
        Message::Message(_) => "message",
        Message::Peers(_) => "peers",
        Message::Close { .. } => "close",
    }
}
