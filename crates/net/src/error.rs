//! The one error type of the transport. Every variant says what went wrong and, where there is
//! something to do about it, what to do. Peer-caused failures are values here, never panics.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use meshsync_core::DeviceId;

/// Why an identity, a handshake, or a link failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A socket or file operation failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),

    /// The identity file exists but cannot be used as a key.
    #[error(
        "the identity file {path} is not a valid meshsync key ({reason}); restore it from a backup, \
         or move it away to create a new identity (this device then gets a new device id and must be \
         invited again)"
    )]
    IdentityFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The identity file can be read or written by other users, so the key may have leaked.
    #[error(
        "the identity file {path} is accessible to other users (mode {mode:o}); run `chmod 600 {path}` \
         if no one else could have read it, otherwise move it away to create a new identity"
    )]
    IdentityFilePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The operating system's random source failed while creating a key.
    #[error("could not get randomness from the operating system to create a key: {0}")]
    Randomness(String),

    /// Building our self-signed certificate or TLS configuration failed. This is a bug, not
    /// something a peer can cause.
    #[error("could not build the TLS certificate or configuration: {0}")]
    Certificate(String),

    /// A signature did not verify against the given public key.
    #[error("the signature does not match the message and public key")]
    BadSignature,

    /// A public key is not a valid Ed25519 point.
    #[error("the public key is not a valid Ed25519 key")]
    BadPublicKey,

    /// The address to dial could not be resolved.
    #[error("cannot resolve the address {address:?}: {reason}; use host:port or ip:port")]
    Address {
        /// The address as given.
        address: String,
        /// What went wrong.
        reason: String,
    },

    /// No TCP connection could be made to the address.
    #[error("cannot connect to {address}: {source}; check that the node runs there and the port is open")]
    Unreachable {
        /// The address as given.
        address: String,
        /// The last connection error.
        #[source]
        source: io::Error,
    },

    /// The TLS handshake failed: the peer is not a meshsync node, presented no or a malformed
    /// certificate, or failed to prove it holds the key of its certificate.
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] rustls::Error),

    /// The handshake (TCP connect, TLS and WebSocket upgrade) did not finish in time.
    #[error("the handshake did not finish within {after:?}; check that the address is a meshsync node and reachable")]
    HandshakeTimeout {
        /// The limit that ran out.
        after: Duration,
    },

    /// The peer holds a different key than the device id we dialed: it is not the device we meant
    /// to reach (a wrong or stale address, or someone impersonating it). Nothing was sent to it.
    #[error("expected device {expected} but the peer is {found}; check the peer's address and device id")]
    PinMismatch {
        /// The device id we dialed.
        expected: DeviceId,
        /// The device id the peer's key hashes to.
        found: DeviceId,
    },

    /// A frame was larger than the configured limit. The link is closed.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes; the link was closed")]
    FrameTooLarge {
        /// Bytes in the frame (or at least this many, when the peer's frame was cut short).
        len: usize,
        /// The limit.
        max: usize,
    },

    /// The peer broke the transport's rules (a text frame, a bad WebSocket upgrade, a missing
    /// ALPN protocol). The link is closed.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The link is closed: sending after close, or the peer went away without a close frame.
    #[error("the link is closed")]
    Closed,

    /// The peer ended the link with an error code (for example 1009 when our frame was larger
    /// than its limit, 1002 when it judged we broke the protocol).
    #[error("the peer closed the link with code {code}: {reason}")]
    ClosedByPeer {
        /// The WebSocket close code.
        code: u16,
        /// The peer's explanation.
        reason: String,
    },

    /// An incoming connection was refused. The listener is still usable: call accept again.
    #[error("refused the connection from {peer_addr}: {source}")]
    Incoming {
        /// Where the connection came from.
        peer_addr: std::net::SocketAddr,
        /// Why it was refused.
        #[source]
        source: Box<NetError>,
    },
}

impl NetError {
    /// The reason itself, looking through [`NetError::Incoming`].
    pub fn root(&self) -> &NetError {
        match self {
            NetError::Incoming { source, .. } => source.root(),
            other => other,
        }
    }
}

/// Turns an I/O error from tokio-rustls back into the TLS error it carries, so that callers see
/// `Tls(..)` or `PinMismatch` rather than an opaque `InvalidData`.
pub(crate) fn from_tls_io(error: io::Error) -> NetError {
    let Some(inner) = error.get_ref() else { return NetError::Io(error) };
    if let Some(pin) = inner.downcast_ref::<crate::tls::PinMismatch>() {
        return NetError::PinMismatch { expected: pin.expected, found: pin.found };
    }
    if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
        if let Some(pin) = crate::tls::pin_mismatch_in(tls) {
            return NetError::PinMismatch { expected: pin.expected, found: pin.found };
        }
        return NetError::Tls(tls.clone());
    }
    NetError::Io(error)
}
