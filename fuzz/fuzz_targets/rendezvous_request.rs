//! Fuzzes the rendezvous service's request handling, the only part of meshsync that faces the
//! open internet: the JSON `Registration` decoder and `verify`, and the whole router
//! (`meshsync_rendezvous::router`, in process, on one current-thread runtime per process) with
//! arbitrary bodies and queries for `POST /discovery/register`, `GET /discovery/peers?room=`,
//! `POST /rooms` and any other method and path. Also the other direction: the client's decoding
//! of a `GET /discovery/peers` answer (`client::peers_from_answer`), since nodes do not trust
//! the service either.
//!
//! Registrations are either raw bytes or built from fuzzed fields and signed with a fixed key,
//! so valid ones reach the book's rules (skew, replay, TTL, capacity) too. Checked: no answer is
//! a 5xx or a body without `"v": 1`; a registration that decodes and verifies survives a JSON
//! round trip; one we signed with well-formed fields verifies as our device; from any answer,
//! the client keeps only devices whose keys signed their entries, each once.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use meshsync_fuzz::http;
use meshsync_net::Identity;
use meshsync_rendezvous::{room_id, Clock, Limits, Registration, ServerOptions};

/// The service's clock: fixed, so registrations issued "now" are fresh.
const NOW_MS: u64 = 1_700_000_000_000;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// The service as deployed directly: no rate limit here, so every input reaches the handlers.
    direct: Router,
    /// The service behind a proxy: `X-Forwarded-For` names the client, and the rate limit is on.
    proxied: Router,
    identities: Vec<Identity>,
    rooms: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let options = |trust_forwarded_for, requests_per_s| ServerOptions {
            trust_forwarded_for,
            clock: Clock::manual(NOW_MS).0,
            limits: Limits { requests_per_s, ..Limits::default() },
            ..ServerOptions::default()
        };
        Fixture {
            runtime: http::runtime(),
            direct: meshsync_rendezvous::router(options(false, 0)).expect("valid options"),
            proxied: meshsync_rendezvous::router(options(true, 10)).expect("valid options"),
            identities: (1..=3u8).map(|n| Identity::from_seed(&[n; 32]).expect("a key from a seed")).collect(),
            rooms: (0..3u8).map(|n| room_id(&[n])).collect(),
        }
    })
}

#[derive(Arbitrary, Debug)]
struct Input {
    request: RequestSeed,
    /// `Some`: send to the proxied service with this `X-Forwarded-For`.
    forwarded_for: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum RequestSeed {
    /// `POST /discovery/register` with a registration we build and sign.
    Register(RegistrationSeed),
    /// `POST /discovery/register` with these bytes.
    RegisterBody(Vec<u8>),
    /// `GET /discovery/peers?room=` one of the rooms.
    Peers { room: u8 },
    /// `GET /discovery/peers?` this query string.
    PeersQuery(String),
    /// `POST /rooms` with one of the rooms, or any text as the room.
    Room { room: RoomSeed, with_version: bool },
    /// `POST /rooms` with these bytes.
    RoomBody(Vec<u8>),
    /// Any method, path and body.
    Other { method: u8, path: String, body: Vec<u8> },
    /// An answer to the client's `GET /discovery/peers`, from a service we do not trust.
    Answer(AnswerSeed),
}

#[derive(Arbitrary, Debug)]
enum AnswerSeed {
    Raw { room: u8, body: Vec<u8> },
    Entries { room: u8, version: Option<u32>, entries: Vec<EntrySeed> },
}

#[derive(Arbitrary, Debug)]
struct EntrySeed {
    registration: RegistrationSeed,
    expires_at_ms: u64,
    observed: Option<String>,
    /// Leave out the field with this index.
    drop_field: Option<u8>,
}

#[derive(Arbitrary, Debug)]
enum RoomSeed {
    Known(u8),
    Text(String),
}

#[derive(Arbitrary, Debug)]
struct RegistrationSeed {
    identity: u8,
    room: RoomSeed,
    addrs: Vec<AddrSeed>,
    ttl_s: u64,
    /// Milliseconds before (or after, if negative) the service's clock.
    issued_ago_ms: i32,
    /// Sign with another key than the one the registration names.
    wrong_key: bool,
    /// Change a signed field after signing.
    tamper: bool,
}

#[derive(Arbitrary, Debug)]
enum AddrSeed {
    V4([u8; 4], u16),
    V6([u16; 8], u16),
    Text(String),
}

impl AddrSeed {
    fn text(&self) -> String {
        match self {
            AddrSeed::V4(ip, port) => std::net::SocketAddr::from((*ip, *port)).to_string(),
            AddrSeed::V6(ip, port) => std::net::SocketAddr::from((*ip, *port)).to_string(),
            AddrSeed::Text(text) => text.clone(),
        }
    }
}

fn room(fixture: &Fixture, seed: &RoomSeed) -> String {
    match seed {
        RoomSeed::Known(n) => fixture.rooms[usize::from(*n) % fixture.rooms.len()].clone(),
        RoomSeed::Text(text) => text.clone(),
    }
}

fn registration(fixture: &Fixture, seed: &RegistrationSeed) -> Registration {
    let index = usize::from(seed.identity) % fixture.identities.len();
    let identity = &fixture.identities[index];
    let room = room(fixture, &seed.room);
    let addrs: Vec<String> = seed.addrs.iter().map(AddrSeed::text).collect();
    let issued_at_ms = NOW_MS.saturating_add_signed(-i64::from(seed.issued_ago_ms));
    let mut registration = Registration::sign(identity, &room, addrs, seed.ttl_s, issued_at_ms);
    // The documented rules (docs/rendezvous.md): a room is 64 lowercase hex characters.
    let room_ok = room.len() == meshsync_rendezvous::ROOM_CHARS
        && room.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let well_formed = room_ok
        && registration.addrs.len() <= meshsync_rendezvous::ADDRS_MAX
        && registration.addrs.iter().all(|a| {
            a.len() <= meshsync_rendezvous::ADDR_CHARS_MAX
                && a.parse::<std::net::SocketAddr>().is_ok_and(|a| a.port() != 0)
        });
    if well_formed {
        assert_eq!(
            registration.verify(),
            Ok(identity.device_id()),
            "a registration we signed with well-formed fields does not verify"
        );
    }
    if seed.wrong_key {
        let other = &fixture.identities[(index + 1) % fixture.identities.len()];
        registration.public_key = Registration::sign(other, &room, vec![], 0, 0).public_key;
    }
    if seed.tamper {
        registration.issued_at_ms ^= 1;
    }
    registration
}

/// Decodes a registration as the service does, and checks what verifies round-trips.
fn check_registration_json(body: &[u8]) {
    let Ok(registration) = serde_json::from_slice::<Registration>(body) else { return };
    if registration.verify().is_ok() {
        let json = serde_json::to_vec(&registration).expect("a registration always serializes");
        let again: Registration = serde_json::from_slice(&json).expect("what we encode decodes");
        assert_eq!(again, registration, "a verified registration does not survive a JSON round trip");
        assert!(again.verify().is_ok());
    }
}

/// An answer as the service lists a room: each registration without its room, with its expiry.
fn answer(fixture: &Fixture, version: Option<u32>, room: &str, entries: &[EntrySeed]) -> Vec<u8> {
    let peers: Vec<serde_json::Value> = entries
        .iter()
        .map(|entry| {
            let mut listed = serde_json::to_value(registration(fixture, &entry.registration)).expect("serializes");
            let object = listed.as_object_mut().expect("a registration is an object");
            object.remove("v");
            object.remove("room");
            object.insert("expires_at_ms".into(), entry.expires_at_ms.into());
            object.insert("observed".into(), entry.observed.clone().into());
            if let Some(n) = entry.drop_field {
                let key = object.keys().nth(usize::from(n) % object.len()).cloned().expect("not empty");
                object.remove(&key);
            }
            listed
        })
        .collect();
    let answer = serde_json::json!({"v": version.unwrap_or(1), "room": room, "peers": peers});
    serde_json::to_vec(&answer).expect("serializes")
}

/// Decodes an answer as `client::lookup` does; only devices whose keys we hold (the only keys
/// that signed anything the fuzzer can have seen) may come out, each once.
fn check_answer(fixture: &Fixture, room: &str, body: &[u8]) {
    let Ok(peers) = meshsync_rendezvous::client::peers_from_answer(room, body) else { return };
    for (i, peer) in peers.iter().enumerate() {
        assert!(
            fixture.identities.iter().any(|identity| identity.device_id() == peer.device_id),
            "the client believed an entry no key of ours signed: {peer:?}"
        );
        assert!(peers[..i].iter().all(|p| p.device_id != peer.device_id), "a device listed twice");
    }
}

fn request(method: Method, uri: &str, body: Vec<u8>) -> Option<Request<Body>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .ok()
}

fuzz_target!(|input: Input| {
    let fixture = fixture();
    let request = match input.request {
        RequestSeed::Register(seed) => {
            let body = serde_json::to_vec(&registration(fixture, &seed)).expect("a registration always serializes");
            check_registration_json(&body);
            request(Method::POST, "/discovery/register", body)
        }
        RequestSeed::RegisterBody(body) => {
            check_registration_json(&body);
            request(Method::POST, "/discovery/register", body)
        }
        RequestSeed::Peers { room } => {
            let room = &fixture.rooms[usize::from(room) % fixture.rooms.len()];
            request(Method::GET, &format!("/discovery/peers?room={room}"), vec![])
        }
        RequestSeed::PeersQuery(query) => request(Method::GET, &format!("/discovery/peers?{query}"), vec![]),
        RequestSeed::Room { room: seed, with_version } => {
            let room = room(fixture, &seed);
            let body = if with_version {
                serde_json::json!({"v": 1, "room": room})
            } else {
                serde_json::json!({"room": room})
            };
            request(Method::POST, "/rooms", body.to_string().into_bytes())
        }
        RequestSeed::RoomBody(body) => request(Method::POST, "/rooms", body),
        RequestSeed::Other { method, path, body } => {
            let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::HEAD, Method::OPTIONS];
            request(methods[usize::from(method) % methods.len()].clone(), &path, body)
        }
        RequestSeed::Answer(seed) => {
            let (room, body) = match seed {
                AnswerSeed::Raw { room, body } => (room, body),
                AnswerSeed::Entries { room, version, entries } => {
                    let text = &fixture.rooms[usize::from(room) % fixture.rooms.len()];
                    (room, answer(fixture, version, text, &entries))
                }
            };
            check_answer(fixture, &fixture.rooms[usize::from(room) % fixture.rooms.len()], &body);
            return;
        }
    };
    // A URI the HTTP layer would not have parsed never reaches the service.
    let Some(mut request) = request else { return };
    let app = match input.forwarded_for {
        None => &fixture.direct,
        Some(forwarded_for) => {
            let Ok(value) = forwarded_for.parse() else { return };
            request.headers_mut().insert("x-forwarded-for", value);
            &fixture.proxied
        }
    };
    let head = request.method() == Method::HEAD;
    match http::call(&fixture.runtime, app, request) {
        (status, Some(body)) => assert_eq!(body["v"], 1, "an answer ({status}) without \"v\": 1: {body}"),
        (status, None) => assert!(head, "an answer ({status}) without a body"),
    }
});
