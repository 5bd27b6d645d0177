//! meshsync's transport: who a device is and how two devices reach each other securely. Each
//! device holds an Ed25519 key; its device id is a hash of the public key; links are WebSocket
//! over mutual TLS 1.3 where each side proves its key and the dialer pins the device it meant to
//! reach. This crate moves opaque binary frames; it knows nothing of groups, changes or the sync
//! protocol, which build on [`Connection`] (its peer's proven device id and a channel binding to
//! sign membership proofs against).
//!
//! # Layout
//! - [`identity`]: the key file, device id derivation, signatures, the self-signed certificate.
//! - [`tls`]: rustls configs and the verifiers that accept exactly one Ed25519 certificate and
//!   enforce pinning.
//! - [`transport`]: [`Endpoint`] (dial, bind), [`Listener`], [`Connection`] and its
//!   [`FrameSender`] / [`FrameReceiver`] halves, with handshake deadlines and frame limits.
//! - `error`: [`NetError`].
//!
//! ```no_run
//! # async fn example(data_dir: &std::path::Path) -> Result<(), meshsync_net::NetError> {
//! use meshsync_net::{Endpoint, Identity};
//! let endpoint = Endpoint::new(Identity::load_or_create(data_dir)?)?;
//! let mut listener = endpoint.bind("0.0.0.0:7400").await?;
//! let mut link = listener.accept().await?;
//! println!("{} connected", link.peer_device_id());
//! while let Some(frame) = link.recv().await? {
//!     link.send(frame).await?;
//! }
//! # Ok(()) }
//! ```

mod error;
pub mod identity;
pub mod tls;
pub mod transport;

pub use error::NetError;
pub use identity::{device_id_from_public_key, verify, Identity, IDENTITY_FILE, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};
pub use meshsync_core::DeviceId;
pub use tls::{ALPN_PROTOCOL, CHANNEL_BINDING_LABEL};
pub use transport::{
    Connection, Endpoint, EndpointConfig, FrameReceiver, FrameSender, Listener, Peer, CHANNEL_BINDING_BYTES,
    FRAME_BYTES_MAX_DEFAULT, HANDSHAKES_PENDING_MAX_DEFAULT, HANDSHAKES_PENDING_PER_IP_MAX, HANDSHAKE_TIMEOUT_DEFAULT,
};
