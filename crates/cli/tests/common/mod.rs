//! Shared helpers for tests that run the real `meshsync` binary: start `meshsync run` on free
//! loopback ports, read the URLs it prints, call client commands, stop or kill it.

#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshsync");

pub struct Running {
    pub child: Child,
    pub api: String,
    pub listen: String,
    pub device: String,
    pub dir: PathBuf,
    /// The network namespace it runs in, if not ours.
    pub ns: Option<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `meshsync run` on free loopback ports and waits until it prints its addresses.
pub fn start(dir: &Path, extra: &[&str]) -> Running {
    let mut args = vec!["--listen", "127.0.0.1:0", "--no-mdns", "--no-beacon", "--log", "warn"];
    args.extend_from_slice(extra);
    start_in(None, dir, &args)
}

/// A command for the `meshsync` binary, run in network namespace `ns` if given.
pub fn command(ns: Option<&str>) -> Command {
    match ns {
        Some(ns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns, BIN]);
            command
        }
        None => Command::new(BIN),
    }
}

/// Starts `meshsync run` (in network namespace `ns` if given) with its API on a free loopback
/// port and `args`, and waits until it prints its addresses.
pub fn start_in(ns: Option<&str>, dir: &Path, args: &[&str]) -> Running {
    let mut child = command(ns)
        .args(["run", "--data-dir", dir.to_str().unwrap(), "--api", "127.0.0.1:0"])
        .args(args)
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
    let (mut api, mut listen, mut device) = (None, None, None);
    while api.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("meshsync run printed its addresses");
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("API") {
            api = rest.split_whitespace().next().map(|url| url.trim_end_matches("/v1").to_string());
        } else if let Some(rest) = line.strip_prefix("peers on") {
            listen = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("device id") {
            device = Some(rest.trim().to_string());
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Running {
        child,
        api: api.unwrap(),
        listen: listen.unwrap_or_default(),
        device: device.unwrap_or_default(),
        dir: dir.to_path_buf(),
        ns: ns.map(str::to_string),
    }
}

/// Runs a client command against a running node: (success, stdout, stderr).
pub fn client(running: &Running, args: &[&str]) -> (bool, String, String) {
    let out = command(running.ns.as_deref())
        .args(args)
        .env("MESHSYNC_API", &running.api)
        .env("MESHSYNC_DATA_DIR", &running.dir)
        .output()
        .expect("run client");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs a client command that answers JSON.
pub fn json(running: &Running, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, out, err) = client(running, &args);
    assert!(ok, "meshsync {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("meshsync {args:?} printed no JSON ({e}): {out}"))
}

/// Sends a signal to the node.
pub fn signal(running: &Running, signal: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(running.child.id() as i32, signal) };
}

/// Polls `check` every 100 ms until it holds or `limit` passes.
pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    check()
}
