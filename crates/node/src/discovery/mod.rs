//! Finding peers: mDNS/DNS-SD, a UDP broadcast beacon and rendezvous phone books. Every source
//! only gives hints (a device id and addresses) that feed the mesh's peer table; who a peer is
//! comes from the TLS pin when it is dialed, never from an announcement.
//!
//! # Layout
//! - `mod.rs`: [`DiscoveryOptions`], the task that starts each source and the watcher of this
//!   machine's addresses (a readdressed machine closes links that can only time out and tells
//!   every source to announce again).
//! - [`beacon`]: the broadcast beacon: its packet format (pure, fuzzed) and its task.
//! - `mdns`: advertising and browsing `_meshsync._tcp.local`.
//! - `rendezvous`: registering with and looking up phone books.

pub mod beacon;
mod mdns;
mod rendezvous;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;

use crate::mesh::Mesh;

/// How often this machine's addresses are checked for changes.
const ADDRESS_POLL: Duration = Duration::from_millis(500);

/// Which discovery sources run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Advertise and browse with mDNS.
    pub mdns: bool,
    /// Send and listen to broadcast beacons on this UDP port.
    pub beacon_port: Option<u16>,
    /// Rendezvous (phone book) base URLs.
    pub rendezvous: Vec<String>,
}

/// This machine's interface addresses (loopback included).
pub(crate) fn local_ips() -> HashSet<IpAddr> {
    if_addrs::get_if_addrs().unwrap_or_default().into_iter().map(|i| i.ip()).collect()
}

/// Starts every enabled source, and the address watcher, until the mesh shuts down.
pub(crate) fn start(mesh: &Mesh, options: &DiscoveryOptions, stop: watch::Receiver<bool>) {
    // Bumped whenever this machine's addresses change, so sources announce at once.
    let (readdressed, _) = watch::channel(0u64);
    // A node listening on loopback only cannot be reached from another machine: announcing it
    // on the network would only send others to an address they cannot dial.
    let local_only = mesh.listen_addr().ip().is_loopback();
    if local_only && (options.mdns || options.beacon_port.is_some()) {
        tracing::info!("listening on loopback only: mDNS and the beacon stay off");
    }
    if options.mdns && !local_only {
        match mdns::Mdns::start(mesh) {
            Ok(mdns) => {
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let _ = stop.changed().await;
                    mdns.shutdown().await;
                });
            }
            Err(e) => tracing::warn!(error = %e, "mDNS discovery is off: it could not start"),
        }
    }
    if let Some(port) = options.beacon_port.filter(|_| !local_only) {
        tokio::spawn(beacon::run(mesh.clone(), port, stop.clone(), readdressed.subscribe()));
    }
    if !options.rendezvous.is_empty() {
        tokio::spawn(rendezvous::run(mesh.clone(), options.rendezvous.clone(), stop.clone(), readdressed.subscribe()));
    }
    tokio::spawn(watch_addresses(mesh.clone(), stop, readdressed));
}

async fn watch_addresses(mesh: Mesh, mut stop: watch::Receiver<bool>, readdressed: watch::Sender<u64>) {
    let mut known = local_ips();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(ADDRESS_POLL) => {}
        }
        let now = local_ips();
        if now != known {
            tracing::info!(addrs = ?now, "this machine's addresses changed");
            mesh.close_links_on_lost_addrs(&now);
            readdressed.send_modify(|n| *n += 1);
            known = now;
        }
    }
}
