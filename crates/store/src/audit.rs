//! The audit log: what happened to the node's security (joins, invites, refused connections and
//! writes, sync sessions), kept in the `audit` table as a hash chain so that changing, removing or
//! reordering an entry shows. This module owns the entry format, [`entry_hash`], the limits that
//! clamp what callers pass, paging and verification; the writer thread appends (see
//! `writer.rs`), so entries are ordered and durable under the same rules as records.
//!
//! # The chain
//! Entry `seq` (1, 2, ...) stores `prev`, the `hash` of entry `seq - 1` (32 zero bytes for entry
//! 1), and its own `hash = entry_hash(seq, at_ms, kind, device, detail, prev)`. The store also
//! keeps in `meta` the newest entry (`audit_seq`, `audit_head`) and the oldest one it kept after
//! pruning (`audit_floor`), so that removing entries at either end shows too. Anyone who can
//! write the database file can rewrite the whole chain and `meta` with it: the chain proves
//! nothing against them unless the head was noted elsewhere ([`AuditCheck::head`]). What it does
//! catch is an entry changed, removed or reordered behind the node's back.
//!
//! # Growth
//! At most [`AUDIT_ENTRIES_MAX`] entries are kept (configurable per store for tests). When an
//! append passes the limit, the oldest entries go in one batch of 1% of the limit; the oldest
//! entry kept keeps its `prev`, which anchors the chain, so verification starts from it.

use meshsync_core::DeviceId;
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::{Store, StoreError};

/// Most entries kept; the oldest are deleted beyond it (see the module docs).
pub const AUDIT_ENTRIES_MAX: usize = 100_000;
/// Longest `kind`, in bytes; longer ones are cut and end in `…`.
pub const AUDIT_KIND_BYTES_MAX: usize = 64;
/// Longest `detail`, as JSON text, in bytes; a longer one is replaced by
/// `{"truncated": <its length>, "head": "<the start of its JSON text>"}`.
pub const AUDIT_DETAIL_BYTES_MAX: usize = 4096;
/// Longest page of [`Store::audit_page`].
pub const AUDIT_PAGE_MAX: usize = 1000;
/// The kind of the entry the writer adds when fire-and-forget entries had to be dropped because
/// the write queue was full; its detail is `{"entries": n}`.
pub const AUDIT_DROPPED_KIND: &str = "audit.dropped";
/// The domain separator at the start of every hashed entry, so that no other meshsync hash can
/// be mistaken for an audit entry's.
pub const AUDIT_HASH_DOMAIN: &str = "meshsync-audit-v1";
/// The `prev` of entry 1.
pub const AUDIT_GENESIS: [u8; 32] = [0; 32];

/// Meta keys: the newest entry's seq and hash, and the oldest seq kept.
pub(crate) const META_SEQ: &str = "audit_seq";
pub(crate) const META_HEAD: &str = "audit_head";
pub(crate) const META_FLOOR: &str = "audit_floor";

/// One entry of the audit log, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Position in the log: 1, 2, ... without gaps.
    pub seq: u64,
    /// When the writer appended it, in ms since the epoch.
    pub at_ms: u64,
    /// What happened, e.g. `connection.refused`.
    pub kind: String,
    /// The device it concerns, as device id text, if any. Text rather than a [`DeviceId`] so a
    /// damaged row still shows as it is.
    pub device: Option<String>,
    /// Details as JSON (the stored text, or that text as a JSON string if it no longer parses).
    pub detail: serde_json::Value,
    /// The hash of the entry before.
    pub prev: [u8; 32],
    /// This entry's hash, see [`entry_hash`].
    pub hash: [u8; 32],
}

/// A page of the audit log, newest first.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditPage {
    /// The entries, by descending seq.
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for the next (older) page; `None` on the last page.
    pub next: Option<u64>,
}

/// A chain that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditCheck {
    /// Entries checked (all those kept).
    pub entries: u64,
    /// Hash of the newest entry ([`AUDIT_GENESIS`] when the log is empty). Note it somewhere else
    /// to detect later a rewrite of the whole log.
    pub head: [u8; 32],
    /// Oldest seq kept, if any.
    pub first: Option<u64>,
    /// Newest seq, if any.
    pub last: Option<u64>,
    /// The `prev` of the oldest entry kept: [`AUDIT_GENESIS`] until pruning removed entry 1.
    pub anchor: [u8; 32],
}

/// The first place where the chain does not hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at entry {seq}: {reason}")]
pub struct AuditBroken {
    /// The first entry that is missing, changed or out of place.
    pub seq: u64,
    /// What is wrong, in words.
    pub reason: String,
    /// Entries that verified before it.
    pub verified: u64,
}

/// The hash of one entry: SHA-256 over, in order,
///
/// 1. the domain: its length as a 4-byte big-endian integer, then [`AUDIT_HASH_DOMAIN`];
/// 2. `seq` as an 8-byte big-endian integer;
/// 3. `at_ms` as an 8-byte big-endian integer;
/// 4. `kind`: its length in bytes (4-byte big-endian), then its UTF-8 bytes;
/// 5. `device`: the byte 0 when absent; else the byte 1, its length (4-byte big-endian) and its
///    UTF-8 bytes (the device id text, e.g. `MFRGG2LTM-NZXXE3DFO-RSXA5LTMA`);
/// 6. `detail`: its length (4-byte big-endian), then the JSON text as stored;
/// 7. `prev`: 32 bytes.
///
/// Every variable field carries its length, so no two entries hash the same bytes. docs/api.md
/// shows how to recompute it with `sqlite3`, `xxd` and `sha256sum`.
pub fn entry_hash(seq: u64, at_ms: u64, kind: &str, device: Option<&str>, detail: &str, prev: &[u8; 32]) -> [u8; 32] {
    hash_bytes(seq, at_ms, kind.as_bytes(), device.map(str::as_bytes), detail.as_bytes(), prev)
}

fn hash_bytes(seq: u64, at_ms: u64, kind: &[u8], device: Option<&[u8]>, detail: &[u8], prev: &[u8; 32]) -> [u8; 32] {
    fn field(hasher: &mut Sha256, bytes: &[u8]) {
        // Every field is clamped far below 4 GiB; a longer one could only come from a damaged
        // row, which then fails to verify anyway.
        hasher.update((bytes.len() as u32).to_be_bytes());
        hasher.update(bytes);
    }
    let mut hasher = Sha256::new();
    field(&mut hasher, AUDIT_HASH_DOMAIN.as_bytes());
    hasher.update(seq.to_be_bytes());
    hasher.update(at_ms.to_be_bytes());
    field(&mut hasher, kind);
    match device {
        None => hasher.update([0u8]),
        Some(device) => {
            hasher.update([1u8]);
            field(&mut hasher, device);
        }
    }
    field(&mut hasher, detail);
    hasher.update(prev);
    hasher.finalize().into()
}

/// An entry on its way to the writer, already clamped to the limits.
#[derive(Clone, Debug)]
pub(crate) struct NewEntry {
    pub(crate) kind: String,
    pub(crate) device: Option<String>,
    pub(crate) detail: String,
}

impl NewEntry {
    /// Clamps what a caller passed: never fails, so auditing cannot break the caller.
    pub(crate) fn new(kind: &str, device: Option<DeviceId>, detail: &serde_json::Value) -> NewEntry {
        NewEntry { kind: clamp_kind(kind), device: device.map(|d| d.to_string()), detail: clamp_detail(detail) }
    }
}

/// `kind` without control characters, at most [`AUDIT_KIND_BYTES_MAX`] bytes (cut at a character
/// boundary and ending in `…` when it was longer), and never empty.
pub(crate) fn clamp_kind(kind: &str) -> String {
    let clean: String = kind.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if clean.is_empty() {
        return "unknown".into();
    }
    if clean.len() <= AUDIT_KIND_BYTES_MAX {
        return clean;
    }
    const MARK: &str = "…";
    let mut cut = AUDIT_KIND_BYTES_MAX - MARK.len();
    while !clean.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{MARK}", &clean[..cut])
}

/// `detail` as JSON text of at most [`AUDIT_DETAIL_BYTES_MAX`] bytes: itself, or when longer
/// `{"truncated": <its length>, "head": "<as much of its start as fits>"}`.
pub(crate) fn clamp_detail(detail: &serde_json::Value) -> String {
    let text = detail.to_string();
    if text.len() <= AUDIT_DETAIL_BYTES_MAX {
        return text;
    }
    // Escaping can make the head longer than its bytes: shrink until the whole fits.
    let mut budget = AUDIT_DETAIL_BYTES_MAX - 64;
    loop {
        let mut cut = budget.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let marked = serde_json::json!({"truncated": text.len(), "head": &text[..cut]}).to_string();
        if marked.len() <= AUDIT_DETAIL_BYTES_MAX || cut == 0 {
            return marked;
        }
        // Shrink in proportion to how much escaping grew it (strictly less each round).
        budget = cut * (AUDIT_DETAIL_BYTES_MAX - 64) / marked.len();
    }
}

/// Where the writer's chain stands: the newest entry and the oldest kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChainHead {
    /// Seq of the newest entry, 0 before the first.
    pub(crate) seq: u64,
    /// Its hash, [`AUDIT_GENESIS`] before the first.
    pub(crate) hash: [u8; 32],
    /// Oldest seq kept (1 until pruning).
    pub(crate) floor: u64,
}

impl ChainHead {
    /// Entries kept.
    pub(crate) fn entries(&self) -> u64 {
        (self.seq + 1).saturating_sub(self.floor)
    }

    /// Loads where the chain stands: from `meta`, or from the newest row if that is further on
    /// (so a seq is never reused, whatever happened to `meta`).
    pub(crate) fn load(conn: &Connection) -> Result<ChainHead, StoreError> {
        let meta = read_meta(conn)?;
        let newest: Option<(i64, Vec<u8>)> = conn
            .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let mut head = ChainHead { seq: meta.seq, hash: meta.head, floor: meta.floor };
        if let Some((seq, hash)) = newest {
            if seq as u64 > head.seq {
                head.seq = seq as u64;
                head.hash = digest_of(&hash);
            }
        }
        // Only a damaged `meta` could put the floor past the next entry.
        head.floor = head.floor.min(head.seq + 1);
        Ok(head)
    }
}

/// What `meta` says of the chain.
struct Meta {
    seq: u64,
    head: [u8; 32],
    floor: u64,
}

fn read_meta(conn: &Connection) -> Result<Meta, StoreError> {
    let get = |key: &str| -> Result<Option<rusqlite::types::Value>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([key], |r| r.get::<_, rusqlite::types::Value>(0))
            .optional()?)
    };
    use rusqlite::types::Value as V;
    let int = |v: Option<V>| match v {
        Some(V::Integer(n)) if n >= 0 => Some(n as u64),
        _ => None,
    };
    let seq = int(get(META_SEQ)?).unwrap_or(0);
    let floor = int(get(META_FLOOR)?).unwrap_or(1).max(1);
    let head = match get(META_HEAD)? {
        Some(V::Blob(bytes)) => digest_of(&bytes),
        _ => AUDIT_GENESIS,
    };
    Ok(Meta { seq, head, floor })
}

/// Writes where the chain stands into `meta`, in the writer's transaction.
pub(crate) fn write_meta(conn: &Connection, head: &ChainHead) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?;
    stmt.execute(params![META_SEQ, head.seq as i64])?;
    stmt.execute(params![META_HEAD, &head.hash[..]])?;
    stmt.execute(params![META_FLOOR, head.floor as i64])?;
    Ok(())
}

/// Appends one entry after `head` at `at_ms` and moves `head` on. In the writer's transaction.
pub(crate) fn insert(conn: &Connection, head: &mut ChainHead, at_ms: u64, entry: &NewEntry) -> Result<u64, StoreError> {
    let seq = head.seq + 1;
    // SQLite integers are signed: a clock beyond year 292 million is clamped, not wrapped.
    let at_ms = at_ms.min(i64::MAX as u64);
    let hash = entry_hash(seq, at_ms, &entry.kind, entry.device.as_deref(), &entry.detail, &head.hash);
    conn.prepare_cached(
        "INSERT INTO audit (seq, at_ms, kind, device, detail, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        seq as i64,
        at_ms as i64,
        entry.kind,
        entry.device,
        entry.detail,
        &head.hash[..],
        &hash[..]
    ])?;
    head.seq = seq;
    head.hash = hash;
    Ok(seq)
}

/// Deletes the oldest entries when more than `entries_max` are kept: at least 1% of the limit at
/// once, so deletes are rare, and never the newest `entries_max - batch`. In the writer's
/// transaction.
pub(crate) fn prune(conn: &Connection, head: &mut ChainHead, entries_max: usize) -> Result<(), StoreError> {
    let entries_max = entries_max.max(1) as u64;
    let kept = head.entries();
    if kept <= entries_max {
        return Ok(());
    }
    let batch = (entries_max / 100).max(1);
    let drop = (kept - entries_max).max(batch).min(kept - 1);
    let floor = head.floor + drop;
    conn.prepare_cached("DELETE FROM audit WHERE seq < ?1")?.execute([floor as i64])?;
    head.floor = floor;
    Ok(())
}

/// 32 bytes from a blob: a damaged one (another length) is padded or cut, and fails to verify.
fn digest_of(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = bytes.len().min(32);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

/// A column as text, whatever a damaged row holds.
fn text_of(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Null => String::new(),
    }
}

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditEntry> {
    let detail = text_of(row.get_ref(4)?);
    let device = match row.get_ref(3)? {
        ValueRef::Null => None,
        other => Some(text_of(other)),
    };
    Ok(AuditEntry {
        seq: row.get::<_, i64>(0)? as u64,
        at_ms: row.get::<_, Option<i64>>(1).ok().flatten().unwrap_or(0).max(0) as u64,
        kind: text_of(row.get_ref(2)?),
        device,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
        prev: match row.get_ref(5)? {
            ValueRef::Blob(b) => digest_of(b),
            _ => AUDIT_GENESIS,
        },
        hash: match row.get_ref(6)? {
            ValueRef::Blob(b) => digest_of(b),
            _ => AUDIT_GENESIS,
        },
    })
}

/// The bytes of a column that must hold text, or why not.
fn text_bytes<'a>(value: ValueRef<'a>, column: &str, seq: u64) -> Result<&'a [u8], AuditBroken> {
    match value {
        ValueRef::Text(bytes) => Ok(bytes),
        _ => Err(AuditBroken { seq, reason: format!("its {column} is not text"), verified: 0 }),
    }
}

/// Checks one row against the entry before it (`expected_prev`); returns its hash.
fn check_row(row: &rusqlite::Row<'_>, seq: u64, expected_prev: Option<[u8; 32]>) -> Result<[u8; 32], CheckError> {
    let broken = |reason: &str| CheckError::Broken(AuditBroken { seq, reason: reason.into(), verified: 0 });
    let at_ms = match row.get_ref(1)? {
        ValueRef::Integer(n) if n >= 0 => n as u64,
        _ => return Err(broken("its time is not a number of ms")),
    };
    let kind = text_bytes(row.get_ref(2)?, "kind", seq)?;
    let device = match row.get_ref(3)? {
        ValueRef::Null => None,
        other => Some(text_bytes(other, "device", seq)?),
    };
    let detail = text_bytes(row.get_ref(4)?, "detail", seq)?;
    let digest = |i: usize, what: &str| -> Result<[u8; 32], CheckError> {
        match row.get_ref(i)? {
            ValueRef::Blob(b) if b.len() == 32 => Ok(digest_of(b)),
            _ => Err(broken(&format!("its {what} is not 32 bytes"))),
        }
    };
    let prev = digest(5, "prev")?;
    let hash = digest(6, "hash")?;
    if hash_bytes(seq, at_ms, kind, device, detail, &prev) != hash {
        return Err(broken("its content does not match its hash: the entry was changed"));
    }
    match expected_prev {
        Some(expected) if expected != prev => Err(CheckError::Broken(AuditBroken {
            seq,
            reason: format!(
                "its prev is not the hash of entry {}: that entry was changed or replaced",
                seq.saturating_sub(1)
            ),
            verified: 0,
        })),
        _ => Ok(hash),
    }
}

enum CheckError {
    Broken(AuditBroken),
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for CheckError {
    fn from(e: rusqlite::Error) -> CheckError {
        CheckError::Sqlite(e)
    }
}

impl From<AuditBroken> for CheckError {
    fn from(e: AuditBroken) -> CheckError {
        CheckError::Broken(e)
    }
}

/// Walks the whole chain, oldest first, one row in memory at a time.
fn verify(conn: &Connection) -> Result<Result<AuditCheck, AuditBroken>, StoreError> {
    let mut check = AuditCheck { entries: 0, head: AUDIT_GENESIS, first: None, last: None, anchor: AUDIT_GENESIS };
    Ok(match walk(conn, &mut check)? {
        Ok(()) => Ok(check),
        Err(broken) => Err(AuditBroken { verified: check.entries, ..broken }),
    })
}

/// The walk of [`verify`], filling `check` as far as the chain holds.
fn walk(conn: &Connection, check: &mut AuditCheck) -> Result<Result<(), AuditBroken>, StoreError> {
    let meta = read_meta(conn)?;
    let mut stmt = conn.prepare("SELECT seq, at_ms, kind, device, detail, prev, hash FROM audit ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected_seq = meta.floor;
    while let Some(row) = rows.next()? {
        let seq = row.get::<_, i64>(0)?;
        let seq = if seq > 0 { seq as u64 } else { 0 };
        if seq != expected_seq {
            let reason = match (check.last, seq > expected_seq) {
                (None, true) => format!(
                    "the log starts at entry {seq} but should start at {expected_seq}: the oldest entries were removed"
                ),
                (None, false) => format!(
                    "the log should start at entry {expected_seq}, but holds entry {seq}: entries were added or \
                     the log's start was moved"
                ),
                (Some(last), _) => format!("entry {expected_seq} is missing: entry {last} is followed by {seq}"),
            };
            return Ok(Err(AuditBroken { seq: expected_seq.min(seq.max(1)), reason, verified: 0 }));
        }
        // The oldest entry kept is the anchor: only entry 1 has a known prev.
        let expected_prev = match check.last {
            None if seq == 1 => Some(AUDIT_GENESIS),
            None => None,
            Some(_) => Some(check.head),
        };
        match check_row(row, seq, expected_prev) {
            Ok(hash) => {
                if check.first.is_none() {
                    check.first = Some(seq);
                    check.anchor = digest_of(match row.get_ref(5)? {
                        ValueRef::Blob(b) => b,
                        _ => &[],
                    });
                }
                check.head = hash;
                check.last = Some(seq);
                check.entries += 1;
                expected_seq = seq + 1;
            }
            Err(CheckError::Broken(broken)) => return Ok(Err(broken)),
            Err(CheckError::Sqlite(e)) => return Err(e.into()),
        }
    }
    let last = expected_seq - 1;
    if meta.seq > last {
        let reason = if meta.seq == last + 1 {
            format!("entry {} (the newest the store wrote) is missing", meta.seq)
        } else {
            format!("entries {} to {} (the newest the store wrote) are missing", last + 1, meta.seq)
        };
        return Ok(Err(AuditBroken { seq: last + 1, reason, verified: 0 }));
    }
    if meta.seq < last {
        return Ok(Err(AuditBroken {
            seq: meta.seq + 1,
            reason: format!("entries after {}, the newest the store wrote, were added behind its back", meta.seq),
            verified: 0,
        }));
    }
    if check.last.is_some() && meta.head != check.head {
        return Ok(Err(AuditBroken {
            seq: last,
            reason: "the newest entry is not the one the store wrote: it was replaced".into(),
            verified: 0,
        }));
    }
    Ok(Ok(()))
}

impl Store {
    /// Appends an entry to the audit log and waits until it is durable; returns its seq. `kind`
    /// and `detail` are clamped to [`AUDIT_KIND_BYTES_MAX`] and [`AUDIT_DETAIL_BYTES_MAX`], never
    /// refused. Blocks: call it off async threads.
    pub fn audit_append(
        &self,
        kind: &str,
        device: Option<DeviceId>,
        detail: serde_json::Value,
    ) -> Result<u64, StoreError> {
        let entry = NewEntry::new(kind, device, &detail);
        let dropped = self.take_audit_dropped();
        let result = self.call(|reply| crate::writer::Request::Audit { entry, dropped, reply: Some(reply) });
        if result.is_err() {
            self.restore_audit_dropped(dropped);
        }
        result
    }

    /// Queues an entry for the audit log without waiting for the commit or for room in the write
    /// queue, so it never blocks: for hot paths and async threads. The entry commits with the
    /// next group commit, in order with every other write. If the queue is full the entry is
    /// dropped ([`StoreError::QueueFull`]) and counted; the next entry that gets through is
    /// preceded by one of kind [`AUDIT_DROPPED_KIND`] saying how many were lost.
    pub fn audit_append_nowait(
        &self,
        kind: &str,
        device: Option<DeviceId>,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let entry = NewEntry::new(kind, device, &detail);
        let dropped = self.take_audit_dropped();
        let sender = self.requests.lock().expect("lock poisoned").clone().ok_or(StoreError::Closed)?;
        match sender.try_send(crate::writer::Request::Audit { entry, dropped, reply: None }) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(_)) => {
                self.restore_audit_dropped(dropped + 1);
                Err(StoreError::QueueFull)
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => Err(StoreError::Closed),
        }
    }

    fn take_audit_dropped(&self) -> u64 {
        self.audit_dropped.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    fn restore_audit_dropped(&self, n: u64) {
        if n > 0 {
            self.audit_dropped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A page of the audit log, newest first: entries with seq below `before` (all when `None`),
    /// at most `limit` (clamped to 1..=[`AUDIT_PAGE_MAX`]), whose kind starts with `kind_prefix`
    /// when given. Pass the page's `next` as `before` for the following page.
    pub fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
        kind_prefix: Option<&str>,
    ) -> Result<AuditPage, StoreError> {
        let limit = limit.clamp(1, AUDIT_PAGE_MAX);
        let before = before.unwrap_or(u64::MAX).min(i64::MAX as u64) as i64;
        let prefix_chars = kind_prefix.map(|p| p.chars().count() as i64).unwrap_or(0);
        self.readers_with(|conn| {
            // No index on kind: a filtered page scans back from `before` until it has enough,
            // at worst the whole log, which AUDIT_ENTRIES_MAX bounds; appends stay cheap.
            let mut stmt = conn.prepare_cached(
                "SELECT seq, at_ms, kind, device, detail, prev, hash FROM audit
                 WHERE seq < ?1 AND (?2 IS NULL OR substr(kind, 1, ?3) = ?2)
                 ORDER BY seq DESC LIMIT ?4",
            )?;
            let mut entries: Vec<AuditEntry> = stmt
                .query_map(params![before, kind_prefix, prefix_chars, limit as i64 + 1], entry_from_row)?
                .collect::<Result<_, _>>()?;
            let next = if entries.len() > limit {
                entries.truncate(limit);
                entries.last().map(|e| e.seq)
            } else {
                None
            };
            Ok(AuditPage { entries, next })
        })
    }

    /// Walks the whole audit log, oldest first, and checks every link: each entry's hash against
    /// its content, each `prev` against the entry before, no seq missing, and both ends against
    /// what the store recorded (the newest entry written, the oldest kept after pruning). One row
    /// in memory at a time, in one read transaction. The outer error is a failure to read; the
    /// inner one the first broken link.
    pub fn audit_verify(&self) -> Result<Result<AuditCheck, AuditBroken>, StoreError> {
        self.readers_with(|conn| {
            // One snapshot for `meta` and the rows, though the writer goes on appending.
            conn.execute_batch("BEGIN")?;
            let result = verify(conn);
            let _ = conn.execute_batch("COMMIT");
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_covers_every_field_and_lengths_keep_them_apart() {
        let prev = [7u8; 32];
        let base = entry_hash(3, 1000, "peer.refused", Some("DEVICE"), "{}", &prev);
        assert_ne!(base, entry_hash(4, 1000, "peer.refused", Some("DEVICE"), "{}", &prev));
        assert_ne!(base, entry_hash(3, 1001, "peer.refused", Some("DEVICE"), "{}", &prev));
        assert_ne!(base, entry_hash(3, 1000, "peer.refuse", Some("DEVICE"), "{}", &prev));
        assert_ne!(base, entry_hash(3, 1000, "peer.refused", None, "{}", &prev));
        assert_ne!(base, entry_hash(3, 1000, "peer.refused", Some("DEVICE"), "[]", &prev));
        assert_ne!(base, entry_hash(3, 1000, "peer.refused", Some("DEVICE"), "{}", &[0; 32]));
        // Moving bytes from one field to the next changes the hash.
        assert_ne!(entry_hash(1, 0, "ab", Some("c"), "{}", &prev), entry_hash(1, 0, "a", Some("bc"), "{}", &prev));
        assert_ne!(entry_hash(1, 0, "a", Some(""), "{}", &prev), entry_hash(1, 0, "a", None, "{}", &prev));
    }

    #[test]
    fn the_hash_is_the_documented_byte_string() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&17u32.to_be_bytes());
        bytes.extend_from_slice(b"meshsync-audit-v1");
        bytes.extend_from_slice(&1u64.to_be_bytes());
        bytes.extend_from_slice(&1_795_381_137_123u64.to_be_bytes());
        bytes.extend_from_slice(&10u32.to_be_bytes());
        bytes.extend_from_slice(b"group.join");
        bytes.push(0);
        bytes.extend_from_slice(&2u32.to_be_bytes());
        bytes.extend_from_slice(b"{}");
        bytes.extend_from_slice(&[0; 32]);
        let expected: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(entry_hash(1, 1_795_381_137_123, "group.join", None, "{}", &AUDIT_GENESIS), expected);
    }

    #[test]
    fn kinds_are_clamped_never_refused() {
        assert_eq!(clamp_kind("session.ended"), "session.ended");
        assert_eq!(clamp_kind(""), "unknown");
        assert_eq!(clamp_kind("a\nb"), "a?b");
        let long = "é".repeat(100);
        let clamped = clamp_kind(&long);
        assert!(clamped.len() <= AUDIT_KIND_BYTES_MAX && clamped.ends_with('…'), "{clamped}");
        assert!(clamped.starts_with("éé"));
    }

    #[test]
    fn details_are_clamped_to_valid_json_with_a_marker() {
        assert_eq!(clamp_detail(&serde_json::json!({"a": 1})), r#"{"a":1}"#);
        for filler in ["x", "\"", "\u{1}", "é"] {
            let big = serde_json::json!({"text": filler.repeat(10_000)});
            let clamped = clamp_detail(&big);
            assert!(clamped.len() <= AUDIT_DETAIL_BYTES_MAX, "{filler:?}: {} bytes", clamped.len());
            let value: serde_json::Value = serde_json::from_str(&clamped).unwrap();
            assert_eq!(value["truncated"], big.to_string().len());
            assert!(big.to_string().starts_with(value["head"].as_str().unwrap()));
            assert!(value["head"].as_str().unwrap().len() > AUDIT_DETAIL_BYTES_MAX / 8, "{filler:?}: head too short");
        }
    }
}
