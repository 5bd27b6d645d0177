//! The real `meshsync` binary: `run` as a child process on loopback, client commands against
//! it, a clean shutdown on SIGTERM that keeps every acknowledged write, the audit log and its
//! check, and the errors a user sees for a port in use, a bad config file and bad arguments.

mod common;

use std::path::Path;
use std::process::Command;

use common::{start, Running, BIN};

fn client(running: &Running, _dir: &Path, args: &[&str]) -> (bool, String, String) {
    common::client(running, args)
}

fn sigterm(running: &mut Running) -> bool {
    common::signal(running, libc::SIGTERM);
    running.child.wait().expect("wait").success()
}

#[test]
fn run_write_read_and_stop_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path(), &["--name", "till-1"]);
    assert!(client(&node, dir.path(), &["schema", "products", "stock=counter"]).0);
    let (ok, out, err) =
        client(&node, dir.path(), &["put", "products", "tea", "name=Green tea", "price=2.5", "stock=40"]);
    assert!(ok, "{err}");
    assert!(out.contains("Green tea"), "{out}");
    assert!(client(&node, dir.path(), &["incr", "products", "tea", "stock", "--", "-2"]).0);
    let (ok, out, _) = client(&node, dir.path(), &["get", "products", "tea", "--json"]);
    assert!(ok);
    let record: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["fields"]["stock"], 38);
    assert_eq!(record["fields"]["price"], 2.5);
    let (ok, out, _) = client(&node, dir.path(), &["list", "products", "--where", "name=Green tea"]);
    assert!(ok && out.contains("tea"), "{out}");
    let (ok, out, _) = client(&node, dir.path(), &["status"]);
    assert!(ok && out.contains("till-1") && out.contains("records  1"), "{out}");
    let (ok, _, err) = client(&node, dir.path(), &["get", "products", "nope"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = client(&node, dir.path(), &["incr", "products", "tea", "name"]);
    assert!(!ok && err.contains("counter"), "{err}");
    // Many acknowledged writes, then SIGTERM: all must be there after a restart.
    for i in 0..50 {
        assert!(client(&node, dir.path(), &["put", "items", &format!("i{i}"), &format!("n={i}")]).0);
    }
    assert!(sigterm(&mut node), "clean exit on SIGTERM");
    let node = start(dir.path(), &[]);
    let (ok, out, _) = client(&node, dir.path(), &["list", "items", "--limit", "100", "--json"]);
    assert!(ok);
    let page: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["records"].as_array().unwrap().len(), 50);
}

#[test]
fn the_audit_log_shows_what_happened_and_a_broken_chain_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path(), &[]);
    assert!(client(&node, dir.path(), &["invite", "--role", "reader"]).0);
    let (ok, out, err) = client(&node, dir.path(), &["audit", "--verify"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("invite.created") && lines[0].contains(r#""role":"reader""#), "{out}");
    assert!(lines[1].contains("group.created"), "{out}");
    assert!(lines[2].starts_with("chain ok: 2 entries, head "), "{out}");
    let page = common::json(&node, &["audit", "--kind", "group.", "--limit", "1"]);
    assert_eq!(page["entries"][0]["seq"], 1);
    assert_eq!((&page["next"], &page["chain"]), (&serde_json::Value::Null, &serde_json::Value::Null));
    let (ok, _, err) = client(&node, dir.path(), &["audit", "--limit", "0"]);
    assert!(!ok && err.contains("limit") && err.contains("bad_query"), "{err}");

    // Change the first entry while the node is stopped: the check names it and exits 1.
    assert!(sigterm(&mut node));
    let db = rusqlite::Connection::open(dir.path().join("meshsync.db")).unwrap();
    db.execute("UPDATE audit SET detail = '{}' WHERE seq = 1", []).unwrap();
    drop(db);
    let node = start(dir.path(), &[]);
    let (ok, out, err) = client(&node, dir.path(), &["audit", "--verify"]);
    assert!(!ok, "a broken chain fails the command: {out}");
    assert!(out.contains("chain BROKEN at entry 1"), "{out}");
    assert!(err.contains("broken at entry 1"), "{err}");
}

#[test]
fn a_port_in_use_says_which_and_how_to_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args([
            "run",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--api",
            &format!("127.0.0.1:{port}"),
            "--no-mdns",
            "--no-beacon",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&port.to_string()) && err.contains("--api"), "{err}");
}

#[test]
fn bad_config_and_arguments_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "name = \"\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--data-dir", dir.path().to_str().unwrap(), "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN)
        .args(["run", "--data-dir", dir.path().to_str().unwrap(), "--peer", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("host:port"));
    let out = Command::new(BIN).args(["run", "--durability", "sometimes"]).output().unwrap();
    assert!(!out.status.success());
    // Nothing was created by the refused starts.
    assert!(!dir.path().join("meshsync.db").exists());
    // A client with no node to talk to says what to do.
    let out = Command::new(BIN).args(["status", "--api", "http://127.0.0.1:9", "--token", "x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("meshsync run"));
}
