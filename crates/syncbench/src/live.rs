//! Scenarios 2 and 3, each in its own process with all its nodes in it (one tokio runtime):
//!
//! - `__latency --mode hop`: A and B joined by invite; `--mode line`: five nodes A-B-C-D-E.
//!   One write at a time at A (`Node::put`, which returns once durable), spaced ~2 ms; the time
//!   from `put` returning to the `RecordChanged` event at every other node.
//! - `__catchup`: A and B connected; B pauses; A writes N changes; B resumes; the time until B
//!   has applied them all. Once with N new records, once with N updates of existing ones.
//!
//! Forcing a line: the mesh has peer exchange (pex) and it cannot be turned off, so a node told
//! of its neighbour's neighbours would dial them. Here each link goes through a one-shot TCP
//! forwarder: node k's only static peer is a forwarder to node k-1 that accepts one connection
//! and then closes its listener, so the address pex hands on is dead. The nodes listen on
//! 127.0.0.11 to 127.0.0.15 and the forwarders dial from 127.0.0.2, so the "inbound" addresses
//! peers learn (source ip + listen port) are dead too. No node is invited: the group file is
//! copied into each data dir. The forwarder costs one extra user-space copy per hop; the
//! one-hop scenario (direct) against the line's first hop (forwarded) shows how much.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshsync_node::group::Group;
use meshsync_node::mesh::PeerEvent;
use meshsync_node::{Event, Node, NodeOptions, StoreEvent};
use meshsync_store::LocalWrite;
use serde_json::json;

use crate::child::emit;
use crate::data::{self, COLLECTION};
use crate::initial::{load, mesh_options};
use crate::{arg, arg_or, procfs, runtime, Error};

const WARMUP: usize = 50;
const SPACING: Duration = Duration::from_millis(2);

fn open(base: &std::path::Path, name: &str) -> Result<Node, Error> {
    Ok(Node::open_with(base.join(name), NodeOptions { name: name.into(), ..NodeOptions::default() })?)
}

async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return Err(format!("timed out after {} s waiting for {what}", limit.as_secs()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A and B joined by invite (B dials A directly), connected.
async fn pair(base: &std::path::Path) -> Result<(Node, Node), Error> {
    let a = open(base, "a")?;
    let mesh_a = a.start_mesh(mesh_options("127.0.0.1:0", Vec::new())).await?;
    let b = open(base, "b")?;
    b.join(&mesh_a.invite(3600).0)?;
    let mesh_b = b.start_mesh(mesh_options("127.0.0.1:0", Vec::new())).await?;
    wait_until(Duration::from_secs(20), "A and B to connect", || mesh_a.connected() == 1 && mesh_b.connected() == 1)
        .await?;
    Ok((a, b))
}

/// Accepts one connection on 127.0.0.1 and forwards it to `target` from 127.0.0.2; then the
/// listener is closed.
async fn one_shot_forwarder(target: SocketAddr) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let Ok((mut inbound, _)) = listener.accept().await else { return };
        drop(listener);
        let socket = match tokio::net::TcpSocket::new_v4() {
            Ok(s) => s,
            Err(_) => return,
        };
        if socket.bind("127.0.0.2:0".parse().expect("address")).is_err() {
            return;
        }
        let Ok(mut outbound) = socket.connect(target).await else { return };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
    });
    Ok(addr)
}

/// Five nodes in a line, each linked only to its neighbours.
async fn line(base: &std::path::Path, len: usize) -> Result<Vec<Node>, Error> {
    let mut nodes: Vec<Node> = Vec::new();
    for k in 0..len {
        let node = open(base, &format!("n{k}"))?;
        let mut peers = Vec::new();
        if let Some(previous) = nodes.last() {
            Group::load(previous.data_dir())?.ok_or("no group")?.save(node.data_dir())?;
            let target = previous.mesh().expect("started").listen_addr();
            peers.push(one_shot_forwarder(target).await?.to_string());
        }
        node.start_mesh(mesh_options(&format!("127.0.0.{}:0", 11 + k), peers)).await?;
        if k > 0 {
            let (a, b) = (nodes[k - 1].clone(), node.clone());
            let a_links = if k == 1 { 1 } else { 2 };
            wait_until(Duration::from_secs(20), "a line link", || {
                a.mesh().is_some_and(|m| m.connected() == a_links) && b.mesh().is_some_and(|m| m.connected() == 1)
            })
            .await?;
        }
        nodes.push(node);
    }
    Ok(nodes)
}

fn degrees(nodes: &[Node]) -> Vec<usize> {
    nodes.iter().map(|n| n.mesh().map(|m| m.connected()).unwrap_or(0)).collect()
}

type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_arrivals(node: &Node) -> Arrivals {
    let arrivals: Arrivals = Arc::default();
    let mut events = node.subscribe();
    let sink = arrivals.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Store(StoreEvent::RecordChanged { id, local: false, .. })) => {
                    let now = Instant::now();
                    sink.lock().expect("lock").entry(id).or_insert(now);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(k)) => eprintln!("      lagged {k} events"),
                Err(_) => return,
            }
        }
    });
    arrivals
}

/// Percentiles of `values` (µs): p50, p99, max.
pub fn percentiles(values: &mut [f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    (at(0.50), at(0.99), values[values.len() - 1])
}

/// Writes at `nodes[0]`, one at a time; returns per write (id, put called, put returned).
async fn write_series(writer: Node, writes: usize) -> Result<Vec<(String, Instant, Instant)>, Error> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(writes + WARMUP);
        for i in 0..writes + WARMUP {
            let row = data::row(10_000_000_000 + i as u64);
            let called = Instant::now();
            writer.put(COLLECTION, &row.id, row.json())?;
            out.push((row.id, called, Instant::now()));
            std::thread::sleep(SPACING);
        }
        Ok::<_, Error>(out)
    })
    .await?
}

pub fn latency(args: &[String]) -> Result<(), Error> {
    let mode = arg(args, "--mode")?;
    let writes: usize = arg_or(args, "--writes", "1000").parse()?;
    let base = tempfile::Builder::new().prefix("syncbench-latency-").tempdir()?;
    let rt = runtime()?;
    rt.block_on(async {
        let nodes = match mode.as_str() {
            "hop" => {
                let (a, b) = pair(base.path()).await?;
                vec![a, b]
            }
            "line" => line(base.path(), 5).await?,
            other => return Err(Error::from(format!("unknown mode {other}"))),
        };
        let expected: Vec<usize> =
            (0..nodes.len()).map(|k| if k == 0 || k == nodes.len() - 1 { 1 } else { 2 }).collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = degrees(&nodes);
        if before != expected {
            return Err(format!("topology is not a line: links per node {before:?}, expected {expected:?}").into());
        }
        let arrivals: Vec<Arrivals> = nodes[1..].iter().map(watch_arrivals).collect();
        eprintln!("      {mode}: {writes} writes at A spaced {} ms (+{WARMUP} warm-up)", SPACING.as_millis());
        let series = write_series(nodes[0].clone(), writes).await?;
        let total = series.len();
        let _ = wait_until(Duration::from_secs(10), "every write to arrive", || {
            arrivals.iter().all(|a| a.lock().expect("lock").len() >= total)
        })
        .await;
        let after = degrees(&nodes);
        let measured = &series[WARMUP..];
        let mut put_us: Vec<f64> = measured.iter().map(|(_, c, r)| (*r - *c).as_secs_f64() * 1e6).collect();
        let (put_p50, put_p99, _) = percentiles(&mut put_us);
        let mut hops = Vec::new();
        let mut previous: Option<HashMap<String, Instant>> = None;
        for (k, arrivals) in arrivals.iter().enumerate() {
            let seen = arrivals.lock().expect("lock").clone();
            let mut from_put: Vec<f64> = Vec::new();
            let mut hop: Vec<f64> = Vec::new();
            let mut early = 0;
            for (id, _, returned) in measured {
                let Some(at) = seen.get(id) else { continue };
                if *at < *returned {
                    early += 1;
                }
                from_put.push(at.saturating_duration_since(*returned).as_secs_f64() * 1e6);
                let from = previous.as_ref().and_then(|p| p.get(id)).copied().unwrap_or(*returned);
                hop.push(at.saturating_duration_since(from).as_secs_f64() * 1e6);
            }
            let missing = measured.len() - from_put.len();
            let (p50, p99, max) = percentiles(&mut from_put);
            let (hop_p50, hop_p99, hop_max) = percentiles(&mut hop);
            hops.push(json!({
                "node": k + 1, "hops": k + 1, "p50_us": p50, "p99_us": p99, "max_us": max,
                "hop_p50_us": hop_p50, "hop_p99_us": hop_p99, "hop_max_us": hop_max,
                "missing": missing, "arrived_before_put_returned": early,
            }));
            previous = Some(seen);
        }
        emit(json!({
            "event": "done", "mode": mode, "writes": measured.len(), "put_p50_us": put_p50, "put_p99_us": put_p99,
            "links_before": before, "links_after": after, "receivers": hops,
        }));
        for node in &nodes {
            let node = node.clone();
            tokio::task::spawn_blocking(move || node.close()).await?;
        }
        Ok::<_, Error>(())
    })
}

/// Follows B's progress events: the highest `received` count on its link.
fn watch_received(node: &Node) -> Arc<AtomicU64> {
    let received = Arc::new(AtomicU64::new(0));
    let sink = received.clone();
    let mut events = node.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Peer(PeerEvent::Progress { received, .. })) => {
                    sink.fetch_max(received, Ordering::SeqCst);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    received
}

pub fn catchup(args: &[String]) -> Result<(), Error> {
    let n: u64 = arg_or(args, "--n", "100000").parse()?;
    let base = tempfile::Builder::new().prefix("syncbench-catchup-").tempdir()?;
    let rt = runtime()?;
    rt.block_on(async {
        let (a, b) = pair(base.path()).await?;
        let mesh_b = b.mesh().expect("started").clone();
        let received = watch_received(&b);
        let mut results = Vec::new();
        for phase in ["insert", "update"] {
            let base_count = received.load(Ordering::SeqCst);
            mesh_b.set_paused(true);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let writer = a.clone();
            let write_started = Instant::now();
            tokio::task::spawn_blocking(move || -> Result<(), Error> {
                if phase == "insert" {
                    load(&writer, 0..n)
                } else {
                    for chunk in data::chunks(n, 1_000) {
                        let writes: Vec<LocalWrite> = data::rows(chunk)
                            .into_iter()
                            .map(|r| LocalWrite {
                                collection: COLLECTION.into(),
                                id: r.id,
                                op: meshsync_core::Op::Put {
                                    fields: vec![("qty".into(), meshsync_core::Value::Int(r.qty + 1))],
                                    scope: None,
                                },
                            })
                            .collect();
                        writer.store().write_batch(writes)?;
                    }
                    Ok(())
                }
            })
            .await??;
            let write_s = write_started.elapsed().as_secs_f64();
            // Let A push what the window allows while B is paused.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let cpu0 = procfs::cpu_s(procfs::me()).unwrap_or(0.0);
            let t0 = Instant::now();
            mesh_b.set_paused(false);
            let mut last = Instant::now();
            while received.load(Ordering::SeqCst) < base_count + n {
                if t0.elapsed() > Duration::from_secs(120) {
                    return Err(Error::from(format!(
                        "{phase}: B has {} of {n} changes 120 s after resuming",
                        received.load(Ordering::SeqCst) - base_count
                    )));
                }
                if last.elapsed() > Duration::from_secs(1) {
                    eprintln!("      catch-up {phase}: {} of {n}", received.load(Ordering::SeqCst) - base_count);
                    last = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let catchup_s = t0.elapsed().as_secs_f64();
            let cpu_s = procfs::cpu_s(procfs::me()).unwrap_or(0.0) - cpu0;
            let count = b.store().record_count()?;
            let probe = data::row(n / 3);
            let qty = b
                .get(COLLECTION, &probe.id)?
                .and_then(|r| r.fields.get("qty").and_then(|v| v.as_f64()))
                .unwrap_or(-1.0) as i64;
            let want_qty = if phase == "insert" { probe.qty } else { probe.qty + 1 };
            if count != n || qty != want_qty {
                return Err(
                    format!("{phase}: B holds {count} records (want {n}), probe qty {qty} (want {want_qty})").into()
                );
            }
            eprintln!("      catch-up {phase}: {n} changes in {catchup_s:.3} s");
            results.push(json!({
                "phase": phase, "n": n, "write_s": write_s, "catchup_s": catchup_s,
                "cpu_s": cpu_s,
            }));
        }
        emit(json!({"event": "done", "phases": results}));
        for node in [a, b] {
            tokio::task::spawn_blocking(move || node.close()).await?;
        }
        Ok::<_, Error>(())
    })
}
