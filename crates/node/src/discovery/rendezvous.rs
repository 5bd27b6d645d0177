//! Rendezvous phone books: the node registers its addresses (signed by its device key) in its
//! group's room and looks the room up, feeding the peer table with `rendezvous` hints. The room
//! id is a hash of a key only members can derive, so the service learns nothing about the group.
//! A phone book that is down costs nothing but a log line: the mesh keeps what it knows.

use std::time::Duration;

use tokio::sync::watch;

use crate::mesh::Mesh;

/// Registration lifetime asked of the service (its default too).
pub const REGISTRATION_TTL_S: u64 = 8 * 3600;
/// Registrations are refreshed this often (and when this machine's addresses change).
const REFRESH: Duration = Duration::from_secs(15 * 60);
/// Lookups while the node is young or alone, then the steady interval.
const LOOKUP_QUICK: Duration = Duration::from_secs(2);
const LOOKUP: Duration = Duration::from_secs(30);
/// Quick lookups after a start or a change of address.
const QUICK_LOOKUPS: u32 = 15;

pub(crate) async fn run(
    mesh: Mesh,
    urls: Vec<String>,
    mut stop: watch::Receiver<bool>,
    mut readdressed: watch::Receiver<u64>,
) {
    let room = meshsync_rendezvous::room_id(&mesh.group().rendezvous_key());
    let mut next_register = tokio::time::Instant::now();
    let mut next_lookup = tokio::time::Instant::now();
    let mut quick = QUICK_LOOKUPS;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = readdressed.changed() => {
                next_register = tokio::time::Instant::now();
                next_lookup = tokio::time::Instant::now();
                quick = QUICK_LOOKUPS;
            }
            _ = tokio::time::sleep_until(next_register) => {
                let addrs: Vec<String> = mesh
                    .advertised_addrs()
                    .into_iter()
                    .filter(|a| a.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_loopback()))
                    .collect();
                let registration = meshsync_rendezvous::Registration::sign(
                    mesh.identity(),
                    &room,
                    addrs,
                    REGISTRATION_TTL_S,
                    crate::mesh::now_ms(),
                );
                let mut failed = false;
                for url in &urls {
                    match meshsync_rendezvous::client::register(url, &registration).await {
                        Ok(_) => tracing::debug!(%url, "registered with the rendezvous"),
                        Err(e) => {
                            failed = true;
                            tracing::warn!(%url, error = %e, "cannot register with the rendezvous");
                        }
                    }
                }
                next_register = tokio::time::Instant::now() + if failed { LOOKUP_QUICK * 5 } else { REFRESH };
            }
            _ = tokio::time::sleep_until(next_lookup) => {
                for url in &urls {
                    match meshsync_rendezvous::client::lookup(url, &room).await {
                        Ok(peers) => {
                            for peer in peers {
                                mesh.learn_discovered(peer.device_id, &peer.addrs, "rendezvous");
                            }
                        }
                        Err(e) => tracing::debug!(%url, error = %e, "rendezvous lookup failed"),
                    }
                }
                let alone = mesh.connected() == 0;
                next_lookup = tokio::time::Instant::now()
                    + if quick > 0 || alone { quick = quick.saturating_sub(1); LOOKUP_QUICK } else { LOOKUP };
            }
        }
    }
}
