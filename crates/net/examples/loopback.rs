//! Measures the transport over loopback: bulk throughput in 1 MiB frames, small-frame throughput
//! with and without batching, round-trip latency of small frames, and handshake time.
//! Run with `cargo run --release -p meshsync-net --example loopback`. Not a test: figures only.

use std::time::{Duration, Instant};

use meshsync_net::{Connection, Endpoint, Identity, Listener};

const TIMEOUT: Duration = Duration::from_secs(10);

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(run());
}

async fn pair(server: &Endpoint, listener: &mut Listener, client: &Endpoint) -> (Connection, Connection) {
    let address = listener.local_addr().expect("a bound listener");
    let (dialed, accepted) = tokio::join!(client.dial(address, Some(server.device_id()), TIMEOUT), listener.accept());
    (dialed.expect("dial"), accepted.expect("accept"))
}

async fn run() {
    let server = Endpoint::new(Identity::generate().expect("identity")).expect("endpoint");
    let client = Endpoint::new(Identity::generate().expect("identity")).expect("endpoint");
    let mut listener = server.bind("127.0.0.1:0").await.expect("bind");

    // Handshakes: TCP + TLS 1.3 (Ed25519, X25519) + WebSocket upgrade, both sides.
    let rounds = 200;
    let started = Instant::now();
    for _ in 0..rounds {
        let (a, b) = pair(&server, &mut listener, &client).await;
        drop((a, b));
    }
    let per = started.elapsed() / rounds;
    println!("handshake (dial + accept, sequential): {:.2} ms each", per.as_secs_f64() * 1e3);

    bulk(&server, &mut listener, &client, 1 << 20, 2048).await;
    bulk(&server, &mut listener, &client, 64 << 10, 16384).await;
    small(&server, &mut listener, &client, 100, 200_000, false).await;
    small(&server, &mut listener, &client, 100, 200_000, true).await;
    latency(&server, &mut listener, &client, 64, 20_000).await;
}

/// One direction, `count` frames of `size` bytes, measured at the receiver.
async fn bulk(server: &Endpoint, listener: &mut Listener, client: &Endpoint, size: usize, count: usize) {
    let (dialed, accepted) = pair(server, listener, client).await;
    let (mut tx, _rx_keep) = dialed.split();
    let (_tx_keep, mut rx) = accepted.split();
    let payload = vec![0xa5u8; size];
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for _ in 0..count {
            tx.send(payload.clone()).await.expect("send");
        }
        tx
    });
    let mut bytes = 0usize;
    for _ in 0..count {
        bytes += rx.recv().await.expect("recv").expect("a frame").len();
    }
    let elapsed = started.elapsed();
    let _tx = sender.await.expect("sender");
    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "bulk {} KiB frames: {count} frames, {mib:.0} MiB in {:.2} s = {:.0} MiB/s",
        size >> 10,
        elapsed.as_secs_f64(),
        mib / elapsed.as_secs_f64()
    );
}

/// Many small frames one way: each flushed (`send`), or queued and flushed every 256 (`feed`).
async fn small(
    server: &Endpoint,
    listener: &mut Listener,
    client: &Endpoint,
    size: usize,
    count: usize,
    batched: bool,
) {
    let (dialed, accepted) = pair(server, listener, client).await;
    let (mut tx, _rx_keep) = dialed.split();
    let (_tx_keep, mut rx) = accepted.split();
    let started = Instant::now();
    let sender = tokio::spawn(async move {
        for i in 0..count {
            let frame = vec![(i % 256) as u8; size];
            if batched {
                tx.feed(frame).await.expect("feed");
                if i % 256 == 255 {
                    tx.flush().await.expect("flush");
                }
            } else {
                tx.send(frame).await.expect("send");
            }
        }
        tx.flush().await.expect("flush");
        tx
    });
    for _ in 0..count {
        rx.recv().await.expect("recv").expect("a frame");
    }
    let elapsed = started.elapsed();
    let _tx = sender.await.expect("sender");
    println!(
        "small {size} B frames ({}): {count} frames in {:.2} s = {:.0} frames/s",
        if batched { "feed, flush every 256" } else { "send, flushed each" },
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}

/// Ping-pong: the client sends a small frame, the server echoes it, the client waits for it.
async fn latency(server: &Endpoint, listener: &mut Listener, client: &Endpoint, size: usize, rounds: usize) {
    let (mut dialed, mut accepted) = pair(server, listener, client).await;
    let echo = tokio::spawn(async move {
        while let Ok(Some(frame)) = accepted.recv().await {
            if accepted.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        dialed.send(vec![7u8; size]).await.expect("send");
        dialed.recv().await.expect("recv").expect("the echo");
        samples.push(started.elapsed());
    }
    dialed.close().await.expect("close");
    let _ = echo.await;
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "round trip {size} B frames: {rounds} rounds, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
