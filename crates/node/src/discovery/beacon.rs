//! The UDP broadcast beacon, for networks that drop multicast (and so mDNS): every few seconds
//! each node broadcasts a small packet with its device id, its group's tag and its peer port on
//! every interface; a node that hears a beacon of its group from a device it is not connected to
//! answers once, directly, so both learn of each other within a round trip.
//!
//! Packet: the 4 bytes `MSB1`, then a postcard-encoded [`Beacon`]; at most
//! [`BEACON_BYTES_MAX`] bytes. [`decode`] takes any bytes from the network and never panics.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use meshsync_core::DeviceId;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::mesh::Mesh;

/// First bytes of every beacon packet (format version 1).
pub const BEACON_MAGIC: &[u8; 4] = b"MSB1";
/// Largest beacon packet accepted or sent.
pub const BEACON_BYTES_MAX: usize = 256;
/// Interval between broadcasts (with ±20% jitter so nodes started together do not stay in step).
pub const BEACON_INTERVAL: Duration = Duration::from_secs(3);
/// Beacons accepted per second from one source address; the rest are dropped unread.
const PER_SOURCE_PER_S: u64 = 2;
/// Direct answers sent per second in all (an answer goes only to a device we are not connected to).
const ANSWERS_PER_S: u32 = 10;
/// Sources remembered for rate limiting.
const SOURCES_MAX: usize = 1024;

/// What a beacon says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// Sync protocol version of the sender.
    pub protocol: u16,
    /// The sender's device id (a hint: the TLS pin decides who answers a dial).
    pub device: DeviceId,
    /// The sender's group tag (see `Group::discovery_tag`).
    pub tag: [u8; 8],
    /// The sender's peer port; the address is the packet's source address.
    pub port: u16,
    /// Whether this is a direct answer to a beacon (answers are never answered).
    pub answer: bool,
}

/// Why a packet is not a beacon.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeaconError {
    /// Longer than [`BEACON_BYTES_MAX`].
    #[error("beacon packet of {0} bytes is larger than {BEACON_BYTES_MAX}")]
    TooLarge(usize),
    /// Does not start with [`BEACON_MAGIC`].
    #[error("not a meshsync beacon (wrong magic)")]
    Magic,
    /// The body does not decode, or has bytes after it.
    #[error("damaged beacon body")]
    Body,
}

/// Encodes a beacon packet.
pub fn encode(beacon: &Beacon) -> Vec<u8> {
    let mut out = BEACON_MAGIC.to_vec();
    out.extend(postcard::to_stdvec(beacon).expect("encoding to a Vec cannot fail"));
    out
}

/// Decodes a beacon packet from the network.
pub fn decode(bytes: &[u8]) -> Result<Beacon, BeaconError> {
    if bytes.len() > BEACON_BYTES_MAX {
        return Err(BeaconError::TooLarge(bytes.len()));
    }
    let body = bytes.strip_prefix(BEACON_MAGIC.as_slice()).ok_or(BeaconError::Magic)?;
    match postcard::take_from_bytes::<Beacon>(body) {
        Ok((beacon, [])) => Ok(beacon),
        _ => Err(BeaconError::Body),
    }
}

/// Parses the 16-hex-char group tag.
pub(crate) fn tag_bytes(tag: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = tag.get(2 * i..2 * i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()).unwrap_or(0);
    }
    out
}

fn bind(port: u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several nodes on one machine (tests, the demo) share the port; broadcasts reach them all.
    socket.set_reuse_address(true)?;
    socket.set_broadcast(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    UdpSocket::from_std(socket.into())
}

/// Where broadcasts go: every IPv4 interface's broadcast address, and the limited broadcast.
fn targets(port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| match i.addr {
            // An address configured without `brd` reports itself (or nothing) as its broadcast
            // address: derive the directed broadcast from the netmask then (a /31 or /32 has none).
            if_addrs::IfAddr::V4(v4) if !v4.ip.is_loopback() => v4.broadcast.filter(|b| *b != v4.ip).or_else(|| {
                let mask = u32::from(v4.netmask);
                (mask.leading_ones() < 31).then(|| Ipv4Addr::from(u32::from(v4.ip) | !mask))
            }),
            _ => None,
        })
        .map(|b| SocketAddr::V4(SocketAddrV4::new(b, port)))
        .collect();
    out.sort();
    out.dedup();
    out.push(SocketAddr::from((Ipv4Addr::BROADCAST, port)));
    out
}

/// Runs the beacon until the mesh stops. A port that cannot be bound turns the beacon off with
/// a warning; the other sources keep working.
pub(crate) async fn run(mesh: Mesh, port: u16, mut stop: watch::Receiver<bool>, mut readdressed: watch::Receiver<u64>) {
    let socket = match bind(port) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(port, error = %e, "the discovery beacon is off: cannot use its UDP port (set beacon_port)");
            return;
        }
    };
    let me = mesh.device_id();
    let tag = tag_bytes(&mesh.group().discovery_tag());
    let beacon = |answer| Beacon {
        protocol: meshsync_wire::PROTOCOL_VERSION,
        device: me,
        tag,
        port: mesh.listen_addr().port(),
        answer,
    };
    let announce = encode(&beacon(false));
    let answer = encode(&beacon(true));
    let mut last_from: HashMap<IpAddr, u64> = HashMap::new();
    let (mut answers_second, mut answers) = (0u64, 0u32);
    let mut buf = vec![0u8; BEACON_BYTES_MAX + 1];
    // A quick first round (with a repeat, as broadcasts can be lost), then the steady interval.
    let mut next = tokio::time::Instant::now();
    let mut quick = 2;
    tracing::info!(port, "discovery beacon on");
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = readdressed.changed() => {
                next = tokio::time::Instant::now();
                quick = 2;
            }
            _ = tokio::time::sleep_until(next) => {
                for target in targets(port) {
                    if let Err(e) = socket.send_to(&announce, target).await {
                        tracing::trace!(%target, error = %e, "beacon not sent");
                    }
                }
                let jitter = rand::rng().random_range(0.8..1.2);
                next = tokio::time::Instant::now()
                    + if quick > 0 { quick -= 1; Duration::from_millis(500) } else { BEACON_INTERVAL.mul_f64(jitter) };
            }
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                let now_ms = crate::mesh::now_ms();
                // Rate limit per source before even decoding.
                let last = last_from.get(&from.ip()).copied().unwrap_or(0);
                if now_ms.saturating_sub(last) < 1000 / PER_SOURCE_PER_S {
                    continue;
                }
                if last_from.len() >= SOURCES_MAX {
                    last_from.retain(|_, at| now_ms.saturating_sub(*at) < 10_000);
                    if last_from.len() >= SOURCES_MAX {
                        continue;
                    }
                }
                last_from.insert(from.ip(), now_ms);
                let heard = match decode(&buf[..len]) {
                    Ok(heard) => heard,
                    Err(e) => {
                        tracing::debug!(%from, error = %e, "ignored a packet on the beacon port");
                        continue;
                    }
                };
                if heard.device == me || heard.tag != tag || heard.protocol != meshsync_wire::PROTOCOL_VERSION {
                    continue;
                }
                let addr = SocketAddr::new(from.ip(), heard.port).to_string();
                mesh.learn_discovered(heard.device, std::slice::from_ref(&addr), "beacon");
                if !heard.answer && !mesh.is_connected(heard.device) {
                    let second = now_ms / 1000;
                    if second != answers_second {
                        (answers_second, answers) = (second, 0);
                    }
                    if answers < ANSWERS_PER_S {
                        answers += 1;
                        let _ = socket.send_to(&answer, SocketAddr::new(from.ip(), port)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Beacon {
        Beacon {
            protocol: 1,
            device: DeviceId([7; meshsync_core::device::DEVICE_ID_BYTES]),
            tag: [1, 2, 3, 4, 5, 6, 7, 8],
            port: 7710,
            answer: false,
        }
    }

    #[test]
    fn round_trips_and_stays_small() {
        let bytes = encode(&sample());
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes), Ok(sample()));
    }

    #[test]
    fn refuses_what_is_not_a_beacon() {
        let bytes = encode(&sample());
        assert_eq!(decode(b"MSB2xxxx"), Err(BeaconError::Magic));
        assert_eq!(decode(&bytes[..bytes.len() - 1]), Err(BeaconError::Body));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer), Err(BeaconError::Body));
        assert_eq!(decode(&vec![0; BEACON_BYTES_MAX + 1]), Err(BeaconError::TooLarge(BEACON_BYTES_MAX + 1)));
    }

    #[test]
    fn tag_parses_hex() {
        assert_eq!(tag_bytes("0102030405060708"), [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    proptest! {
        #[test]
        fn never_panics_on_network_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
            let mut framed = BEACON_MAGIC.to_vec();
            framed.extend(&bytes);
            let _ = decode(&framed);
        }
    }
}
