//! The group this device belongs to, membership proofs on links, and invite codes.
//!
//! A group is an id, a 32-byte secret and its founder's public key, kept in
//! `<data-dir>/group.key` (mode 0600). The first node creates it and is its first admin. On every
//! link each side proves it knows the secret with an HMAC over the TLS session's channel binding
//! and its own device id (so a stranger is refused before anything else, and a proof cannot be
//! replayed on another link); who is a member, with which role and scopes, is decided by the
//! signed statements of [`crate::membership`].
//!
//! An invite code (`MSI2-...`, base32, case-insensitive) carries the group, the founder's key, an
//! admin-signed [`membership::Invite`] (role, scopes, expiry, uses), the seed of the invite's
//! one-off key (which signs the new device's entry) and, unless left out, the inviter's
//! addresses. Treat it like a password until it expires or is used up.

use std::io::Write;
use std::path::Path;

use hmac::{Hmac, Mac};
use meshsync_core::DeviceId;
use meshsync_net::Identity;
use meshsync_wire::GroupId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::membership::{self, Grant, Role};
use crate::NodeError;

/// File holding the group id, secret and founder key.
pub const GROUP_FILE: &str = "group.key";
/// Prefix of invite codes of this version.
pub const INVITE_PREFIX: &str = "MSI2";
/// Most addresses an invite carries.
const INVITE_ADDRS_MAX: usize = 8;
/// Longest invite code accepted, in characters.
const INVITE_CHARS_MAX: usize = 4096;

/// Membership of one group.
#[derive(Clone, PartialEq, Eq)]
pub struct Group {
    /// The group's public id.
    pub id: GroupId,
    secret: [u8; 32],
    /// The founder's Ed25519 public key: the root every membership chain leads back to.
    pub founder_key: [u8; 32],
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Group({})", hex(&self.id.0))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
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
    /// The founder's public key.
    pub founder_key: [u8; 32],
    /// The signed grant.
    pub invite: membership::Invite,
    /// Seed of the invite's one-off key.
    pub key_seed: [u8; 32],
    /// The inviting device, to pin when dialing it.
    pub inviter: DeviceId,
    /// Where the inviter listens (may be empty: the new device then relies on discovery).
    pub addrs: Vec<String>,
}

impl Invite {
    /// The invite's one-off key.
    pub fn key(&self) -> Result<Identity, NodeError> {
        Identity::from_seed(&self.key_seed).map_err(|e| NodeError::Invalid(format!("invite code: {e}")))
    }

    /// When it stops admitting devices, ms since the epoch.
    pub fn expires_ms(&self) -> u64 {
        self.invite.grant.expires_ms
    }
}

impl Group {
    /// The group's id as text.
    pub fn id_text(&self) -> String {
        hex(&self.id.0)
    }

    /// Creates a new group founded by the device whose key is `founder_key`.
    pub fn generate(founder_key: [u8; 32]) -> Group {
        let mut id = [0u8; 16];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        Group { id: GroupId(id), secret, founder_key }
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
            reason: "unreadable group file (expected `id <32 hex>`, `secret <64 hex>` and `founder <64 hex>` lines)"
                .into(),
        };
        let (mut id, mut secret, mut founder) = (None, None, None);
        for line in text.lines() {
            match line.split_once(' ') {
                Some(("id", v)) => id = unhex(v.trim()).and_then(|b| <[u8; 16]>::try_from(b).ok()),
                Some(("secret", v)) => secret = unhex(v.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok()),
                Some(("founder", v)) => founder = unhex(v.trim()).and_then(|b| <[u8; 32]>::try_from(b).ok()),
                _ => {}
            }
        }
        Ok(Some(Group {
            id: GroupId(id.ok_or_else(bad)?),
            secret: secret.ok_or_else(bad)?,
            founder_key: founder.ok_or_else(bad)?,
        }))
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
        writeln!(file, "id {}\nsecret {}\nfounder {}", hex(&self.id.0), hex(&self.secret), hex(&self.founder_key))
            .and_then(|_| file.sync_all())
            .map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// The founder's device id.
    pub fn founder(&self) -> DeviceId {
        meshsync_net::device_id_from_public_key(&self.founder_key)
    }

    /// The proof that `device` knows the group secret, bound to one TLS session.
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

    /// An invite code signed by `issuer` (an admin) granting `role` and `scopes` to `uses`
    /// devices until `expires_ms`, carrying `addrs` to reach the inviter.
    pub fn invite(
        &self,
        issuer: &Identity,
        role: Role,
        scopes: Vec<String>,
        uses: u32,
        expires_ms: u64,
        addrs: &[String],
    ) -> String {
        let mut key_seed = [0u8; 32];
        rand::rng().fill_bytes(&mut key_seed);
        let key = Identity::from_seed(&key_seed).expect("any 32 bytes are an Ed25519 seed");
        let grant = Grant {
            group: self.id,
            invite_key: key.public_key(),
            role,
            scopes,
            expires_ms,
            uses,
            issuer_key: issuer.public_key(),
        };
        let code = Invite {
            group: self.id,
            secret: self.secret,
            founder_key: self.founder_key,
            invite: membership::Invite::sign(issuer, grant),
            key_seed,
            inviter: issuer.device_id(),
            addrs: addrs.iter().take(INVITE_ADDRS_MAX).cloned().collect(),
        };
        let bytes = postcard::to_stdvec(&code).expect("encoding to a Vec cannot fail");
        format!("{INVITE_PREFIX}-{}", base32(&bytes))
    }

    /// The group an invite joins.
    pub fn from_invite(invite: &Invite) -> Group {
        Group { id: invite.group, secret: invite.secret, founder_key: invite.founder_key }
    }
}

/// Decodes an invite code and checks its signature. Case, spaces and hyphens inside the code are
/// ignored. Whether its issuer is an admin, and whether it is expired or used up, is for the
/// members who admit the new device to decide.
pub fn parse_invite(code: &str) -> Result<Invite, NodeError> {
    let bad = |why: &str| NodeError::Invalid(format!("invite code: {why}"));
    if code.len() > INVITE_CHARS_MAX {
        return Err(bad("too long"));
    }
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_uppercase();
    if compact.starts_with("MSI1-") {
        return Err(bad("this is an invite of an older version (MSI1); ask for a new code"));
    }
    let body = compact
        .strip_prefix(&format!("{INVITE_PREFIX}-"))
        .ok_or_else(|| bad("it should start with MSI2-; copy the whole code"))?;
    let bytes = unbase32(&body.replace('-', "")).ok_or_else(|| bad("it contains characters other than A-Z and 2-7"))?;
    let invite: Invite = postcard::from_bytes(&bytes).map_err(|_| bad("it is damaged or incomplete"))?;
    if invite.addrs.len() > INVITE_ADDRS_MAX || invite.addrs.iter().any(|a| a.len() > 261) {
        return Err(bad("too many or too long addresses"));
    }
    invite.invite.check(invite.group).map_err(|e| bad(&e.to_string()))?;
    let key = invite.key()?;
    if key.public_key() != invite.invite.grant.invite_key {
        return Err(bad("its key does not match its grant: it is damaged or forged"));
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

    fn founder() -> (Identity, Group) {
        let identity = Identity::generate().unwrap();
        let group = Group::generate(identity.public_key());
        (identity, group)
    }

    #[test]
    fn invites_round_trip_and_bad_codes_are_refused() {
        let (admin, group) = founder();
        let code = group.invite(&admin, Role::Writer, vec!["kitchen".into()], 1, 123, &["127.0.0.1:7710".into()]);
        let invite = parse_invite(&code).unwrap();
        assert_eq!(Group::from_invite(&invite), group);
        assert_eq!(invite.inviter, admin.device_id());
        assert_eq!(invite.invite.grant.role, Role::Writer);
        assert_eq!(invite.invite.grant.scopes, vec!["kitchen".to_string()]);
        assert_eq!(parse_invite(&code.to_lowercase()).unwrap(), invite);
        for bad in ["", "MSI2-", "XYZ-ABC", "MSI2-1111", "MSI1-AAAA", &code[..code.len() / 2]] {
            assert!(parse_invite(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_altered_invite_is_refused() {
        let (admin, group) = founder();
        let code = group.invite(&admin, Role::Reader, vec![], 1, 123, &[]);
        let mut invite = parse_invite(&code).unwrap();
        invite.invite.grant.role = Role::Admin;
        let bytes = postcard::to_stdvec(&invite).unwrap();
        let forged = format!("{INVITE_PREFIX}-{}", base32(&bytes));
        let err = parse_invite(&forged).unwrap_err().to_string();
        assert!(err.contains("forged"), "{err}");
    }

    #[test]
    fn proofs_bind_device_and_session() {
        let (_, group) = founder();
        let (_, other) = founder();
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
        let (_, group) = founder();
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
