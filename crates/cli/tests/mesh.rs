//! Real `meshsync` processes on loopback syncing over mutual TLS: invite and join, three nodes
//! converging with writes at every node, kill -9 of one node while the others write and its
//! catch-up after restart, and a stranger with its own group refused and given nothing.

mod common;

use std::time::Duration;

use common::{client, eventually, json, signal, start, Running};

fn invite(node: &Running) -> String {
    let answer = json(node, &["invite", "--uses", "2"]);
    answer["code"].as_str().expect("invite code").to_string()
}

fn ids(node: &Running, collection: &str) -> Vec<String> {
    let (ok, out, _) = client(node, &["list", collection, "--limit", "1000", "--json"]);
    if !ok {
        return Vec::new();
    }
    let page: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut ids: Vec<String> =
        page["records"].as_array().into_iter().flatten().filter_map(|r| r["id"].as_str().map(str::to_string)).collect();
    ids.sort();
    ids
}

fn stock(node: &Running) -> Option<i64> {
    let (ok, out, _) = client(node, &["get", "products", "tea", "--json"]);
    if !ok {
        return None;
    }
    serde_json::from_str::<serde_json::Value>(&out).ok()?["fields"]["stock"].as_i64()
}

#[test]
fn invite_join_converge_survive_kill_and_catch_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path(), &["--name", "till-a"]);
    assert!(client(&a, &["schema", "products", "stock=counter"]).0);
    let code = invite(&a);
    let b = start(dirs[1].path(), &["--name", "till-b", "--join", &code]);
    let c = start(dirs[2].path(), &["--name", "till-c", "--join", &code]);
    let nodes = [&a, &b, &c];
    // Everyone connects to the inviter and, through peer exchange, to each other.
    for node in nodes {
        assert!(
            eventually(Duration::from_secs(15), || json(node, &["status"])["peers"]["connected"].as_u64() == Some(2)),
            "{} did not connect to both others: {}",
            node.device,
            json(node, &["peers"])
        );
    }
    let group = json(&a, &["status"])["group_id"].clone();
    assert!(group.is_string());
    for node in nodes {
        assert_eq!(json(node, &["status"])["group_id"], group);
    }
    // Writes at every node, including concurrent increments of one counter.
    assert!(client(&a, &["put", "products", "tea", "name=Tea", "stock=10"]).0);
    assert!(eventually(Duration::from_secs(10), || stock(&b) == Some(10) && stock(&c) == Some(10)));
    for (i, node) in nodes.iter().enumerate() {
        for j in 0..10 {
            assert!(client(node, &["put", "items", &format!("n{i}-{j}"), &format!("n={j}")]).0);
        }
        assert!(client(node, &["incr", "products", "tea", "stock", "--", "-1"]).0);
    }
    let expected: Vec<String> = {
        let mut ids: Vec<String> = (0..3).flat_map(|i| (0..10).map(move |j| format!("n{i}-{j}"))).collect();
        ids.sort();
        ids
    };
    for node in nodes {
        assert!(
            eventually(Duration::from_secs(15), || ids(node, "items") == expected && stock(node) == Some(7)),
            "{} did not converge",
            node.device
        );
    }

    // kill -9 of C while A and B keep writing; C catches up after restart.
    signal(&c, libc::SIGKILL);
    drop(c);
    for j in 0..20 {
        assert!(client(&a, &["put", "items", &format!("after-a-{j}"), "x=1"]).0);
        assert!(client(&b, &["put", "items", &format!("after-b-{j}"), "x=1"]).0);
    }
    assert!(client(&b, &["incr", "products", "tea", "stock", "--", "-2"]).0);
    let c = start(dirs[2].path(), &["--name", "till-c"]);
    let all = ids(&a, "items");
    assert_eq!(all.len(), 70);
    assert!(
        eventually(Duration::from_secs(20), || ids(&c, "items") == all && stock(&c) == Some(5)),
        "C did not catch up: {} of 70",
        ids(&c, "items").len()
    );
    assert_eq!(ids(&b, "items"), all);
}

#[test]
fn a_stranger_with_its_own_group_is_refused_and_receives_nothing() {
    let (da, ds) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(da.path(), &["--name", "shop"]);
    assert!(client(&a, &["put", "secrets", "recipe", "sugar=3"]).0);
    let stranger = start(ds.path(), &["--name", "stranger", "--peer", &a.listen]);
    // The stranger reaches A's port, but the membership proof fails on both sides.
    assert!(
        eventually(Duration::from_secs(10), || {
            let peers = json(&stranger, &["peers"]);
            peers["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["last_error"].as_str().is_some_and(|e| e.contains("group") || e.contains("member")))
        }),
        "the stranger's peer table should say why: {}",
        json(&stranger, &["peers"])
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(ids(&stranger, "secrets").is_empty(), "the stranger received data");
    assert_eq!(json(&a, &["status"])["peers"]["connected"], 0);
    assert_eq!(json(&stranger, &["status"])["peers"]["connected"], 0);
}
