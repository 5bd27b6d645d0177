//! The embedding API end to end on real data dirs: every operation, the errors an app sees,
//! subscriptions, and two nodes exchanging changes through their stores.

use meshsync_node::{Event, ListQuery, Node, NodeError, Policy, Schema, StoreEvent, Value};
use meshsync_store::{RemoteBatch, ScopeFilter};
use serde_json::json;

fn exchange(from: &Node, to: &Node) {
    let vv = to.store().version_vector().unwrap();
    let changes = from.store().changes_since(&vv, ScopeFilter::All).unwrap().map(Result::unwrap).collect();
    to.store().apply_remote(RemoteBatch::in_order(changes)).unwrap();
}

#[test]
fn every_operation_through_the_embedding_api() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).unwrap();
    node.declare_schema(
        "products",
        Schema { fields: [("stock".to_string(), Policy::Counter)].into(), ..Schema::default() },
    )
    .unwrap();
    node.declare_schema("sales", Schema { append_only: true, ..Schema::default() }).unwrap();
    assert_eq!(node.schema("products").unwrap().policy("stock"), Policy::Counter);

    let tea = node.put("products", "tea", json!({"name": "Tea", "price": 2.5, "_scope": "shop:1"})).unwrap();
    assert_eq!(tea.scope.as_deref(), Some("shop:1"));
    node.incr("products", "tea", "stock", json!(10)).unwrap();
    let tea = node.incr("products", "tea", "stock", json!(-3)).unwrap();
    assert_eq!(tea.fields["stock"], Value::Int(7));
    // Setting a counter adds the difference.
    let tea = node.put("products", "tea", json!({"stock": 20})).unwrap();
    assert_eq!(tea.fields["stock"], Value::Int(20));

    let sale = node.append("sales", None, json!({"product": "tea", "qty": 2})).unwrap();
    assert!(!sale.id.is_empty());
    node.append("sales", Some("s1"), json!({"qty": 1})).unwrap();
    node.append("sales", Some("s1"), json!({"qty": 1})).unwrap();
    assert!(matches!(node.append("sales", Some("s1"), json!({"qty": 2})), Err(NodeError::Rejected(_))));
    assert!(matches!(node.delete("sales", "s1"), Err(NodeError::Rejected(_))));

    node.put("products", "coffee", json!({"name": "Coffee", "kind": "hot"})).unwrap();
    node.put("products", "juice", json!({"name": "Juice", "kind": "cold"})).unwrap();
    let hot = node
        .list("products", &ListQuery { filters: vec![("kind".into(), json!("hot"))], ..ListQuery::default() })
        .unwrap();
    assert_eq!(hot.records.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["coffee"]);
    let page = node.list("products", &ListQuery { limit: 2, ..ListQuery::default() }).unwrap();
    assert_eq!(page.records.len(), 2);
    let rest = node.list("products", &ListQuery { limit: 2, cursor: page.next, ..ListQuery::default() }).unwrap();
    assert_eq!(rest.records.len(), 1);
    assert!(rest.next.is_none());

    node.delete("products", "juice").unwrap();
    assert!(node.get("products", "juice").unwrap().is_none());
    assert!(matches!(node.delete("products", "juice"), Err(NodeError::NotFound { .. })));

    for bad in [json!([1]), json!({"_secret": 1}), json!({"": 1}), json!({"_scope": 5})] {
        assert!(matches!(node.put("products", "x", bad.clone()), Err(NodeError::Invalid(_))), "{bad}");
    }
    assert!(matches!(node.put("bad name", "x", json!({"a": 1})), Err(NodeError::Invalid(_))));
    assert!(matches!(node.put("_schemas", "x", json!({"a": 1})), Err(NodeError::Invalid(_))));
    assert!(matches!(node.incr("products", "tea", "name", json!(1)), Err(NodeError::Invalid(_))));
    assert!(matches!(node.incr("products", "tea", "stock", json!("x")), Err(NodeError::Invalid(_))));
    assert!(matches!(node.resolve("nope", None), Err(NodeError::UnknownConflict(_))));
}

#[test]
fn conflicts_between_two_nodes_are_listed_and_resolved() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (Node::open(da.path()).unwrap(), Node::open(db.path()).unwrap());
    assert_ne!(a.device_id(), b.device_id());
    a.put("products", "tea", json!({"price": 2.5})).unwrap();
    exchange(&a, &b);
    a.put("products", "tea", json!({"price": 3.0})).unwrap();
    b.put("products", "tea", json!({"price": 3.5})).unwrap();
    let mut events = a.subscribe();
    exchange(&b, &a);
    exchange(&a, &b);
    let conflicts = a.conflicts(10).unwrap();
    assert_eq!(conflicts.len(), 1);
    let detected = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, Event::Store(StoreEvent::ConflictDetected { .. })));
    assert!(detected, "conflict.detected event");
    let record = b.resolve(&conflicts[0].id, Some(json!(3.25))).unwrap();
    assert_eq!(record.conflicts, 0);
    exchange(&b, &a);
    assert!(a.conflicts(10).unwrap().is_empty());
    assert_eq!(a.get("products", "tea").unwrap().unwrap().fields["price"], Value::Float(3.25));
}

#[test]
fn subscribers_see_changes_and_can_resume_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).unwrap();
    let mut events = node.subscribe();
    let first = node.put("c", "a", json!({"v": 1})).unwrap();
    node.put("c", "b", json!({"v": 2})).unwrap();
    match events.try_recv().unwrap() {
        Event::Store(StoreEvent::RecordChanged { id, local, lsn, .. }) => {
            assert_eq!(id, "a");
            assert!(local);
            assert_eq!(lsn, first.lsn);
        }
        other => panic!("unexpected {other:?}"),
    }
    let missed = node.events_since(first.lsn, 10).unwrap();
    assert_eq!(missed.len(), 1);
    let message = node.send_message(None, "print-receipt", json!({"sale": "s1"})).unwrap();
    let got = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    });
    assert_eq!(got, Some(message));
    assert!(node.send_message(None, "", json!(null)).is_err());
}

#[test]
fn the_device_id_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let id = Node::open(dir.path()).unwrap().device_id();
    assert_eq!(Node::open(dir.path()).unwrap().device_id(), id);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("identity.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn audit_entries_are_queued_without_waiting_paged_and_verified() {
    use meshsync_node::{audit, DeviceId};
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).unwrap();
    // Joining a group records who invited us (never the code: it carries the group key).
    let admin = meshsync_net::Identity::generate().unwrap();
    let inviter = admin.device_id();
    let group = meshsync_node::group::Group::generate(admin.public_key());
    let role = meshsync_node::membership::Role::Writer;
    let code = group.invite(&admin, role, Vec::new(), 1, u64::MAX, &["192.168.1.20:7710".into()]);
    node.join(&code).unwrap();
    node.join(&code).unwrap(); // Already a member: nothing new to record.
    let peer = DeviceId([9; 16]);
    for i in 0..5 {
        node.audit(audit::SESSION_ENDED, Some(peer), json!({"received": i, "sent": 0}));
    }
    node.audit(audit::CONNECTION_REFUSED, Some(peer), json!({"addr": "10.0.0.9:7710", "reason": "bad proof"}));
    // A waiting append commits after everything queued before it.
    node.store().audit_append(audit::CLOCK_SKEW, Some(peer), json!({"ahead_ms": 90_000})).unwrap();

    let page = node.audit_page(None, 0, None).unwrap();
    let kinds: Vec<&str> = page.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds[..3], [audit::CLOCK_SKEW, audit::CONNECTION_REFUSED, audit::SESSION_ENDED]);
    assert_eq!(kinds.len(), 8);
    let joined = page.entries.last().unwrap();
    assert_eq!((joined.seq, joined.kind.as_str()), (1, audit::JOIN));
    assert_eq!(joined.device, Some(inviter.to_string()));
    assert_eq!(joined.detail["addrs"], json!(["192.168.1.20:7710"]));
    assert!(!joined.detail.to_string().contains(&code[5..20]), "the invite code stays out of the log");

    let sessions = node.audit_page(None, 3, Some("session.")).unwrap();
    assert_eq!(sessions.entries.len(), 3);
    let older = node.audit_page(sessions.next, 3, Some("session.")).unwrap();
    assert_eq!(older.entries.len(), 2);
    assert_eq!(older.next, None);
    assert!(matches!(node.audit_page(None, 1001, None), Err(NodeError::Invalid(_))));

    let check = node.audit_verify().unwrap().unwrap();
    assert_eq!((check.entries, check.head), (8, page.entries[0].hash));
    node.close();
    // After the store closed, auditing is a logged no-op, not an error or a panic.
    node.audit(audit::SESSION_ENDED, None, json!({}));
}
