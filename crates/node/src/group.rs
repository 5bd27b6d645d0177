//! The group this device belongs to, membership proofs and invite codes (first version).
//!
//! A group is an id and a 32-byte secret, kept in `<data-dir>/group.key` (mode 0600). The first
//! node creates it; an invite code carries it to a new device along with the inviter's device id
//! and addresses. On every link each side proves membership with an HMAC of the secret over the
//! TLS session's channel binding and its own device id, so a proof cannot be replayed on another
//! link or by another device. Signed, expiring, role- and scope-bearing invites replace the bare
//! secret when access control arrives; the code is versioned for that.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use meshsync_core::DeviceId;
use meshsync_wire::GroupId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::NodeError;

/// File holding the group id and secret.
pub const GROUP_FILE: &str = "group.key";
/// Prefix of invite codes of this version.
pub const INVITE_PREFIX: &str = "MSI1";
/// Most addresses an invite carries.
const INVITE_ADDRS_MAX: usize = 8;

/// Membership of one group.
#[derive(Clone, PartialEq, Eq)]
pub struct Group {
    /// The group's public id.
    pub id: GroupId,
    secret: [u8; 32],
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group({})", hex(&self.id.0))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// What an invite code carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The group to join.
    pub group: GroupId,
    /// The group secret.
    pub secret: [u8; 32],
    /// The inviting device, to pin when dialing it.
    pub inviter: DeviceId,
    /// Where the inviter listens.
    pub addrs: Vec<String>,
    /// When the code stops being offered, ms since the epoch (advisory in this version).
    pub expires_ms: u64,
}

impl Group {
    /// The group's id as text.
    pub fn id_text(&self) -> String {
        hex(&self.id.0)
    }

    /// Creates a new group with random id and secret.
    pub fn generate() -> Group {
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        Group { id: GroupId(id), secret }
    }

    /// Reads the group file, if any.
    pub fn load(dir: &Path) -> Result<Option<Group>, NodeError> {
        let path = dir.join(GROUP_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(NodeError::DataDir { path, reason: e.to_string() }),
        };
        let bad = || NodeError::DataDir {
            path: path.clone(),
            reason: "unreadable group file (expected `id <32 hex>` and `secret <64 hex>` lines)".into(),
        };
        let mut id = None;
        let mut secret = None;
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("id", v)) => id = unhex(v.trim()).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                Some(("secret", v)) => secret = unhex(v.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok()),
                _ => {}
            }
        }
        Ok(Some(Group { id: GroupId(id.ok_or_else(bad)?), secret: secret.ok_or_else(bad)? }))
    }

    /// Writes the group file atomically with mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), NodeError> {
        let path = dir.join(GROUP_FILE);
        let tmp = dir.join(format!("{GROUP_FILE}.tmp"));
        let err = |e: std::io::Error| NodeError::DataDir { path: path.clone(), reason: e.to_string() };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(err)?;
        writeln!(file, "id {}\nsecret {}", hex(&self.id.0), hex(&self.secret))
            .and_then(|_| file.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// The proof that `device` belongs to this group, bound to one TLS session.
    pub fn proof(&self, channel_binding: &[u8], device: DeviceId) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"meshsync-membership-v1");
        mac.update(channel_binding);
        mac.update(&device.0);
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a peer's proof in constant time.
    pub fn verify(&self, channel_binding: &[u8], device: DeviceId, proof: &[u8]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(b"meshsync-membership-v1");
        mac.update(channel_binding);
        mac.update(&device.0);
        mac.verify_slice(proof).is_ok()
    }

    /// The group's tag in discovery announcements (mDNS TXT, beacons): 16 hex chars derived from
    /// the secret, so devices of one group recognise each other while a listener on the network
    /// learns neither the secret nor the group id.
    pub fn discovery_tag(&self) -> String {
        hex(&self.derive(b"meshsync-discovery-tag-v1")[..8])
    }

    /// Key material for the group's rendezvous room: only members can compute it, and the
    /// service sees only a hash of it.
    pub fn rendezvous_key(&self) -> [u8; 32] {
        self.derive(b"meshsync-rendezvous-room-v1")
    }

    fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    /// An invite code for this group from `inviter`, reachable at `addrs`.
    pub fn invite(&self, inviter: DeviceId, addrs: &[String], expires_ms: u64) -> String {
        let invite = Invite {
            group: self.id,
            secret: self.secret,
            inviter,
            addrs: addrs.iter().take(INVITE_ADDRS_MAX).cloned().collect(),
            expires_ms,
        };
        let bytes = postcard::to_stdvec(&invite).expect("encoding to a Vec cannot fail");
        format!("{INVITE_PREFIX}-{}", base32(&bytes))
    }

    /// The group an invite joins.
    pub fn from_invite(invite: &Invite) -> Group {
        Group { id: invite.group, secret: invite.secret }
    }
}

/// Decodes an invite code. Case, spaces and hyphens inside the code are ignored.
pub fn parse_invite(code: &str) -> Result<Invite, NodeError> {
    let bad = |why: &str| NodeError::Invalid(format!("invite code: {why}"));
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    let body = compact
        .strip_prefix(&format!("{INVITE_PREFIX}-"))
        .ok_or_else(|| bad("it should start with MSI1-; copy the whole code"))?;
    if body.len() > 2048 {
        return Err(bad("too long"));
    }
    let bytes = unbase32(&body.replace('-', "")).ok_or_else(|| bad("it contains characters other than A-Z and 2-7"))?;
    let invite: Invite = postcard::from_bytes(&bytes).map_err(|_| bad("it is damaged or incomplete"))?;
    if invite.addrs.len() > INVITE_ADDRS_MAX || invite.addrs.iter().any(|a| a.len() > 261) {
        return Err(bad("too many or too long addresses"));
    }
    Ok(invite)
}

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

fn unbase32(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let digit = ALPHABET.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 5) | digit;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_round_trip_and_bad_codes_are_refused() {
        let group = Group::generate();
        let inviter = DeviceId([9; 16]);
        let code = group.invite(inviter, &["127.0.0.1:7710".into()], 123);
        let invite = parse_invite(&code).unwrap();
        assert_eq!(Group::from_invite(&invite), group);
        assert_eq!(invite.inviter, inviter);
        assert_eq!(parse_invite(&code.to_lowercase()).unwrap(), invite);
        for bad in ["", "MSI1-", "XYZ-ABC", "MSI1-1111", &code[..code.len() / 2]] {
            assert!(parse_invite(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn proofs_bind_device_and_session() {
        let group = Group::generate();
        let other = Group::generate();
        let device = DeviceId([1; 16]);
        let proof = group.proof(b"binding-1", device);
        assert!(group.verify(b"binding-1", device, &proof));
        assert!(!group.verify(b"binding-2", device, &proof));
        assert!(!group.verify(b"binding-1", DeviceId([2; 16]), &proof));
        assert!(!other.verify(b"binding-1", device, &proof));
    }

    #[test]
    fn the_group_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Group::load(dir.path()).unwrap(), None);
        let group = Group::generate();
        group.save(dir.path()).unwrap();
        assert_eq!(Group::load(dir.path()).unwrap(), Some(group));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(GROUP_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
