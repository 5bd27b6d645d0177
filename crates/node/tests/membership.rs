//! A member that bypasses its own node's checks (writes straight into its store) gets nothing
//! past the others: a reader's record changes, a forged membership entry and a self-made invite
//! are refused or ignored by every receiver, and audited there. Two in-process nodes over real
//! mutual TLS on loopback.

use std::time::{Duration, Instant};

use meshsync_core::record::Op;
use meshsync_node::membership::{self, Grant, Invite, MemberEntry, Role};
use meshsync_node::mesh::{InviteOptions, MeshOptions};
use meshsync_node::{audit, Node, Value};
use meshsync_store::LocalWrite;

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

fn options() -> MeshOptions {
    MeshOptions { heartbeat_interval_ms: 500, ..MeshOptions::default() }
}

fn put(node: &Node, collection: &str, id: &str, field: &str, value: Value) {
    let op = Op::Put { fields: vec![(field.into(), value)], scope: None };
    node.store().write(LocalWrite { collection: collection.into(), id: id.into(), op }).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_bypassed_checks_get_nothing_past_the_others() {
    let (da, dr) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(da.path()).unwrap();
    let mesh_a = a.start_mesh(options()).await.unwrap();
    put(&a, "prices", "tea", "price", Value::Float(2.5));
    let (code, _) = mesh_a.create_invite(&InviteOptions { role: Role::Reader, ..InviteOptions::default() }).unwrap();
    let r = Node::open(dr.path()).unwrap();
    r.join(&code).unwrap();
    let mesh_r = r.start_mesh(options()).await.unwrap();
    eventually("both are connected", || mesh_a.connected() == 1 && mesh_r.connected() == 1).await;
    eventually("the reader has the prices", || r.store().get("prices", "tea").unwrap().is_some()).await;
    assert_eq!(r.membership().unwrap().role, Role::Reader);
    assert!(matches!(
        r.put("prices", "tea", serde_json::json!({"price": 0})),
        Err(meshsync_node::NodeError::Forbidden(_))
    ));

    // The reader writes around its node's check.
    put(&r, "prices", "tea", "price", Value::Int(0));
    put(&r, "prices", "coffee", "price", Value::Int(0));
    // A membership entry whose grant was raised to admin after signing.
    let invite_key = meshsync_net::Identity::generate().unwrap();
    let fake = meshsync_net::Identity::generate().unwrap();
    let founder_grant = |role| Grant {
        group: a.group().unwrap().unwrap().id,
        invite_key: invite_key.public_key(),
        role,
        scopes: Vec::new(),
        expires_ms: u64::MAX,
        uses: 9,
        issuer_key: [0; 32],
    };
    let mut altered = MemberEntry::join(
        &Invite::sign(&meshsync_net::Identity::generate().unwrap(), founder_grant(Role::Reader)),
        &invite_key,
        fake.device_id(),
    );
    altered.invite.grant.role = Role::Admin;
    put(
        &r,
        membership::MEMBERS_COLLECTION,
        &fake.device_id().to_string(),
        membership::MEMBER_FIELD,
        Value::Str(membership::encode(&altered)),
    );
    // A well-signed entry from an invite the reader made up itself (it is no admin).
    let other = meshsync_net::Identity::generate().unwrap();
    let self_made = MemberEntry::join(
        &Invite::sign(&meshsync_net::Identity::generate().unwrap(), founder_grant(Role::Admin)),
        &invite_key,
        other.device_id(),
    );
    put(
        &r,
        membership::MEMBERS_COLLECTION,
        &other.device_id().to_string(),
        membership::MEMBER_FIELD,
        Value::Str(membership::encode(&self_made)),
    );

    let reader = r.device_id().to_string();
    eventually("A audits the refused writes", || {
        a.audit_page(None, 100, Some(audit::WRITE_REJECTED))
            .unwrap()
            .entries
            .iter()
            .any(|e| e.detail["origin"] == reader.as_str())
    })
    .await;
    // Give the rest of the reader's changes time to arrive, then check nothing got through.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.store().get("prices", "tea").unwrap().unwrap().fields["price"], Value::Float(2.5));
    assert!(a.store().get("prices", "coffee").unwrap().is_none());
    assert!(
        a.store().get(membership::MEMBERS_COLLECTION, &fake.device_id().to_string()).unwrap().is_none(),
        "forged entry stored"
    );
    let roster = a.roster().unwrap();
    assert!(roster.member(fake.device_id()).is_none());
    assert!(roster.member(other.device_id()).is_none(), "an entry from a non-admin's invite does not count");
    assert_eq!(roster.member(r.device_id()).unwrap().role, Role::Reader);
    // The link stays up: refusing a change is not a reason to drop a member.
    assert_eq!(mesh_a.connected(), 1);
    a.close();
    r.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_invite_admits_nobody_and_says_why() {
    let (da, dj) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Node::open(da.path()).unwrap();
    let mesh_a = a.start_mesh(options()).await.unwrap();
    let (code, _) = mesh_a.create_invite(&InviteOptions { ttl_s: 1, ..InviteOptions::default() }).unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = Node::open(dj.path()).unwrap();
    late.join(&code).unwrap();
    let mesh_late = late.start_mesh(options()).await.unwrap();
    let inviter = a.device_id().to_string();
    eventually("the newcomer learns why it was refused", || {
        mesh_late.peers().iter().any(|p| {
            p.device_id.as_deref() == Some(inviter.as_str())
                && p.last_error.as_deref().is_some_and(|e| e.contains("expired"))
        })
    })
    .await;
    assert_eq!(mesh_a.connected(), 0);
    assert!(a.roster().unwrap().member(late.device_id()).is_none());
    let refused = a.audit_page(None, 100, Some(audit::INVITE_REFUSED)).unwrap();
    assert!(refused.entries.iter().any(|e| e.device == Some(late.device_id().to_string())), "{refused:?}");
    a.close();
    late.close();
}
