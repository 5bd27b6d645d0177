//! Sans-IO session tests: two `Session`s wired back to back in memory, with hand-made stores,
//! so every rule of the protocol is checked without sockets or time: admission, ordering,
//! the window, acks, resumption after a cut, no echo, pause, heartbeats and bad frames.

use meshsync_core::{CellWrite, Change, Ctx, DeviceId, Dot, Hlc, Policy, Value, VersionVector};
use meshsync_sync::{Page, Session, SessionConfig, SessionError, SessionEvent, Want};
use meshsync_wire::{self as wire, GroupId, Hello, Message, PROTOCOL_VERSION};

const A: DeviceId = DeviceId([1; 16]);
const B: DeviceId = DeviceId([2; 16]);
const GROUP: GroupId = GroupId([7; 16]);

/// A store reduced to what the session needs: changes in (origin, seq) order and a vector.
#[derive(Default, Clone)]
struct Store {
    changes: Vec<Change>,
    vector: VersionVector,
}

impl Store {
    fn write(&mut self, origin: DeviceId, n: u64) {
        for _ in 0..n {
            let seq = self.vector.get(&origin) + 1;
            let dot = Dot { origin, seq };
            self.changes.push(Change {
                collection: "c".into(),
                record: format!("{}-{seq}", origin.short()),
                hlc: Hlc::new(1_000 + seq, 0),
                dot,
                delete: false,
                cells: vec![CellWrite {
                    field: "v".into(),
                    policy: Policy::Lww,
                    value: Value::Int(seq as i64),
                    ctx: Ctx::new(),
                }],
            });
            self.vector.observe(dot);
        }
        self.changes.sort_by_key(|c| c.dot);
    }

    fn page(&self, want: &Want) -> Page {
        let above: Vec<Change> = self.changes.iter().filter(|c| !want.cursor.covers(&c.dot)).cloned().collect();
        let changes: Vec<Change> = above.iter().take(want.limit).cloned().collect();
        let exhausted = changes.len() == above.len();
        let mut cursor = want.cursor.clone();
        if exhausted {
            cursor.merge(&self.vector);
        } else {
            for c in &changes {
                cursor.observe(c.dot);
            }
        }
        Page { remaining: (above.len() - changes.len()) as u64, changes, cursor, exhausted }
    }

    fn apply(&mut self, changes: Vec<Change>, advance: &[Dot]) {
        for change in changes {
            if !self.changes.iter().any(|c| c.dot == change.dot) {
                self.changes.push(change);
            }
        }
        self.changes.sort_by_key(|c| c.dot);
        for dot in advance {
            self.vector.observe(*dot);
        }
    }
}

fn hello(device: DeviceId, group: GroupId, vector: &VersionVector) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        device,
        name: device.short(),
        group,
        proof: vec![1],
        vector: vector.clone(),
        scopes: vec![],
        listen_port: None,
        chain: Vec::new(),
    }
}

fn session(me: DeviceId, peer: DeviceId, store: &Store, config: &SessionConfig) -> Session {
    Session::new(
        config.clone(),
        hello(me, GROUP, &store.vector),
        peer,
        Box::new(|h| if h.proof == [1] { Ok(None) } else { Err("bad proof".into()) }),
        0,
    )
}

struct Pair {
    sessions: [Session; 2],
    stores: [Store; 2],
    /// Frames in flight to each side.
    inbox: [Vec<Vec<u8>>; 2],
    events: [Vec<SessionEvent>; 2],
    frames: usize,
}

impl Pair {
    fn new(stores: [Store; 2], config: SessionConfig) -> Pair {
        let sessions = [session(A, B, &stores[0], &config), session(B, A, &stores[1], &config)];
        Pair { sessions, stores, inbox: [Vec::new(), Vec::new()], events: [Vec::new(), Vec::new()], frames: 0 }
    }

    /// Runs both ends until nothing moves; `deliver` limits how many frames cross (None: all).
    fn run(&mut self, now: u64, mut deliver: Option<usize>) {
        loop {
            let mut moved = false;
            for side in 0..2 {
                while let Some(event) = self.sessions[side].poll_event() {
                    moved = true;
                    if let SessionEvent::Apply { seq, changes, advance, .. } = &event {
                        self.stores[side].apply(changes.clone(), advance);
                        self.sessions[side].applied(*seq);
                    }
                    self.events[side].push(event);
                }
                if let Some(want) = self.sessions[side].poll_want() {
                    moved = true;
                    let page = self.stores[side].page(&want);
                    self.sessions[side].send_page(page);
                }
                while let Some(frame) = self.sessions[side].poll_transmit() {
                    moved = true;
                    self.inbox[1 - side].push(frame);
                }
            }
            for side in 0..2 {
                let frames: Vec<Vec<u8>> = std::mem::take(&mut self.inbox[side]);
                for frame in frames {
                    if deliver == Some(0) {
                        continue;
                    }
                    if let Some(n) = deliver.as_mut() {
                        *n -= 1;
                    }
                    moved = true;
                    self.frames += 1;
                    let _ = self.sessions[side].handle_frame(now, &frame);
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// A sender holding `a` and an empty receiver, after both hellos have crossed.
fn handshaken(a: &Store) -> (Session, Session) {
    let mut sender = session(A, B, a, &config());
    let mut receiver = session(B, A, &Store::default(), &config());
    for frame in std::iter::from_fn(|| sender.poll_transmit()).collect::<Vec<_>>() {
        receiver.handle_frame(0, &frame).unwrap();
    }
    for frame in std::iter::from_fn(|| receiver.poll_transmit()).collect::<Vec<_>>() {
        sender.handle_frame(0, &frame).unwrap();
    }
    (sender, receiver)
}

fn config() -> SessionConfig {
    SessionConfig { batch_changes_max: 10, window: 2, ..SessionConfig::default() }
}

#[test]
fn two_sides_exchange_everything_and_nothing_is_echoed() {
    let (mut a, mut b) = (Store::default(), Store::default());
    a.write(A, 35);
    b.write(B, 12);
    let mut pair = Pair::new([a, b], config());
    pair.run(0, None);
    assert!(pair.sessions[0].is_open() && pair.sessions[1].is_open());
    for store in &pair.stores {
        assert_eq!(store.changes.len(), 47);
        assert_eq!(store.vector.get(&A), 35);
        assert_eq!(store.vector.get(&B), 12);
    }
    // Both sides finished their catch-up and said so.
    for side in 0..2 {
        assert!(pair.sessions[side].caught_up_sent());
        assert!(pair.events[side].iter().any(|e| matches!(e, SessionEvent::Apply { caught_up: true, .. })));
    }
    // Live: a new write at A reaches B, and B does not send it back.
    pair.stores[0].write(A, 1);
    pair.sessions[0].notify_changes();
    pair.sessions[1].notify_changes();
    let before = pair.events[0].len();
    pair.run(0, None);
    assert_eq!(pair.stores[1].vector.get(&A), 36);
    let echoed = pair.events[0][before..]
        .iter()
        .any(|e| matches!(e, SessionEvent::Apply { changes, .. } if !changes.is_empty()));
    assert!(!echoed, "B sent A's own change back");
}

#[test]
fn the_window_bounds_unacknowledged_batches() {
    let mut a = Store::default();
    a.write(A, 100);
    let (mut sender, _receiver) = handshaken(&a);
    // Without acks the sender stops after `window` batches.
    let mut batches = 0;
    while let Some(want) = sender.poll_want() {
        sender.send_page(a.page(&want));
        batches += 1;
        assert!(batches <= 2, "sent past the window");
    }
    assert_eq!(batches, 2);
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| sender.poll_transmit()).collect();
    assert!(frames.iter().filter(|f| matches!(wire::decode(f), Ok(Message::Batch(_)))).count() == 2);
}

#[test]
fn a_cut_link_resumes_where_it_stopped() {
    let mut a = Store::default();
    a.write(A, 200);
    let mut pair = Pair::new([a.clone(), Store::default()], config());
    // Let only some frames through, then cut.
    pair.run(0, Some(9));
    let got = pair.stores[1].changes.len();
    assert!(got > 0 && got < 200, "partial transfer, got {got}");
    // A new session starts from B's vector: nothing is sent twice, nothing is missed.
    let stores = [pair.stores[0].clone(), pair.stores[1].clone()];
    let mut again = Pair::new(stores, config());
    again.run(0, None);
    assert_eq!(again.stores[1].changes.len(), 200);
    let resent: usize = again.events[1]
        .iter()
        .map(|e| if let SessionEvent::Apply { changes, .. } = e { changes.len() } else { 0 })
        .sum();
    assert_eq!(resent, 200 - got, "only the missing changes cross the second link");
}

#[test]
fn strangers_and_impostors_are_refused_before_any_data() {
    let mut a = Store::default();
    a.write(A, 5);
    // Another group.
    let mut ours = session(A, B, &a, &config());
    let theirs = hello(B, GroupId([9; 16]), &VersionVector::new());
    let err = ours.handle_frame(0, &wire::encode(&Message::Hello(theirs))).unwrap_err();
    assert!(matches!(err, SessionError::Refused(_)), "{err}");
    assert!(ours.poll_want().is_none());
    // The hello names another device than the TLS certificate.
    let mut ours = session(A, B, &a, &config());
    let err = ours
        .handle_frame(0, &wire::encode(&Message::Hello(hello(DeviceId([3; 16]), GROUP, &VersionVector::new()))))
        .unwrap_err();
    assert!(matches!(err, SessionError::Refused(_)));
    // A bad proof.
    let mut ours = session(A, B, &a, &config());
    let mut bad = hello(B, GROUP, &VersionVector::new());
    bad.proof = vec![0];
    assert!(matches!(ours.handle_frame(0, &wire::encode(&Message::Hello(bad))), Err(SessionError::Refused(_))));
    // Data before the hello.
    let mut ours = session(A, B, &a, &config());
    assert!(matches!(ours.handle_frame(0, &wire::encode(&Message::Ack { seq: 1 })), Err(SessionError::Protocol(_))));
    // Garbage.
    let mut ours = session(A, B, &a, &config());
    assert!(matches!(ours.handle_frame(0, &[0xff, 0x00, 0x13]), Err(SessionError::Wire(_))));
    assert!(ours.is_closed());
    // Every refusal tells the peer why.
    let frames: Vec<Vec<u8>> = std::iter::from_fn(|| ours.poll_transmit()).collect();
    assert!(frames.iter().any(|f| matches!(wire::decode(f), Ok(Message::Close { .. }))));
}

#[test]
fn pause_holds_both_directions_and_resume_catches_up() {
    let mut a = Store::default();
    a.write(A, 30);
    let mut pair = Pair::new([a, Store::default()], config());
    pair.sessions[1].set_paused(true);
    pair.run(0, None);
    assert!(pair.stores[1].changes.is_empty(), "a paused node applies nothing");
    pair.sessions[1].set_paused(false);
    pair.run(0, None);
    assert_eq!(pair.stores[1].changes.len(), 30);
}

#[test]
fn heartbeats_measure_rtt_and_silence_closes_the_link() {
    let mut pair = Pair::new([Store::default(), Store::default()], SessionConfig::with_heartbeat(1_000));
    pair.run(0, None);
    pair.sessions[0].handle_timeout(1_000);
    pair.run(1_010, None);
    assert!(pair.events[0].iter().any(|e| matches!(e, SessionEvent::Rtt(_))));
    // Nothing heard for four intervals: the link is dead.
    pair.sessions[0].handle_timeout(1_010 + 4_000);
    assert!(pair.sessions[0].is_closed());
    assert!(pair.events[0].iter().all(|e| !matches!(e, SessionEvent::Closed(_))));
    let closed = std::iter::from_fn(|| pair.sessions[0].poll_event())
        .any(|e| matches!(e, SessionEvent::Closed(SessionError::Timeout { .. })));
    assert!(closed);
    // No hello at all within the handshake deadline.
    let mut lonely = session(A, B, &Store::default(), &SessionConfig::default());
    lonely.handle_timeout(10_000);
    assert!(lonely.is_closed());
}

#[test]
fn out_of_order_batches_and_bogus_acks_close_the_link() {
    let mut a = Store::default();
    a.write(A, 30);
    let (mut sender, mut receiver) = handshaken(&a);
    while let Some(want) = sender.poll_want() {
        sender.send_page(a.page(&want));
    }
    let batches: Vec<Vec<u8>> = std::iter::from_fn(|| sender.poll_transmit()).collect();
    assert!(batches.len() >= 2);
    assert!(matches!(receiver.handle_frame(0, &batches[1]), Err(SessionError::Protocol(_))), "batch 2 before batch 1");
    assert!(matches!(sender.handle_frame(0, &wire::encode(&Message::Ack { seq: 99 })), Err(SessionError::Protocol(_))));
}

#[test]
fn every_close_reason_we_send_is_one_the_peer_accepts() {
    // Found by the `handshake` fuzz target: reasons went out cut to 200 characters, which can be
    // 800 bytes (over the wire's 512-byte text limit), and with control characters, so the peer
    // refused our Close as a bad frame and never learned why the link closed.
    let last_close = |session: &mut Session| {
        let frames: Vec<Vec<u8>> = std::iter::from_fn(|| session.poll_transmit()).collect();
        match wire::decode(frames.last().expect("a close frame")) {
            Ok(Message::Close { reason }) => reason,
            other => panic!("the peer would not read our close: {other:?}"),
        }
    };
    let tea = "🍵".repeat(300);
    let mut ours = session(A, B, &Store::default(), &config());
    ours.close(&tea);
    let sent = last_close(&mut ours);
    assert!(!sent.is_empty() && tea.starts_with(&sent), "{sent:?}");
    let mut ours = session(A, B, &Store::default(), &config());
    ours.close("disk full\nwhile applying");
    assert_eq!(last_close(&mut ours), "disk full while applying");
    // A refusal's reason goes out the same way.
    let refuse = Box::new(move |_: &Hello| Err(format!("{}\n", "🍵".repeat(300))));
    let mut ours = Session::new(config(), hello(A, GROUP, &VersionVector::new()), B, refuse, 0);
    let theirs = wire::encode(&Message::Hello(hello(B, GROUP, &VersionVector::new())));
    assert!(matches!(ours.handle_frame(0, &theirs), Err(SessionError::Refused(_))));
    assert!(last_close(&mut ours).starts_with("peer refused: 🍵"));
}
