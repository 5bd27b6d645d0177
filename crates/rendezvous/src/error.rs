//! [`RendezvousError`]: why a registration is invalid, or why talking to a rendezvous failed.
//! Each message says what went wrong and, where there is something to do, what to do.

/// Why a registration was refused or a request to a rendezvous failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RendezvousError {
    /// The body speaks a protocol version this code does not.
    #[error("unsupported rendezvous protocol version {0}; this side speaks version 1")]
    UnsupportedVersion(u32),
    /// The room is not 64 lowercase hex characters.
    #[error("room {room:?} is not a room id: use 64 lowercase hex characters, as room_id() computes")]
    BadRoom {
        /// The room as sent (shortened).
        room: String,
    },
    /// The device id does not parse, or is not in its canonical form.
    #[error("device_id {device_id:?} is not a meshsync device id: {reason}")]
    BadDeviceId {
        /// The device id as sent (shortened).
        device_id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The public key is not 64 lowercase hex characters of a valid Ed25519 key.
    #[error("public_key must be an Ed25519 public key as 64 lowercase hex characters")]
    BadPublicKey,
    /// The device id is not the one derived from the public key.
    #[error("device_id does not belong to public_key: a device id is derived from its key")]
    DeviceIdMismatch,
    /// The signature is not 128 lowercase hex characters.
    #[error("signature must be an Ed25519 signature as 128 lowercase hex characters")]
    BadSignatureEncoding,
    /// The signature does not verify with the public key over the registration's fields.
    #[error("the signature does not verify: the registration was not signed by this key, or was altered")]
    BadSignature,
    /// More addresses than [`crate::ADDRS_MAX`].
    #[error("a registration holds at most 16 addresses, this one has {count}")]
    TooManyAddrs {
        /// Addresses sent.
        count: usize,
    },
    /// An address that is not a dialable `IP:port`.
    #[error("address {addr:?} is refused: {reason}; write addresses as IP:port, e.g. 10.0.0.5:7710 or [fd00::5]:7710")]
    BadAddr {
        /// The address as sent (shortened).
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The rendezvous URL cannot be used by this client.
    #[error("rendezvous URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The rendezvous could not be reached or the connection broke.
    #[error("cannot reach the rendezvous at {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport's error.
        reason: String,
    },
    /// The rendezvous did not answer in time.
    #[error("the rendezvous at {url} did not answer within {timeout_s} s")]
    Timeout {
        /// The URL called.
        url: String,
        /// The time allowed.
        timeout_s: u64,
    },
    /// The rendezvous answered with an error.
    #[error("the rendezvous refused the request ({status}, {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable error code from the body (`rate_limited`, `replay`, ...), or `http_<status>`.
        code: String,
        /// The service's explanation.
        message: String,
        /// Seconds to wait before trying again, when the service said (`Retry-After`).
        retry_after_s: Option<u64>,
    },
    /// The answer is not what this protocol version says it is.
    #[error("the rendezvous answered something this client does not understand: {0}")]
    BadResponse(String),
    /// The answer is larger than the client accepts.
    #[error("the rendezvous answer is larger than {limit} bytes; refusing it")]
    ResponseTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
}
