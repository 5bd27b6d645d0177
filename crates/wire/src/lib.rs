//! The node-to-node wire format: every frame is `Frame::V1(Message)` in postcard, one WebSocket
//! binary message each. Decoding checks every size before allocating and validates what it
//! decoded, so the layers above only see well-formed messages. See `docs/protocol.md`.
//!
//! This crate is pure: bytes in, messages out. It is the first thing a peer's bytes reach, so a
//! property test feeds it arbitrary bytes (and it is the first target for coverage-guided
//! fuzzing).

use meshsync_core::name::{check_collection_or_system, check_field, check_record_id};
use meshsync_core::record::SCOPE_FIELD;
use meshsync_core::{Change, DeviceId, Dot, VersionVector};
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Most membership entries in a hello.
pub const CHAIN_ENTRIES_MAX: usize = 8;
/// Largest membership entry in a hello, in bytes.
pub const CHAIN_ENTRY_BYTES_MAX: usize = 8 * 1024;
/// Largest frame accepted, in bytes.
pub const FRAME_BYTES_MAX: usize = 8 << 20;
/// Largest decompressed batch accepted, in bytes.
pub const BATCH_BYTES_MAX: usize = 32 << 20;
/// Most changes in one batch.
pub const BATCH_CHANGES_MAX: usize = 50_000;
/// Most entries in a version vector or an advance list.
pub const VECTOR_ENTRIES_MAX: usize = 65_536;
/// Most scopes a device may declare.
pub const SCOPES_MAX: usize = 256;
/// Longest name, scope, address, reason or message type, in bytes.
pub const TEXT_BYTES_MAX: usize = 512;
/// Largest proof or credential, in bytes.
pub const PROOF_BYTES_MAX: usize = 16 << 10;
/// Largest message payload (JSON text), in bytes.
pub const MESSAGE_DATA_BYTES_MAX: usize = 64 << 10;
/// Most addresses advertised for one device.
pub const ADDRS_MAX: usize = 32;
/// Most devices in one peer-exchange message.
pub const PEERS_MAX: usize = 1024;

/// A frame: the message, tagged with the protocol version that defines it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Protocol version 1.
    V1(Message),
}

/// A group's public identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

/// Messages of protocol version 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// First message on a link, from both sides.
    Hello(Hello),
    /// Changes the receiver lacks, with how far they bring its version vector.
    Batch(Batch),
    /// The receiver applied batch `seq` durably.
    Ack {
        /// The batch number.
        seq: u64,
    },
    /// Liveness probe; answered by `Pong` with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// Answer to `Ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// An ephemeral application message (not stored), relayed through the mesh.
    Message(Envelope),
    /// Addresses of other members (peer exchange).
    Peers(Vec<PeerAddrs>),
    /// The sender is closing the link, and why.
    Close {
        /// A human-readable reason.
        reason: String,
    },
}

/// The handshake: who I am, what group I prove membership of, what I already have.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version spoken (must equal the frame's).
    pub protocol: u16,
    /// The sender's device id (must match its TLS certificate).
    pub device: DeviceId,
    /// The sender's human name.
    pub name: String,
    /// The group the sender belongs to.
    pub group: GroupId,
    /// Proof of membership, bound to this TLS session.
    pub proof: Vec<u8>,
    /// Everything the sender has, as a version vector.
    pub vector: VersionVector,
    /// Scopes the sender wants (empty: all it may see).
    pub scopes: Vec<String>,
    /// Port the sender accepts peer connections on, if any.
    pub listen_port: Option<u16>,
    /// The sender's membership entries (postcard), its own first, then its inviter's and so on
    /// towards the group's founder: how a node that has not heard of it yet checks its membership.
    pub chain: Vec<Vec<u8>>,
}

/// A batch of changes, compressed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Batch number on this link, from 1.
    pub seq: u64,
    /// LZ4 of the postcard encoding of `Vec<Change>`, size-prepended.
    pub payload: Vec<u8>,
    /// Number of changes inside.
    pub count: u32,
    /// The receiver's vector may rise to these dots once the batch is applied.
    pub advance: Vec<Dot>,
    /// Changes the sender still has queued for the receiver after this batch (for progress).
    pub remaining: u64,
    /// This batch completes the catch-up: what follows is live.
    pub caught_up: bool,
}

/// An ephemeral message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique id, for de-duplication while flooding.
    pub id: [u8; 16],
    /// The sending device.
    pub from: DeviceId,
    /// The addressee; `None` for everyone.
    pub to: Option<DeviceId>,
    /// Application-chosen type.
    pub kind: String,
    /// JSON text.
    pub data: String,
    /// When it was sent, ms since the epoch.
    pub sent_ms: u64,
    /// Hops left before it is dropped.
    pub hops: u8,
}

/// Where a member can be reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerAddrs {
    /// The member.
    pub device: DeviceId,
    /// Its addresses, `host:port`.
    pub addrs: Vec<String>,
}

/// Why bytes were refused. The link that sent them is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame over [`FRAME_BYTES_MAX`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Size received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid encoding.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Well-formed but breaks a rule.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// Which part.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
}

fn invalid(what: &'static str, why: impl Into<String>) -> WireError {
    WireError::Invalid { what, why: why.into() }
}

fn check_text(what: &'static str, text: &str) -> Result<(), WireError> {
    if text.len() > TEXT_BYTES_MAX || text.chars().any(char::is_control) {
        return Err(invalid(what, format!("longer than {TEXT_BYTES_MAX} bytes or holds control characters")));
    }
    Ok(())
}

/// Encodes a message as a version-1 frame.
pub fn encode(message: &Message) -> Vec<u8> {
    postcard::to_stdvec(&Frame::V1(message.clone())).expect("encoding to a Vec cannot fail")
}

/// Encodes a message without cloning it.
pub fn encode_ref(message: &Message) -> Vec<u8> {
    // `Frame::V1` is variant 0: its tag is the single byte 0, followed by the message.
    let mut out = vec![0u8];
    out.extend(postcard::to_stdvec(message).expect("encoding to a Vec cannot fail"));
    out
}

/// Decodes and validates a frame.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > FRAME_BYTES_MAX {
        return Err(WireError::FrameTooLarge { len: bytes.len(), max: FRAME_BYTES_MAX });
    }
    let (frame, rest): (Frame, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    let Frame::V1(message) = frame;
    validate(&message)?;
    Ok(message)
}

fn validate(message: &Message) -> Result<(), WireError> {
    match message {
        Message::Hello(hello) => {
            if hello.protocol != PROTOCOL_VERSION {
                return Err(invalid(
                    "hello",
                    format!("protocol {} in a version-{PROTOCOL_VERSION} frame", hello.protocol),
                ));
            }
            check_text("hello name", &hello.name)?;
            if hello.proof.len() > PROOF_BYTES_MAX {
                return Err(invalid("hello", "proof too large"));
            }
            if hello.vector.len() > VECTOR_ENTRIES_MAX {
                return Err(invalid("hello", "version vector too large"));
            }
            if hello.chain.len() > CHAIN_ENTRIES_MAX || hello.chain.iter().any(|e| e.len() > CHAIN_ENTRY_BYTES_MAX) {
                return Err(invalid("hello", "membership chain too long"));
            }
            if hello.scopes.len() > SCOPES_MAX {
                return Err(invalid("hello", "too many scopes"));
            }
            for scope in &hello.scopes {
                check_text("scope", scope)?;
            }
        }
        Message::Batch(batch) => {
            if batch.count as usize > BATCH_CHANGES_MAX {
                return Err(invalid("batch", format!("{} changes exceed {BATCH_CHANGES_MAX}", batch.count)));
            }
            if batch.advance.len() > VECTOR_ENTRIES_MAX {
                return Err(invalid("batch", "advance list too large"));
            }
            if batch.seq == 0 {
                return Err(invalid("batch", "sequence number 0"));
            }
        }
        Message::Message(envelope) => {
            check_text("message type", &envelope.kind)?;
            if envelope.kind.is_empty() {
                return Err(invalid("message type", "empty"));
            }
            if envelope.data.len() > MESSAGE_DATA_BYTES_MAX {
                return Err(invalid("message", "data too large"));
            }
        }
        Message::Peers(peers) => {
            if peers.len() > PEERS_MAX {
                return Err(invalid("peers", "too many"));
            }
            for peer in peers {
                if peer.addrs.len() > ADDRS_MAX {
                    return Err(invalid("peers", "too many addresses"));
                }
                for addr in &peer.addrs {
                    check_text("peer address", addr)?;
                }
            }
        }
        Message::Close { reason } => check_text("close reason", reason)?,
        Message::Ack { .. } | Message::Ping { .. } | Message::Pong { .. } => {}
    }
    Ok(())
}

/// Compresses changes into a batch payload.
pub fn pack_changes(changes: &[Change]) -> Vec<u8> {
    let raw = postcard::to_stdvec(changes).expect("encoding to a Vec cannot fail");
    lz4_flex::compress_prepend_size(&raw)
}

/// Decompresses and decodes a batch payload, checking sizes first and every change after.
pub fn unpack_changes(batch: &Batch) -> Result<Vec<Change>, WireError> {
    let payload = &batch.payload;
    let size = payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| WireError::Malformed("batch payload too short".into()))?;
    if size > BATCH_BYTES_MAX {
        return Err(invalid("batch", format!("{size} decompressed bytes exceed {BATCH_BYTES_MAX}")));
    }
    let raw = lz4_flex::decompress_size_prepended(payload)
        .map_err(|e| WireError::Malformed(format!("batch payload: {e}")))?;
    let changes: Vec<Change> =
        postcard::from_bytes(&raw).map_err(|e| WireError::Malformed(format!("batch changes: {e}")))?;
    if changes.len() != batch.count as usize {
        return Err(invalid("batch", format!("says {} changes, holds {}", batch.count, changes.len())));
    }
    for change in &changes {
        validate_change(change)?;
    }
    Ok(changes)
}

/// Checks one change's names, numbers and shape.
pub fn validate_change(change: &Change) -> Result<(), WireError> {
    let bad = |why: String| invalid("change", why);
    check_collection_or_system(&change.collection).map_err(|e| bad(e.to_string()))?;
    check_record_id(&change.record).map_err(|e| bad(e.to_string()))?;
    if change.dot.seq == 0 {
        return Err(bad("sequence number 0".into()));
    }
    if !change.delete && change.cells.is_empty() {
        return Err(bad("writes nothing".into()));
    }
    for cell in &change.cells {
        if cell.field != SCOPE_FIELD {
            check_field(&cell.field).map_err(|e| bad(e.to_string()))?;
        }
        if !cell.value.is_finite() {
            return Err(bad(format!("field {:?} holds a number that is not finite", cell.field)));
        }
        if !cell.ctx.is_canonical() {
            return Err(bad("malformed causal context".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshsync_core::{CellWrite, Ctx, Hlc, Policy, Value};

    fn change(seq: u64) -> Change {
        Change {
            collection: "products".into(),
            record: format!("r{seq}"),
            hlc: Hlc::new(1_000 + seq, 0),
            dot: Dot { origin: DeviceId([7; 16]), seq },
            delete: false,
            cells: vec![CellWrite {
                field: "name".into(),
                policy: Policy::Lww,
                value: Value::from("Tea"),
                ctx: Ctx::new(),
            }],
        }
    }

    #[test]
    fn messages_round_trip() {
        let changes: Vec<Change> = (1..=100).map(change).collect();
        let batch = Batch {
            seq: 1,
            payload: pack_changes(&changes),
            count: 100,
            advance: vec![changes[99].dot],
            remaining: 0,
            caught_up: true,
        };
        let messages = [
            Message::Batch(batch.clone()),
            Message::Ack { seq: 1 },
            Message::Ping { nonce: 9 },
            Message::Close { reason: "bye".into() },
            Message::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                device: DeviceId([1; 16]),
                name: "till-1".into(),
                group: GroupId([2; 16]),
                proof: vec![3; 32],
                vector: VersionVector::new(),
                scopes: vec![],
                listen_port: Some(7710),
                chain: vec![vec![1, 2, 3]],
            }),
        ];
        for message in messages {
            let bytes = encode(&message);
            assert_eq!(bytes, encode_ref(&message));
            assert_eq!(decode(&bytes).unwrap(), message);
        }
        assert_eq!(unpack_changes(&batch).unwrap(), changes);
    }

    #[test]
    fn bad_bytes_are_refused_with_a_reason() {
        assert!(matches!(decode(&[]), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&[1, 2, 3]), Err(WireError::Malformed(_))));
        assert!(matches!(decode(&vec![0; FRAME_BYTES_MAX + 1]), Err(WireError::FrameTooLarge { .. })));
        let mut bytes = encode(&Message::Ping { nonce: 1 });
        bytes.push(0);
        assert!(matches!(decode(&bytes), Err(WireError::Malformed(_))));
        // A bomb: a tiny payload claiming a huge decompressed size.
        let mut payload = ((BATCH_BYTES_MAX + 1) as u32).to_le_bytes().to_vec();
        payload.extend([0u8; 16]);
        let batch = Batch { seq: 1, payload, count: 1, advance: vec![], remaining: 0, caught_up: false };
        assert!(matches!(unpack_changes(&batch), Err(WireError::Invalid { .. })));
        // A change with a bad collection name inside a well-formed batch.
        let mut bad = change(1);
        bad.collection = "no spaces".into();
        let batch =
            Batch { seq: 1, payload: pack_changes(&[bad]), count: 1, advance: vec![], remaining: 0, caught_up: false };
        assert!(unpack_changes(&batch).is_err());
        let wrong_count = Batch {
            seq: 1,
            payload: pack_changes(&[change(1)]),
            count: 2,
            advance: vec![],
            remaining: 0,
            caught_up: false,
        };
        assert!(unpack_changes(&wrong_count).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = unpack_changes(&Batch { seq: 1, payload: bytes, count: 1, advance: vec![], remaining: 0, caught_up: false });
        }
    }
}
