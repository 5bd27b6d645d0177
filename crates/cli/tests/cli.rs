//! The real `meshsync` binary: `run` as a child process on loopback, client commands against
//! it, a clean shutdown on SIGTERM that keeps every acknowledged write, and the errors a user
//! sees for a port in use, a bad config file and bad arguments.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshsync");

struct Running {
    child: Child,
    api: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshsync run` on a free port and waits for it to print its API URL.
fn start(dir: &Path, extra: &[&str]) -> Running {
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--data-dir",
            dir.to_str().unwrap(),
            "--api",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--no-mdns",
            "--log",
            "warn",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meshsync run");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut api = None;
    while api.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("meshsync run printed its API URL");
        if let Some(rest) = line.trim().strip_prefix("API") {
            api = rest.split_whitespace().next().map(|url| url.trim_end_matches("/v1").to_string());
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Running { child, api: api.unwrap() }
}

fn client(running: &Running, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("MESHSYNC_API", &running.api)
        .env("MESHSYNC_DATA_DIR", dir)
        .output()
        .expect("run client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sigterm(running: &mut Running) -> bool {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(running.child.id() as i32, libc::SIGTERM) };
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
fn a_port_in_use_says_which_and_how_to_change_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["run", "--data-dir", dir.path().to_str().unwrap(), "--api", &format!("127.0.0.1:{port}"), "--no-mdns"])
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
