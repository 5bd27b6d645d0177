//! Times `apply_remote` of N fresh five-field records in 10,000-change batches: the initial-sync
//! apply path, small enough to run under a profiler.
//! `cargo run --release -p meshsync-store --example apply_profile -- 100000`

use std::time::Instant;

use meshsync_core::{CellWrite, Change, Ctx, DeviceId, Dot, Hlc, Policy, Value};
use meshsync_store::{RemoteBatch, Store, StoreOptions};

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let origin = DeviceId([3; 16]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let changes: Vec<Change> = (1..=n)
        .map(|seq| {
            let cell = |field: &str, value: Value| CellWrite {
                field: field.into(),
                policy: Policy::Lww,
                value,
                ctx: Ctx::new(),
            };
            Change {
                collection: "items".into(),
                record: format!("{:016x}", seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                hlc: Hlc::new(now - 1000, seq as u16),
                dot: Dot { origin, seq },
                delete: false,
                cells: vec![
                    cell("name", Value::from("Green tea")),
                    cell("category", Value::from("drinks")),
                    cell("qty", Value::Int(seq as i64 % 100)),
                    cell("price", Value::Float(2.5)),
                    cell("active", Value::Bool(true)),
                ],
            }
        })
        .collect();
    let dir = match std::env::var("PROFILE_DIR") {
        Ok(d) => tempfile::tempdir_in(d).unwrap(),
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let store = Store::open(dir.path().join("p.db"), DeviceId([1; 16]), StoreOptions::default()).unwrap();
    let started = Instant::now();
    for chunk in changes.chunks(10_000) {
        store.apply_remote(RemoteBatch::in_order(chunk.to_vec())).unwrap();
    }
    let elapsed = started.elapsed();
    println!("{n} changes applied in {:.3} s: {:.0}/s", elapsed.as_secs_f64(), n as f64 / elapsed.as_secs_f64());
}
