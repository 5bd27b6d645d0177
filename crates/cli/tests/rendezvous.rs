//! The real `meshsync rendezvous` as a child process: it prints where it listens, answers
//! `/health` and JSON errors, saves its snapshot in the data dir it was given, stops cleanly on
//! SIGTERM, and names the flag to change when its port is taken.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;
use serde_json::Value;

struct Rendezvous {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// Every line printed after the address, for the clean-stop message.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshsync rendezvous` on a free loopback port and waits until it prints its address.
fn start(dir: &Path) -> Rendezvous {
    let mut child = Command::new(BIN)
        .args(["rendezvous", "--listen", "127.0.0.1:0", "--data-dir", dir.to_str().unwrap(), "--log", "warn"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start meshsync rendezvous");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Owned from here on, so the child is killed and reaped whatever happens next.
    let mut rendezvous = Rendezvous { child, url: String::new(), lines: rx };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rendezvous.url.is_empty() {
        let line = rendezvous
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("meshsync rendezvous printed its address");
        if let Some(rest) = line.trim().strip_prefix("health") {
            rendezvous.url = rest.trim().strip_suffix("/health").expect("the health URL").to_string();
        }
    }
    rendezvous
}

fn get(url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent.get(url).call().expect("the rendezvous answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent.post(url).send_json(body).expect("the rendezvous answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// SIGTERM, then the exit status and whether it said it stopped cleanly.
fn sigterm(mut rendezvous: Rendezvous) -> (bool, bool) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(rendezvous.child.id() as i32, libc::SIGTERM) };
    let success = rendezvous.child.wait().expect("wait").success();
    let said = rendezvous.lines.try_iter().any(|line| line.contains("stopped cleanly"));
    (success, said)
}

#[test]
fn rendezvous_serves_health_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let rendezvous = start(dir.path());
    let (status, health) = get(&format!("{}/health", rendezvous.url));
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["v"], 1);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let (status, body) = get(&format!("{}/nope", rendezvous.url));
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_route")));
    let (status, _) = post(&format!("{}/rooms", rendezvous.url), &serde_json::json!({"room": "a".repeat(64)}));
    assert_eq!(status, 201);
    assert_eq!(sigterm(rendezvous), (true, true), "exit status 0 and \"stopped cleanly\"");
    assert!(dir.path().join(meshsync_rendezvous::SNAPSHOT_FILE).exists(), "the snapshot is in the data dir");
}

#[test]
fn a_taken_rendezvous_port_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .args(["rendezvous", "--listen", &format!("127.0.0.1:{port}"), "--data-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&port.to_string()) && err.contains("--listen"), "{err}");
}
