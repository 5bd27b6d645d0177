//! Durable storage for meshsync on SQLite. The only crate that speaks SQL.
//!
//! # Layout
//! - [`migrations`]: the versioned schema.
//! - `writer`: the one writer thread. It owns the write connection, the clock, the version
//!   vector and the caches; requests queue to it and commit together (group commit), so a local
//!   write is acknowledged only once it is in the WAL, and a remote batch applies atomically.
//! - `read`: queries on a small pool of read connections (WAL lets them run beside the writer):
//!   get, list with equality filters and cursors, conflicts, change scans, event replay.
//! - `audit`: the audit log, a hash chain of entries appended by the writer ([`entry_hash`],
//!   [`Store::audit_append`], [`Store::audit_page`], [`Store::audit_verify`]).
//!
//! # Physical layout
//! One row per record holds its whole [`RecordState`] in the canonical encoding; a `changes`
//! table maps each write still referenced, `(origin, seq)`, to its record, so "every change above
//! vector V" is an index range scan per origin. Device ids and collection names are interned to
//! small integers. The `audit` table holds the audit log, one row per entry keyed by its seq,
//! with the chain's ends in `meta`.

mod audit;
mod migrations;
mod read;
mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use meshsync_core::{
    Change, ClockError, DecodeError, DeviceId, Dot, Hlc, NameError, Op, Schema, SchemaError, Value, ValueError,
    VersionVector, WriteError,
};
use rusqlite::{Connection, OpenFlags};

pub use audit::{
    entry_hash, AuditBroken, AuditCheck, AuditEntry, AuditPage, AUDIT_DETAIL_BYTES_MAX, AUDIT_DROPPED_KIND,
    AUDIT_ENTRIES_MAX, AUDIT_GENESIS, AUDIT_HASH_DOMAIN, AUDIT_KIND_BYTES_MAX, AUDIT_PAGE_MAX,
};
pub use migrations::SCHEMA_VERSION;
pub use read::{ChangePage, ChangeScan};

/// Collection holding the schemas of the others, replicated like any data.
pub const SCHEMAS_COLLECTION: &str = "_schemas";
/// Field of a `_schemas` record that holds the schema document.
pub const SCHEMA_FIELD: &str = "schema";
/// Most changes one remote batch may carry.
pub const REMOTE_BATCH_CHANGES_MAX: usize = 100_000;
/// Most requests the writer commits in one transaction.
const GROUP_COMMIT_REQUESTS_MAX: usize = 512;
/// Requests that may wait for the writer before callers block (backpressure).
const WRITE_QUEUE_MAX: usize = 4096;
/// Read connections kept open.
const READERS: usize = 4;
/// Longest list page.
pub const LIST_LIMIT_MAX: usize = 1000;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Survives a crash of the process: WAL with `synchronous=NORMAL`. Commits do not fsync;
    /// a power cut may lose the last moments of writes. The default.
    #[default]
    Process,
    /// Survives power loss: `synchronous=FULL`, an fsync of the WAL per group commit.
    Power,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Durability, String> {
        match s {
            "process" => Ok(Durability::Process),
            "power" => Ok(Durability::Power),
            other => Err(format!("durability must be \"process\" or \"power\", not {other:?}")),
        }
    }
}

/// Where the store reads wall-clock time, in ms since the epoch. The system clock unless a
/// test (a deterministic simulation, say) supplies its own.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> u64 + Send + Sync>);

impl WallClock {
    /// The system clock.
    pub fn system() -> WallClock {
        WallClock(Arc::new(now_ms))
    }

    /// A clock read from `source`.
    pub fn from_fn(source: impl Fn() -> u64 + Send + Sync + 'static) -> WallClock {
        WallClock(Arc::new(source))
    }

    /// The current time.
    pub fn now_ms(&self) -> u64 {
        (self.0)()
    }
}

impl std::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WallClock")
    }
}

/// Options for [`Store::open`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// What a commit survives.
    pub durability: Durability,
    /// How far ahead of our clock a remote timestamp may be.
    pub clock_drift_ms_max: u64,
    /// Where time comes from.
    pub clock: WallClock,
    /// Most audit entries kept ([`AUDIT_ENTRIES_MAX`]; smaller in tests of pruning).
    pub audit_entries_max: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            durability: Durability::Process,
            clock_drift_ms_max: meshsync_core::CLOCK_DRIFT_MS_MAX_DEFAULT,
            clock: WallClock::system(),
            audit_entries_max: AUDIT_ENTRIES_MAX,
        }
    }
}

/// Everything that can go wrong in the store. Bad input is reported as such and changes nothing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer meshsync.
    #[error("database schema version {found} is newer than this build supports ({supported}); upgrade meshsync")]
    TooNew {
        /// Version found.
        found: usize,
        /// Highest version supported.
        supported: usize,
    },
    /// The database belongs to another device.
    #[error("this data dir belongs to device {found}, not {expected}")]
    WrongDevice {
        /// The device recorded in the database.
        found: String,
        /// The device opening it.
        expected: String,
    },
    /// A stored record could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] DecodeError),
    /// The operation was refused by the merge rules.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A bad name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A bad value.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A bad schema.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// A remote timestamp too far ahead.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A remote change that breaks the rules of a change.
    #[error("invalid remote change: {0}")]
    InvalidChange(String),
    /// No conflict with that id.
    #[error("no conflict with id {0:?}")]
    UnknownConflict(String),
    /// A bad list cursor.
    #[error("invalid cursor")]
    BadCursor,
    /// The writer thread has stopped.
    #[error("the store is closed")]
    Closed,
    /// The write queue is full and the request was not allowed to wait (a fire-and-forget audit
    /// entry).
    #[error("the write queue is full")]
    QueueFull,
    /// Could not start.
    #[error("cannot open store at {path}: {reason}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
}

/// What the application sees of one record.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordDoc {
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
    /// Visible fields.
    pub fields: BTreeMap<String, Value>,
    /// The scope.
    pub scope: Option<String>,
    /// Whether deleted.
    pub deleted: bool,
    /// Newest change.
    pub updated: Hlc,
    /// Unresolved conflicts.
    pub conflicts: usize,
    /// Local change number of the last change (the event cursor).
    pub lsn: u64,
}

/// One side of a conflict.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictSide {
    /// The value.
    pub value: Value,
    /// The device that wrote it.
    pub device: DeviceId,
    /// When.
    pub at: Hlc,
}

/// An unresolved conflict on one field.
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictDoc {
    /// Stable id.
    pub id: String,
    /// The collection.
    pub collection: String,
    /// The record id.
    pub record: String,
    /// The field.
    pub field: String,
    /// The version the rule picked.
    pub kept: ConflictSide,
    /// The concurrent version that lost.
    pub lost: ConflictSide,
    /// When this node first saw it, in ms since the epoch.
    pub detected_ms: u64,
}

/// A committed change, for subscribers.
#[derive(Clone, Debug, PartialEq)]
pub enum StoreEvent {
    /// A record changed.
    RecordChanged {
        /// Local change number; resume after it to miss nothing.
        lsn: u64,
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
        /// Who made the change.
        origin: DeviceId,
        /// Whether it was made here.
        local: bool,
        /// Whether the record is now deleted.
        deleted: bool,
    },
    /// A new conflict appeared.
    ConflictDetected {
        /// Its id.
        id: String,
        /// The collection.
        collection: String,
        /// The record id.
        record: String,
        /// The field.
        field: String,
    },
}

/// Receives events after each commit. Runs on the writer thread: keep it quick.
pub type EventSink = Box<dyn Fn(&[StoreEvent]) + Send>;

/// The result of a local write.
#[derive(Clone, Debug)]
pub struct WriteOutcome {
    /// The write's dot, or `None` if it changed nothing (an idempotent retry).
    pub dot: Option<Dot>,
    /// The record after the write.
    pub record: RecordDoc,
}

/// The result of applying a remote batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes that altered something.
    pub applied: usize,
    /// Changes already known or superseded.
    pub redundant: usize,
}

/// A batch of remote changes plus how far it lets the version vector advance.
#[derive(Clone, Debug, Default)]
pub struct RemoteBatch {
    /// The changes, in any order.
    pub changes: Vec<Change>,
    /// Dots up to which the sender's stream is now complete; the vector rises to them.
    pub advance: Vec<Dot>,
}

impl RemoteBatch {
    /// A batch that advances the vector to the highest dot of each origin it carries: right when
    /// the sender streams every change above our vector in (origin, seq) order.
    pub fn in_order(changes: Vec<Change>) -> RemoteBatch {
        let mut vv = VersionVector::new();
        for change in &changes {
            vv.observe(change.dot);
        }
        let advance = vv.iter().map(|(origin, seq)| Dot { origin: *origin, seq: *seq }).collect();
        RemoteBatch { changes, advance }
    }
}

/// Which records a change scan may return.
#[derive(Clone, Debug, Default)]
pub enum ScopeFilter {
    /// Every record.
    #[default]
    All,
    /// Records without a scope and records in one of these scopes.
    Scopes(Vec<String>),
}

impl ScopeFilter {
    /// Whether a record with `scope` passes.
    pub fn allows(&self, scope: Option<&str>) -> bool {
        match (self, scope) {
            (ScopeFilter::All, _) | (_, None) => true,
            (ScopeFilter::Scopes(list), Some(s)) => list.iter().any(|allowed| allowed == s),
        }
    }
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct ListPage {
    /// The records, by id.
    pub records: Vec<RecordDoc>,
    /// Cursor for the next page.
    pub next: Option<String>,
}

/// A local write request.
#[derive(Clone, Debug)]
pub struct LocalWrite {
    /// The collection.
    pub collection: String,
    /// The record id.
    pub id: String,
    /// What to do.
    pub op: Op,
}

/// The store: one writer thread, a pool of readers.
pub struct Store {
    path: PathBuf,
    device: DeviceId,
    requests: Mutex<Option<mpsc::SyncSender<writer::Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<read::Readers>,
    /// Fire-and-forget audit entries dropped on a full queue, not yet reported in the log.
    audit_dropped: std::sync::atomic::AtomicU64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn open_connection(path: &Path, durability: Durability, read_only: bool) -> Result<Connection, StoreError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !read_only {
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if mode != "wal" {
            return Err(StoreError::Open { path: path.into(), reason: format!("WAL mode refused (got {mode})") });
        }
    }
    let sync = match durability {
        Durability::Process => "NORMAL",
        Durability::Power => "FULL",
    };
    // The writer's page cache holds the hot part of the record and change b-trees during bulk
    // applies (a larger cache measured 10-20% faster at 100k records); readers need less.
    let cache_kib = if read_only { 8 << 10 } else { 64 << 10 };
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA cache_size=-{cache_kib}; PRAGMA temp_store=MEMORY;"
    ))?;
    Ok(conn)
}

impl Store {
    /// Opens (or creates) the store at `path` for device `device`.
    pub fn open(path: impl AsRef<Path>, device: DeviceId, options: StoreOptions) -> Result<Store, StoreError> {
        Self::open_with_sink(path, device, options, Box::new(|_| {}))
    }

    /// Like [`Store::open`], with a sink that receives committed events.
    pub fn open_with_sink(
        path: impl AsRef<Path>,
        device: DeviceId,
        options: StoreOptions,
        sink: EventSink,
    ) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut conn = open_connection(&path, options.durability, false)?;
        migrations::migrate(&mut conn)?;
        let state = writer::Writer::load(conn, device, &options, sink)?;
        let readers = Arc::new(read::Readers::new(&path, options.durability, READERS)?);
        let (tx, rx) = mpsc::sync_channel(WRITE_QUEUE_MAX);
        let thread = std::thread::Builder::new()
            .name("meshsync-store".into())
            .spawn(move || state.run(rx))
            .map_err(|e| StoreError::Open { path: path.clone(), reason: e.to_string() })?;
        Ok(Store {
            path,
            device,
            requests: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            readers,
            audit_dropped: Default::default(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device this store writes as.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Request,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError> {
        let (reply, receiver) = oneshot::channel();
        let sender = self.requests.lock().expect("lock poisoned").clone().ok_or(StoreError::Closed)?;
        sender.send(make(reply)).map_err(|_| StoreError::Closed)?;
        Ok(receiver)
    }

    fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Request,
    ) -> Result<T, StoreError> {
        self.send(make)?.recv().map_err(|_| StoreError::Closed)?
    }

    /// Performs a local write and waits until it is durable.
    pub fn write(&self, write: LocalWrite) -> Result<WriteOutcome, StoreError> {
        self.call(|reply| writer::Request::Write { writes: vec![write], reply: writer::WriteReply::One(reply) })
    }

    /// Performs a local write; the future resolves once it is durable.
    pub async fn write_async(&self, write: LocalWrite) -> Result<WriteOutcome, StoreError> {
        let receiver =
            self.send(|reply| writer::Request::Write { writes: vec![write], reply: writer::WriteReply::One(reply) })?;
        receiver.await.map_err(|_| StoreError::Closed)?
    }

    /// Performs several local writes in one transaction: all or none.
    pub fn write_batch(&self, writes: Vec<LocalWrite>) -> Result<Vec<WriteOutcome>, StoreError> {
        self.call(|reply| writer::Request::Write { writes, reply: writer::WriteReply::Many(reply) })
    }

    /// Applies a batch of remote changes atomically: all or none.
    pub fn apply_remote(&self, batch: RemoteBatch) -> Result<ApplyOutcome, StoreError> {
        self.call(|reply| writer::Request::Remote { batch, reply })
    }

    /// Declares a collection's schema (replicated through [`SCHEMAS_COLLECTION`]).
    pub fn put_schema(&self, collection: &str, schema: &Schema) -> Result<(), StoreError> {
        meshsync_core::name::check_collection(collection)?;
        schema.validate()?;
        let fields: serde_json::Map<String, serde_json::Value> =
            schema.fields.iter().map(|(k, p)| (k.clone(), serde_json::Value::from(p.name()))).collect();
        let doc =
            serde_json::json!({"fields": fields, "default": schema.default.name(), "append_only": schema.append_only});
        let value = Value::from_json(&doc)?;
        self.write(LocalWrite {
            collection: SCHEMAS_COLLECTION.into(),
            id: collection.into(),
            op: Op::Put { fields: vec![(SCHEMA_FIELD.into(), value)], scope: None },
        })?;
        Ok(())
    }

    /// The schema of a collection: declared, or the defaults.
    pub fn schema(&self, collection: &str) -> Result<Option<Schema>, StoreError> {
        let doc = self.get(SCHEMAS_COLLECTION, collection)?;
        Ok(doc.filter(|d| !d.deleted).and_then(|d| d.fields.get(SCHEMA_FIELD).and_then(schema_from_value)))
    }

    /// The current version vector.
    pub fn version_vector(&self) -> Result<VersionVector, StoreError> {
        self.call(|reply| writer::Request::VersionVector { reply })
    }

    /// Saves (or with `None` forgets) what this node knows of a peer: an opaque document owned by
    /// the sync layer. Not replicated.
    pub fn save_peer(&self, device: DeviceId, doc: Option<String>) -> Result<(), StoreError> {
        self.call(|reply| writer::Request::SavePeer { device, doc, reply })
    }

    /// Every saved peer document.
    pub fn peers(&self) -> Result<Vec<(DeviceId, String)>, StoreError> {
        self.readers_with(|conn| {
            let mut stmt = conn.prepare_cached("SELECT device, doc FROM peers")?;
            let rows: Vec<(Vec<u8>, String)> =
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(d, doc)| <[u8; 16]>::try_from(d.as_slice()).ok().map(|d| (DeviceId(d), doc)))
                .collect())
        })
    }

    /// Waits for queued writes, then stops the writer thread. Reads keep working.
    pub fn close(&self) {
        let sender = self.requests.lock().expect("lock poisoned").take();
        drop(sender);
        if let Some(thread) = self.thread.lock().expect("lock poisoned").take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

/// Reads a schema document as stored in `_schemas`.
pub fn schema_from_value(value: &Value) -> Option<Schema> {
    let json = value.to_json();
    let fields = json.get("fields")?.as_object()?;
    let mut schema = Schema {
        default: json.get("default").and_then(|d| d.as_str()).and_then(|d| d.parse().ok()).unwrap_or_default(),
        append_only: json.get("append_only").and_then(|a| a.as_bool()).unwrap_or(false),
        ..Schema::default()
    };
    for (name, policy) in fields {
        schema.fields.insert(name.clone(), policy.as_str()?.parse().ok()?);
    }
    Some(schema)
}
