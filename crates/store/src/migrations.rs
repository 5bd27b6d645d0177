//! Versioned schema migrations. Each entry upgrades the database by one version, in a
//! transaction; `PRAGMA user_version` records how far a database has come. Never edit a
//! migration that has shipped: add a new one.

use rusqlite::Connection;

use crate::StoreError;

/// The migrations, in order. Index `i` upgrades from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: records packed one row each, with an (origin, seq) index of the writes they still hold.
    // Rows are clustered by lsn, so new and changed records append at the right edge of the
    // table and only a small (coll, key) index entry lands at a random place: measured 3.4x less
    // written per record than clustering by key (BENCHMARKS.md).
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE devices (idx INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE);
    CREATE TABLE collections (idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE records (
        lsn INTEGER PRIMARY KEY,
        coll INTEGER NOT NULL,
        key TEXT NOT NULL,
        scope TEXT,
        deleted INTEGER NOT NULL,
        conflicts INTEGER NOT NULL,
        state BLOB NOT NULL
    );
    CREATE UNIQUE INDEX records_by_key ON records (coll, key);
    CREATE TABLE changes (
        origin INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        coll INTEGER NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (origin, seq)
    ) WITHOUT ROWID;
    CREATE TABLE vv (origin INTEGER PRIMARY KEY, seq INTEGER NOT NULL);
    CREATE TABLE conflicts (
        id TEXT PRIMARY KEY,
        coll INTEGER NOT NULL,
        key TEXT NOT NULL,
        field TEXT NOT NULL,
        detected_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX conflicts_by_record ON conflicts (coll, key);
    ",
    // 2: what we know of each peer (addresses, what it has acknowledged), kept across restarts.
    "
    CREATE TABLE peers (device BLOB PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;
    ",
    // 3: the audit log, a hash chain (see `audit.rs`): seq is the rowid, so appends land at the
    // right edge and pruning deletes a range at the left. No index on kind: appends stay cheap
    // and a filtered page scans a table that pruning keeps bounded.
    "
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        device TEXT,
        detail TEXT NOT NULL,
        prev BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    ",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the database up to [`SCHEMA_VERSION`]. Refuses a database from a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))? as usize;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew { found: current, supported: SCHEMA_VERSION });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied storage migration");
    }
    Ok(())
}
