//! Fuzzes a `meshsync_sync::Session` the way a hostile peer and an indifferent clock would: a
//! sequence of frames (raw bytes, or well-formed messages encoded here so the fuzzer gets past
//! admission and into catch-up, acks, pings and messages) interleaved with time passing and the
//! driver's own calls (applying batches, answering wants, pausing, closing).
//!
//! Checked on every input: nothing panics; every frame the session sends decodes (and every
//! batch it sends unpacks), so we never send a peer what we would refuse ourselves; our `Hello`
//! goes first; the session is established at most once and only by a `Hello` the admission
//! accepted; batches are handed to the driver in order from 1; once closed, the session sends
//! nothing more, reports nothing new and ignores what arrives.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use meshsync_core::{Change, DeviceId, Dot, VersionVector};
use meshsync_fuzz::{ChangeSeed, DeviceSeed};
use meshsync_sync::{Page, Session, SessionConfig, SessionEvent, Want};
use meshsync_wire::{self as wire, Batch, Envelope, GroupId, Hello, Message, PeerAddrs, PROTOCOL_VERSION};

/// This side.
const ME: DeviceId = DeviceId([1; 16]);
/// The peer the TLS certificate proved.
const PEER: DeviceId = DeviceId([2; 16]);
const GROUP: GroupId = GroupId([7; 16]);
/// The one proof the admission closure accepts.
const GOOD_PROOF: [u8; 1] = [1];
/// Steps per input, so one input cannot run for long.
const STEPS_MAX: usize = 256;

#[derive(Arbitrary, Debug)]
enum Step {
    /// Bytes from the peer, as they are.
    Raw(Vec<u8>),
    /// A message from the peer, encoded as a frame.
    Send(MessageSeed),
    /// Time passes, then the driver calls `handle_timeout`.
    Wait {
        ms: u16,
    },
    /// The driver applied one of the batches it was given.
    Applied {
        pick: u8,
    },
    /// The driver answers the session's last `Want`.
    Page {
        changes: Vec<ChangeSeed>,
        exhausted: bool,
        remaining: u8,
    },
    NotifyChanges,
    Pause(bool),
    SendMessage {
        kind: String,
        data: String,
    },
    SendPeers(Vec<(DeviceSeed, Vec<String>)>),
    Close(String),
}

#[derive(Arbitrary, Debug)]
enum HelloDevice {
    ThePeer,
    Me,
    Other(DeviceSeed),
}

#[derive(Arbitrary, Debug)]
enum MessageSeed {
    Hello {
        protocol: Option<u16>,
        device: HelloDevice,
        other_group: bool,
        /// `None`: the proof the admission accepts.
        proof: Option<Vec<u8>>,
        name: String,
        vector: Vec<(DeviceSeed, u64)>,
        scopes: Vec<String>,
        listen_port: Option<u16>,
        /// Membership entries (arbitrary bytes: the session passes them to admission as is).
        chain: Vec<Vec<u8>>,
    },
    Batch {
        /// `None`: the sequence number the session expects next.
        seq: Option<u64>,
        changes: Vec<ChangeSeed>,
        /// `None`: the number of changes packed.
        count: Option<u32>,
        /// `Some`: this payload instead of the packed changes.
        payload: Option<Vec<u8>>,
        advance: Vec<(DeviceSeed, u64)>,
        remaining: u64,
        caught_up: bool,
    },
    /// `None`: the oldest batch we saw the session send.
    Ack(Option<u64>),
    Ping(u64),
    /// `None`: the nonce of the last ping we saw the session send.
    Pong(Option<u64>),
    Message {
        id: [u8; 16],
        from: DeviceSeed,
        to: Option<DeviceSeed>,
        kind: String,
        data: String,
        sent_ms: u64,
        hops: u8,
    },
    Peers(Vec<(DeviceSeed, Vec<String>)>),
    Close(String),
}

fn vector(entries: &[(DeviceSeed, u64)]) -> VersionVector {
    let mut vector = VersionVector::new();
    for (device, seq) in entries {
        vector.observe(Dot { origin: device.id(), seq: *seq });
    }
    vector
}

fn peers(entries: Vec<(DeviceSeed, Vec<String>)>) -> Vec<PeerAddrs> {
    entries.into_iter().map(|(device, addrs)| PeerAddrs { device: device.id(), addrs }).collect()
}

/// Whether the node would hand this to the session: it checks messages (`Node::send_message`)
/// and peer addresses before they reach a session, at least as strictly as the wire does.
fn checked_by_node(message: &Message) -> bool {
    wire::decode(&wire::encode(message)).is_ok()
}

/// Whether a store could hold this change: it decodes as part of a batch.
fn storable(change: &Change) -> bool {
    let payload = wire::pack_changes(std::slice::from_ref(change));
    let batch = Batch { seq: 1, payload, count: 1, advance: vec![], remaining: 0, caught_up: false };
    wire::unpack_changes(&batch).is_ok()
}

/// What the fuzzed peer and driver know of the session, and the invariants they check.
struct Driver {
    session: Session,
    now_ms: u64,
    /// Batches handed to us to apply, not yet applied.
    to_apply: Vec<u64>,
    /// The batch number the next `Apply` must carry.
    next_apply: u64,
    /// Batches the session took (a batch it refuses closes it).
    batches_accepted: u64,
    /// The last `Want`, unanswered.
    want: Option<Want>,
    /// Batches the session sent, oldest first.
    sent_batches: Vec<u64>,
    last_ping: Option<u64>,
    frames_sent: usize,
    established: bool,
    closed: bool,
    /// The session was closed and its last frames were taken: it must stay silent.
    silent: bool,
}

impl Driver {
    fn new() -> Driver {
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            device: ME,
            name: "me".into(),
            group: GROUP,
            proof: GOOD_PROOF.to_vec(),
            vector: VersionVector::new(),
            scopes: vec![],
            listen_port: Some(7710),
            chain: vec![],
        };
        let admission = Box::new(|hello: &Hello| {
            if hello.proof == GOOD_PROOF {
                Ok(None)
            } else if hello.proof.is_empty() {
                Ok(Some(vec!["scope-a".to_string()]))
            } else {
                Err("bad proof".to_string())
            }
        });
        let config = SessionConfig { batch_changes_max: 64, window: 2, ..SessionConfig::default() };
        let session = Session::new(config, hello, PEER, admission, 1_000);
        Driver {
            session,
            now_ms: 1_000,
            to_apply: vec![],
            next_apply: 1,
            batches_accepted: 0,
            want: None,
            sent_batches: vec![],
            last_ping: None,
            frames_sent: 0,
            established: false,
            closed: false,
            silent: false,
        }
    }

    fn frame(&mut self, bytes: &[u8]) {
        let result = self.session.handle_frame(self.now_ms, bytes);
        if self.closed {
            assert_eq!(result, Ok(()), "a closed session refused a frame");
        }
    }

    fn message(&mut self, seed: MessageSeed) {
        let message = match seed {
            MessageSeed::Hello { protocol, device, other_group, proof, name, vector: entries, scopes, listen_port, chain } => {
                Message::Hello(Hello {
                    protocol: protocol.unwrap_or(PROTOCOL_VERSION),
                    device: match device {
                        HelloDevice::ThePeer => PEER,
                        HelloDevice::Me => ME,
                        HelloDevice::Other(seed) => seed.id(),
                    },
                    name,
                    group: if other_group { GroupId([8; 16]) } else { GROUP },
                    proof: proof.unwrap_or_else(|| GOOD_PROOF.to_vec()),
                    vector: vector(&entries),
                    scopes,
                    listen_port,
                    chain,
                })
            }
            MessageSeed::Batch { seq, changes, count, payload, advance, remaining, caught_up } => {
                let changes: Vec<_> = changes.iter().map(ChangeSeed::change).collect();
                Message::Batch(Batch {
                    seq: seq.unwrap_or(self.batches_accepted + 1),
                    payload: payload.unwrap_or_else(|| wire::pack_changes(&changes)),
                    count: count.unwrap_or(changes.len() as u32),
                    advance: advance.iter().map(|(d, seq)| Dot { origin: d.id(), seq: *seq }).collect(),
                    remaining,
                    caught_up,
                })
            }
            MessageSeed::Ack(seq) => Message::Ack { seq: seq.or(self.sent_batches.first().copied()).unwrap_or(1) },
            MessageSeed::Ping(nonce) => Message::Ping { nonce },
            MessageSeed::Pong(nonce) => Message::Pong { nonce: nonce.or(self.last_ping).unwrap_or(0) },
            MessageSeed::Message { id, from, to, kind, data, sent_ms, hops } => Message::Message(Envelope {
                id,
                from: from.id(),
                to: to.map(DeviceSeed::id),
                kind,
                data,
                sent_ms,
                hops,
            }),
            MessageSeed::Peers(entries) => Message::Peers(peers(entries)),
            MessageSeed::Close(reason) => Message::Close { reason },
        };
        if let Message::Ack { seq } = message {
            if self.sent_batches.first() == Some(&seq) {
                self.sent_batches.remove(0);
            }
        }
        let is_batch = matches!(message, Message::Batch(_));
        self.frame(&wire::encode(&message));
        if is_batch && !self.session.is_closed() {
            self.batches_accepted += 1;
        }
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Raw(bytes) => self.frame(&bytes),
            Step::Send(seed) => self.message(seed),
            Step::Wait { ms } => {
                self.now_ms += u64::from(ms);
                self.session.handle_timeout(self.now_ms);
            }
            Step::Applied { pick } => {
                if !self.to_apply.is_empty() {
                    let seq = self.to_apply.remove(usize::from(pick) % self.to_apply.len());
                    self.session.applied(seq);
                }
            }
            Step::Page { changes, exhausted, remaining } => {
                if let Some(want) = self.want.take() {
                    // The store holds only changes that a peer could send it (or that passed the
                    // same limits locally, nesting depth included): send only those.
                    let changes: Vec<_> = changes
                        .iter()
                        .map(ChangeSeed::change)
                        .filter(|c| storable(c) && !want.cursor.covers(&c.dot))
                        .take(want.limit)
                        .collect();
                    let mut cursor = want.cursor.clone();
                    for change in &changes {
                        cursor.observe(change.dot);
                    }
                    self.session.send_page(Page { changes, cursor, exhausted, remaining: u64::from(remaining) });
                }
            }
            Step::NotifyChanges => self.session.notify_changes(),
            Step::Pause(paused) => self.session.set_paused(paused),
            Step::SendMessage { kind, data } => {
                let envelope = Envelope { id: [3; 16], from: ME, to: None, kind, data, sent_ms: self.now_ms, hops: 4 };
                if checked_by_node(&Message::Message(envelope.clone())) {
                    self.session.send_message(envelope);
                }
            }
            Step::SendPeers(entries) => {
                let peers = peers(entries);
                if checked_by_node(&Message::Peers(peers.clone())) {
                    self.session.send_peers(peers);
                }
            }
            Step::Close(reason) => self.session.close(&reason),
        }
        self.poll();
    }

    /// Takes everything the session has to say and checks it.
    fn poll(&mut self) {
        while let Some(event) = self.session.poll_event() {
            // Batches held while paused may still be handed over after a close (resuming
            // releases them; applying what was received is harmless): nothing else may come.
            assert!(
                !self.closed || matches!(event, SessionEvent::Apply { .. }),
                "an event after the session closed: {event:?}"
            );
            match event {
                SessionEvent::Established(peer) => {
                    assert!(!self.established, "established twice");
                    assert_eq!(peer.device, PEER);
                    self.established = true;
                }
                SessionEvent::Apply { seq, .. } => {
                    assert_eq!(seq, self.next_apply, "batches handed over out of order");
                    self.next_apply += 1;
                    self.to_apply.push(seq);
                }
                SessionEvent::Closed(_) => self.closed = true,
                SessionEvent::Acked { .. }
                | SessionEvent::Message(_)
                | SessionEvent::Peers(_)
                | SessionEvent::Rtt(_) => {}
            }
        }
        assert_eq!(self.closed, self.session.is_closed());
        assert_eq!(self.established, self.session.peer().is_some());
        if let Some(want) = self.session.poll_want() {
            assert!(self.want.is_none(), "a second want before the first was answered");
            self.want = Some(want);
        }
        while let Some(bytes) = self.session.poll_transmit() {
            assert!(!self.silent, "a frame after the session closed");
            let message = wire::decode(&bytes).unwrap_or_else(|e| panic!("we sent a frame we would refuse: {e}"));
            if self.frames_sent == 0 {
                assert!(matches!(message, Message::Hello(_)), "the first frame is not our hello");
            }
            self.frames_sent += 1;
            match &message {
                Message::Batch(batch) => {
                    if let Err(e) = wire::unpack_changes(batch) {
                        panic!("we sent a batch we would refuse: {e}");
                    }
                    self.sent_batches.push(batch.seq);
                }
                Message::Ping { nonce } => self.last_ping = Some(*nonce),
                _ => {}
            }
        }
        if self.closed {
            self.silent = true;
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut driver = Driver::new();
    driver.poll();
    for step in steps.into_iter().take(STEPS_MAX) {
        driver.step(step);
    }
});
