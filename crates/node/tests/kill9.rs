//! kill -9 durability: a child process writes through the embedding API and reports each
//! acknowledged write on stdout; the parent SIGKILLs it at random moments, 20 times and more,
//! and after every kill reopens the data dir and checks that every acknowledged write is there
//! and that `PRAGMA integrity_check` says ok.
//!
//! This file has its own `main` (harness = false) because the same binary is also the child.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meshsync_node::{Node, Policy, Schema, Value};
use rand::Rng;
use serde_json::json;

const KILLS: usize = 24;

fn child(dir: &str, round: usize) {
    let node = Node::open(dir).expect("child opens the node");
    // Two writer threads, so that kills also land inside group commits of several writes.
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let node = node.clone();
            std::thread::spawn(move || {
                let out = std::io::stdout();
                for i in 0.. {
                    let id = format!("r{round}-t{t}-{i}");
                    node.put("items", &id, json!({"round": round, "i": i, "text": "x".repeat(i % 300)})).expect("put");
                    writeln!(out.lock(), "put {id} {i}").expect("stdout");
                    node.incr("counters", "total", "n", json!(1)).expect("incr");
                    writeln!(out.lock(), "incr").expect("stdout");
                    if i % 7 == 0 {
                        node.delete("items", &id).expect("delete");
                        writeln!(out.lock(), "delete {id}").expect("stdout");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer thread");
    }
}

fn parent() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().to_str().ok_or("temp path is not UTF-8")?.to_string();
    {
        let node = Node::open(&path).map_err(|e| e.to_string())?;
        node.declare_schema(
            "counters",
            Schema { fields: [("n".to_string(), Policy::Counter)].into(), ..Schema::default() },
        )
        .map_err(|e| e.to_string())?;
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut rng = rand::rng();
    let mut expected_items: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let mut expected_total: i64 = 0;
    let mut acked_total = 0usize;
    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args(["--child", &path, &round.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let reader =
            std::thread::spawn(move || BufReader::new(stdout).lines().map_while(Result::ok).collect::<Vec<String>>());
        // Let the child open and write for a random while, then kill it without warning.
        let delay = Duration::from_millis(rng.random_range(80..600));
        let started = Instant::now();
        while started.elapsed() < delay {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("child exited early in round {round}: {status}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        if rc != 0 {
            return Err(format!("kill failed in round {round}"));
        }
        child.wait().map_err(|e| e.to_string())?;
        let lines = reader.join().map_err(|_| "reader panicked")?;
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            match parts.as_slice() {
                ["put", id, i] => {
                    expected_items.insert(id.to_string(), Some(i.parse().map_err(|_| "bad ack")?));
                }
                ["delete", id] => {
                    expected_items.insert(id.to_string(), None);
                }
                ["incr"] => expected_total += 1,
                _ if line.is_empty() => {}
                _ => return Err(format!("unexpected child output {line:?}")),
            }
        }
        acked_total += lines.len();
        // Reopen and check every acknowledged write.
        let node = Node::open(&path).map_err(|e| format!("reopen after kill {round}: {e}"))?;
        match node.store().integrity_check().map_err(|e| e.to_string())? {
            Ok(()) => {}
            Err(answer) => return Err(format!("integrity_check after kill {round}: {answer}")),
        }
        for (id, value) in &expected_items {
            let record = node.get("items", id).map_err(|e| e.to_string())?;
            match (value, record) {
                (Some(i), Some(record)) if record.fields.get("i") == Some(&Value::Int(*i)) => {}
                (None, None) => {}
                // The delete that follows every seventh put may have committed after the kill
                // cut off its ack: that write was in flight, not acknowledged.
                (Some(i), None) if i % 7 == 0 && !lines.iter().any(|l| l == &format!("delete {id}")) => {}
                (expected, found) => {
                    return Err(format!("after kill {round}: {id} expected {expected:?}, found {found:?}"))
                }
            }
        }
        // Writes can land after their ack was lost, never before: the counter may be ahead by
        // at most the two in-flight increments, never behind.
        let total = node.get("counters", "total").map_err(|e| e.to_string())?.map(|r| r.fields["n"].clone());
        let total = match total {
            Some(Value::Int(n)) => n,
            None => 0,
            other => return Err(format!("counter is {other:?}")),
        };
        if total < expected_total || total > expected_total + 2 {
            return Err(format!("after kill {round}: counter {total}, acknowledged {expected_total}"));
        }
        expected_total = total;
        node.close();
    }
    if acked_total < KILLS * 10 {
        return Err(format!(
            "only {acked_total} acknowledged writes over {KILLS} kills: the test did not exercise much"
        ));
    }
    println!("{KILLS} kills, {acked_total} acknowledged writes, all present");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--child" {
        child(&args[2], args[3].parse().expect("round number"));
        return;
    }
    // `cargo test -- --list` and filters: this file holds one test.
    if args.iter().any(|a| a == "--list") {
        println!("kill9_acknowledged_writes_survive: test");
        return;
    }
    println!("\nrunning 1 test");
    match parent() {
        Ok(()) => {
            println!("test kill9_acknowledged_writes_survive ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n");
        }
        Err(why) => {
            println!("test kill9_acknowledged_writes_survive ... FAILED\n\n{why}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n");
            std::process::exit(101);
        }
    }
}
