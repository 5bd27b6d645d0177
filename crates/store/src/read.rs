//! Reads on a pool of read-only connections, beside the writer (WAL readers never block it):
//! records, lists, conflicts, change scans for sync, and event replay.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use meshsync_core::{conflict_id, Change, DeviceId, Dot, RecordState, Value, VersionVector};
use rusqlite::{params, Connection, OptionalExtension};

use crate::writer::doc;
use crate::{
    open_connection, ConflictDoc, ConflictSide, Durability, ListPage, RecordDoc, ScopeFilter, Store, StoreError,
    StoreEvent, LIST_LIMIT_MAX, SCHEMAS_COLLECTION,
};

/// A row of a change scan: seq, collection, record id, scope, record state.
type ChangeRow = (i64, String, String, Option<String>, Vec<u8>);

/// Rows fetched per step of a filtered list or a change scan.
const SCAN_PAGE_ROWS: usize = 512;

pub(crate) struct Readers {
    path: PathBuf,
    durability: Durability,
    idle: Mutex<Vec<Connection>>,
    keep: usize,
}

impl Readers {
    pub(crate) fn new(path: &Path, durability: Durability, keep: usize) -> Result<Readers, StoreError> {
        Ok(Readers { path: path.to_path_buf(), durability, idle: Mutex::new(Vec::new()), keep })
    }

    fn with<T>(&self, body: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.idle.lock().expect("lock poisoned").pop();
        let conn = match conn {
            Some(conn) => conn,
            None => open_connection(&self.path, self.durability, true)?,
        };
        let result = body(&conn);
        let mut idle = self.idle.lock().expect("lock poisoned");
        if idle.len() < self.keep {
            idle.push(conn);
        }
        result
    }
}

fn device_from(bytes: &[u8]) -> Option<DeviceId> {
    <[u8; 16]>::try_from(bytes).ok().map(DeviceId)
}

fn encode_cursor(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(cursor: &str) -> Result<String, StoreError> {
    if !cursor.len().is_multiple_of(2) || cursor.len() > 2 * meshsync_core::name::RECORD_ID_BYTES_MAX {
        return Err(StoreError::BadCursor);
    }
    let bytes = (0..cursor.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(cursor.get(i..i + 2).ok_or(StoreError::BadCursor)?, 16)
                .map_err(|_| StoreError::BadCursor)
        })
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map_err(|_| StoreError::BadCursor)
}

impl Store {
    pub(crate) fn readers_with<T>(
        &self,
        body: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.readers.with(body)
    }

    /// Reads a record as the application sees it. Returns deleted records too (`deleted: true`).
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<RecordDoc>, StoreError> {
        self.readers.with(|conn| {
            let row: Option<(i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT r.lsn, r.state FROM records r JOIN collections c ON c.idx = r.coll WHERE c.name = ?1 AND r.key = ?2",
                )?
                .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((lsn, bytes)) => Ok(Some(doc(collection, id, &RecordState::decode(&bytes)?, lsn as u64))),
                None => Ok(None),
            }
        })
    }

    /// A record's whole state (every field version this node keeps, and its tombstone) with its
    /// local change number, deleted records included; for showing where values came from.
    pub fn record_state(&self, collection: &str, id: &str) -> Result<Option<(RecordState, u64)>, StoreError> {
        self.readers.with(|conn| {
            let row: Option<(i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT r.lsn, r.state FROM records r JOIN collections c ON c.idx = r.coll WHERE c.name = ?1 AND r.key = ?2",
                )?
                .query_row(params![collection, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match row {
                Some((lsn, bytes)) => Ok(Some((RecordState::decode(&bytes)?, lsn as u64))),
                None => Ok(None),
            }
        })
    }

    /// Lists live records of a collection in id order, keeping those whose fields equal every
    /// `filters` entry. `cursor` continues a previous page.
    pub fn list(
        &self,
        collection: &str,
        filters: &[(String, Value)],
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let limit = limit.clamp(1, LIST_LIMIT_MAX);
        let mut after = match cursor {
            Some(c) => Some(decode_cursor(c)?),
            None => None,
        };
        self.readers.with(|conn| {
            let coll: Option<i64> =
                conn.prepare_cached("SELECT idx FROM collections WHERE name = ?1")?.query_row([collection], |r| r.get(0)).optional()?;
            let Some(coll) = coll else { return Ok(ListPage { records: Vec::new(), next: None }) };
            let mut records = Vec::new();
            let page_rows = if filters.is_empty() { limit + 1 } else { SCAN_PAGE_ROWS };
            let mut stmt = conn.prepare_cached(
                "SELECT key, lsn, state FROM records WHERE coll = ?1 AND deleted = 0 AND key > ?2 ORDER BY key LIMIT ?3",
            )?;
            loop {
                let rows: Vec<(String, i64, Vec<u8>)> = stmt
                    .query_map(params![coll, after.as_deref().unwrap_or(""), page_rows as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<Result<_, _>>()?;
                let exhausted = rows.len() < page_rows;
                for (key, lsn, bytes) in rows {
                    if records.len() == limit {
                        // One more row exists beyond the page: there is a next page.
                        return Ok(ListPage { next: records.last().map(|r: &RecordDoc| encode_cursor(&r.id)), records });
                    }
                    let state = RecordState::decode(&bytes)?;
                    let record = doc(collection, &key, &state, lsn as u64);
                    after = Some(key);
                    if filters.iter().all(|(field, value)| record.fields.get(field) == Some(value)) {
                        records.push(record);
                    }
                }
                if exhausted {
                    return Ok(ListPage { records, next: None });
                }
            }
        })
    }

    /// Unresolved conflicts, oldest first.
    pub fn conflicts(&self, limit: usize) -> Result<Vec<ConflictDoc>, StoreError> {
        self.conflicts_where("1 = 1", params![limit.clamp(1, LIST_LIMIT_MAX) as i64])
    }

    /// One conflict by id.
    pub fn conflict(&self, id: &str) -> Result<Option<ConflictDoc>, StoreError> {
        Ok(self.conflicts_where("f.id = ?2", params![1i64, id])?.pop())
    }

    fn conflicts_where(&self, condition: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<ConflictDoc>, StoreError> {
        self.readers.with(|conn| {
            let sql = format!(
                "SELECT f.id, c.name, f.key, f.field, f.detected_ms, r.state FROM conflicts f
                 JOIN collections c ON c.idx = f.coll JOIN records r ON r.coll = f.coll AND r.key = f.key
                 WHERE {condition} ORDER BY f.detected_ms, f.id LIMIT ?1"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows: Vec<(String, String, String, String, i64, Vec<u8>)> = stmt
                .query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::new();
            for (id, collection, record, field, detected_ms, bytes) in rows {
                let state = RecordState::decode(&bytes)?;
                let found = state
                    .conflicts()
                    .into_iter()
                    .find(|c| c.field == field && conflict_id(&collection, &record, &field, &c.lost.dot) == id);
                if let Some(c) = found {
                    let side = |v: &meshsync_core::Version| ConflictSide {
                        value: v.value.clone(),
                        device: v.dot.origin,
                        at: v.hlc,
                    };
                    out.push(ConflictDoc {
                        id,
                        kept: side(&c.kept),
                        lost: side(&c.lost),
                        collection,
                        record,
                        field,
                        detected_ms: detected_ms as u64,
                    });
                }
            }
            Ok(out)
        })
    }

    /// Number of unresolved conflicts.
    pub fn conflict_count(&self) -> Result<u64, StoreError> {
        self.readers
            .with(|conn| Ok(conn.query_row("SELECT count(*) FROM conflicts", [], |r| r.get::<_, i64>(0))? as u64))
    }

    /// Number of live application records (system collections excluded).
    pub fn record_count(&self) -> Result<u64, StoreError> {
        self.readers.with(|conn| {
            let n: i64 = conn.query_row(
                "SELECT count(*) FROM records WHERE deleted = 0 AND coll NOT IN (SELECT idx FROM collections WHERE name LIKE '\\_%' ESCAPE '\\')",
                [],
                |r| r.get(0),
            )?;
            Ok(n as u64)
        })
    }

    /// Application collections that hold at least one record.
    pub fn collections(&self) -> Result<Vec<String>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name FROM collections c WHERE name NOT LIKE '\\_%' ESCAPE '\\' AND EXISTS (SELECT 1 FROM records r WHERE r.coll = c.idx) ORDER BY name",
            )?;
            let names = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Ok(names)
        })
    }

    /// Record changes committed after `lsn`, oldest first: the latest state of every record that
    /// changed since, so a subscriber that resumes from its last cursor misses nothing.
    pub fn events_since(&self, lsn: u64, limit: usize) -> Result<Vec<StoreEvent>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.lsn, c.name, r.key, r.deleted, r.state FROM records r JOIN collections c ON c.idx = r.coll
                 WHERE r.lsn > ?1 ORDER BY r.lsn LIMIT ?2",
            )?;
            let rows: Vec<(i64, String, String, bool, Vec<u8>)> = stmt
                .query_map(params![lsn as i64, limit.clamp(1, 10_000) as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (lsn, collection, id, deleted, bytes) in rows {
                let state = RecordState::decode(&bytes)?;
                let newest = state
                    .dots()
                    .into_iter()
                    .filter_map(|d| state.change_for(&collection, &id, d))
                    .max_by_key(|c| (c.hlc, c.dot));
                let origin = newest.map(|c| c.dot.origin).unwrap_or(self.device());
                out.push(StoreEvent::RecordChanged {
                    lsn: lsn as u64,
                    local: origin == self.device(),
                    collection,
                    id,
                    origin,
                    deleted,
                });
            }
            Ok(out)
        })
    }

    /// The highest local change number committed.
    pub fn last_lsn(&self) -> Result<u64, StoreError> {
        self.readers.with(|conn| {
            Ok(conn.query_row("SELECT coalesce(max(lsn), 0) FROM records", [], |r| r.get::<_, i64>(0))? as u64)
        })
    }

    /// Every change held above `since`, within `filter`, streamed in (origin, seq) order.
    pub fn changes_since(&self, since: &VersionVector, filter: ScopeFilter) -> Result<ChangeScan, StoreError> {
        let origins = self.readers.with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT idx, id FROM devices ORDER BY id")?;
            let rows: Vec<(i64, Vec<u8>)> =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(idx, bytes)| device_from(&bytes).map(|d| (idx, d, since.get(&d))))
                .collect::<Vec<_>>())
        })?;
        Ok(ChangeScan {
            readers: self.readers.clone(),
            origins,
            filter,
            buffer: Vec::new(),
            page_rows: SCAN_PAGE_ROWS,
            skipped_out_of_scope: 0,
        })
    }

    /// One page of a sync stream: the changes above `cursor` (at most `limit` of them, about
    /// `bytes_max` bytes), in (origin, seq) order, read in one snapshot. The returned cursor is
    /// where the next page starts; for every origin it passed entirely, it is this store's own
    /// vector entry, so the receiver may raise its vector that far (what lies between was
    /// superseded by changes it gets from other origins).
    pub fn changes_page(
        &self,
        cursor: &VersionVector,
        filter: &ScopeFilter,
        limit: usize,
        bytes_max: usize,
    ) -> Result<ChangePage, StoreError> {
        let limit = limit.max(1);
        self.readers.with(|conn| {
            let tx = conn.unchecked_transaction()?;
            let mut vector = VersionVector::new();
            let mut origins = Vec::new();
            {
                let mut stmt = tx.prepare_cached(
                    "SELECT d.idx, d.id, v.seq FROM vv v JOIN devices d ON d.idx = v.origin ORDER BY d.id",
                )?;
                let rows: Vec<(i64, Vec<u8>, i64)> =
                    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
                for (idx, bytes, seq) in rows {
                    if let Some(device) = device_from(&bytes) {
                        vector.observe(Dot { origin: device, seq: seq as u64 });
                        origins.push((idx, device, seq as u64));
                    }
                }
            }
            let mut next = cursor.clone();
            let mut changes = Vec::new();
            let mut bytes = 0usize;
            let mut skipped = 0u64;
            let mut stmt = tx.prepare_cached(
                "SELECT x.seq, c.name, x.key, r.scope, r.state FROM changes x
                 JOIN records r ON r.coll = x.coll AND r.key = x.key JOIN collections c ON c.idx = x.coll
                 WHERE x.origin = ?1 AND x.seq > ?2 ORDER BY x.seq LIMIT ?3",
            )?;
            'origins: for (idx, origin, top) in origins {
                let mut from = cursor.get(&origin);
                while from < top {
                    let want = (limit - changes.len()).min(SCAN_PAGE_ROWS);
                    let rows: Vec<ChangeRow> = stmt
                        .query_map(params![idx, from as i64, want as i64], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })?
                        .collect::<Result<_, _>>()?;
                    let short = rows.len() < want;
                    for (seq, collection, key, scope, state) in rows {
                        from = seq as u64;
                        if !filter.allows(scope.as_deref()) {
                            skipped += 1;
                            continue;
                        }
                        let state = RecordState::decode(&state)?;
                        if let Some(change) = state.change_for(&collection, &key, Dot { origin, seq: seq as u64 }) {
                            bytes +=
                                64 + change.cells.iter().map(|c| c.field.len() + c.value.json_len()).sum::<usize>();
                            changes.push(change);
                        }
                    }
                    if short {
                        // Nothing left from this origin up to our vector entry.
                        from = top;
                    }
                    next.observe(Dot { origin, seq: from });
                    if changes.len() >= limit || bytes >= bytes_max {
                        break 'origins;
                    }
                }
                next.observe(Dot { origin, seq: top.max(cursor.get(&origin)) });
            }
            drop(stmt);
            tx.finish()?;
            let remaining = next.lag_behind(&vector);
            Ok(ChangePage {
                changes,
                cursor: next,
                exhausted: remaining == 0,
                remaining,
                vector,
                skipped_out_of_scope: skipped,
            })
        })
    }

    /// Runs `PRAGMA integrity_check`; `Ok(())` when SQLite answers "ok".
    pub fn integrity_check(&self) -> Result<Result<(), String>, StoreError> {
        self.readers.with(|conn| {
            let answer: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok(if answer == "ok" { Ok(()) } else { Err(answer) })
        })
    }

    /// The canonical state: every record's encoded state keyed by (collection, id). Replicas that
    /// received the same changes return equal maps. For tests and audits; reads everything.
    pub fn canonical_state(&self) -> Result<Vec<(String, String, Vec<u8>)>, StoreError> {
        self.readers.with(|conn| {
            let mut stmt = conn.prepare("SELECT c.name, r.key, r.state FROM records r JOIN collections c ON c.idx = r.coll ORDER BY c.name, r.key")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?.collect::<Result<_, _>>()?;
            Ok(rows)
        })
    }

    /// Materializes every live record of every collection, except `_schemas`. For tests.
    pub fn dump(&self) -> Result<HashMap<(String, String), RecordDoc>, StoreError> {
        let mut out = HashMap::new();
        for (collection, id, bytes) in self.canonical_state()? {
            let state = RecordState::decode(&bytes)?;
            if collection == SCHEMAS_COLLECTION || state.is_deleted() {
                continue;
            }
            out.insert((collection.clone(), id.clone()), doc(&collection, &id, &state, 0));
        }
        Ok(out)
    }
}

/// One page of a sync stream; see [`Store::changes_page`].
#[derive(Clone, Debug, Default)]
pub struct ChangePage {
    /// The changes, in (origin, seq) order.
    pub changes: Vec<Change>,
    /// Where the next page starts; the receiver may raise its vector to it once these are applied.
    pub cursor: VersionVector,
    /// Whether nothing remains above `cursor`.
    pub exhausted: bool,
    /// Upper bound of the changes still to come (sequence numbers between cursor and vector).
    pub remaining: u64,
    /// This store's version vector at the snapshot.
    pub vector: VersionVector,
    /// Changes withheld because their record is outside the filter.
    pub skipped_out_of_scope: u64,
}

/// A streaming scan of changes above a version vector. Each page is one short read, so a long
/// scan never holds a read transaction open (and never blocks WAL checkpoints).
pub struct ChangeScan {
    readers: Arc<Readers>,
    /// (device index, device, seq reached so far), in device order.
    origins: Vec<(i64, DeviceId, u64)>,
    filter: ScopeFilter,
    buffer: Vec<Change>,
    page_rows: usize,
    skipped_out_of_scope: u64,
}

impl ChangeScan {
    /// Sets how many rows one page reads.
    pub fn with_page_rows(mut self, rows: usize) -> ChangeScan {
        self.page_rows = rows.max(1);
        self
    }

    /// Changes withheld because their record is outside the filter's scopes.
    pub fn skipped_out_of_scope(&self) -> u64 {
        self.skipped_out_of_scope
    }

    /// The next page of changes, or an empty vector at the end.
    pub fn next_page(&mut self) -> Result<Vec<Change>, StoreError> {
        while let Some(&(idx, origin, from)) = self.origins.first() {
            let page_rows = self.page_rows;
            let rows: Vec<ChangeRow> = self.readers.with(|conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT x.seq, c.name, x.key, r.scope, r.state FROM changes x
                     JOIN records r ON r.coll = x.coll AND r.key = x.key JOIN collections c ON c.idx = x.coll
                     WHERE x.origin = ?1 AND x.seq > ?2 ORDER BY x.seq LIMIT ?3",
                )?;
                let rows = stmt
                    .query_map(params![idx, from as i64, page_rows as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<Result<_, _>>()?;
                Ok(rows)
            })?;
            if rows.len() < page_rows {
                self.origins.remove(0);
            }
            let mut out = Vec::with_capacity(rows.len());
            for (seq, collection, key, scope, bytes) in rows {
                if let Some(position) = self.origins.first_mut().filter(|o| o.0 == idx) {
                    position.2 = seq as u64;
                }
                if !self.filter.allows(scope.as_deref()) {
                    self.skipped_out_of_scope += 1;
                    continue;
                }
                let state = RecordState::decode(&bytes)?;
                if let Some(change) = state.change_for(&collection, &key, Dot { origin, seq: seq as u64 }) {
                    out.push(change);
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        Ok(std::mem::take(&mut self.buffer))
    }
}

impl Iterator for ChangeScan {
    type Item = Result<Change, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() {
            match self.next_page() {
                Ok(mut page) => {
                    page.reverse();
                    self.buffer = page;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        self.buffer.pop().map(Ok)
    }
}
