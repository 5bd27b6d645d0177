//! Access control between real `meshsync` processes on loopback: a reader's writes are refused
//! and never reach others; a scoped writer receives only its scopes and cannot write outside
//! them; a single-use invite admits one device only; a forged invite is refused; a revoked device
//! is cut off at once and receives nothing new. (A stranger of another group: `mesh.rs`.)

mod common;

use std::time::Duration;

use common::{client, eventually, json, start, Running};
use serde_json::Value;

fn invite(node: &Running, args: &[&str]) -> String {
    let mut all = vec!["invite"];
    all.extend_from_slice(args);
    json(node, &all)["code"].as_str().expect("invite code").to_string()
}

fn connected(node: &Running) -> u64 {
    json(node, &["status"])["peers"]["connected"].as_u64().unwrap_or(0)
}

fn record(node: &Running, collection: &str, id: &str) -> Option<Value> {
    let (ok, out, _) = client(node, &["get", collection, id, "--json"]);
    ok.then(|| serde_json::from_str(&out).ok()).flatten()
}

/// The kinds of the audit entries of `node` that name `device`.
fn audited(node: &Running, device: &str) -> Vec<String> {
    json(node, &["audit", "--limit", "1000"])["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["device"] == device)
        .filter_map(|e| e["kind"].as_str().map(str::to_string))
        .collect()
}

fn member<'a>(members: &'a Value, device: &str) -> &'a Value {
    members["members"].as_array().unwrap().iter().find(|m| m["device_id"] == device).expect("listed")
}

#[test]
fn a_reader_reads_but_cannot_change_anything() {
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(da.path(), &["--name", "office"]);
    assert!(client(&a, &["put", "prices", "tea", "price=2.5"]).0);
    let (png, svg) = (da.path().join("invite.png"), da.path().join("invite.svg"));
    let code = invite(&a, &["--role", "reader", "--png", png.to_str().unwrap(), "--svg", svg.to_str().unwrap()]);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(std::fs::read_to_string(&svg).unwrap().trim_end().ends_with("</svg>"));
    let (ok, out, _) = client(&a, &["invite", "--role", "reader"]);
    assert!(ok && out.contains('\u{2580}') && out.contains("for a reader"), "a QR code drawn in the terminal: {out}");
    let r = start(dr.path(), &["--name", "display", "--join", &code]);
    assert!(eventually(Duration::from_secs(15), || record(&r, "prices", "tea").is_some()), "the reader reads");

    let (ok, _, err) = client(&r, &["put", "prices", "tea", "price=0.01"]);
    assert!(!ok && err.contains("reader"), "a reader's write is refused with a reason: {err}");
    let (ok, _, err) = client(&r, &["delete", "prices", "tea"]);
    assert!(!ok && err.contains("reader"), "{err}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(record(&a, "prices", "tea").unwrap()["fields"]["price"], 2.5);
    let members = json(&a, &["members"]);
    assert_eq!(member(&members, &r.device)["role"], "reader");
    // Only admins invite.
    let (ok, _, err) = client(&r, &["invite"]);
    assert!(!ok && err.contains("admin"), "{err}");
}

#[test]
fn a_scoped_writer_receives_and_writes_only_its_scopes() {
    let (da, dw) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(da.path(), &["--name", "warehouse"]);
    for (id, scope) in [("a1", "vendor-a"), ("b1", "vendor-b")] {
        assert!(client(&a, &["put", "batches", id, &format!("_scope={scope}"), "kg=5"]).0);
    }
    assert!(client(&a, &["put", "catalog", "flour", "unit=kg"]).0, "an unscoped record, shared with all");
    let code = invite(&a, &["--role", "writer", "--scope", "vendor-a"]);
    let w = start(dw.path(), &["--name", "scanner-a", "--join", &code]);
    assert!(eventually(Duration::from_secs(15), || record(&w, "batches", "a1").is_some()));
    assert!(eventually(Duration::from_secs(5), || record(&w, "catalog", "flour").is_some()));
    // Later writes in other scopes stay away too.
    assert!(client(&a, &["put", "batches", "b2", "_scope=vendor-b", "kg=7"]).0);
    assert!(client(&a, &["put", "batches", "a2", "_scope=vendor-a", "kg=8"]).0);
    assert!(eventually(Duration::from_secs(10), || record(&w, "batches", "a2").is_some()));
    assert!(record(&w, "batches", "b1").is_none() && record(&w, "batches", "b2").is_none(), "vendor-b leaked");

    let (ok, _, err) = client(&w, &["put", "batches", "w1", "_scope=vendor-b", "kg=1"]);
    assert!(!ok && err.contains("scope"), "{err}");
    let (ok, _, err) = client(&w, &["put", "catalog", "flour", "unit=lb"]);
    assert!(!ok && err.contains("scope"), "an unscoped record is outside its scopes: {err}");
    assert!(client(&w, &["put", "batches", "w2", "_scope=vendor-a", "kg=2"]).0);
    assert!(eventually(Duration::from_secs(10), || record(&a, "batches", "w2").is_some()));
    assert!(record(&a, "batches", "w1").is_none());
    assert_eq!(record(&a, "catalog", "flour").unwrap()["fields"]["unit"], "kg");
}

#[test]
fn a_single_use_invite_admits_one_device_and_a_forged_one_none() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path(), &["--name", "office"]);
    let code = invite(&a, &["--uses", "1"]);
    let first = start(dirs[1].path(), &["--name", "till-1", "--join", &code]);
    assert!(eventually(Duration::from_secs(15), || connected(&first) == 1));
    let second = start(dirs[2].path(), &["--name", "till-2", "--join", &code]);
    let refused = eventually(Duration::from_secs(10), || {
        json(&second, &["peers"])["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["last_error"].as_str().is_some_and(|e| e.contains("already used")))
    });
    assert!(refused, "the second device should learn why: {}", json(&second, &["peers"]));
    assert_eq!(connected(&second), 0);
    assert_eq!(json(&a, &["members"])["members"].as_array().unwrap().len(), 2);
    let on_a = audited(&a, &first.device);
    assert!(on_a.contains(&"invite.used".into()) && on_a.contains(&"member.admitted".into()), "{on_a:?}");
    assert!(audited(&a, &second.device).contains(&"invite.refused".into()));

    // A code whose grant was altered (one character changed) is refused before anything starts.
    // (The grant starts after the group id, secret and founder key: 80 bytes, 128 characters.)
    let at = "MSI2-".len() + 140;
    let flipped = if &code[at..at + 1] == "A" { "B" } else { "A" };
    let forged = format!("{}{}{}", &code[..at], flipped, &code[at + 1..]);
    let out = std::process::Command::new(common::BIN)
        .args(["run", "--data-dir", dirs[3].path().to_str().unwrap(), "--join", &forged, "--no-mdns", "--no-beacon"])
        .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invite code"), "{err}");
}

#[test]
fn a_revoked_device_is_cut_off_and_receives_nothing_new() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path(), &["--name", "office"]);
    let code = invite(&a, &["--uses", "2"]);
    let b = start(dirs[1].path(), &["--name", "till-b", "--join", &code]);
    let stolen = start(dirs[2].path(), &["--name", "stolen", "--join", &code]);
    for node in [&a, &b, &stolen] {
        assert!(eventually(Duration::from_secs(15), || connected(node) == 2), "{}", json(node, &["peers"]));
    }
    assert!(client(&a, &["put", "notes", "before", "x=1"]).0);
    assert!(eventually(Duration::from_secs(10), || record(&stolen, "notes", "before").is_some()));

    let started = std::time::Instant::now();
    let (ok, _, err) = client(&a, &["revoke", &stolen.device]);
    assert!(ok, "{err}");
    // Every node closes the revoked device's sessions as soon as it hears of the revocation.
    for node in [&a, &b] {
        let cut = eventually(Duration::from_secs(5), || {
            json(node, &["peers"])["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["device_id"] == stolen.device.as_str() && p["state"] != "connected")
        });
        assert!(cut, "{} still talks to the revoked device: {}", node.device, json(node, &["peers"]));
    }
    println!("FIGURE revocation.cut_off_everywhere_ms {}", started.elapsed().as_millis());
    assert!(eventually(Duration::from_secs(5), || connected(&stolen) == 0));
    assert_eq!(member(&json(&b, &["members"]), &stolen.device)["revoked"], true);
    assert!(audited(&a, &stolen.device).contains(&"member.revoked".into()));
    assert!(eventually(Duration::from_secs(5), || audited(&b, &stolen.device).contains(&"member.revoked".into())));
    let (ok, out, _) = client(&a, &["audit", "--verify"]);
    assert!(ok, "the audit chain verifies: {out}");

    // Nothing new reaches it, and what it writes now is refused everywhere.
    assert!(client(&a, &["put", "notes", "after", "x=2"]).0);
    assert!(client(&b, &["put", "notes", "after-b", "x=3"]).0);
    let _ = client(&stolen, &["put", "notes", "from-stolen", "x=4"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(record(&stolen, "notes", "after").is_none() && record(&stolen, "notes", "after-b").is_none());
    assert!(record(&a, "notes", "from-stolen").is_none() && record(&b, "notes", "from-stolen").is_none());
    assert_eq!(connected(&stolen), 0);
    assert!(eventually(Duration::from_secs(10), || record(&b, "notes", "after").is_some()), "the others go on");
}
