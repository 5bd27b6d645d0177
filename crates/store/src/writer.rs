//! The writer thread: owns the write connection, the clock, this device's sequence counter, the
//! version vector and the interning caches. Requests queue here and commit together: one
//! transaction, one WAL append (and one fsync with `Durability::Power`) for many writes, and
//! nobody hears "ok" before the commit returns. Audit entries are appended here too, so they are
//! ordered and durable like everything else, and the chain's head is cached with the counters.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc;

use meshsync_core::name::{check_collection_or_system, check_field, check_record_id};
use meshsync_core::record::SCOPE_FIELD;
use meshsync_core::value::VALUE_BYTES_MAX;
use meshsync_core::{
    conflict_id, Change, Clock, DeviceId, Dot, Hlc, Op, RecordState, Schema, ValueError, VersionVector,
};
use rusqlite::{params, Connection, OptionalExtension};

use crate::audit::{self, ChainHead, NewEntry};
use crate::{
    schema_from_value, ApplyOutcome, EventSink, LocalWrite, RecordDoc, RemoteBatch, StoreError, StoreEvent,
    StoreOptions, WallClock, WriteOutcome, GROUP_COMMIT_REQUESTS_MAX, REMOTE_BATCH_CHANGES_MAX, SCHEMAS_COLLECTION,
    SCHEMA_FIELD,
};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(crate) enum WriteReply {
    One(Reply<WriteOutcome>),
    Many(Reply<Vec<WriteOutcome>>),
}

/// What the writer is asked to do. An `Audit` entry comes after `dropped` fire-and-forget entries
/// were lost to a full queue (it reports them first); without a reply nobody waits for it.
pub(crate) enum Request {
    Write { writes: Vec<LocalWrite>, reply: WriteReply },
    Remote { batch: RemoteBatch, reply: Reply<ApplyOutcome> },
    VersionVector { reply: Reply<VersionVector> },
    SavePeer { device: DeviceId, doc: Option<String>, reply: Reply<()> },
    Audit { entry: NewEntry, dropped: u64, reply: Option<Reply<u64>> },
}

/// A finished request waiting for the commit before its caller hears back.
enum Done {
    Writes(WriteReply, Vec<WriteOutcome>),
    Remote(Reply<ApplyOutcome>, ApplyOutcome),
    Peer(Reply<()>),
    Audit(Reply<u64>, u64),
}

/// In-memory state that a failed request must roll back along with its savepoint.
#[derive(Clone)]
struct Counters {
    clock: Clock,
    seq: u64,
    lsn: u64,
    vv: VersionVector,
    audit: ChainHead,
}

pub(crate) struct Writer {
    conn: Connection,
    me: DeviceId,
    counters: Counters,
    vv_dirty: BTreeSet<DeviceId>,
    devices: HashMap<DeviceId, i64>,
    collections: HashMap<String, i64>,
    schemas: HashMap<String, Schema>,
    sink: EventSink,
    wall: WallClock,
    /// Audit entries were appended in this transaction: prune and record the chain's ends.
    audit_dirty: bool,
    audit_entries_max: usize,
}

struct Row {
    lsn: u64,
    state: RecordState,
    conflicts: usize,
    exists: bool,
}

impl Writer {
    pub(crate) fn load(
        conn: Connection,
        me: DeviceId,
        options: &StoreOptions,
        sink: EventSink,
    ) -> Result<Writer, StoreError> {
        let stored: Option<Vec<u8>> =
            conn.query_row("SELECT value FROM meta WHERE key = 'device'", [], |r| r.get(0)).optional()?;
        match stored {
            Some(bytes) if bytes != me.0 => {
                let found = <[u8; 16]>::try_from(bytes.as_slice()).map(|b| DeviceId(b).to_string()).unwrap_or_default();
                return Err(StoreError::WrongDevice { found, expected: me.to_string() });
            }
            Some(_) => {}
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('device', ?1)", [&me.0[..]])?;
            }
        }
        let mut devices = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT idx, id FROM devices")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let bytes: Vec<u8> = row.get(1)?;
                if let Ok(id) = <[u8; 16]>::try_from(bytes.as_slice()) {
                    devices.insert(DeviceId(id), row.get::<_, i64>(0)?);
                }
            }
        }
        let mut collections = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT idx, name FROM collections")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                collections.insert(row.get::<_, String>(1)?, row.get::<_, i64>(0)?);
            }
        }
        let by_index: HashMap<i64, DeviceId> = devices.iter().map(|(d, i)| (*i, *d)).collect();
        let mut vv = VersionVector::new();
        {
            let mut stmt = conn.prepare("SELECT origin, seq FROM vv")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                if let Some(origin) = by_index.get(&row.get::<_, i64>(0)?) {
                    vv.observe(Dot { origin: *origin, seq: row.get::<_, i64>(1)? as u64 });
                }
            }
        }
        let hlc: Option<i64> =
            conn.query_row("SELECT value FROM meta WHERE key = 'hlc'", [], |r| r.get(0)).optional()?;
        let mut clock = Clock::new(options.clock_drift_ms_max);
        clock.restore(Hlc::from_u64(hlc.unwrap_or(0) as u64));
        let lsn: Option<i64> = conn.query_row("SELECT max(lsn) FROM records", [], |r| r.get(0))?;
        let seq = vv.get(&me);
        let audit = ChainHead::load(&conn)?;
        Ok(Writer {
            conn,
            me,
            counters: Counters { clock, seq, lsn: lsn.unwrap_or(0) as u64, vv, audit },
            vv_dirty: BTreeSet::new(),
            devices,
            collections,
            schemas: HashMap::new(),
            sink,
            wall: options.clock.clone(),
            audit_dirty: false,
            audit_entries_max: options.audit_entries_max,
        })
    }

    pub(crate) fn run(mut self, requests: mpsc::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < GROUP_COMMIT_REQUESTS_MAX {
                match requests.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.process(batch);
        }
        // Fold the WAL back so a clean shutdown leaves one file; failure here loses nothing.
        let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
    }

    fn process(&mut self, batch: Vec<Request>) {
        let mut done = Vec::with_capacity(batch.len());
        let mut vv_waiters = Vec::new();
        let mut events = Vec::new();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            let message = e.to_string();
            for request in batch {
                fail(request, || StoreError::Open { path: Default::default(), reason: message.clone() });
            }
            return;
        }
        let before_batch = self.counters.clone();
        for request in batch {
            match request {
                Request::VersionVector { reply } => vv_waiters.push(reply),
                Request::SavePeer { device, doc, reply } => {
                    let result = match doc {
                        Some(doc) => self
                            .conn
                            .prepare_cached("INSERT INTO peers (device, doc) VALUES (?1, ?2) ON CONFLICT(device) DO UPDATE SET doc = excluded.doc")
                            .and_then(|mut s| s.execute(params![&device.0[..], doc])),
                        None => self.conn.prepare_cached("DELETE FROM peers WHERE device = ?1").and_then(|mut s| s.execute([&device.0[..]])),
                    };
                    match result {
                        // Answered after the commit, like every write.
                        Ok(_) => done.push(Done::Peer(reply)),
                        Err(e) => {
                            let _ = reply.send(Err(e.into()));
                        }
                    }
                }
                Request::Write { writes, reply } => {
                    match self.in_savepoint(&mut events, |w, ev| writes.iter().map(|wr| w.local(wr, ev)).collect()) {
                        Ok(outcomes) => done.push(Done::Writes(reply, outcomes)),
                        Err(e) => reply_write(reply, Err(e)),
                    }
                }
                Request::Remote { batch, reply } => match self.in_savepoint(&mut events, |w, ev| w.remote(batch, ev)) {
                    Ok(outcome) => done.push(Done::Remote(reply, outcome)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Request::Audit { entry, dropped, reply } => {
                    match self.in_savepoint(&mut events, |w, _| w.audit(&entry, dropped)) {
                        Ok(seq) => {
                            if let Some(reply) = reply {
                                done.push(Done::Audit(reply, seq));
                            }
                        }
                        Err(e) => match reply {
                            Some(reply) => {
                                let _ = reply.send(Err(e));
                            }
                            None => tracing::warn!(error = %e, kind = %entry.kind, "audit entry lost"),
                        },
                    }
                }
            }
        }
        let committed = self.finish().and_then(|_| Ok(self.conn.execute_batch("COMMIT")?));
        self.audit_dirty = false;
        match committed {
            Ok(()) => {
                self.vv_dirty.clear();
                if !events.is_empty() {
                    (self.sink)(&events);
                }
                for item in done {
                    match item {
                        Done::Writes(reply, outcomes) => reply_write(reply, Ok(outcomes)),
                        Done::Remote(reply, outcome) => {
                            let _ = reply.send(Ok(outcome));
                        }
                        Done::Peer(reply) => {
                            let _ = reply.send(Ok(()));
                        }
                        Done::Audit(reply, seq) => {
                            let _ = reply.send(Ok(seq));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "commit failed; the batch is rolled back");
                let _ = self.conn.execute_batch("ROLLBACK");
                self.counters = before_batch;
                self.reset_caches();
                let message = e.to_string();
                for item in done {
                    let err =
                        StoreError::Open { path: Default::default(), reason: format!("commit failed: {message}") };
                    match item {
                        Done::Writes(reply, _) => reply_write(reply, Err(err)),
                        Done::Remote(reply, _) => {
                            let _ = reply.send(Err(err));
                        }
                        Done::Peer(reply) => {
                            let _ = reply.send(Err(err));
                        }
                        Done::Audit(reply, _) => {
                            let _ = reply.send(Err(err));
                        }
                    }
                }
            }
        }
        for reply in vv_waiters {
            let _ = reply.send(Ok(self.counters.vv.clone()));
        }
    }

    fn reset_caches(&mut self) {
        self.devices.clear();
        self.collections.clear();
        self.schemas.clear();
        self.vv_dirty = self.counters.vv.iter().map(|(d, _)| *d).collect();
    }

    /// Runs one request inside a savepoint; on error undoes its rows and its in-memory effects.
    fn in_savepoint<T>(
        &mut self,
        events: &mut Vec<StoreEvent>,
        body: impl FnOnce(&mut Writer, &mut Vec<StoreEvent>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.conn.execute_batch("SAVEPOINT request")?;
        let saved = self.counters.clone();
        let events_before = events.len();
        match body(self, events) {
            Ok(value) => {
                self.conn.execute_batch("RELEASE request")?;
                Ok(value)
            }
            Err(e) => {
                self.conn.execute_batch("ROLLBACK TO request; RELEASE request")?;
                self.counters = saved;
                events.truncate(events_before);
                // Interned ids created inside the savepoint are gone: forget them all.
                self.reset_caches();
                Err(e)
            }
        }
    }

    /// Appends an audit entry (after one reporting `dropped` lost entries, if any).
    fn audit(&mut self, entry: &NewEntry, dropped: u64) -> Result<u64, StoreError> {
        let now = self.wall.now_ms();
        if dropped > 0 {
            let lost = NewEntry::new(crate::AUDIT_DROPPED_KIND, None, &serde_json::json!({"entries": dropped}));
            audit::insert(&self.conn, &mut self.counters.audit, now, &lost)?;
        }
        let seq = audit::insert(&self.conn, &mut self.counters.audit, now, entry)?;
        self.audit_dirty = true;
        Ok(seq)
    }

    /// Persists the vector entries and the clock touched by this transaction, and prunes the
    /// audit log and records its ends if it grew.
    fn finish(&mut self) -> Result<(), StoreError> {
        if self.audit_dirty {
            audit::prune(&self.conn, &mut self.counters.audit, self.audit_entries_max)?;
            audit::write_meta(&self.conn, &self.counters.audit)?;
        }
        let dirty: Vec<DeviceId> = self.vv_dirty.iter().copied().collect();
        for origin in dirty {
            let idx = self.device_index(origin)?;
            let seq = self.counters.vv.get(&origin) as i64;
            self.conn
                .prepare_cached(
                    "INSERT INTO vv (origin, seq) VALUES (?1, ?2) ON CONFLICT(origin) DO UPDATE SET seq = excluded.seq",
                )?
                .execute(params![idx, seq])?;
        }
        let hlc = self.counters.clock.last().as_u64() as i64;
        self.conn
            .prepare_cached("INSERT INTO meta (key, value) VALUES ('hlc', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
            .execute([hlc])?;
        Ok(())
    }

    fn device_index(&mut self, device: DeviceId) -> Result<i64, StoreError> {
        if let Some(idx) = self.devices.get(&device) {
            return Ok(*idx);
        }
        let existing: Option<i64> = self
            .conn
            .prepare_cached("SELECT idx FROM devices WHERE id = ?1")?
            .query_row([&device.0[..]], |r| r.get(0))
            .optional()?;
        let idx = match existing {
            Some(idx) => idx,
            None => {
                self.conn.prepare_cached("INSERT INTO devices (id) VALUES (?1)")?.execute([&device.0[..]])?;
                self.conn.last_insert_rowid()
            }
        };
        self.devices.insert(device, idx);
        Ok(idx)
    }

    fn collection_index(&mut self, name: &str) -> Result<i64, StoreError> {
        if let Some(idx) = self.collections.get(name) {
            return Ok(*idx);
        }
        let existing: Option<i64> = self
            .conn
            .prepare_cached("SELECT idx FROM collections WHERE name = ?1")?
            .query_row([name], |r| r.get(0))
            .optional()?;
        let idx = match existing {
            Some(idx) => idx,
            None => {
                self.conn.prepare_cached("INSERT INTO collections (name) VALUES (?1)")?.execute([name])?;
                self.conn.last_insert_rowid()
            }
        };
        self.collections.insert(name.to_string(), idx);
        Ok(idx)
    }

    fn load_row(&mut self, coll: i64, key: &str) -> Result<Row, StoreError> {
        let row: Option<(i64, i64, Vec<u8>)> = self
            .conn
            .prepare_cached("SELECT lsn, conflicts, state FROM records WHERE coll = ?1 AND key = ?2")?
            .query_row(params![coll, key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        Ok(match row {
            Some((lsn, conflicts, bytes)) => Row {
                lsn: lsn as u64,
                conflicts: conflicts as usize,
                state: RecordState::decode(&bytes)?,
                exists: true,
            },
            None => Row { lsn: 0, conflicts: 0, state: RecordState::new(), exists: false },
        })
    }

    fn schema_for(&mut self, collection: &str) -> Result<Schema, StoreError> {
        if collection.starts_with('_') {
            return Ok(Schema::default());
        }
        if let Some(schema) = self.schemas.get(collection) {
            return Ok(schema.clone());
        }
        let coll = self.collection_index(SCHEMAS_COLLECTION)?;
        let row = self.load_row(coll, collection)?;
        let schema = if row.state.is_deleted() {
            Schema::default()
        } else {
            row.state.value(SCHEMA_FIELD).as_ref().and_then(schema_from_value).unwrap_or_default()
        };
        self.schemas.insert(collection.to_string(), schema.clone());
        Ok(schema)
    }

    fn local(&mut self, write: &LocalWrite, events: &mut Vec<StoreEvent>) -> Result<WriteOutcome, StoreError> {
        check_collection_or_system(&write.collection)?;
        check_record_id(&write.id)?;
        check_op_values(&write.op)?;
        let coll = self.collection_index(&write.collection)?;
        let schema = self.schema_for(&write.collection)?;
        let mut row = self.load_row(coll, &write.id)?;
        let plan = row.state.plan(&schema, self.me, &write.op)?;
        if plan.is_noop() {
            let record = doc(&write.collection, &write.id, &row.state, row.lsn);
            return Ok(WriteOutcome { dot: None, record });
        }
        let now = self.wall.now_ms();
        let hlc = self.counters.clock.tick(now);
        self.counters.seq += 1;
        let dot = Dot { origin: self.me, seq: self.counters.seq };
        let change = plan.into_change(&write.collection, &write.id, hlc, dot);
        self.counters.vv.observe(dot);
        self.vv_dirty.insert(self.me);
        self.merge(coll, &change, &mut row, true, now, events)?;
        Ok(WriteOutcome { dot: Some(dot), record: doc(&write.collection, &write.id, &row.state, row.lsn) })
    }

    fn remote(&mut self, batch: RemoteBatch, events: &mut Vec<StoreEvent>) -> Result<ApplyOutcome, StoreError> {
        if batch.changes.len() > REMOTE_BATCH_CHANGES_MAX {
            return Err(StoreError::InvalidChange(format!(
                "batch of {} changes exceeds {}",
                batch.changes.len(),
                REMOTE_BATCH_CHANGES_MAX
            )));
        }
        let now = self.wall.now_ms();
        for change in &batch.changes {
            validate_remote(change)?;
            self.counters.clock.check(change.hlc, now)?;
        }
        let mut outcome = ApplyOutcome::default();
        for change in &batch.changes {
            self.counters.clock.observe(change.hlc, now)?;
            if change.dot.origin == self.me && change.dot.seq > self.counters.seq {
                // Our own writes from a future we do not remember (a restored backup, say):
                // never reuse those numbers.
                self.counters.seq = change.dot.seq;
                self.counters.vv.observe(change.dot);
                self.vv_dirty.insert(self.me);
            }
            let coll = self.collection_index(&change.collection)?;
            let mut row = self.load_row(coll, &change.record)?;
            if self.merge(coll, change, &mut row, false, now, events)? {
                outcome.applied += 1;
            } else {
                outcome.redundant += 1;
            }
        }
        for dot in &batch.advance {
            if self.counters.vv.get(&dot.origin) < dot.seq {
                self.counters.vv.observe(*dot);
                self.vv_dirty.insert(dot.origin);
            }
        }
        Ok(outcome)
    }

    /// Merges one change into a loaded row and writes back whatever changed.
    fn merge(
        &mut self,
        coll: i64,
        change: &Change,
        row: &mut Row,
        local: bool,
        now: u64,
        events: &mut Vec<StoreEvent>,
    ) -> Result<bool, StoreError> {
        let dots_before = if row.exists { row.state.dots() } else { Vec::new() };
        if !row.state.apply(change) {
            return Ok(false);
        }
        let dots_after = row.state.dots();
        self.counters.lsn += 1;
        row.lsn = self.counters.lsn;
        let conflicts = row.state.conflict_count();
        let deleted = row.state.is_deleted();
        let scope = row.state.scope();
        self.conn
            .prepare_cached(
                "INSERT INTO records (coll, key, lsn, scope, deleted, conflicts, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(coll, key) DO UPDATE SET lsn = excluded.lsn, scope = excluded.scope,
                 deleted = excluded.deleted, conflicts = excluded.conflicts, state = excluded.state",
            )?
            .execute(params![coll, change.record, row.lsn as i64, scope, deleted, conflicts as i64, row.state.encode()])?;
        for dot in dots_after.iter().filter(|d| dots_before.binary_search(d).is_err()) {
            let origin = self.device_index(dot.origin)?;
            self.conn
                .prepare_cached("INSERT OR REPLACE INTO changes (origin, seq, coll, key) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![origin, dot.seq as i64, coll, change.record])?;
        }
        for dot in dots_before.iter().filter(|d| dots_after.binary_search(d).is_err()) {
            let origin = self.device_index(dot.origin)?;
            self.conn
                .prepare_cached("DELETE FROM changes WHERE origin = ?1 AND seq = ?2")?
                .execute(params![origin, dot.seq as i64])?;
        }
        if conflicts > 0 || row.conflicts > 0 {
            self.sync_conflicts(coll, change, &row.state, now, events)?;
        }
        row.conflicts = conflicts;
        row.exists = true;
        if change.collection == SCHEMAS_COLLECTION {
            self.schemas.remove(&change.record);
        }
        events.push(StoreEvent::RecordChanged {
            lsn: row.lsn,
            collection: change.collection.clone(),
            id: change.record.clone(),
            origin: change.dot.origin,
            local,
            deleted,
        });
        Ok(true)
    }

    fn sync_conflicts(
        &mut self,
        coll: i64,
        change: &Change,
        state: &RecordState,
        now: u64,
        events: &mut Vec<StoreEvent>,
    ) -> Result<(), StoreError> {
        let current: Vec<(String, String)> = state
            .conflicts()
            .into_iter()
            .map(|c| (conflict_id(&change.collection, &change.record, &c.field, &c.lost.dot), c.field))
            .collect();
        let existing: Vec<String> = self
            .conn
            .prepare_cached("SELECT id FROM conflicts WHERE coll = ?1 AND key = ?2")?
            .query_map(params![coll, change.record], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for id in existing.iter().filter(|id| !current.iter().any(|(c, _)| c == *id)) {
            self.conn.prepare_cached("DELETE FROM conflicts WHERE id = ?1")?.execute([id])?;
        }
        for (id, field) in current.iter().filter(|(id, _)| !existing.contains(id)) {
            self.conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO conflicts (id, coll, key, field, detected_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![id, coll, change.record, field, now as i64])?;
            events.push(StoreEvent::ConflictDetected {
                id: id.clone(),
                collection: change.collection.clone(),
                record: change.record.clone(),
                field: field.clone(),
            });
        }
        Ok(())
    }
}

fn reply_write(reply: WriteReply, result: Result<Vec<WriteOutcome>, StoreError>) {
    match reply {
        WriteReply::One(tx) => {
            let _ = tx.send(result.and_then(|mut v| v.pop().ok_or(StoreError::Closed)));
        }
        WriteReply::Many(tx) => {
            let _ = tx.send(result);
        }
    }
}

fn fail(request: Request, error: impl Fn() -> StoreError) {
    match request {
        Request::Write { reply, .. } => reply_write(reply, Err(error())),
        Request::Remote { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Request::VersionVector { reply } => {
            let _ = reply.send(Err(error()));
        }
        Request::SavePeer { reply, .. } => {
            let _ = reply.send(Err(error()));
        }
        Request::Audit { reply: Some(reply), .. } => {
            let _ = reply.send(Err(error()));
        }
        Request::Audit { reply: None, entry, .. } => {
            tracing::warn!(error = %error(), kind = %entry.kind, "audit entry lost");
        }
    }
}

pub(crate) fn doc(collection: &str, id: &str, state: &RecordState, lsn: u64) -> RecordDoc {
    let m = state.materialize();
    RecordDoc {
        collection: collection.to_string(),
        id: id.to_string(),
        fields: m.fields,
        scope: m.scope,
        deleted: m.deleted || state.is_empty(),
        updated: m.updated,
        conflicts: m.conflicts,
        lsn,
    }
}

fn check_value_size(value: &meshsync_core::Value) -> Result<(), StoreError> {
    let bytes = value.json_len();
    if bytes > VALUE_BYTES_MAX {
        return Err(ValueError::TooLarge { bytes, max: VALUE_BYTES_MAX }.into());
    }
    Ok(())
}

fn check_op_values(op: &Op) -> Result<(), StoreError> {
    match op {
        Op::Put { fields, .. } | Op::Append { fields, .. } => fields.iter().try_for_each(|(_, v)| check_value_size(v)),
        Op::Incr { by, .. } => check_value_size(by),
        Op::Resolve { value: Some(v), .. } => check_value_size(v),
        Op::Delete | Op::Resolve { value: None, .. } => Ok(()),
    }
}

/// Checks what a peer sent before any of it is applied.
fn validate_remote(change: &Change) -> Result<(), StoreError> {
    let invalid = |why: String| StoreError::InvalidChange(why);
    check_collection_or_system(&change.collection).map_err(|e| invalid(e.to_string()))?;
    check_record_id(&change.record).map_err(|e| invalid(e.to_string()))?;
    if change.dot.seq == 0 {
        return Err(invalid("sequence number 0".into()));
    }
    if !change.delete && change.cells.is_empty() {
        return Err(invalid("change writes nothing".into()));
    }
    if change.cells.len() > meshsync_core::name::WRITE_FIELDS_MAX + 1 {
        return Err(invalid(format!("{} cells in one change", change.cells.len())));
    }
    let mut seen = BTreeSet::new();
    for cell in &change.cells {
        if cell.field != SCOPE_FIELD {
            check_field(&cell.field).map_err(|e| invalid(e.to_string()))?;
        }
        if !seen.insert((&cell.field, cell.policy)) {
            return Err(invalid(format!("field {:?} written twice", cell.field)));
        }
        if !cell.ctx.is_canonical() || cell.ctx.dots().len() > 4096 {
            return Err(invalid("malformed causal context".into()));
        }
        if cell.ctx.covers(&change.dot) {
            return Err(invalid("a write cannot supersede itself".into()));
        }
        check_value_size(&cell.value).map_err(|e| invalid(e.to_string()))?;
        if !cell.value.is_finite() {
            return Err(invalid(format!("field {:?} holds a number that is not finite", cell.field)));
        }
    }
    Ok(())
}
