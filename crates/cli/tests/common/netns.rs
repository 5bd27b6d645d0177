//! Network namespaces for multi-host tests: each "host" is a namespace with its own interfaces,
//! addresses, routes and firewall, joined by veth pairs to a switch namespace (a bridge) or to a
//! router namespace. Nothing is added to the namespace the tests run in, so the addresses below
//! are ours alone; every namespace a [`Lab`] made is deleted when it drops, even after a failed
//! assertion, and namespaces left by a killed run are removed by the next one.
//!
//! Needs root (CI runs as root). Without it the tests say so and pass only outside CI; with
//! `CI` set they fail, so CI cannot skip them silently.

use std::process::Command;

const PREFIX: &str = "mslab-";

/// A set of namespaces owned by one test.
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
}

fn run(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{args:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Deletes namespaces of earlier runs whose process is gone.
fn remove_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else { return };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name.strip_prefix(PREFIX).and_then(|r| r.split('-').next()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run(&["ip", "netns", "del", name]);
        }
    }
}

impl Lab {
    /// A new lab, or `None` (after saying why) where namespaces cannot be made and `CI` is unset.
    pub fn new(tag: &str) -> Option<Lab> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let tools = run(&["ip", "-V"]).is_ok() && run(&["nft", "--version"]).is_ok();
        if !root || !tools {
            let why = format!(
                "network namespace tests need root, iproute2 and nftables (root: {root}, tools: {tools}); \
                 scripts/test-all.sh installs the tools"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{why}");
            }
            eprintln!("SKIPPED: {why}");
            return None;
        }
        remove_stale();
        Some(Lab { prefix: format!("{PREFIX}{}-{tag}-", std::process::id()), namespaces: Vec::new() })
    }

    /// Creates namespace `name` with its loopback up; returns its full name.
    pub fn ns(&mut self, name: &str) -> String {
        let full = format!("{}{name}", self.prefix);
        run(&["ip", "netns", "add", &full]).expect("create a namespace");
        self.namespaces.push(full.clone());
        self.sh(&full, "ip link set lo up");
        full
    }

    /// Runs a shell script inside `ns`; panics with its output if it fails.
    pub fn sh(&self, ns: &str, script: &str) -> String {
        run(&["ip", "netns", "exec", ns, "sh", "-ec", script]).unwrap_or_else(|e| panic!("in {ns}: {e}"))
    }

    /// A switch: a namespace holding bridge `br0`.
    pub fn switch(&mut self, name: &str) -> String {
        let ns = self.ns(name);
        self.sh(&ns, "ip link add br0 type bridge && ip link set br0 up");
        ns
    }

    /// A host on `switch` with interface `eth0` at `cidr` (e.g. `10.77.1.1/24`).
    pub fn host_on_switch(&mut self, name: &str, switch: &str, cidr: &str) -> String {
        let host = self.ns(name);
        let port = format!("p-{name}");
        run(&["ip", "-n", &host, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", switch])
            .expect("create a veth pair");
        self.sh(switch, &format!("ip link set {port} master br0 && ip link set {port} up"));
        self.sh(&host, &format!("ip addr add {cidr} dev eth0 && ip link set eth0 up"));
        host
    }

    /// A point-to-point link: `a_if` in `a` at `a_cidr`, `b_if` in `b` at `b_cidr`.
    pub fn wire(&self, a: &str, a_if: &str, a_cidr: &str, b: &str, b_if: &str, b_cidr: &str) {
        run(&["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b])
            .expect("create a veth pair");
        self.sh(a, &format!("ip addr add {a_cidr} dev {a_if} && ip link set {a_if} up"));
        self.sh(b, &format!("ip addr add {b_cidr} dev {b_if} && ip link set {b_if} up"));
    }

    /// Drops all multicast (so mDNS) going in or out of `ns`.
    pub fn drop_multicast(&self, ns: &str) {
        self.sh(
            ns,
            "nft add table inet mslab && \
             nft 'add chain inet mslab in { type filter hook input priority 0; policy accept; }' && \
             nft 'add chain inet mslab out { type filter hook output priority 0; policy accept; }' && \
             nft add rule inet mslab in ip daddr 224.0.0.0/4 drop && \
             nft add rule inet mslab out ip daddr 224.0.0.0/4 drop && \
             nft add rule inet mslab in ip6 daddr ff00::/8 drop && \
             nft add rule inet mslab out ip6 daddr ff00::/8 drop",
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            if let Err(e) = run(&["ip", "netns", "del", &ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}
