//! The meshsync rendezvous: an HTTP phone book where nodes on routed networks (where mDNS and
//! broadcast do not reach) find each other's addresses, and the client nodes use to talk to it.
//!
//! Nodes of one group meet in a *room* named by an opaque hash they compute ([`room_id`]); each
//! posts a [`Registration`] (device id, public key, addresses, lifetime) signed by its device key,
//! and lists the room to find the others. The service never holds application data, never sees a
//! group secret, and is not trusted: [`client::lookup`] checks every entry's signature itself.
//! `docs/rendezvous.md` describes the HTTP API, the signing format, the limits and persistence.
//!
//! ```no_run
//! # async fn example(identity: meshsync_net::Identity, group_secret: &[u8]) -> Result<(), meshsync_rendezvous::RendezvousError> {
//! use meshsync_rendezvous::{client, room_id, Clock, Registration};
//! let room = room_id(group_secret);
//! let now_ms = Clock::System.now_ms();
//! let registration = Registration::sign(&identity, &room, vec!["192.0.2.10:7710".into()], 0, now_ms);
//! client::register("http://rendezvous.example:7790", &registration).await?;
//! for peer in client::lookup("http://rendezvous.example:7790", &room).await? {
//!     println!("{} at {:?}", peer.device_id, peer.addrs);
//! }
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `registration`: [`Registration`], [`signed_bytes`], [`room_id`]: what is signed and how it
//!   is checked. Pure.
//! - `book`: the rooms and their entries with every admission rule (signature, clock skew,
//!   replay, TTL, capacity). Sans-IO: time comes in as an argument.
//! - `rate`: per-client token buckets. Sans-IO.
//! - `routes`: the axum router, request guard, handlers, and the one error type that maps to
//!   responses.
//! - `server`: [`serve`], [`router`] (the same service without a socket), [`ServerOptions`], [`Limits`], [`Clock`], the capped listener and the
//!   debounced snapshot writer.
//! - `snapshot`: the snapshot file (atomic write, load).
//! - [`client`]: [`client::register`] and [`client::lookup`] over plain HTTP.
//! - `error`: [`RendezvousError`].

mod book;
pub mod client;
mod error;
mod rate;
mod registration;
mod routes;
mod server;
mod snapshot;

use meshsync_core::DeviceId;

pub use book::ISSUED_AT_SKEW_MS_MAX;
pub use error::RendezvousError;
pub use registration::{room_id, signed_bytes, Registration, ADDR_CHARS_MAX, ROOM_CHARS};
pub use server::{
    default_data_dir, router, serve, Clock, Limits, ServerOptions, CONNECTIONS_MAX, CONNECTIONS_PER_IP_MAX,
    CONNECTION_IDLE_TIMEOUT, RATE_CLIENTS_MAX, REGISTRATIONS_MAX, REGISTRATIONS_PER_ROOM_MAX, REQUESTS_PER_S,
    REQUEST_BURST, ROOMS_MAX, SNAPSHOT_DEBOUNCE, TTL_DEFAULT_S, TTL_MAX_S,
};
pub use snapshot::SNAPSHOT_FILE;

/// The version of the rendezvous protocol: every body carries it as `"v"`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request body the service reads, in bytes; larger ones are refused with 413.
pub const BODY_BYTES_MAX: usize = 4096;
/// Most addresses one registration may hold.
pub const ADDRS_MAX: usize = 16;

/// A device found in a room, after its entry has been verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The device, proven by the signature.
    pub device_id: DeviceId,
    /// The addresses it signed, `IP:port` each.
    pub addrs: Vec<String>,
    /// The IP address the service saw its registration come from (not signed: a hint, e.g. the
    /// public address of a NAT, to combine with the port of the first signed address).
    pub observed: Option<String>,
    /// When the entry expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}
