//! What we measure meshsync against, on the same rows:
//! - raw SQLite: an upsert of every row in one transaction with one prepared statement; the
//!   physical limit of the storage meshsync sits on. Once with the settings the issue names
//!   (WAL, `synchronous=NORMAL`, SQLite's default 2 MiB page cache) and once with a 16 MiB page
//!   cache and `temp_store=MEMORY`, as the store's connections had when this was written.
//! - yrs: N records as maps in one top-level map, one transaction; then the full state encoded
//!   as a v1 update and applied to an empty document.
//! - automerge: N records as maps under the root, committed every 1,000 records; then the sync
//!   protocol run to an empty document, every message encoded and decoded as on a wire.
//!
//! Record generation stays outside every timer.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::data::{self, COLLECTION, FIELDS};
use crate::protocol::Emitter;

type Error = Box<dyn std::error::Error>;

/// Rows generated per step (outside the timer) before they are inserted (inside it).
const GENERATE_ROWS: u64 = 10_000;
/// automerge records per commit.
const AUTOMERGE_COMMIT_RECORDS: u64 = 1_000;
/// Most sync round trips before automerge is declared stuck.
const AUTOMERGE_ROUNDS_MAX: usize = 100_000;

/// Raw rusqlite bulk upsert. `store_pragmas` adds a 16 MiB page cache and an in-memory temp store.
pub fn sqlite(n: u64, work: &Path, store_pragmas: bool, out: &Emitter) -> Result<(), Error> {
    let dir = tempfile::tempdir_in(work)?;
    let mut conn = rusqlite::Connection::open(dir.path().join("raw.db"))?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if mode != "wal" {
        return Err(format!("WAL refused: {mode}").into());
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL")?;
    if store_pragmas {
        conn.execute_batch("PRAGMA cache_size=-16384; PRAGMA temp_store=MEMORY;")?;
    }
    conn.execute_batch(&format!(
        "CREATE TABLE {COLLECTION} (id TEXT PRIMARY KEY, name TEXT, category TEXT, qty INTEGER, price REAL, active INTEGER)"
    ))?;
    let mut elapsed = Duration::ZERO;
    let start = Instant::now();
    let tx = conn.transaction()?;
    elapsed += start.elapsed();
    {
        let mut stmt = tx.prepare(&format!(
            "INSERT INTO {COLLECTION} (id, name, category, qty, price, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, category = excluded.category, qty = excluded.qty,
             price = excluded.price, active = excluded.active"
        ))?;
        for range in data::chunks(n, GENERATE_ROWS) {
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
    out.timing("insert", n, elapsed);
    let found: i64 = conn.query_row(&format!("SELECT count(*) FROM {COLLECTION}"), [], |r| r.get(0))?;
    if found as u64 != n {
        return Err(format!("expected {n} rows, found {found}").into());
    }
    Ok(())
}

/// yrs: insert, encode the full state, apply it to an empty document.
pub fn yrs(n: u64, out: &Emitter) -> Result<(), Error> {
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Doc, In, Map, MapPrelim, ReadTxn, StateVector, Transact, Update};

    let doc = Doc::new();
    let map = doc.get_or_insert_map(COLLECTION);
    let mut elapsed = Duration::ZERO;
    {
        let mut txn = doc.transact_mut();
        for range in data::chunks(n, GENERATE_ROWS) {
            let rows = data::rows(range);
            let start = Instant::now();
            for row in rows {
                let fields: [(&str, In); 5] = [
                    (FIELDS[0], Any::from(row.name).into()),
                    (FIELDS[1], Any::from(row.category).into()),
                    (FIELDS[2], Any::from(row.qty).into()),
                    (FIELDS[3], Any::from(row.price).into()),
                    (FIELDS[4], Any::from(row.active).into()),
                ];
                map.insert(&mut txn, row.id, MapPrelim::from(fields));
            }
            elapsed += start.elapsed();
        }
        let start = Instant::now();
        txn.commit();
        drop(txn);
        elapsed += start.elapsed();
    }
    out.timing("insert", n, elapsed);

    let start = Instant::now();
    let update = doc.transact().encode_state_as_update_v1(&StateVector::default());
    let encode = start.elapsed();
    out.timing("encode", n, encode);
    out.size("update_bytes", update.len() as u64);

    let start = Instant::now();
    let replica = Doc::new();
    let replica_map = replica.get_or_insert_map(COLLECTION);
    {
        let mut txn = replica.transact_mut();
        txn.apply_update(Update::decode_v1(&update)?)?;
    }
    let apply = start.elapsed();
    out.timing("apply", n, apply);
    out.timing("encode_apply", n, encode + apply);

    let found = replica_map.len(&replica.transact());
    if u64::from(found) != n {
        return Err(format!("the replica holds {found} of {n} records").into());
    }
    // Dropping millions of items takes seconds and measures nothing: the process ends anyway.
    std::mem::forget((doc, replica, update));
    Ok(())
}

/// automerge: insert, then the sync protocol to an empty document.
pub fn automerge(n: u64, out: &Emitter) -> Result<(), Error> {
    use automerge::sync::{Message, State, SyncDoc};
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ReadDoc, ROOT};

    let mut doc = AutoCommit::new();
    let mut elapsed = Duration::ZERO;
    for range in data::chunks(n, GENERATE_ROWS) {
        let rows = data::rows(range.clone());
        let start = Instant::now();
        for (index, row) in range.zip(rows) {
            let object = doc.put_object(ROOT, row.id.as_str(), ObjType::Map)?;
            doc.put(&object, FIELDS[0], row.name)?;
            doc.put(&object, FIELDS[1], row.category)?;
            doc.put(&object, FIELDS[2], row.qty)?;
            doc.put(&object, FIELDS[3], row.price)?;
            doc.put(&object, FIELDS[4], row.active)?;
            if (index + 1) % AUTOMERGE_COMMIT_RECORDS == 0 {
                doc.commit();
            }
        }
        elapsed += start.elapsed();
    }
    let start = Instant::now();
    doc.commit();
    elapsed += start.elapsed();
    out.timing("insert", n, elapsed);

    let start = Instant::now();
    let mut replica = AutoCommit::new();
    let (mut doc_state, mut replica_state) = (State::new(), State::new());
    let mut bytes = 0u64;
    let mut rounds = 0usize;
    loop {
        let mut quiet = true;
        if let Some(message) = doc.sync().generate_sync_message(&mut doc_state) {
            let wire = message.encode();
            bytes += wire.len() as u64;
            replica.sync().receive_sync_message(&mut replica_state, Message::decode(&wire)?)?;
            quiet = false;
        }
        if let Some(message) = replica.sync().generate_sync_message(&mut replica_state) {
            let wire = message.encode();
            bytes += wire.len() as u64;
            doc.sync().receive_sync_message(&mut doc_state, Message::decode(&wire)?)?;
            quiet = false;
        }
        if quiet {
            break;
        }
        rounds += 1;
        if rounds > AUTOMERGE_ROUNDS_MAX {
            return Err(format!("automerge sync did not settle in {AUTOMERGE_ROUNDS_MAX} rounds").into());
        }
    }
    out.timing("sync", n, start.elapsed());
    out.size("sync_bytes", bytes);
    eprintln!("    automerge sync took {rounds} round trips");

    let found = replica.length(ROOT) as u64;
    if found != n {
        return Err(format!("the replica holds {found} of {n} records").into());
    }
    std::mem::forget((doc, replica));
    Ok(())
}
