//! Scenario 1: initial sync of N records between two processes over loopback mutual TLS.
//!
//! - `__source`: opens a node in a fresh dir, loads N records with `write_batch` of 1,000, resets
//!   its peak RSS, starts the mesh on 127.0.0.1:0 and prints an invite code; serves until stdin
//!   closes.
//! - `__sink`: opens an empty node, joins with the code, starts the mesh and reports the time from
//!   `start_mesh` until the progress events say every change arrived (each `Progress` event is
//!   published after its batch is durable), confirmed by `record_count() == N` and a spot check.
//! - `__sqlite`: the raw-SQLite bound: N rows in one transaction (rusqlite, WAL,
//!   `synchronous=NORMAL`), rows generated outside the timer.

use std::time::{Duration, Instant};

use meshsync_node::mesh::{MeshOptions, PeerEvent};
use meshsync_node::{Event, Node, NodeOptions};
use serde_json::json;

use crate::child::{emit, wait_for_eof};
use crate::data::{self, COLLECTION};
use crate::{arg, procfs, runtime, Error};

/// Records per `write_batch` at the source.
pub const LOAD_BATCH: u64 = 1_000;

pub fn mesh_options(listen: &str, peers: Vec<String>) -> MeshOptions {
    MeshOptions { listen: listen.parse().expect("address"), peers, ..MeshOptions::default() }
}

/// Loads records `range` into `node` in batches of [`LOAD_BATCH`].
pub fn load(node: &Node, range: std::ops::Range<u64>) -> Result<(), Error> {
    for chunk in data::chunks(range.end - range.start, LOAD_BATCH) {
        let writes = data::rows(range.start + chunk.start..range.start + chunk.end).iter().map(|r| r.write()).collect();
        node.store().write_batch(writes)?;
    }
    Ok(())
}

pub fn source(args: &[String]) -> Result<(), Error> {
    let n: u64 = arg(args, "--n")?.parse()?;
    let dir = std::path::PathBuf::from(arg(args, "--dir")?);
    let node = Node::open_with(&dir, NodeOptions { name: "source".into(), ..NodeOptions::default() })?;
    let started = Instant::now();
    let mut last = Instant::now();
    for chunk in data::chunks(n, 100_000) {
        load(&node, chunk.clone())?;
        if last.elapsed() > Duration::from_secs(2) {
            eprintln!("      source: loaded {} of {n}", chunk.end);
            last = Instant::now();
        }
    }
    let load_s = started.elapsed().as_secs_f64();
    let load_hwm = procfs::hwm_kib(procfs::me()).unwrap_or(0);
    let reset = procfs::reset_hwm();
    let rt = runtime()?;
    rt.block_on(async {
        let mesh = node.start_mesh(mesh_options("127.0.0.1:0", Vec::new())).await?;
        let (code, _) = mesh.invite(3600);
        emit(json!({
            "event": "ready", "code": code, "addr": mesh.listen_addr().to_string(), "load_s": load_s,
            "load_hwm_kib": load_hwm, "hwm_reset": reset,
        }));
        tokio::task::spawn_blocking(wait_for_eof).await?;
        Ok::<_, Error>(())
    })?;
    node.close();
    Ok(())
}

pub fn sink(args: &[String]) -> Result<(), Error> {
    let n: u64 = arg(args, "--n")?.parse()?;
    let dir = std::path::PathBuf::from(arg(args, "--dir")?);
    let code = arg(args, "--code")?;
    let node = Node::open_with(&dir, NodeOptions { name: "sink".into(), ..NodeOptions::default() })?;
    node.join(&code)?;
    let rt = runtime()?;
    let cpu0 = procfs::cpu_s(procfs::me()).unwrap_or(0.0);
    let result = rt.block_on(async {
        let mut events = node.subscribe();
        let t0 = Instant::now();
        let _mesh = node.start_mesh(mesh_options("127.0.0.1:0", Vec::new())).await?;
        let (mut connect_s, mut first_batch_s, mut caught_up_s) = (None, None, None);
        let mut received = 0u64;
        let mut batches = 0u64;
        let mut lagged = 0u64;
        let mut report = Instant::now();
        let done_s = loop {
            let event = tokio::select! {
                event = events.recv() => event,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    eprintln!("      sink: {received} of {n} after {:.1} s", t0.elapsed().as_secs_f64());
                    report = Instant::now();
                    continue;
                }
            };
            match event {
                Ok(Event::Peer(PeerEvent::Connected { .. })) => {
                    connect_s.get_or_insert(t0.elapsed().as_secs_f64());
                }
                Ok(Event::Peer(PeerEvent::Progress { received: r, caught_up, .. })) => {
                    batches += 1;
                    first_batch_s.get_or_insert(t0.elapsed().as_secs_f64());
                    received = received.max(r);
                    if caught_up {
                        caught_up_s.get_or_insert(t0.elapsed().as_secs_f64());
                    }
                    if received >= n {
                        break t0.elapsed().as_secs_f64();
                    }
                }
                Ok(Event::Peer(PeerEvent::Disconnected { reason, .. })) => {
                    eprintln!("      sink: disconnected after {:.2} s: {reason}", t0.elapsed().as_secs_f64());
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => lagged += k,
                Err(e) => return Err(Error::from(e.to_string())),
            }
            if report.elapsed() > Duration::from_secs(1) {
                eprintln!("      sink: {received} of {n} after {:.1} s", t0.elapsed().as_secs_f64());
                report = Instant::now();
            }
        };
        // Confirm from the database itself (outside the timer unless the count is short).
        let mut count = node.store().record_count()?;
        while count < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
            count = node.store().record_count()?;
        }
        let counted_s = t0.elapsed().as_secs_f64();
        Ok::<_, Error>((done_s, counted_s, connect_s, first_batch_s, caught_up_s, batches, lagged, count))
    })?;
    let (done_s, counted_s, connect_s, first_batch_s, caught_up_s, batches, lagged, count) = result;
    let cpu_s = procfs::cpu_s(procfs::me()).unwrap_or(0.0) - cpu0;
    // Spot check: a few records hold exactly what the source wrote.
    for index in [0, n / 2, n - 1] {
        let row = data::row(index);
        let record = node.get(COLLECTION, &row.id)?.ok_or_else(|| format!("record {} missing", row.id))?;
        let qty = record.fields.get("qty").and_then(|v| v.as_f64()).unwrap_or(-1.0);
        if qty as i64 != row.qty {
            return Err(format!("record {}: qty {qty}, expected {}", row.id, row.qty).into());
        }
    }
    emit(json!({
        "event": "done", "sync_s": done_s, "counted_s": counted_s, "connect_s": connect_s,
        "first_batch_s": first_batch_s, "caught_up_s": caught_up_s, "progress_events": batches,
        "lagged_events": lagged, "records": count, "hwm_kib": procfs::hwm_kib(procfs::me()), "cpu_s": cpu_s,
    }));
    wait_for_eof();
    node.close();
    Ok(())
}

pub fn sqlite(args: &[String]) -> Result<(), Error> {
    let n: u64 = arg(args, "--n")?.parse()?;
    let dir = std::path::PathBuf::from(arg(args, "--dir")?);
    std::fs::create_dir_all(&dir)?;
    let mut conn = rusqlite::Connection::open(dir.join("raw.db"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(format!("WAL refused: {mode}").into());
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    conn.execute_batch(&format!(
        "CREATE TABLE {COLLECTION} (id TEXT PRIMARY KEY, name TEXT, category TEXT, qty INTEGER, price REAL, active INTEGER)"
    ))?;
    let mut elapsed = Duration::ZERO;
    let start = Instant::now();
    let tx = conn.transaction()?;
    elapsed += start.elapsed();
    {
        let mut stmt = tx.prepare(&format!(
            "INSERT INTO {COLLECTION} (id, name, category, qty, price, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ))?;
        for range in data::chunks(n, 10_000) {
            let rows = data::rows(range);
            let start = Instant::now();
            for row in &rows {
                stmt.execute(rusqlite::params![row.id, row.name, row.category, row.qty, row.price, row.active])?;
            }
            elapsed += start.elapsed();
        }
    }
    let start = Instant::now();
    tx.commit()?;
    elapsed += start.elapsed();
    let found: i64 = conn.query_row(&format!("SELECT count(*) FROM {COLLECTION}"), [], |r| r.get(0))?;
    if found as u64 != n {
        return Err(format!("expected {n} rows, found {found}").into());
    }
    emit(json!({"event": "done", "sqlite_s": elapsed.as_secs_f64(), "hwm_kib": procfs::hwm_kib(procfs::me())}));
    Ok(())
}
