//! The meshsync jobs, each run in its own child process:
//! - `write_single`: one `Store::write` (one transaction) per record, up to [`SINGLE_WRITES_MAX`].
//! - `write_batch`: `Store::write_batch` of [`WRITE_BATCH_RECORDS`] records; leaves the store
//!   behind as the source replica of the next two jobs.
//! - `export`: times a bare `changes_since` scan of the source over an empty vector, then scans
//!   again writing the changes as postcard-encoded batches of [`APPLY_BATCH_CHANGES`] to a file
//!   (what a sender would put on the wire).
//! - `apply`: reads that file into a fresh, empty replica with `Store::apply_remote`
//!   (`RemoteBatch::in_order`), timing decode and apply apart. This is initial-sync apply. It
//!   runs three times: in calls of 10,000 changes (the headline), of 4,096 (small wire batches,
//!   the sync session's first default) and of 100,000 (the most one remote batch may carry),
//!   because the batch size sets how much each commit rewrites.
//!
//! Record generation, file reads and closing the store stay outside every timer.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use meshsync_core::{Change, DeviceId, Op, Value, VersionVector};
use meshsync_store::{LocalWrite, RemoteBatch, ScopeFilter, Store, StoreOptions};

use crate::data::{self, COLLECTION};
use crate::protocol::Emitter;

/// Most records the single-write job writes (one transaction each).
pub const SINGLE_WRITES_MAX: u64 = 100_000;
/// Records per `write_batch` call.
pub const WRITE_BATCH_RECORDS: u64 = 1_000;
/// Changes per `apply_remote` call in the headline job, and per exported frame.
pub const APPLY_BATCH_CHANGES: usize = 10_000;
/// Changes per `apply_remote` call in the large-batch job: the store's own limit.
pub const APPLY_BATCH_CHANGES_LARGE: usize = meshsync_store::REMOTE_BATCH_CHANGES_MAX;
/// Changes per `apply_remote` call in the small-batch job: small wire batches (the sync
/// session's first default `batch_changes_max`).
pub const APPLY_BATCH_CHANGES_SESSION: usize = 4096;
/// The source replica's device.
const SOURCE: DeviceId = DeviceId([0x11; 16]);
/// The receiving replica's device.
const TARGET: DeviceId = DeviceId([0x22; 16]);
/// File name of the source replica inside the size's work dir.
const SOURCE_DB: &str = "source.db";
/// File name of the exported changes inside the size's work dir.
const CHANGES_FILE: &str = "changes.bin";
/// Largest exported frame accepted back (a batch of 10,000 changes is about 1 MB).
const FRAME_BYTES_MAX: usize = 256 << 20;

type Error = Box<dyn std::error::Error>;

fn local_write(row: &data::Row) -> LocalWrite {
    LocalWrite { collection: COLLECTION.into(), id: row.id.clone(), op: Op::Put { fields: row.values(), scope: None } }
}

fn check_count(store: &Store, n: u64) -> Result<(), Error> {
    let found = store.record_count()?;
    if found != n {
        return Err(format!("expected {n} records, the store holds {found}").into());
    }
    Ok(())
}

/// One write per transaction, `min(n, SINGLE_WRITES_MAX)` of them.
pub fn write_single(n: u64, work: &Path, out: &Emitter) -> Result<(), Error> {
    let n = n.min(SINGLE_WRITES_MAX);
    let dir = tempfile::tempdir_in(work)?;
    let store = Store::open(dir.path().join("single.db"), SOURCE, StoreOptions::default())?;
    let mut elapsed = Duration::ZERO;
    for range in data::chunks(n, WRITE_BATCH_RECORDS) {
        let writes: Vec<LocalWrite> = data::rows(range).iter().map(local_write).collect();
        let start = Instant::now();
        for write in writes {
            store.write(write)?;
        }
        elapsed += start.elapsed();
    }
    out.timing("write_single", n, elapsed);
    check_count(&store, n)?;
    store.close();
    Ok(())
}

/// All `n` records in batches; the store stays as the source replica.
pub fn write_batch(n: u64, work: &Path, out: &Emitter) -> Result<(), Error> {
    let path = work.join(SOURCE_DB);
    if path.exists() {
        return Err(format!("{} exists already; each size needs a fresh work dir", path.display()).into());
    }
    let store = Store::open(&path, SOURCE, StoreOptions::default())?;
    let mut elapsed = Duration::ZERO;
    for range in data::chunks(n, WRITE_BATCH_RECORDS) {
        let writes: Vec<LocalWrite> = data::rows(range).iter().map(local_write).collect();
        let start = Instant::now();
        store.write_batch(writes)?;
        elapsed += start.elapsed();
    }
    out.timing("write_batch", n, elapsed);
    check_count(&store, n)?;
    store.close();
    Ok(())
}

/// Times a bare scan, then exports the changes to a file in apply-sized, length-prefixed frames.
pub fn export(n: u64, work: &Path, out: &Emitter) -> Result<(), Error> {
    let store = Store::open(work.join(SOURCE_DB), SOURCE, StoreOptions::default())?;

    let start = Instant::now();
    let mut count = 0u64;
    for change in store.changes_since(&VersionVector::new(), ScopeFilter::All)? {
        std::hint::black_box(change?);
        count += 1;
    }
    out.timing("scan", count, start.elapsed());
    if count != n {
        return Err(format!("the scan returned {count} changes for {n} records").into());
    }

    let mut file = BufWriter::new(File::create(work.join(CHANGES_FILE))?);
    let mut encode = Duration::ZERO;
    let mut bytes = 0u64;
    let start = Instant::now();
    let mut batch = Vec::with_capacity(APPLY_BATCH_CHANGES);
    let mut scan = store.changes_since(&VersionVector::new(), ScopeFilter::All)?;
    loop {
        let next = scan.next().transpose()?;
        let end = next.is_none();
        batch.extend(next);
        if batch.len() == APPLY_BATCH_CHANGES || (end && !batch.is_empty()) {
            let encode_start = Instant::now();
            let frame = postcard::to_stdvec(&batch)?;
            encode += encode_start.elapsed();
            file.write_all(&(frame.len() as u32).to_le_bytes())?;
            file.write_all(&frame)?;
            bytes += frame.len() as u64;
            batch.clear();
        }
        if end {
            break;
        }
    }
    file.flush()?;
    out.timing("export", count, start.elapsed());
    out.timing("encode", count, encode);
    out.size("export_bytes", bytes);
    store.close();
    Ok(())
}

fn read_frame(file: &mut impl Read) -> Result<Option<Vec<u8>>, Error> {
    let mut len = [0u8; 4];
    match file.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(format!("frame of {len} bytes exceeds {FRAME_BYTES_MAX}").into());
    }
    let mut frame = vec![0u8; len];
    file.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Applies the exported changes to a fresh replica in calls of `batch_changes`, then checks it
/// holds what the source wrote.
pub fn apply(n: u64, work: &Path, batch_changes: usize, out: &Emitter) -> Result<(), Error> {
    let mut file = BufReader::new(File::open(work.join(CHANGES_FILE))?);
    let dir = tempfile::tempdir_in(work)?;
    let store = Store::open(dir.path().join("target.db"), TARGET, StoreOptions::default())?;
    let mut decode = Duration::ZERO;
    let mut apply = Duration::ZERO;
    let mut count = 0u64;
    let mut pending: std::collections::VecDeque<Change> = std::collections::VecDeque::new();
    let mut end = false;
    loop {
        // Decode whole frames until a batch is full (or the file ends); frames hold 10,000.
        while !end && pending.len() < batch_changes {
            match read_frame(&mut file)? {
                Some(frame) => {
                    let start = Instant::now();
                    pending.extend(postcard::from_bytes::<Vec<Change>>(&frame)?);
                    decode += start.elapsed();
                }
                None => end = true,
            }
        }
        if pending.is_empty() {
            break;
        }
        let changes: Vec<Change> = pending.drain(..batch_changes.min(pending.len())).collect();
        count += changes.len() as u64;
        let start = Instant::now();
        let outcome = store.apply_remote(RemoteBatch::in_order(changes))?;
        apply += start.elapsed();
        if outcome.redundant != 0 {
            return Err(format!("{} changes were redundant on an empty replica", outcome.redundant).into());
        }
    }
    out.timing("decode", count, decode);
    out.timing("apply", count, apply);
    check_count(&store, n)?;
    let reached = store.version_vector()?.get(&SOURCE);
    if reached != n {
        return Err(format!("the version vector reached {reached} of the source's {n} writes").into());
    }
    for index in (0..n).step_by((n / 100).max(1) as usize) {
        let row = data::row(index);
        let doc = store.get(COLLECTION, &row.id)?.ok_or_else(|| format!("record {} missing", row.id))?;
        let expected: std::collections::BTreeMap<String, Value> = row.values().into_iter().collect();
        if doc.fields != expected {
            return Err(format!("record {} differs: {:?} != {:?}", row.id, doc.fields, expected).into());
        }
    }
    store.close();
    Ok(())
}
