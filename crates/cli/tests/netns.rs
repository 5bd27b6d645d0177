//! Discovery between real `meshsync` processes on separate hosts, each host a network namespace
//! (see `common/netns.rs`): three hosts on one bridge find each other by mDNS with no addresses
//! given and converge, and find each other again after every host is readdressed; with multicast
//! dropped by nftables the broadcast beacon still joins them; two subnets behind a router meet
//! only through the rendezvous, which learns nothing of their data, and keep syncing after it
//! is killed.
//!
//! Each test prints `FIGURE` lines (run with `--nocapture`) that BENCHMARKS.md quotes.

mod common;

use std::time::{Duration, Instant};

use common::netns::Lab;
use common::{client, eventually, json, start_in, Running};
use serde_json::Value;

fn peers(node: &Running) -> Vec<Value> {
    json(node, &["peers"])["peers"].as_array().cloned().unwrap_or_default()
}

fn connected(node: &Running) -> u64 {
    json(node, &["status"])["peers"]["connected"].as_u64().unwrap_or(0)
}

/// Every source through which `node` knows `other`.
fn sources(node: &Running, other: &Running) -> Vec<String> {
    peers(node)
        .iter()
        .filter(|p| p["device_id"].as_str() == Some(other.device.as_str()))
        .flat_map(|p| p["sources"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn has_record(node: &Running, id: &str) -> bool {
    client(node, &["get", "notes", id, "--json"]).0
}

/// An invite code that carries no address: the new device must find the group by discovery.
fn invite_without_addrs(node: &Running) -> String {
    let answer = json(node, &["invite", "--no-addrs", "--uses", "10"]);
    answer["code"].as_str().expect("code").to_string()
}

fn node_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--listen", "0.0.0.0:7710", "--name", name, "--log", "warn"];
    args.extend_from_slice(extra);
    args
}

/// Starts `h1` with `extra`, then the others joining it with an address-less invite; returns the
/// nodes and the time from starting the joiners to a fully connected mesh.
fn start_mesh(hosts: &[String], dirs: &[tempfile::TempDir], extra: &[&str]) -> (Vec<Running>, Duration) {
    let first = start_in(Some(&hosts[0]), dirs[0].path(), &node_args("h1", extra));
    let code = invite_without_addrs(&first);
    let started = Instant::now();
    let mut nodes = vec![first];
    for (i, host) in hosts.iter().enumerate().skip(1) {
        let name = format!("h{}", i + 1);
        let mut args = node_args(&name, extra);
        args.extend(["--join", code.as_str()]);
        nodes.push(start_in(Some(host), dirs[i].path(), &args));
    }
    let want = hosts.len() as u64 - 1;
    let ok = eventually(Duration::from_secs(20), || nodes.iter().all(|n| connected(n) == want));
    let took = started.elapsed();
    assert!(ok, "the mesh did not connect: {:?}", nodes.iter().map(|n| json(n, &["peers"])).collect::<Vec<_>>());
    (nodes, took)
}

/// Writes one record at every node and waits until every node has all of them.
fn write_everywhere_and_converge(nodes: &[Running], round: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let ids: Vec<String> = (0..nodes.len()).map(|i| format!("{round}-{i}")).collect();
    for (node, id) in nodes.iter().zip(&ids) {
        assert!(client(node, &["put", "notes", id, &format!("by={}", node.device)]).0);
    }
    let ok = eventually(limit, || nodes.iter().all(|n| ids.iter().all(|id| has_record(n, id))));
    assert!(ok, "round {round} did not converge: {:?}", nodes.iter().map(|n| json(n, &["peers"])).collect::<Vec<_>>());
    started.elapsed()
}

#[test]
fn three_hosts_find_each_other_by_mdns_and_again_after_readdressing() {
    let Some(mut lab) = Lab::new("mdns") else { return };
    let switch = lab.switch("sw");
    let hosts: Vec<String> =
        (1..=3).map(|i| lab.host_on_switch(&format!("h{i}"), &switch, &format!("10.77.1.{i}/24"))).collect();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // mDNS only: no beacon, no static peers, invites without addresses.
    let (nodes, took) = start_mesh(&hosts, &dirs, &["--no-beacon"]);
    println!("FIGURE mdns.connected_mesh_of_3_ms {}", took.as_millis());
    // Whoever dialed first did it through mDNS; the other side's browse reports soon after.
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.device != a.device) {
            let found = eventually(Duration::from_secs(5), || sources(a, b).contains(&"mdns".to_string()));
            assert!(found, "{} knows {} only via {:?}", a.device, b.device, sources(a, b));
        }
    }
    write_everywhere_and_converge(&nodes, "before", Duration::from_secs(10));

    // Every host gets a new address; the old ones are gone.
    for (i, host) in hosts.iter().enumerate() {
        lab.sh(host, &format!("ip addr flush dev eth0 && ip addr add 10.77.1.{}/24 dev eth0", i + 11));
    }
    let took = write_everywhere_and_converge(&nodes, "after", Duration::from_secs(20));
    println!("FIGURE mdns.rediscovery_after_readdressing_ms {}", took.as_millis());
    for node in &nodes {
        assert!(eventually(Duration::from_secs(10), || connected(node) == 2), "{}", json(node, &["peers"]));
        for peer in peers(node) {
            let first = peer["addrs"][0].as_str().unwrap_or_default().to_string();
            assert!(first.starts_with("10.77.1.1"), "{} still prefers an old address: {peer}", node.device);
        }
    }
}

#[test]
fn the_beacon_finds_peers_when_multicast_is_dropped() {
    let Some(mut lab) = Lab::new("beacon") else { return };
    let switch = lab.switch("sw");
    let hosts: Vec<String> =
        (1..=3).map(|i| lab.host_on_switch(&format!("h{i}"), &switch, &format!("10.78.1.{i}/24"))).collect();
    for host in &hosts {
        lab.drop_multicast(host);
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // mDNS stays on (and is dropped by the firewall); the beacon must do the work.
    let (nodes, took) = start_mesh(&hosts, &dirs, &[]);
    println!("FIGURE beacon.connected_mesh_of_3_ms {}", took.as_millis());
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.device != a.device) {
            let found = eventually(Duration::from_secs(8), || sources(a, b).contains(&"beacon".to_string()));
            let sources = sources(a, b);
            assert!(found, "{} knows {} via {sources:?}", a.device, b.device);
            assert!(!sources.contains(&"mdns".to_string()), "multicast got through: {sources:?}");
        }
    }
    write_everywhere_and_converge(&nodes, "beacon", Duration::from_secs(10));
}

#[test]
fn two_subnets_meet_only_through_the_rendezvous_and_keep_syncing_without_it() {
    let Some(mut lab) = Lab::new("rdv") else { return };
    // h1 on 10.79.1.0/24, h2 on 10.79.2.0/24, a router between them running the phone book.
    let router = lab.ns("r");
    let h1 = lab.ns("h1");
    let h2 = lab.ns("h2");
    lab.wire(&h1, "eth0", "10.79.1.2/24", &router, "to-h1", "10.79.1.1/24");
    lab.wire(&h2, "eth0", "10.79.2.2/24", &router, "to-h2", "10.79.2.1/24");
    lab.sh(&router, "sysctl -qw net.ipv4.ip_forward=1");
    lab.sh(&h1, "ip route add default via 10.79.1.1");
    lab.sh(&h2, "ip route add default via 10.79.2.1");
    let rdv_dir = tempfile::tempdir().unwrap();
    let mut rendezvous = common::command(Some(&router))
        .args(["rendezvous", "--listen", "10.79.1.1:7790", "--data-dir", rdv_dir.path().to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the rendezvous");
    // It prints its health URL once it listens.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(rendezvous.stdout.take().unwrap()));
    let ready = lines.by_ref().map_while(Result::ok).any(|line| line.contains("/health"));
    assert!(ready, "the rendezvous did not start");
    std::thread::spawn(move || lines.for_each(drop));
    let url = "http://10.79.1.1:7790";

    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let extra = ["--rendezvous", url];
    let (nodes, took) = start_mesh(&[h1.clone(), h2.clone()], &dirs, &extra);
    println!("FIGURE rendezvous.connected_across_subnets_ms {}", took.as_millis());
    let (a, b) = (&nodes[0], &nodes[1]);
    for (x, y) in [(a, b), (b, a)] {
        let found = eventually(Duration::from_secs(5), || sources(x, y).contains(&"rendezvous".to_string()));
        let sources = sources(x, y);
        assert!(found, "{} knows {} via {sources:?}", x.device, y.device);
        for local in ["mdns", "beacon", "static"] {
            assert!(!sources.iter().any(|s| s == local), "{local} crossed the router: {sources:?}");
        }
    }
    let marker = "tea-price-4711-never-leaves-the-mesh";
    assert!(client(a, &["put", "notes", "secret", &format!("text={marker}")]).0);
    assert!(eventually(Duration::from_secs(10), || has_record(b, "secret")));

    // The phone book holds registrations only: no record, no group id, no group secret.
    let _ = rendezvous.kill();
    let _ = rendezvous.wait();
    let group = std::fs::read_to_string(dirs[0].path().join("group.key")).unwrap();
    let mut stored = String::new();
    for entry in std::fs::read_dir(rdv_dir.path()).unwrap() {
        stored.push_str(&String::from_utf8_lossy(&std::fs::read(entry.unwrap().path()).unwrap()));
    }
    assert!(stored.contains(&a.device), "the snapshot should hold the registrations: {stored}");
    assert!(!stored.contains(marker) && !stored.contains("notes"), "application data in the phone book");
    // (The founder's public key is no secret: the phone book holds every device's.)
    for line in group.lines().filter(|l| l.starts_with("id ") || l.starts_with("secret ")) {
        let value = line.split_whitespace().nth(1).unwrap();
        assert!(!stored.contains(value), "the group's {line:?} reached the phone book");
    }

    // The rendezvous is gone (killed): the mesh keeps syncing, and a restarted node finds its
    // peer again from what it remembers.
    write_everywhere_and_converge(&nodes, "no-rendezvous", Duration::from_secs(10));
    let mut nodes = nodes;
    let restarted = nodes.pop().unwrap();
    drop(restarted);
    let b = start_in(Some(&h2), dirs[1].path(), &node_args("h2", &extra));
    assert!(eventually(Duration::from_secs(15), || connected(&b) == 1), "{}", json(&b, &["peers"]));
    nodes.push(b);
    write_everywhere_and_converge(&nodes, "after-restart", Duration::from_secs(10));
}
