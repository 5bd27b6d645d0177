//! The real server on `127.0.0.1:0`, driven by the real client and by raw HTTP: the round trip,
//! every refusal (forged signature, foreign key, replay, stale, too many addresses, oversize
//! body, full room, rate limit), expiry under a manual clock, bad input that must stay a 4xx,
//! and a dishonest server whose altered entries the client drops.

mod common;

use std::time::Duration;

use common::*;
use hyper::{Method, StatusCode};
use meshsync_rendezvous::{
    client, Limits, Registration, RendezvousError, ServerOptions, ADDRS_MAX, BODY_BYTES_MAX, ISSUED_AT_SKEW_MS_MAX,
    TTL_DEFAULT_S,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn register_then_lookup_round_trip() {
    let server = start(ServerOptions::default()).await;
    let health = get(server.addr, "/health").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.body["status"], "ok");
    assert_eq!(health.body["v"], 1);
    assert_eq!(health.body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!((health.body["rooms"].as_u64(), health.body["registrations"].as_u64()), (Some(0), Some(0)));

    let room = room("shop");
    let now = now_ms();
    let registration = signed(1, &room, 0, now);
    let expires_at_ms = client::register(&server.url, &registration).await.unwrap();
    assert_eq!(expires_at_ms, now + TTL_DEFAULT_S * 1000, "ttl 0 asks for the default of 8 h");
    client::register(&server.url, &signed(2, &room, 60, now)).await.unwrap();

    let peers = client::lookup(&server.url, &room).await.unwrap();
    assert_eq!(peers.len(), 2);
    let first = peers.iter().find(|p| p.device_id == device(1).device_id()).expect("device 1 listed");
    assert_eq!(first.addrs, registration.addrs);
    assert_eq!(first.observed.as_deref(), Some("127.0.0.1"));
    assert_eq!(first.expires_at_ms, expires_at_ms);
    let second = peers.iter().find(|p| p.device_id == device(2).device_id()).expect("device 2 listed");
    assert_eq!(second.expires_at_ms, now + 60_000);

    // The raw answer carries everything a client needs to check each entry itself.
    let answer = get(server.addr, &format!("/discovery/peers?room={room}")).await;
    assert_eq!(answer.body["v"], 1);
    let entry = answer.body["peers"].as_array().unwrap().iter().find(|p| p["device_id"] == registration.device_id);
    let entry = entry.expect("listed");
    for field in ["device_id", "public_key", "addrs", "ttl_s", "issued_at_ms", "signature", "expires_at_ms", "observed"]
    {
        assert!(entry.get(field).is_some(), "{field} missing from {entry}");
    }
    assert_eq!(entry["signature"], registration.signature);

    // Another room is another room; an unknown room is empty, not an error.
    assert!(client::lookup(&server.url, &common::room("other")).await.unwrap().is_empty());
    let health = get(server.addr, "/health").await;
    assert_eq!((health.body["rooms"].as_u64(), health.body["registrations"].as_u64()), (Some(1), Some(2)));
    server.stop().await;
}

#[tokio::test]
async fn the_register_answer_names_the_observed_address() {
    let server = start(ServerOptions::default()).await;
    let answer = register(server.addr, &signed(1, &room("r"), 60, now_ms())).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["v"], 1);
    assert_eq!(answer.body["observed"], "127.0.0.1");
    assert!(answer.body["expires_at_ms"].as_u64().is_some());
    server.stop().await;
}

#[tokio::test]
async fn a_forwarded_address_counts_only_when_trusted() {
    let body = serde_json::to_vec(&signed(1, &room("r"), 60, now_ms())).unwrap();
    let headers = [("content-type", "application/json"), ("x-forwarded-for", "203.0.113.5, 198.51.100.9")];
    let server = start(ServerOptions::default()).await;
    let answer = request(server.addr, Method::POST, "/discovery/register", &headers, &body).await;
    assert_eq!(answer.body["observed"], "127.0.0.1", "{}", answer.body);
    server.stop().await;

    let server = start(ServerOptions { trust_forwarded_for: true, ..ServerOptions::default() }).await;
    let answer = request(server.addr, Method::POST, "/discovery/register", &headers, &body).await;
    assert_eq!(answer.body["observed"], "198.51.100.9", "{}", answer.body);
    server.stop().await;
}

#[tokio::test]
async fn rooms_can_be_created_ahead() {
    let server = start(ServerOptions::default()).await;
    let room = room("ahead");
    let answer = post(server.addr, "/rooms", &json!({"room": room})).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(answer.body, json!({"v": 1, "room": room, "created": true}));
    let answer = post(server.addr, "/rooms", &json!({"v": 1, "room": room})).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body["created"], false);
    let answer = post(server.addr, "/rooms", &json!({"room": "not-a-room"})).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "bad_room"));
    assert_eq!(get(server.addr, "/health").await.body["rooms"], 1);
    server.stop().await;
}

#[tokio::test]
async fn a_forged_signature_is_refused_and_not_stored() {
    let server = start(ServerOptions::default()).await;
    let room = room("r");
    let mut forged = signed(1, &room, 60, now_ms());
    forged.addrs = vec!["203.0.113.66:7710".into()];
    let answer = register(server.addr, &forged).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "bad_signature"));
    let message = answer.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("signature does not verify"), "{message}");
    // Signed by another key entirely.
    let mut foreign = signed(1, &room, 60, now_ms());
    foreign.signature = signed(2, &room, 60, now_ms()).signature;
    assert_eq!(register(server.addr, &foreign).await.code(), "bad_signature");
    // The client reports the refusal with the service's code.
    match client::register(&server.url, &forged).await {
        Err(RendezvousError::Refused { status: 400, code, .. }) => assert_eq!(code, "bad_signature"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(listed(server.addr, &room).await.is_empty());
    assert_eq!(get(server.addr, "/health").await.body["registrations"], 0);
    server.stop().await;
}

#[tokio::test]
async fn a_device_id_not_matching_the_key_is_refused() {
    let server = start(ServerOptions::default()).await;
    let room = room("r");
    let mine = signed(1, &room, 60, now_ms());
    // Claiming another device's id with my key and a valid signature of mine over that claim.
    let claimed = device(2).device_id().to_string();
    let signature =
        device(1).sign(&meshsync_rendezvous::signed_bytes(&room, &claimed, &mine.addrs, 60, mine.issued_at_ms));
    let impostor = Registration { device_id: claimed, signature: hex(&signature), ..mine };
    let answer = register(server.addr, &impostor).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "device_id_mismatch"));
    assert!(listed(server.addr, &room).await.is_empty());
    server.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn a_replayed_or_older_registration_is_refused() {
    let server = start(ServerOptions::default()).await;
    let room = room("r");
    let now = now_ms();
    let first = signed(1, &room, 60, now);
    assert_eq!(register(server.addr, &first).await.status, StatusCode::OK);
    let replay = register(server.addr, &first).await;
    assert_eq!((replay.status, replay.code()), (StatusCode::CONFLICT, "replay"));
    let older = register(server.addr, &signed(1, &room, 60, now - 1)).await;
    assert_eq!((older.status, older.code()), (StatusCode::CONFLICT, "replay"));
    // A newer one replaces it.
    let mut newer = signed(1, &room, 60, now + 1);
    newer = Registration::sign(&device(1), &room, vec!["10.9.9.9:7710".into()], 60, newer.issued_at_ms);
    assert_eq!(register(server.addr, &newer).await.status, StatusCode::OK);
    let peers = client::lookup(&server.url, &room).await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].addrs, vec!["10.9.9.9:7710".to_string()]);
    // The same device in another room is another entry.
    assert_eq!(register(server.addr, &signed(1, &common::room("other"), 60, now)).await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_stale_issued_at_is_refused() {
    let server = start(ServerOptions::default()).await;
    let room = room("r");
    let skew = ISSUED_AT_SKEW_MS_MAX + 60_000;
    for at in [now_ms() - skew, now_ms() + skew] {
        let answer = register(server.addr, &signed(1, &room, 60, at)).await;
        assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "stale"));
        assert!(answer.body["error"]["message"].as_str().unwrap().contains("clock"), "{}", answer.body);
    }
    let answer = register(server.addr, &signed(1, &room, 24 * 3600 + 1, now_ms())).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "bad_ttl"));
    assert!(listed(server.addr, &room).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn expired_entries_disappear() {
    let (options, clock) = manual_options();
    let server = start(options).await;
    let room = room("r");
    let now = clock.load(std::sync::atomic::Ordering::Relaxed);
    register(server.addr, &signed(1, &room, 60, now)).await;
    register(server.addr, &signed(2, &room, 120, now)).await;
    assert_eq!(client::lookup(&server.url, &room).await.unwrap().len(), 2);
    advance(&clock, 59_999);
    assert_eq!(client::lookup(&server.url, &room).await.unwrap().len(), 2);
    advance(&clock, 1);
    let peers = client::lookup(&server.url, &room).await.unwrap();
    assert_eq!(peers.iter().map(|p| p.device_id).collect::<Vec<_>>(), vec![device(2).device_id()]);
    assert_eq!(get(server.addr, "/health").await.body["registrations"], 1, "the expired entry was purged");
    advance(&clock, 60_000);
    assert!(listed(server.addr, &room).await.is_empty());
    // An expired device may register again, even with an older time than it had.
    advance(&clock, 1000);
    let again = register(server.addr, &signed(1, &room, 600, now + 1)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    server.stop().await;
}

#[tokio::test]
async fn an_oversize_body_is_refused_with_413() {
    let server = start(ServerOptions::default()).await;
    let mut big = serde_json::to_value(signed(1, &room("r"), 60, now_ms())).unwrap();
    big["padding"] = Value::String("x".repeat(BODY_BYTES_MAX));
    let answer = post(server.addr, "/discovery/register", &big).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));

    // Without a Content-Length (chunked), the limit holds while reading.
    let chunk = "x".repeat(1000);
    let mut text = String::from(
        "POST /discovery/register HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    );
    for _ in 0..6 {
        text.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    text.push_str("0\r\n\r\n");
    let response = raw(server.addr, &text).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("too_large"), "{response}");
    server.stop().await;
}

/// Writes `text` on a fresh connection and reads until the server closes it.
async fn raw(addr: std::net::SocketAddr, text: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let limits = Limits { connections_per_ip_max: 2, ..Limits::default() };
    let server = start(ServerOptions { limits, ..ServerOptions::default() }).await;
    let held = [
        tokio::net::TcpStream::connect(server.addr).await.unwrap(),
        tokio::net::TcpStream::connect(server.addr).await.unwrap(),
    ];
    // The third is accepted and closed at once: it gets no answer.
    let response = raw(server.addr, "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert_eq!(response, "");
    drop(held);
    // Once they are closed, the address may connect again (the server notices the closes soon).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = raw(server.addr, "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
        if response.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the slots were never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn too_many_addrs_are_refused() {
    let server = start(ServerOptions::default()).await;
    let room = room("r");
    let addrs: Vec<String> = (0..=ADDRS_MAX).map(|n| format!("10.0.1.{n}:7710")).collect();
    let registration = Registration::sign(&device(1), &room, addrs, 60, now_ms());
    let answer = register(server.addr, &registration).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::BAD_REQUEST, "too_many_addrs"));
    let addrs: Vec<String> = (0..ADDRS_MAX).map(|n| format!("10.0.1.{n}:7710")).collect();
    let registration = Registration::sign(&device(1), &room, addrs, 60, now_ms());
    assert_eq!(register(server.addr, &registration).await.status, StatusCode::OK);
    let registration = Registration::sign(&device(2), &room, vec!["host.example:7710".into()], 60, now_ms());
    assert_eq!(register(server.addr, &registration).await.code(), "bad_addr");
    server.stop().await;
}

#[tokio::test]
async fn a_full_room_refuses_newcomers_but_not_renewals() {
    let limits = Limits { registrations_per_room_max: 3, ..Limits::default() };
    let server = start(ServerOptions { limits, ..ServerOptions::default() }).await;
    let room = room("r");
    let now = now_ms();
    for n in 1..=3 {
        assert_eq!(register(server.addr, &signed(n, &room, 60, now)).await.status, StatusCode::OK);
    }
    let answer = register(server.addr, &signed(4, &room, 60, now)).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::TOO_MANY_REQUESTS, "room_full"));
    assert!(answer.body["error"]["message"].as_str().unwrap().contains("3 devices"), "{}", answer.body);
    assert_eq!(register(server.addr, &signed(2, &room, 60, now + 1)).await.status, StatusCode::OK);
    assert_eq!(register(server.addr, &signed(4, &common::room("other"), 60, now)).await.status, StatusCode::OK);
    assert_eq!(listed(server.addr, &room).await.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn total_capacity_is_enforced() {
    let limits = Limits { registrations_max: 2, rooms_max: 3, ..Limits::default() };
    let server = start(ServerOptions { limits, ..ServerOptions::default() }).await;
    let now = now_ms();
    assert_eq!(register(server.addr, &signed(1, &room("a"), 60, now)).await.status, StatusCode::OK);
    assert_eq!(register(server.addr, &signed(2, &room("b"), 60, now)).await.status, StatusCode::OK);
    let answer = register(server.addr, &signed(3, &room("c"), 60, now)).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::TOO_MANY_REQUESTS, "full"));
    assert_eq!(post(server.addr, "/rooms", &json!({"room": room("c")})).await.status, StatusCode::CREATED);
    let answer = post(server.addr, "/rooms", &json!({"room": room("d")})).await;
    assert_eq!((answer.status, answer.code()), (StatusCode::TOO_MANY_REQUESTS, "rooms_full"));
    server.stop().await;
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() {
    // A standing clock refills nothing, so the count is exact however slow the machine.
    let (mut options, clock) = manual_options();
    options.limits = Limits { requests_per_s: 10, request_burst: 5, ..Limits::default() };
    let server = start(options).await;
    for _ in 0..5 {
        assert_eq!(get(server.addr, "/health").await.status, StatusCode::OK);
    }
    let limited = get(server.addr, "/health").await;
    assert_eq!((limited.status, limited.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert_eq!(limited.headers.get("retry-after").unwrap(), "1");
    // Unknown routes cost a token too.
    assert_eq!(get(server.addr, "/nope").await.status, StatusCode::TOO_MANY_REQUESTS);
    // The client reports it with the wait.
    match client::lookup(&server.url, &room("r")).await {
        Err(RendezvousError::Refused { status: 429, retry_after_s: Some(1), .. }) => {}
        other => panic!("expected a 429, got {other:?}"),
    }
    advance(&clock, 1000);
    for _ in 0..5 {
        assert_eq!(get(server.addr, "/health").await.status, StatusCode::OK);
    }
    assert_eq!(get(server.addr, "/health").await.status, StatusCode::TOO_MANY_REQUESTS);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_and_never_a_5xx() {
    // More requests than a burst allows: the rate limit is tested on its own.
    let limits = Limits { requests_per_s: 0, ..Limits::default() };
    let server = start(ServerOptions { limits, ..ServerOptions::default() }).await;
    let good = serde_json::to_value(signed(1, &room("r"), 60, now_ms())).unwrap();
    let with = |key: &str, value: Value| {
        let mut body = good.clone();
        body[key] = value;
        serde_json::to_vec(&body).unwrap()
    };
    let without = |key: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(key);
        serde_json::to_vec(&body).unwrap()
    };
    let register = "/discovery/register";
    let cases: Vec<(Method, String, Vec<u8>, u16, &str)> = vec![
        (Method::POST, register.into(), b"{not json".to_vec(), 400, "bad_json"),
        (Method::POST, register.into(), b"".to_vec(), 400, "bad_json"),
        (Method::POST, register.into(), b"[1,2]".to_vec(), 400, "bad_request"),
        (Method::POST, register.into(), b"\"text\"".to_vec(), 400, "bad_request"),
        (Method::POST, register.into(), vec![0xff, 0xfe], 400, "bad_json"),
        (Method::POST, register.into(), without("v"), 400, "bad_request"),
        (Method::POST, register.into(), with("v", json!(2)), 400, "unsupported_version"),
        (Method::POST, register.into(), with("v", json!("1")), 400, "bad_request"),
        (Method::POST, register.into(), without("signature"), 400, "bad_request"),
        (Method::POST, register.into(), with("addrs", json!("10.0.0.1:7710")), 400, "bad_request"),
        (Method::POST, register.into(), with("ttl_s", json!(-1)), 400, "bad_request"),
        (Method::POST, register.into(), with("ttl_s", json!(u64::MAX)), 400, "bad_signature"),
        (Method::POST, register.into(), with("issued_at_ms", json!(u64::MAX)), 400, "bad_signature"),
        (Method::POST, register.into(), with("room", json!("ab")), 400, "bad_room"),
        (Method::POST, register.into(), with("device_id", json!("nope")), 400, "bad_device_id"),
        (Method::POST, register.into(), with("public_key", json!("00")), 400, "bad_public_key"),
        (Method::POST, register.into(), with("public_key", json!("0".repeat(64))), 400, "device_id_mismatch"),
        (Method::POST, register.into(), with("signature", json!("x")), 400, "bad_signature"),
        (Method::POST, register.into(), with("addrs", json!(["10.0.0.1:0"])), 400, "bad_addr"),
        (Method::POST, "/rooms".into(), b"{}".to_vec(), 400, "bad_request"),
        (Method::POST, "/rooms".into(), br#"{"room":"ab"}"#.to_vec(), 400, "bad_room"),
        (Method::GET, "/discovery/peers".into(), vec![], 400, "bad_query"),
        (Method::GET, "/discovery/peers?room=xyz".into(), vec![], 400, "bad_room"),
        (Method::GET, format!("/discovery/peers?room={}&room={}", room("a"), room("b")), vec![], 400, "bad_query"),
        (Method::GET, "/discovery/peers?room=%zz".into(), vec![], 400, "bad_room"),
        (Method::GET, "/".into(), vec![], 404, "unknown_route"),
        (Method::GET, "/v1/health".into(), vec![], 404, "unknown_route"),
        (Method::GET, register.into(), vec![], 405, "method_not_allowed"),
        (Method::DELETE, "/health".into(), vec![], 405, "method_not_allowed"),
        (Method::POST, "/health".into(), vec![], 405, "method_not_allowed"),
        (Method::PUT, "/rooms".into(), vec![], 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let answer = request(server.addr, method.clone(), &path, &[], &body).await;
        let what = format!("{method} {path} {}", String::from_utf8_lossy(&body));
        assert_eq!(answer.status.as_u16(), status, "{what}: {}", answer.body);
        assert_eq!(answer.code(), code, "{what}: {}", answer.body);
        assert!(answer.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}");
    }
    // A declared length over the limit is refused before anything is read.
    let response = raw(
        server.addr,
        "POST /discovery/register HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    // Still serving.
    assert_eq!(get(server.addr, "/health").await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn client_errors_say_what_went_wrong() {
    let room = room("r");
    let error = client::lookup("https://rendezvous.example", &room).await.unwrap_err();
    assert!(error.to_string().contains("https is not supported"), "{error}");
    let error = client::lookup("http://127.0.0.1:9", "not-a-room").await.unwrap_err();
    assert!(matches!(error, RendezvousError::BadRoom { .. }), "{error}");
    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let error = client::lookup(&url, &room).await.unwrap_err();
    assert!(matches!(error, RendezvousError::Unreachable { .. }), "{error}");
    assert!(error.to_string().contains("cannot reach"), "{error}");
    // A stale registration is refused with a message that points at the clock.
    let server = start(ServerOptions::default()).await;
    let stale = signed(1, &room, 60, now_ms() - 2 * ISSUED_AT_SKEW_MS_MAX);
    let error = client::register(&server.url, &stale).await.unwrap_err();
    assert!(error.to_string().contains("stale") && error.to_string().contains("clock"), "{error}");
    // A base URL with a path prefix reaches the routes under it; here there are none.
    let error = client::lookup(&format!("{}/prefix/", server.url), &room).await.unwrap_err();
    assert!(matches!(error, RendezvousError::Refused { status: 404, .. }), "{error}");
    server.stop().await;
}

/// A dishonest rendezvous that lists what it is given for any room.
async fn dishonest_server(peers: Value) -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/discovery/peers",
        get(move || {
            let peers = peers.clone();
            async move { axum::Json(json!({"v": 1, "peers": peers})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

fn listed_entry(registration: &Registration) -> Value {
    json!({
        "device_id": registration.device_id,
        "public_key": registration.public_key,
        "addrs": registration.addrs,
        "ttl_s": registration.ttl_s,
        "issued_at_ms": registration.issued_at_ms,
        "signature": registration.signature,
        "expires_at_ms": registration.issued_at_ms + registration.ttl_s * 1000,
        "observed": "192.0.2.1",
    })
}

#[tokio::test]
async fn the_client_drops_entries_an_untrusted_server_altered() {
    let room = room("r");
    let now = now_ms();
    let honest = signed(1, &room, 60, now);
    let mut altered = listed_entry(&signed(2, &room, 60, now));
    altered["addrs"] = json!(["203.0.113.66:7710"]);
    let other_room = listed_entry(&signed(3, &common::room("elsewhere"), 60, now));
    let mut stretched = listed_entry(&signed(4, &room, 60, now));
    stretched["expires_at_ms"] = json!(now + 3_600_000);
    let mut bad_observed = listed_entry(&signed(5, &room, 60, now));
    bad_observed["observed"] = json!("<script>");
    let mut older_duplicate = listed_entry(&signed(1, &room, 60, now - 1));
    older_duplicate["observed"] = json!("192.0.2.99");
    let peers = json!([
        listed_entry(&honest),
        altered,
        other_room,
        {"device_id": "junk"},
        stretched,
        bad_observed,
        older_duplicate,
    ]);
    let (url, task) = dishonest_server(peers).await;
    let found = client::lookup(&url, &room).await.unwrap();
    let devices: Vec<_> = found.iter().map(|p| p.device_id).collect();
    assert_eq!(devices, vec![device(1).device_id(), device(4).device_id(), device(5).device_id()]);
    assert_eq!(found[0].addrs, honest.addrs);
    assert_eq!(found[0].observed.as_deref(), Some("192.0.2.1"), "the later-issued entry of a device wins");
    assert_eq!(found[1].expires_at_ms, now + 60_000, "the signed lifetime caps what the server claims");
    assert_eq!(found[2].observed, None, "an observed value that is not an IP is dropped");
    task.abort();
}
