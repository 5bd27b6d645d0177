//! What a node publishes: a [`Registration`] (room, device, key, addresses, lifetime) signed by
//! the device key, the canonical bytes that signature covers, and the room id derivation. Pure:
//! no I/O, never reads the clock (callers pass `now_ms`), so both the server and every client run
//! the same checks.

use std::net::SocketAddr;
use std::str::FromStr;

use meshsync_core::DeviceId;
use meshsync_net::{Identity, PUBLIC_KEY_BYTES, SIGNATURE_BYTES};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{RendezvousError, ADDRS_MAX, PROTOCOL_VERSION};

/// Hex characters in a room id (a SHA-256 digest).
pub const ROOM_CHARS: usize = 64;
/// Most characters one address may have: `[` + the longest IPv6 text (45) + `]:` + 5 digits.
pub const ADDR_CHARS_MAX: usize = 54;

/// Domain separation for registration signatures: a device key signs other things too (TLS,
/// membership proofs), and none of those may ever be mistaken for a registration.
const REGISTER_DOMAIN: &[u8] = b"meshsync-rendezvous-register-v1\0";
/// Domain separation for room ids, so that a room id reveals nothing about the hash of the same
/// material used elsewhere (the group tag in mDNS, for one).
const ROOM_DOMAIN: &[u8] = b"meshsync-rendezvous-room-v1\0";

/// The room id nodes meet in: 64 lowercase hex characters, SHA-256 of a domain-separated
/// `secret_material` (for a group, material only its members have). The service sees only this
/// hash and cannot recover the material from it.
pub fn room_id(secret_material: &[u8]) -> String {
    hex::encode(Sha256::new().chain_update(ROOM_DOMAIN).chain_update(secret_material).finalize())
}

/// The bytes a registration's signature covers: the domain, then each field in a fixed order,
/// every variable-length field prefixed by its length (u32, big-endian) so that no two distinct
/// registrations share their bytes; numbers are u64 big-endian.
pub fn signed_bytes(room: &str, device_id: &str, addrs: &[String], ttl_s: u64, issued_at_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        REGISTER_DOMAIN.len()
            + 4
            + room.len()
            + 4
            + device_id.len()
            + 4
            + addrs.iter().map(|a| 4 + a.len()).sum::<usize>()
            + 16,
    );
    out.extend_from_slice(REGISTER_DOMAIN);
    let mut field = |bytes: &[u8]| {
        // Every field is bounded far below 4 GiB by the body limit; the cast cannot truncate.
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    field(room.as_bytes());
    field(device_id.as_bytes());
    let count = (addrs.len() as u32).to_be_bytes();
    out.extend_from_slice(&count);
    for addr in addrs {
        out.extend_from_slice(&(addr.len() as u32).to_be_bytes());
        out.extend_from_slice(addr.as_bytes());
    }
    out.extend_from_slice(&ttl_s.to_be_bytes());
    out.extend_from_slice(&issued_at_ms.to_be_bytes());
    out
}

/// A device's signed entry in a room: the body of `POST /discovery/register` (which adds
/// `"v": 1`), and what the service stores and hands back for clients to check themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "RegistrationWire", try_from = "RegistrationWire")]
pub struct Registration {
    /// The room id (see [`room_id`]).
    pub room: String,
    /// The device id, in its canonical text form (`MFRGG2LTM-NZXXE3DFO-RSXA5LTMA`).
    pub device_id: String,
    /// The device's Ed25519 public key, 64 lowercase hex characters.
    pub public_key: String,
    /// Addresses the device accepts peers on, `IP:port` each, at most [`ADDRS_MAX`].
    pub addrs: Vec<String>,
    /// How long the entry should live, in seconds; 0 asks for the service's default.
    pub ttl_s: u64,
    /// When the device signed it, in milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// Ed25519 signature over [`signed_bytes`], 128 lowercase hex characters.
    pub signature: String,
}

/// The registration as it travels: with the protocol version, and `ttl_s` optional.
#[derive(Serialize, Deserialize)]
struct RegistrationWire {
    v: u32,
    room: String,
    device_id: String,
    public_key: String,
    addrs: Vec<String>,
    #[serde(default)]
    ttl_s: u64,
    issued_at_ms: u64,
    signature: String,
}

impl From<Registration> for RegistrationWire {
    fn from(r: Registration) -> RegistrationWire {
        RegistrationWire {
            v: PROTOCOL_VERSION,
            room: r.room,
            device_id: r.device_id,
            public_key: r.public_key,
            addrs: r.addrs,
            ttl_s: r.ttl_s,
            issued_at_ms: r.issued_at_ms,
            signature: r.signature,
        }
    }
}

impl TryFrom<RegistrationWire> for Registration {
    type Error = RendezvousError;

    fn try_from(w: RegistrationWire) -> Result<Registration, RendezvousError> {
        if w.v != PROTOCOL_VERSION {
            return Err(RendezvousError::UnsupportedVersion(w.v));
        }
        Ok(Registration {
            room: w.room,
            device_id: w.device_id,
            public_key: w.public_key,
            addrs: w.addrs,
            ttl_s: w.ttl_s,
            issued_at_ms: w.issued_at_ms,
            signature: w.signature,
        })
    }
}

impl Registration {
    /// Builds and signs the registration of `identity` in `room`, issued at `now_ms`.
    pub fn sign(identity: &Identity, room: &str, addrs: Vec<String>, ttl_s: u64, now_ms: u64) -> Registration {
        let device_id = identity.device_id().to_string();
        let signature = identity.sign(&signed_bytes(room, &device_id, &addrs, ttl_s, now_ms));
        Registration {
            room: room.to_string(),
            device_id,
            public_key: hex::encode(identity.public_key()),
            addrs,
            ttl_s,
            issued_at_ms: now_ms,
            signature: hex::encode(signature),
        }
    }

    /// Checks everything that does not depend on time or on the service's state: the room id's
    /// form, the device id against the key, each address, and the signature. Returns the device
    /// id. Cheap checks run first, so a malformed entry costs no signature verification.
    pub fn verify(&self) -> Result<DeviceId, RendezvousError> {
        check_room(&self.room)?;
        let device_id = DeviceId::from_str(&self.device_id)
            .map_err(|e| RendezvousError::BadDeviceId { device_id: shorten(&self.device_id), reason: e.to_string() })?;
        if device_id.to_string() != self.device_id {
            // Signatures cover the text, so only one spelling of an id is accepted.
            return Err(RendezvousError::BadDeviceId {
                device_id: shorten(&self.device_id),
                reason: format!("write it in its canonical form, {device_id}"),
            });
        }
        let public_key: [u8; PUBLIC_KEY_BYTES] = decode_hex(&self.public_key).ok_or(RendezvousError::BadPublicKey)?;
        if meshsync_net::device_id_from_public_key(&public_key) != device_id {
            return Err(RendezvousError::DeviceIdMismatch);
        }
        check_addrs(&self.addrs)?;
        let signature: [u8; SIGNATURE_BYTES] =
            decode_hex(&self.signature).ok_or(RendezvousError::BadSignatureEncoding)?;
        let message = signed_bytes(&self.room, &self.device_id, &self.addrs, self.ttl_s, self.issued_at_ms);
        meshsync_net::verify(&public_key, &message, &signature).map_err(|e| match e {
            meshsync_net::NetError::BadPublicKey => RendezvousError::BadPublicKey,
            _ => RendezvousError::BadSignature,
        })?;
        Ok(device_id)
    }
}

/// A room id is exactly 64 lowercase hex characters.
pub fn check_room(room: &str) -> Result<(), RendezvousError> {
    if room.len() == ROOM_CHARS && room.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(RendezvousError::BadRoom { room: shorten(room) })
    }
}

fn check_addrs(addrs: &[String]) -> Result<(), RendezvousError> {
    if addrs.len() > ADDRS_MAX {
        return Err(RendezvousError::TooManyAddrs { count: addrs.len() });
    }
    for addr in addrs {
        if addr.len() > ADDR_CHARS_MAX {
            return Err(RendezvousError::BadAddr { addr: shorten(addr), reason: "too long".into() });
        }
        let parsed = SocketAddr::from_str(addr)
            .map_err(|_| RendezvousError::BadAddr { addr: shorten(addr), reason: "not an IP:port address".into() })?;
        if parsed.port() == 0 {
            return Err(RendezvousError::BadAddr { addr: shorten(addr), reason: "port 0 cannot be dialed".into() });
        }
    }
    Ok(())
}

/// Decodes exactly `N` bytes of lowercase hex (one spelling per value, as signatures need).
fn decode_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Input echoed in an error message is cut, so an error never carries a whole hostile body.
pub(crate) fn shorten(text: &str) -> String {
    const CHARS_MAX: usize = 80;
    match text.char_indices().nth(CHARS_MAX) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::from_seed(&[7; 32]).unwrap()
    }

    fn room() -> String {
        room_id(b"group secret")
    }

    #[test]
    fn room_ids_are_64_lowercase_hex_and_depend_on_the_material() {
        let a = room_id(b"a");
        assert_eq!(a.len(), ROOM_CHARS);
        check_room(&a).unwrap();
        assert_ne!(a, room_id(b"b"));
        assert_eq!(a, room_id(b"a"));
        // Domain-separated: not the plain SHA-256 of the material.
        assert_ne!(a, hex::encode(Sha256::digest(b"a")));
        assert!(check_room(&a.to_uppercase()).is_err());
        assert!(check_room(&a[1..]).is_err());
    }

    #[test]
    fn a_signed_registration_verifies_and_names_its_device() {
        let identity = identity();
        let registration = Registration::sign(&identity, &room(), vec!["10.0.0.5:7710".into()], 60, 1_000);
        assert_eq!(registration.verify().unwrap(), identity.device_id());
    }

    #[test]
    fn every_signed_field_is_covered() {
        let identity = identity();
        let good = Registration::sign(&identity, &room(), vec!["10.0.0.5:7710".into()], 60, 1_000);
        let mutations: [fn(&mut Registration); 5] = [
            |r| r.room = room_id(b"other"),
            |r| r.addrs = vec!["10.0.0.6:7710".into()],
            |r| r.addrs.push("10.0.0.6:7710".into()),
            |r| r.ttl_s = 61,
            |r| r.issued_at_ms = 1_001,
        ];
        for mutate in mutations {
            let mut bad = good.clone();
            mutate(&mut bad);
            assert_eq!(bad.verify(), Err(RendezvousError::BadSignature), "{bad:?}");
        }
    }

    #[test]
    fn length_prefixes_keep_field_boundaries_apart() {
        let a = signed_bytes("ab", "c", &[], 0, 0);
        let b = signed_bytes("a", "bc", &[], 0, 0);
        assert_ne!(a, b);
        let a = signed_bytes("r", "d", &["1.2.3.4:5".into(), "6.7.8.9:1".into()], 0, 0);
        let b = signed_bytes("r", "d", &["1.2.3.4:56.7.8.9:1".into()], 0, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn a_key_of_another_device_is_refused() {
        let registration = Registration::sign(&identity(), &room(), vec![], 60, 1_000);
        let other = Identity::from_seed(&[8; 32]).unwrap();
        let swapped = Registration { public_key: hex::encode(other.public_key()), ..registration.clone() };
        assert_eq!(swapped.verify(), Err(RendezvousError::DeviceIdMismatch));
        let renamed = Registration { device_id: other.device_id().to_string(), ..registration };
        assert_eq!(renamed.verify(), Err(RendezvousError::DeviceIdMismatch));
    }

    #[test]
    fn malformed_fields_are_named() {
        let good = Registration::sign(&identity(), &room(), vec!["10.0.0.5:7710".into()], 60, 1_000);
        let cases: Vec<(Registration, &str)> = vec![
            (Registration { room: "xyz".into(), ..good.clone() }, "room"),
            (Registration { device_id: "nope".into(), ..good.clone() }, "device id"),
            (Registration { device_id: good.device_id.replace('-', ""), ..good.clone() }, "canonical"),
            (Registration { public_key: "00".into(), ..good.clone() }, "public_key"),
            (Registration { public_key: good.public_key.to_uppercase(), ..good.clone() }, "public_key"),
            (Registration { signature: "zz".into(), ..good.clone() }, "signature"),
            (Registration { addrs: vec!["example.com:7710".into()], ..good.clone() }, "example.com"),
            (Registration { addrs: vec!["10.0.0.5:0".into()], ..good.clone() }, "port 0"),
            (Registration { addrs: vec!["10.0.0.5:7710".into(); ADDRS_MAX + 1], ..good.clone() }, "at most 16"),
        ];
        for (registration, needle) in cases {
            let error = registration.verify().unwrap_err().to_string();
            assert!(error.contains(needle), "{error:?} should mention {needle:?}");
        }
    }

    #[test]
    fn the_wire_form_carries_the_version() {
        let good = Registration::sign(&identity(), &room(), vec![], 0, 1_000);
        let json = serde_json::to_value(&good).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(serde_json::from_value::<Registration>(json.clone()).unwrap(), good);
        let mut future = json;
        future["v"] = 2.into();
        let error = serde_json::from_value::<Registration>(future).unwrap_err().to_string();
        assert!(error.contains("version 2"), "{error}");
    }
}
