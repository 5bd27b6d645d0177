//! Child processes: this binary re-executed in a role, or the real `meshsync` binary. A child
//! prints JSON objects, one a line, on stdout (anything else there is ignored) and its progress
//! on stderr, which passes through. A watchdog kills a child past its time or memory limit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::procfs;

/// Why a child did not deliver.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Past its time limit.
    Time(u64),
    /// Past its memory limit (resident set, MiB).
    Memory(u64),
    /// It exited or failed otherwise.
    Error(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Time(s) => write!(f, "did not finish (time limit {s} s)"),
            Failure::Memory(m) => write!(f, "did not finish (memory limit: RSS passed {m} MiB)"),
            Failure::Error(e) => write!(f, "failed: {e}"),
        }
    }
}

/// A running child.
pub struct Child {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    started: Instant,
    limit: Duration,
    /// Peak VmRSS seen by the watchdog, KiB.
    peak_rss: Arc<AtomicU64>,
    /// Set by the watchdog when it killed the child for memory.
    killed_for_memory: Arc<AtomicU64>,
    pub pid: u32,
}

impl Child {
    /// Starts `program args`, killed after `limit` or once its RSS passes `memory_mib`.
    pub fn spawn(program: &str, args: &[String], limit: Duration, memory_mib: Option<u64>) -> Result<Child, Failure> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Failure::Error(format!("cannot start {program}: {e}")))?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let peak_rss = Arc::new(AtomicU64::new(0));
        let killed_for_memory = Arc::new(AtomicU64::new(0));
        {
            let peak_rss = peak_rss.clone();
            let killed = killed_for_memory.clone();
            std::thread::spawn(move || {
                while let Some(rss) = procfs::rss_kib(pid) {
                    peak_rss.fetch_max(rss, Ordering::Relaxed);
                    if let Some(limit) = memory_mib {
                        if rss > limit * 1024 {
                            killed.store(limit, Ordering::SeqCst);
                            // SAFETY: kill(2) on our own child's pid.
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        Ok(Child { child, lines, started: Instant::now(), limit, peak_rss, killed_for_memory, pid })
    }

    /// The next JSON object the child prints, waiting at most until its time limit.
    pub fn next(&mut self) -> Result<Value, Failure> {
        loop {
            let left = self.limit.saturating_sub(self.started.elapsed());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Ok(value @ Value::Object(_)) = serde_json::from_str::<Value>(&line) {
                        if let Some(error) = value.get("error").and_then(Value::as_str) {
                            return Err(Failure::Error(error.to_string()));
                        }
                        return Ok(value);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.kill();
                    return Err(Failure::Time(self.limit.as_secs()));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    let memory = self.killed_for_memory.load(Ordering::SeqCst);
                    if memory > 0 {
                        return Err(Failure::Memory(memory));
                    }
                    return Err(Failure::Error(format!("exited ({status:?}) without a result")));
                }
            }
        }
    }

    /// The next line the child prints (any text), waiting at most `wait`.
    pub fn next_line(&mut self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Peak resident set seen by the watchdog (sampled every 50 ms), KiB.
    pub fn peak_rss_seen(&self) -> u64 {
        self.peak_rss.load(Ordering::Relaxed)
    }

    /// Closes its stdin (the roles exit on EOF) and waits a little, then kills it.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// Sends SIGTERM and waits for a clean exit (then SIGKILL).
    pub fn terminate(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Prints one JSON object on stdout (for the parent) and flushes.
pub fn emit(value: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// Blocks until stdin reaches EOF: how a parent tells a serving child to exit.
pub fn wait_for_eof() {
    let mut line = String::new();
    let stdin = std::io::stdin();
    while stdin.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        line.clear();
    }
}
