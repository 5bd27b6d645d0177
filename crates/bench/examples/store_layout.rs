//! Where `Store::apply_remote`'s time goes, measured on SQLite alone. This replays the
//! statements the store's writer runs for an initial sync (per change: one lookup of the record,
//! one upsert of its packed state, one `changes` row; per batch: `BEGIN IMMEDIATE`, a savepoint,
//! the vector and clock rows, `COMMIT`) with the record states the core really encodes, then
//! changes one thing at a time: the batch sorted by key, a larger page cache, no lookup, a
//! smaller state, records stored in lsn order. No meshsync code runs inside the timers, so the
//! gap between the first variant and `Store::apply_remote` is the Rust side's cost. The first
//! variant mirrors the store at commit 136ce75 (schema 1, a 16 MiB page cache); BENCHMARKS.md
//! has the figures.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-bench cargo run --release -p meshsync-bench --example store_layout -- 1000000
//! ```

use std::time::{Duration, Instant};

use meshsync_core::{CellWrite, Change, Ctx, DeviceId, Dot, Hlc, Policy, RecordState, Value};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[path = "../src/data.rs"]
#[allow(dead_code)]
mod data;

const ORIGIN: DeviceId = DeviceId([0x11; 16]);

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// The store's schema today: `records` WITHOUT ROWID keyed by (coll, key), a unique lsn index.
    Store,
    /// `records` keyed by lsn (appends in commit order), a unique (coll, key) index beside it.
    LsnRowid,
}

#[derive(Clone, Copy, PartialEq)]
enum Blob {
    /// `RecordState::encode` of the record after its one change.
    Real,
    /// The same content with the change's stamp (hlc, origin, seq) stored once per record
    /// instead of once per field: a sketch of a tighter encoding, postcard-encoded here.
    SharedStamp,
}

#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    layout: Layout,
    cache_kib: i64,
    sorted: bool,
    lookup: bool,
    blob: Blob,
    batch: usize,
}

const BASE: Variant = Variant {
    name: "as the store did it at 136ce75 (16 MiB cache, arrival order, lookup, real state, 10k batches)",
    layout: Layout::Store,
    cache_kib: 16_384,
    sorted: false,
    lookup: true,
    blob: Blob::Real,
    batch: 10_000,
};

fn variants() -> Vec<Variant> {
    vec![
        BASE,
        Variant { name: "+ each batch sorted by key", sorted: true, ..BASE },
        Variant { name: "+ 256 MiB page cache", cache_kib: 262_144, ..BASE },
        Variant { name: "+ sorted + 256 MiB page cache", sorted: true, cache_kib: 262_144, ..BASE },
        Variant { name: "+ 100k-change batches", batch: 100_000, ..BASE },
        Variant { name: "+ no lookup before the upsert", lookup: false, ..BASE },
        Variant { name: "+ shared-stamp state encoding", blob: Blob::SharedStamp, ..BASE },
        Variant { name: "+ records keyed by lsn, (coll, key) index", layout: Layout::LsnRowid, ..BASE },
        Variant {
            name: "+ records keyed by lsn + 100k-change batches",
            layout: Layout::LsnRowid,
            batch: 100_000,
            ..BASE
        },
        Variant {
            name: "all: lsn-keyed, shared stamp, sorted, no lookup, 64 MiB cache, 100k batches",
            layout: Layout::LsnRowid,
            blob: Blob::SharedStamp,
            sorted: true,
            lookup: false,
            cache_kib: 65_536,
            batch: 100_000,
        },
        Variant {
            name: "all: lsn-keyed, shared stamp, sorted, no lookup, 64 MiB cache",
            layout: Layout::LsnRowid,
            blob: Blob::SharedStamp,
            sorted: true,
            lookup: false,
            cache_kib: 65_536,
            ..BASE
        },
    ]
}

#[derive(Serialize)]
struct SharedStampField<'a> {
    name: &'a str,
    policy: Policy,
    value: &'a Value,
    ctx: Vec<(u32, u64)>,
}

#[derive(Serialize)]
struct SharedStampRecord<'a> {
    origins: Vec<DeviceId>,
    tombstone: Option<(u64, u32, u64)>,
    stamp: (u64, u32, u64),
    fields: Vec<SharedStampField<'a>>,
}

/// The state row of record `index` as the given encoding lays it out.
fn state(index: u64, seq: u64, blob: Blob) -> (String, Vec<u8>) {
    let row = data::row(index);
    let hlc = Hlc::new(1_790_000_000_000 + index / 16, (index % 16) as u16);
    let values = row.values();
    match blob {
        Blob::Real => {
            let change = Change {
                collection: data::COLLECTION.into(),
                record: row.id.clone(),
                hlc,
                dot: Dot { origin: ORIGIN, seq },
                delete: false,
                cells: values
                    .into_iter()
                    .map(|(field, value)| CellWrite { field, policy: Policy::Lww, value, ctx: Ctx::new() })
                    .collect(),
            };
            let mut state = RecordState::new();
            state.apply(&change);
            (row.id, state.encode())
        }
        Blob::SharedStamp => {
            let record = SharedStampRecord {
                origins: vec![ORIGIN],
                tombstone: None,
                stamp: (hlc.as_u64(), 0, seq),
                fields: values
                    .iter()
                    .map(|(name, value)| SharedStampField { name, policy: Policy::Lww, value, ctx: Vec::new() })
                    .collect(),
            };
            (row.id, postcard::to_stdvec(&record).expect("encoding to a Vec cannot fail"))
        }
    }
}

fn schema(layout: Layout) -> &'static str {
    match layout {
        Layout::Store => {
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE records (coll INTEGER NOT NULL, key TEXT NOT NULL, lsn INTEGER NOT NULL, scope TEXT,
                 deleted INTEGER NOT NULL, conflicts INTEGER NOT NULL, state BLOB NOT NULL,
                 PRIMARY KEY (coll, key)) WITHOUT ROWID;
             CREATE UNIQUE INDEX records_by_lsn ON records (lsn);
             CREATE TABLE changes (origin INTEGER NOT NULL, seq INTEGER NOT NULL, coll INTEGER NOT NULL,
                 key TEXT NOT NULL, PRIMARY KEY (origin, seq)) WITHOUT ROWID;
             CREATE TABLE vv (origin INTEGER PRIMARY KEY, seq INTEGER NOT NULL);"
        }
        Layout::LsnRowid => {
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE records (lsn INTEGER PRIMARY KEY, coll INTEGER NOT NULL, key TEXT NOT NULL, scope TEXT,
                 deleted INTEGER NOT NULL, conflicts INTEGER NOT NULL, state BLOB NOT NULL);
             CREATE UNIQUE INDEX records_by_key ON records (coll, key);
             CREATE TABLE changes (origin INTEGER NOT NULL, seq INTEGER NOT NULL, coll INTEGER NOT NULL,
                 key TEXT NOT NULL, PRIMARY KEY (origin, seq)) WITHOUT ROWID;
             CREATE TABLE vv (origin INTEGER PRIMARY KEY, seq INTEGER NOT NULL);"
        }
    }
}

fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| io.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Runs one variant over `n` records; returns (time, bytes written, database bytes).
fn run(variant: &Variant, n: u64) -> rusqlite::Result<(Duration, u64, u64)> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("layout.db");
    let conn = Connection::open(&path)?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous=NORMAL; PRAGMA cache_size=-{}; PRAGMA temp_store=MEMORY;",
        variant.cache_kib
    ))?;
    conn.execute_batch(schema(variant.layout))?;
    let written_before = bytes_written();
    let mut elapsed = Duration::ZERO;
    let mut lsn = 0i64;
    let mut next = 0u64;
    while next < n {
        let end = (next + variant.batch as u64).min(n);
        let mut batch: Vec<(u64, String, Vec<u8>)> =
            (next..end).map(|i| (i + 1, state(i, i + 1, variant.blob))).map(|(s, (k, b))| (s, k, b)).collect();
        next = end;
        let start = Instant::now();
        if variant.sorted {
            batch.sort_by(|a, b| a.1.cmp(&b.1));
        }
        conn.execute_batch("BEGIN IMMEDIATE; SAVEPOINT request;")?;
        for (seq, key, state) in &batch {
            if variant.lookup {
                let found: Option<(i64, i64, Vec<u8>)> = conn
                    .prepare_cached("SELECT lsn, conflicts, state FROM records WHERE coll = ?1 AND key = ?2")?
                    .query_row(params![1i64, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                assert!(found.is_none(), "an initial sync finds no record");
            }
            lsn += 1;
            conn.prepare_cached(
                "INSERT INTO records (coll, key, lsn, scope, deleted, conflicts, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(coll, key) DO UPDATE SET lsn = excluded.lsn, scope = excluded.scope,
                 deleted = excluded.deleted, conflicts = excluded.conflicts, state = excluded.state",
            )?
            .execute(params![1i64, key, lsn, None::<String>, false, 0i64, state])?;
            conn.prepare_cached("INSERT OR REPLACE INTO changes (origin, seq, coll, key) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![1i64, *seq as i64, 1i64, key])?;
        }
        conn.execute_batch("RELEASE request")?;
        conn.prepare_cached(
            "INSERT INTO vv (origin, seq) VALUES (?1, ?2) ON CONFLICT(origin) DO UPDATE SET seq = excluded.seq",
        )?
        .execute(params![1i64, end as i64])?;
        conn.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('hlc', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        )?
        .execute([lsn])?;
        conn.execute_batch("COMMIT")?;
        elapsed += start.elapsed();
    }
    let written = bytes_written() - written_before;
    let count: i64 = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    assert_eq!(count as u64, n);
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((elapsed, written, (pages * page_size) as u64))
}

fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.replace('_', "").parse().ok()).unwrap_or(100_000);
    let only: Option<usize> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    let real = state(0, 1, Blob::Real).1.len();
    let shared = state(0, 1, Blob::SharedStamp).1.len();
    println!("{n} records; state of record 0: {real} B as encoded today, {shared} B with a shared stamp\n");
    println!("| variant | time | records/s | written | B/record written | database |");
    println!("|---|---|---|---|---|---|");
    for (i, variant) in variants().iter().enumerate() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        eprintln!("running: {}", variant.name);
        let (elapsed, written, db) = run(variant, n).expect("sqlite");
        let secs = elapsed.as_secs_f64();
        println!(
            "| {} | {:.2} s | {:.0}k | {:.0} MiB | {:.0} | {:.0} MiB |",
            variant.name,
            secs,
            n as f64 / secs / 1e3,
            written as f64 / 1048576.0,
            written as f64 / n as f64,
            db as f64 / 1048576.0
        );
    }
}
