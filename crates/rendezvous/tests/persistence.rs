//! Registrations survive a restart of the service through its snapshot: a new server on the same
//! data dir lists them, drops what expired meanwhile and what was tampered with, and the file
//! holds the registration fields and nothing else.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use hyper::Method;
use meshsync_rendezvous::{client, Clock, ServerOptions, SNAPSHOT_FILE};
use serde_json::Value;

fn options(dir: &Path) -> ServerOptions {
    ServerOptions { data_dir: Some(dir.to_path_buf()), ..ServerOptions::default() }
}

fn read_snapshot(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(SNAPSHOT_FILE)).expect("the snapshot exists")).unwrap()
}

#[tokio::test]
async fn registrations_survive_a_restart_and_tampered_entries_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let room = room("shop");
    let now = now_ms();
    let server = start(options(dir.path())).await;
    client::register(&server.url, &signed(1, &room, 0, now)).await.unwrap();
    client::register(&server.url, &signed(2, &room, 600, now)).await.unwrap();
    client::register(&server.url, &signed(3, &common::room("other"), 600, now)).await.unwrap();
    server.stop().await;

    // A restart with the file as written: everything is back, observed addresses included.
    let server = start(options(dir.path())).await;
    let peers = client::lookup(&server.url, &room).await.unwrap();
    assert_eq!(peers.len(), 2);
    assert!(peers.iter().all(|p| p.observed.as_deref() == Some("127.0.0.1")));
    assert_eq!(listed(server.addr, &common::room("other")).await.len(), 1);
    // A replay of a registration the old process held is still refused.
    let replay = register(server.addr, &signed(1, &room, 0, now)).await;
    assert_eq!(replay.code(), "replay");
    server.stop().await;

    // Someone edits the file: device 2 gets another address, device 3 another room.
    let mut snapshot = read_snapshot(dir.path());
    for entry in snapshot["registrations"].as_array_mut().unwrap() {
        if entry["device_id"] == device(2).device_id().to_string() {
            entry["addrs"] = serde_json::json!(["203.0.113.66:7710"]);
        }
        if entry["device_id"] == device(3).device_id().to_string() {
            entry["room"] = Value::String(room.clone());
        }
    }
    std::fs::write(dir.path().join(SNAPSHOT_FILE), serde_json::to_vec(&snapshot).unwrap()).unwrap();
    let server = start(options(dir.path())).await;
    let devices: Vec<_> = client::lookup(&server.url, &room).await.unwrap().into_iter().map(|p| p.device_id).collect();
    assert_eq!(devices, vec![device(1).device_id()]);
    assert!(listed(server.addr, &common::room("other")).await.is_empty());
    server.stop().await;
    // The next snapshot no longer holds them.
    assert_eq!(read_snapshot(dir.path())["registrations"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn entries_that_expired_while_the_service_was_down_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let room = room("r");
    let (clock, time) = Clock::manual(now_ms());
    let now = time.load(std::sync::atomic::Ordering::Relaxed);
    let server = start(ServerOptions { clock: clock.clone(), ..options(dir.path()) }).await;
    register(server.addr, &signed(1, &room, 60, now)).await;
    register(server.addr, &signed(2, &room, 3600, now)).await;
    server.stop().await;
    advance(&time, 61_000);
    let server = start(ServerOptions { clock, ..options(dir.path()) }).await;
    assert_eq!(listed(server.addr, &room).await, vec![device(2).device_id().to_string()]);
    assert_eq!(get(server.addr, "/health").await.body["registrations"], 1);
    server.stop().await;
}

#[tokio::test]
async fn the_snapshot_holds_only_the_registration_fields() {
    let dir = tempfile::tempdir().unwrap();
    let room = room("r");
    let server = start(options(dir.path())).await;
    let registration = signed(1, &room, 600, now_ms());
    // Whatever else a request carries must not reach the disk.
    let marker = "do-not-store-this-marker";
    let body = serde_json::to_vec(&registration).unwrap();
    let headers = [("content-type", "application/json"), ("user-agent", marker), ("x-extra", marker)];
    assert_eq!(request(server.addr, Method::POST, "/discovery/register", &headers, &body).await.status, 200);
    let mut with_extra = serde_json::to_value(signed(2, &room, 600, now_ms())).unwrap();
    with_extra["note"] = Value::String(marker.into());
    assert_eq!(post(server.addr, "/discovery/register", &with_extra).await.status, 200);
    // Rooms made ahead and lookups are not registrations.
    post(server.addr, "/rooms", &serde_json::json!({"room": common::room("empty")})).await;
    get(server.addr, &format!("/discovery/peers?room={room}")).await;

    // The debounced writer saves while the service runs.
    let path = dir.path().join(SNAPSHOT_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&registration.signature)) {
        assert!(std::time::Instant::now() < deadline, "no snapshot was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;

    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(marker), "{text}");
    let snapshot: Value = serde_json::from_str(&text).unwrap();
    let keys = |value: &Value| value.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(&snapshot), ["registrations", "v"].map(String::from).into());
    let expected: BTreeSet<String> =
        ["room", "device_id", "public_key", "addrs", "ttl_s", "issued_at_ms", "signature", "observed"]
            .map(String::from)
            .into();
    let entries = snapshot["registrations"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for entry in entries {
        assert_eq!(keys(entry), expected);
        assert_eq!(entry["observed"], "127.0.0.1");
    }
    let stored = entries.iter().find(|e| e["device_id"] == registration.device_id).unwrap();
    for (field, value) in serde_json::to_value(&registration).unwrap().as_object().unwrap() {
        if field != "v" {
            assert_eq!(&stored[field], value, "{field}");
        }
    }
    // No temporary files are left behind.
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files, vec![std::ffi::OsString::from(SNAPSHOT_FILE)]);
}

#[tokio::test]
async fn a_damaged_snapshot_starts_an_empty_book() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(SNAPSHOT_FILE), b"{\"v\":1,\"registrations\":[{\"room\":").unwrap();
    let server = start(options(dir.path())).await;
    assert_eq!(get(server.addr, "/health").await.body["registrations"], 0);
    let room = room("r");
    client::register(&server.url, &signed(1, &room, 60, now_ms())).await.unwrap();
    server.stop().await;
    // And the next save replaces it with a good one.
    assert_eq!(read_snapshot(dir.path())["registrations"].as_array().unwrap().len(), 1);
}
