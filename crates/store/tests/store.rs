//! The SQLite store through its public API: local writes, reads, lists, remote batches between
//! two real stores on disk, conflicts, atomicity of bad batches, restarts and group commit.

use std::sync::{Arc, Mutex};

use meshsync_core::{Change, DeviceId, Dot, Hlc, Op, Policy, Schema, Value, VersionVector};
use meshsync_store::{Durability, LocalWrite, RemoteBatch, ScopeFilter, Store, StoreError, StoreEvent, StoreOptions};

fn dev(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

fn open(dir: &tempfile::TempDir, name: &str, device: DeviceId) -> Store {
    Store::open(dir.path().join(name), device, StoreOptions::default()).unwrap()
}

fn put(store: &Store, collection: &str, id: &str, fields: &[(&str, Value)]) -> Option<Dot> {
    let fields = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    store
        .write(LocalWrite { collection: collection.into(), id: id.into(), op: Op::Put { fields, scope: None } })
        .unwrap()
        .dot
}

/// Sends `from` everything `to` lacks, the way a sync session will.
fn sync(from: &Store, to: &Store) -> usize {
    let changes: Vec<Change> =
        from.changes_since(&to.version_vector().unwrap(), ScopeFilter::All).unwrap().map(Result::unwrap).collect();
    let n = changes.len();
    to.apply_remote(RemoteBatch::in_order(changes)).unwrap();
    n
}

#[test]
fn put_get_list_with_filters_and_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, "a.db", dev(1));
    for i in 0..25 {
        let kind = if i % 2 == 0 { "tea" } else { "coffee" };
        put(&store, "products", &format!("p{i:02}"), &[("kind", kind.into()), ("n", Value::Int(i))]);
    }
    let doc = store.get("products", "p03").unwrap().unwrap();
    assert_eq!(doc.fields["kind"], Value::from("coffee"));
    assert!(!doc.deleted);
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list("products", &[("kind".into(), "tea".into())], cursor.as_deref(), 4).unwrap();
        assert!(page.records.len() <= 4);
        seen.extend(page.records.iter().map(|r| r.id.clone()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).filter(|i| i % 2 == 0).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(store.list("products", &[], None, 1000).unwrap().records.len(), 25);
    assert!(matches!(store.list("products", &[], Some("zz"), 10), Err(StoreError::BadCursor)));
    assert_eq!(store.record_count().unwrap(), 25);
}

#[test]
fn two_stores_converge_and_conflicts_show_then_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.db", dev(1));
    let b = open(&dir, "b.db", dev(2));
    put(&a, "products", "tea", &[("name", "Tea".into()), ("price", Value::Float(2.5))]);
    assert_eq!(sync(&a, &b), 1);
    assert_eq!(b.get("products", "tea").unwrap().unwrap().fields["name"], Value::from("Tea"));
    // Knowing overwrite: no conflict.
    put(&b, "products", "tea", &[("price", Value::Float(3.0))]);
    sync(&b, &a);
    assert_eq!(a.conflict_count().unwrap(), 0);
    // Concurrent writes: a conflict on both sides, same winner.
    put(&a, "products", "tea", &[("name", "Green tea".into())]);
    put(&b, "products", "tea", &[("name", "Black tea".into())]);
    sync(&a, &b);
    sync(&b, &a);
    assert_eq!(a.canonical_state().unwrap(), b.canonical_state().unwrap());
    let conflicts = a.conflicts(10).unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(b.conflicts(10).unwrap()[0].id, conflicts[0].id);
    let c = &conflicts[0];
    assert_eq!(c.field, "name");
    assert_ne!(c.kept.device, c.lost.device);
    assert_eq!(a.get("products", "tea").unwrap().unwrap().conflicts, 1);
    // Resolve on b with a chosen value; a learns it and the conflict disappears everywhere.
    b.write(LocalWrite {
        collection: "products".into(),
        id: "tea".into(),
        op: Op::Resolve { field: "name".into(), value: Some("Oolong".into()) },
    })
    .unwrap();
    sync(&b, &a);
    for store in [&a, &b] {
        assert_eq!(store.conflict_count().unwrap(), 0);
        let doc = store.get("products", "tea").unwrap().unwrap();
        assert_eq!(doc.fields["name"], Value::from("Oolong"));
        assert_eq!(doc.conflicts, 0);
    }
    assert_eq!(a.canonical_state().unwrap(), b.canonical_state().unwrap());
    // Nothing left to send.
    assert_eq!(sync(&a, &b), 0);
}

#[test]
fn counters_from_two_devices_add_up_and_schemas_replicate() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.db", dev(1));
    let b = open(&dir, "b.db", dev(2));
    a.put_schema("stock", &Schema { fields: [("qty".to_string(), Policy::Counter)].into(), ..Schema::default() })
        .unwrap();
    sync(&a, &b);
    assert_eq!(b.schema("stock").unwrap().unwrap().policy("qty"), Policy::Counter);
    let incr = |s: &Store, by: i64| {
        s.write(LocalWrite {
            collection: "stock".into(),
            id: "tea".into(),
            op: Op::Incr { field: "qty".into(), by: Value::Int(by) },
        })
        .unwrap()
    };
    incr(&a, 10);
    incr(&b, -3);
    incr(&b, -2);
    sync(&a, &b);
    sync(&b, &a);
    for s in [&a, &b] {
        assert_eq!(s.get("stock", "tea").unwrap().unwrap().fields["qty"], Value::Int(5));
    }
}

#[test]
fn a_bad_remote_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.db", dev(1));
    let b = open(&dir, "b.db", dev(2));
    put(&a, "products", "tea", &[("name", "Tea".into())]);
    let good: Vec<Change> =
        a.changes_since(&VersionVector::new(), ScopeFilter::All).unwrap().map(Result::unwrap).collect();
    let before = b.canonical_state().unwrap();
    let vv_before = b.version_vector().unwrap();

    let mut bad_name = good[0].clone();
    bad_name.dot.seq = 2;
    bad_name.collection = "bad name!".into();
    let err = b.apply_remote(RemoteBatch::in_order(vec![good[0].clone(), bad_name])).unwrap_err();
    assert!(matches!(err, StoreError::InvalidChange(_)), "{err}");

    let mut skewed = good[0].clone();
    skewed.dot.seq = 3;
    skewed.hlc = Hlc::new(skewed.hlc.wall_ms() + 3_600_000, 0);
    let err = b.apply_remote(RemoteBatch::in_order(vec![good[0].clone(), skewed])).unwrap_err();
    assert!(matches!(err, StoreError::Clock(_)), "{err}");

    let mut empty = good[0].clone();
    empty.cells.clear();
    assert!(b.apply_remote(RemoteBatch::in_order(vec![empty])).is_err());

    assert_eq!(b.canonical_state().unwrap(), before);
    assert_eq!(b.version_vector().unwrap(), vv_before);
    // The good change alone still applies.
    b.apply_remote(RemoteBatch::in_order(good)).unwrap();
    assert!(b.get("products", "tea").unwrap().is_some());
}

#[test]
fn rejected_local_writes_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.db", dev(1));
    a.put_schema("pairs", &Schema { fields: [("parent".to_string(), Policy::Fww)].into(), ..Schema::default() })
        .unwrap();
    put(&a, "pairs", "x", &[("parent", "P1".into())]);
    let before = a.canonical_state().unwrap();
    let vv = a.version_vector().unwrap();
    let attempts = [
        LocalWrite {
            collection: "pairs".into(),
            id: "x".into(),
            op: Op::Put { fields: vec![("parent".into(), "P2".into())], scope: None },
        },
        LocalWrite { collection: "bad/name".into(), id: "x".into(), op: Op::Delete },
        LocalWrite { collection: "pairs".into(), id: "".into(), op: Op::Delete },
        LocalWrite {
            collection: "pairs".into(),
            id: "x".into(),
            op: Op::Put { fields: vec![("_x".into(), Value::Null)], scope: None },
        },
        LocalWrite {
            collection: "pairs".into(),
            id: "x".into(),
            op: Op::Incr { field: "parent".into(), by: Value::Int(1) },
        },
        LocalWrite { collection: "pairs".into(), id: "nope".into(), op: Op::Delete },
    ];
    for attempt in attempts {
        assert!(a.write(attempt.clone()).is_err(), "{attempt:?} should fail");
    }
    // A batch with one bad write applies none of it.
    let batch = vec![
        LocalWrite {
            collection: "pairs".into(),
            id: "y".into(),
            op: Op::Put { fields: vec![("parent".into(), "P3".into())], scope: None },
        },
        LocalWrite {
            collection: "pairs".into(),
            id: "x".into(),
            op: Op::Put { fields: vec![("parent".into(), "P4".into())], scope: None },
        },
    ];
    assert!(a.write_batch(batch).is_err());
    assert_eq!(a.canonical_state().unwrap(), before);
    assert_eq!(a.version_vector().unwrap(), vv);
    // Same value again is an idempotent no-op, not an error.
    assert_eq!(put(&a, "pairs", "x", &[("parent", "P1".into())]), None);
}

#[test]
fn reopen_keeps_data_clock_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let a = open(&dir, "a.db", dev(1));
        put(&a, "c", "r", &[("v", Value::Int(1))]).unwrap()
    };
    let a = open(&dir, "a.db", dev(1));
    assert_eq!(a.get("c", "r").unwrap().unwrap().fields["v"], Value::Int(1));
    let second = put(&a, "c", "r", &[("v", Value::Int(2))]).unwrap();
    assert_eq!(second.seq, first.seq + 1);
    assert!(a.get("c", "r").unwrap().unwrap().updated > Hlc::ZERO);
    drop(a);
    let err = Store::open(dir.path().join("a.db"), dev(9), StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::WrongDevice { .. }));
    let power = Store::open(
        dir.path().join("p.db"),
        dev(1),
        StoreOptions { durability: Durability::Power, ..StoreOptions::default() },
    )
    .unwrap();
    put(&power, "c", "r", &[("v", Value::Int(1))]).unwrap();
    assert_eq!(power.integrity_check().unwrap(), Ok(()));
}

#[test]
fn change_scan_pages_resume_and_filter_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "a.db", dev(1));
    for i in 0..50 {
        let scope = if i % 5 == 0 {
            Some(Some("warehouse:kitchen".to_string()))
        } else if i % 5 == 1 {
            Some(Some("warehouse:bar".to_string()))
        } else {
            None
        };
        a.write(LocalWrite {
            collection: "items".into(),
            id: format!("i{i}"),
            op: Op::Put { fields: vec![("n".into(), Value::Int(i))], scope },
        })
        .unwrap();
    }
    // Overwrite some: their first writes are superseded and must not be sent.
    for i in 0..10 {
        put(&a, "items", &format!("i{i}"), &[("n", Value::Int(100 + i))]);
    }
    let all: Vec<Change> = a
        .changes_since(&VersionVector::new(), ScopeFilter::All)
        .unwrap()
        .with_page_rows(7)
        .map(Result::unwrap)
        .collect();
    // 50 first writes + 10 overwrites; the overwritten first writes vanish, except the four
    // (i0, i1, i5, i6) whose scope cell they still carry.
    assert_eq!(all.len(), 50 + 10 - 6, "one change per still-referenced write");
    assert!(all.iter().filter(|c| c.dot.seq <= 10).all(|c| c.cells.iter().all(|cell| cell.field == "_scope")));
    assert!(all.windows(2).all(|w| w[0].dot < w[1].dot));
    // Resume from the middle: exactly the rest.
    let mid = all[20].dot;
    let since: VersionVector = [(mid.origin, mid.seq)].into_iter().collect();
    let rest: Vec<Change> = a.changes_since(&since, ScopeFilter::All).unwrap().map(Result::unwrap).collect();
    assert_eq!(rest, all[21..].to_vec());
    // Scope filter: no bar records.
    let mut scan =
        a.changes_since(&VersionVector::new(), ScopeFilter::Scopes(vec!["warehouse:kitchen".into()])).unwrap();
    let kitchen: Vec<Change> = scan.by_ref().map(Result::unwrap).collect();
    // Ten bar records, two of them (i1, i6) with two referenced writes each.
    assert_eq!(kitchen.len(), 54 - 12);
    assert_eq!(scan.skipped_out_of_scope(), 12);
    assert!(kitchen
        .iter()
        .all(|c| a.get("items", &c.record).unwrap().unwrap().scope.as_deref() != Some("warehouse:bar")));
}

#[test]
fn events_reach_the_sink_and_replay_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = seen.clone();
    let a = Store::open_with_sink(
        dir.path().join("a.db"),
        dev(1),
        StoreOptions::default(),
        Box::new(move |events| {
            sink_seen.lock().unwrap().extend(events.iter().cloned());
        }),
    )
    .unwrap();
    put(&a, "c", "one", &[("v", Value::Int(1))]);
    put(&a, "c", "two", &[("v", Value::Int(2))]);
    put(&a, "c", "one", &[("v", Value::Int(3))]);
    let events = seen.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    let StoreEvent::RecordChanged { lsn: first_lsn, .. } = events[0] else { panic!() };
    let replay = a.events_since(first_lsn, 100).unwrap();
    // "two" then "one" (its latest change): nothing after the cursor is missed.
    let ids: Vec<String> = replay
        .iter()
        .map(|e| match e {
            StoreEvent::RecordChanged { id, .. } => id.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(ids, ["two", "one"]);
}

#[test]
fn concurrent_writers_are_all_acknowledged_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(open(&dir, "a.db", dev(1)));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    put(&a, "c", &format!("t{t}-{i}"), &[("v", Value::Int(i))]).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(a.record_count().unwrap(), 1600);
    assert_eq!(a.version_vector().unwrap().get(&dev(1)), 1600);
}
