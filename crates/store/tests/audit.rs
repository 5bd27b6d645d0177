//! The audit log through the store's public API: appends in order, pages and cursors, the kind
//! filter, the hash chain and every way of tampering with it through raw SQLite (a changed
//! detail, a deleted or reordered entry, a rewritten hash, entries cut from either end),
//! pruning that stays verifiable, clamping, entries that outlive a restart or that a full queue
//! dropped, and the by-hand recipe of docs/api.md.

use meshsync_core::DeviceId;
use meshsync_store::{
    entry_hash, AuditBroken, AuditEntry, Store, StoreError, StoreOptions, AUDIT_DETAIL_BYTES_MAX, AUDIT_DROPPED_KIND,
    AUDIT_GENESIS, AUDIT_KIND_BYTES_MAX,
};
use rusqlite::Connection;
use serde_json::json;

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(StoreOptions::default())
    }

    fn with(options: StoreOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a.db"), dev(1), options).unwrap();
        Fixture { dir, store }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("a.db")
    }

    /// Appends `n` entries: kinds alternate between `session.ended` and `connection.refused`.
    fn fill(&self, n: u64) {
        for i in 1..=n {
            let kind = if i % 2 == 0 { "connection.refused" } else { "session.ended" };
            let seq = self.store.audit_append(kind, Some(dev(i as u8)), json!({"i": i})).unwrap();
            assert_eq!(seq, i, "seqs are 1, 2, ... in append order");
        }
    }

    /// A raw connection to the database, as someone tampering with the file would use.
    fn raw(&self) -> Connection {
        Connection::open(self.path()).unwrap()
    }

    fn broken(&self) -> AuditBroken {
        match self.store.audit_verify().unwrap() {
            Ok(check) => panic!("the chain still verifies: {check:?}"),
            Err(broken) => broken,
        }
    }

    fn everything(&self) -> Vec<AuditEntry> {
        let mut out = Vec::new();
        let mut before = None;
        loop {
            let page = self.store.audit_page(before, 1000, None).unwrap();
            out.extend(page.entries);
            match page.next {
                Some(next) => before = Some(next),
                None => return out,
            }
        }
    }
}

#[test]
fn entries_page_newest_first_with_a_cursor() {
    let fx = Fixture::new();
    assert_eq!(fx.store.audit_page(None, 10, None).unwrap().entries, vec![]);
    fx.fill(25);
    let mut seen = Vec::new();
    let mut before = None;
    let mut pages = 0;
    loop {
        let page = fx.store.audit_page(before, 10, None).unwrap();
        assert!(page.entries.len() <= 10);
        seen.extend(page.entries.iter().map(|e| e.seq));
        pages += 1;
        match page.next {
            Some(next) => {
                assert_eq!(Some(next), page.entries.last().map(|e| e.seq), "next is the last seq shown");
                before = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, (1..=25).rev().collect::<Vec<u64>>());
    assert_eq!(pages, 3);
    // A page that ends exactly at the oldest entry has no next.
    let page = fx.store.audit_page(Some(11), 10, None).unwrap();
    assert_eq!(page.entries.len(), 10);
    assert_eq!(page.next, None);

    let newest = &fx.store.audit_page(None, 1, None).unwrap().entries[0];
    assert_eq!(newest.seq, 25);
    assert_eq!(newest.kind, "session.ended");
    assert_eq!(newest.device, Some(dev(25).to_string()));
    assert_eq!(newest.detail, json!({"i": 25}));
    let second = &fx.store.audit_page(Some(25), 1, None).unwrap().entries[0];
    assert_eq!(newest.prev, second.hash, "each entry holds the hash of the one before");
    assert_eq!(
        newest.hash,
        entry_hash(25, newest.at_ms, &newest.kind, newest.device.as_deref(), r#"{"i":25}"#, &newest.prev)
    );
    // Limits are clamped, never refused.
    assert_eq!(fx.store.audit_page(None, 0, None).unwrap().entries.len(), 1);
    assert_eq!(fx.store.audit_page(Some(0), 10, None).unwrap().entries, vec![]);
    assert_eq!(fx.store.audit_page(Some(u64::MAX), 5000, None).unwrap().entries.len(), 25);
}

#[test]
fn the_kind_filter_matches_a_prefix() {
    let fx = Fixture::new();
    fx.fill(10);
    fx.store.audit_append("connection", None, json!(null)).unwrap();
    let refused = fx.store.audit_page(None, 3, Some("connection.refused")).unwrap();
    assert_eq!(refused.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![10, 8, 6]);
    let rest = fx.store.audit_page(refused.next, 3, Some("connection.refused")).unwrap();
    assert_eq!(rest.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4, 2]);
    assert_eq!(rest.next, None);
    let family = fx.store.audit_page(None, 100, Some("connection")).unwrap();
    assert_eq!(family.entries.len(), 6, "a family prefix matches every kind in it");
    assert_eq!(family.entries[0].device, None);
    assert_eq!(fx.store.audit_page(None, 100, Some("session.")).unwrap().entries.len(), 5);
    assert_eq!(fx.store.audit_page(None, 100, Some("nothing")).unwrap().entries, vec![]);
    assert_eq!(fx.store.audit_page(None, 100, Some("%")).unwrap().entries, vec![], "no LIKE wildcards");
}

#[test]
fn a_fresh_chain_verifies_and_its_head_is_the_newest_hash() {
    let fx = Fixture::new();
    let empty = fx.store.audit_verify().unwrap().unwrap();
    assert_eq!((empty.entries, empty.head, empty.first, empty.last), (0, AUDIT_GENESIS, None, None));
    fx.fill(40);
    let check = fx.store.audit_verify().unwrap().unwrap();
    assert_eq!(check.entries, 40);
    assert_eq!((check.first, check.last), (Some(1), Some(40)));
    assert_eq!(check.anchor, AUDIT_GENESIS);
    assert_eq!(check.head, fx.store.audit_page(None, 1, None).unwrap().entries[0].hash);
    assert_eq!(fx.everything().last().unwrap().prev, AUDIT_GENESIS, "entry 1 follows 32 zero bytes");
}

#[test]
fn a_changed_detail_is_found_at_its_entry() {
    let fx = Fixture::new();
    fx.fill(10);
    fx.raw().execute("UPDATE audit SET detail = '{\"i\":99}' WHERE seq = 6", []).unwrap();
    let broken = fx.broken();
    assert_eq!((broken.seq, broken.verified), (6, 5), "{broken}");
    assert!(broken.reason.contains("changed"), "{broken}");
    // The page still shows the damaged entry as it is.
    assert_eq!(fx.store.audit_page(Some(7), 1, None).unwrap().entries[0].detail, json!({"i": 99}));
}

#[test]
fn every_column_is_covered() {
    for (column, value) in [
        ("at_ms", "at_ms + 1"),
        ("kind", "'write.rejected'"),
        ("device", "NULL"),
        ("detail", "'{}'"),
        ("prev", "zeroblob(32)"),
        ("hash", "zeroblob(32)"),
        ("detail", "x'7b7d'"),
        ("at_ms", "'soon'"),
        ("prev", "x'00'"),
    ] {
        let fx = Fixture::new();
        fx.fill(5);
        fx.raw().execute(&format!("UPDATE audit SET {column} = {value} WHERE seq = 3"), []).unwrap();
        assert_eq!(fx.broken().seq, 3, "{column} = {value}");
        // Damaged rows still page, they do not fail the read.
        assert_eq!(fx.everything().len(), 5);
    }
}

#[test]
fn a_deleted_middle_entry_is_found_missing() {
    let fx = Fixture::new();
    fx.fill(10);
    fx.raw().execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    let broken = fx.broken();
    assert_eq!(broken.seq, 4, "{broken}");
    assert!(broken.reason.contains("missing"), "{broken}");
}

#[test]
fn renumbering_after_a_deletion_is_found() {
    let fx = Fixture::new();
    fx.fill(10);
    let raw = fx.raw();
    raw.execute("DELETE FROM audit WHERE seq = 4", []).unwrap();
    for seq in 5..=10 {
        raw.execute("UPDATE audit SET seq = ?1 WHERE seq = ?2", [seq - 1, seq]).unwrap();
    }
    raw.execute("UPDATE meta SET value = 9 WHERE key = 'audit_seq'", []).unwrap();
    // Entry 4 is now the old entry 5, whose hash covers seq 5.
    assert_eq!(fx.broken().seq, 4);
}

#[test]
fn reordered_entries_are_found() {
    let fx = Fixture::new();
    fx.fill(10);
    // Swap entries 3 and 7 (every column but seq), as if their order had been changed.
    fx.raw()
        .execute_batch(
            "UPDATE audit SET seq = -3 WHERE seq = 3;
             UPDATE audit SET seq = 3 WHERE seq = 7;
             UPDATE audit SET seq = 7 WHERE seq = -3;",
        )
        .unwrap();
    let broken = fx.broken();
    assert_eq!(broken.seq, 3, "{broken}");
}

#[test]
fn a_rewritten_entry_with_a_recomputed_hash_breaks_the_next_link() {
    let fx = Fixture::new();
    fx.fill(10);
    let entry = fx.store.audit_page(Some(6), 1, None).unwrap().entries.remove(0);
    let forged = entry_hash(5, entry.at_ms, &entry.kind, entry.device.as_deref(), "{\"i\":0}", &entry.prev);
    fx.raw().execute("UPDATE audit SET detail = '{\"i\":0}', hash = ?1 WHERE seq = 5", [&forged[..]]).unwrap();
    let broken = fx.broken();
    assert_eq!(broken.seq, 6, "{broken}");
    assert!(broken.reason.contains("entry 5"), "{broken}");
}

#[test]
fn entries_cut_from_either_end_are_found() {
    let fx = Fixture::new();
    fx.fill(10);
    fx.raw().execute("DELETE FROM audit WHERE seq >= 9", []).unwrap();
    let broken = fx.broken();
    assert_eq!(broken.seq, 9, "{broken}");
    assert!(broken.reason.contains("missing"), "{broken}");

    let fx = Fixture::new();
    fx.fill(10);
    fx.raw().execute("DELETE FROM audit WHERE seq <= 2", []).unwrap();
    let broken = fx.broken();
    assert_eq!(broken.seq, 1, "{broken}");
    assert!(broken.reason.contains("oldest"), "{broken}");

    let fx = Fixture::new();
    fx.fill(3);
    fx.raw().execute("DELETE FROM audit", []).unwrap();
    assert_eq!(fx.broken().seq, 1);
}

#[test]
fn pruning_keeps_the_newest_entries_and_a_verifiable_chain() {
    let fx = Fixture::with(StoreOptions { audit_entries_max: 200, ..StoreOptions::default() });
    fx.fill(450);
    let check = fx.store.audit_verify().unwrap().unwrap();
    assert!(check.entries <= 200 && check.entries >= 198, "{check:?}");
    assert_eq!(check.last, Some(450));
    assert_eq!(check.first, Some(450 - check.entries + 1));
    assert_ne!(check.anchor, AUDIT_GENESIS, "the oldest kept entry anchors the chain");
    let entries = fx.everything();
    assert_eq!(entries.len() as u64, check.entries);
    assert_eq!(entries.last().unwrap().prev, check.anchor);

    // Tampering is still found after pruning, and so is cutting past the pruning point.
    let first = check.first.unwrap();
    fx.raw().execute("UPDATE audit SET detail = '[]' WHERE seq = ?1", [first as i64 + 3]).unwrap();
    assert_eq!(fx.broken().seq, first + 3);
    fx.raw().execute("DELETE FROM audit WHERE seq <= ?1", [first as i64 + 3]).unwrap();
    assert_eq!(fx.broken().seq, first);
}

#[test]
fn entries_survive_a_restart_and_the_chain_goes_on() {
    let fx = Fixture::new();
    fx.fill(5);
    for i in 0..20 {
        fx.store.audit_append_nowait("write.rejected", None, json!({"n": i})).unwrap();
    }
    let path = fx.path();
    fx.store.close();
    drop(fx.store);
    let store = Store::open(&path, dev(1), StoreOptions::default()).unwrap();
    let page = store.audit_page(None, 100, None).unwrap();
    assert_eq!(page.entries.len(), 25, "fire-and-forget entries were committed before the close");
    assert_eq!(page.entries[0].detail, json!({"n": 19}), "in the order they were queued");
    assert_eq!(store.audit_append("session.ended", None, json!({})).unwrap(), 26);
    let check = store.audit_verify().unwrap().unwrap();
    assert_eq!((check.entries, check.last), (26, Some(26)));
}

#[test]
fn fire_and_forget_entries_commit_in_order_with_waiting_ones() {
    let fx = Fixture::new();
    for i in 0..100 {
        fx.store.audit_append_nowait("session.ended", Some(dev(2)), json!({"i": i})).unwrap();
    }
    // A waiting append commits after every entry queued before it.
    assert_eq!(fx.store.audit_append("join", None, json!({})).unwrap(), 101);
    let entries = fx.everything();
    let order: Vec<u64> = entries.iter().rev().take(100).map(|e| e.detail["i"].as_u64().unwrap()).collect();
    assert_eq!(order, (0..100).collect::<Vec<u64>>());
    assert!(entries.iter().all(|e| e.kind != AUDIT_DROPPED_KIND));
    assert_eq!(fx.store.audit_verify().unwrap().unwrap().entries, 101);
}

#[test]
fn oversized_kinds_and_details_are_clamped_with_a_marker() {
    let fx = Fixture::new();
    let kind = "k".repeat(500);
    let detail = json!({"blob": "x".repeat(100_000)});
    fx.store.audit_append(&kind, None, detail.clone()).unwrap();
    fx.store.audit_append("", None, json!(null)).unwrap();
    let entries = fx.everything();
    let big = &entries[1];
    assert!(big.kind.len() <= AUDIT_KIND_BYTES_MAX && big.kind.ends_with('…'), "{}", big.kind);
    assert_eq!(big.detail["truncated"], detail.to_string().len());
    assert!(big.detail.to_string().len() <= AUDIT_DETAIL_BYTES_MAX);
    assert!(detail.to_string().starts_with(big.detail["head"].as_str().unwrap()));
    assert_eq!(entries[0].kind, "unknown");
    assert_eq!(entries[0].detail, json!(null));
    assert!(fx.store.audit_verify().unwrap().is_ok());
}

#[test]
fn the_sqlite_recipe_in_the_docs_recomputes_every_hash() {
    // The query of docs/api.md ("To check by hand"), taken from the page itself so the two
    // cannot drift apart: it must rebuild the exact bytes `entry_hash` hashes.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md")).unwrap();
    let start = docs.find("\"SELECT seq, lower(hex(prev))").expect("the recipe's query in docs/api.md") + 1;
    let end = start + docs[start..].find("ORDER BY seq\"").unwrap() + "ORDER BY seq".len();
    let query = &docs[start..end];
    let fx = Fixture::new();
    fx.fill(4);
    fx.store.audit_append("group.joined", None, json!({"name": "caisse \"é\" ☕"})).unwrap();
    let raw = fx.raw();
    let mut stmt = raw.prepare(query).unwrap();
    let rows: Vec<(i64, String, String, String)> =
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 5);
    let mut last = "0".repeat(64);
    for (seq, prev, hash, preimage) in rows {
        assert_eq!(prev, last, "entry {seq} links to the one before");
        let bytes: Vec<u8> =
            (0..preimage.len()).step_by(2).map(|i| u8::from_str_radix(&preimage[i..i + 2], 16).unwrap()).collect();
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, hash, "entry {seq}");
        last = hash;
    }
}

#[test]
fn entries_dropped_on_a_full_queue_are_counted_in_the_log() {
    let fx = Fixture::new();
    // Another connection holds the write lock, so the writer waits and its queue fills.
    let raw = fx.raw();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut dropped = 0u64;
    for i in 0..6000 {
        match fx.store.audit_append_nowait("session.ended", None, json!({"i": i})) {
            Ok(()) => {}
            Err(StoreError::QueueFull) => dropped += 1,
            Err(e) => panic!("{e}"),
        }
    }
    raw.execute_batch("COMMIT").unwrap();
    assert!(dropped > 0, "the queue never filled");
    let seq = fx.store.audit_append("connection.refused", None, json!({})).unwrap();
    assert_eq!(seq, 6000 - dropped + 2, "every queued entry, the count of the dropped ones, this one");
    let page = fx.store.audit_page(None, 2, None).unwrap();
    assert_eq!(page.entries[0].kind, "connection.refused");
    assert_eq!(page.entries[1].kind, AUDIT_DROPPED_KIND);
    assert_eq!(page.entries[1].detail, json!({"entries": dropped}));
    assert!(fx.store.audit_verify().unwrap().is_ok());
}
