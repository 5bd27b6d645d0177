//! Who belongs to the group, with which role and scopes, verified by every node on its own.
//!
//! The group's founder is the device that created it; its public key is in `group.key` and in
//! every invite. Everything else is a signed statement:
//! - an [`Invite`] grant: role, scopes, expiry and use count, for a one-off *invite key*, signed by
//!   an admin (the founder, or a member whose role is admin);
//! - a [`MemberEntry`]: a device admitted with an invite, proven by the invite key's signature over
//!   the group and the device id (only the holder of the invite code has that key);
//! - a [`Revocation`]: a device cut off by an admin, after the last change of it the admin had.
//!
//! Entries and revocations live in the replicated system collection [`MEMBERS_COLLECTION`]
//! (record id: the device id; fields [`MEMBER_FIELD`] and [`REVOKED_FIELD`], hex of postcard), so
//! membership spreads like any data and works while every admin is offline. A [`Roster`] is what
//! one node makes of them: entries whose signatures verify and whose issuer is an admin, found
//! by following the chain back to the founder. A forged or unauthorised statement is simply not
//! part of it (and is refused when it arrives from a peer).

use std::collections::{HashMap, HashSet};

use meshsync_core::DeviceId;
use meshsync_net::{device_id_from_public_key, Identity};
use meshsync_wire::GroupId;
use serde::{Deserialize, Serialize};

/// The system collection holding membership.
pub const MEMBERS_COLLECTION: &str = "_members";
/// Field of a member record holding its [`MemberEntry`].
pub const MEMBER_FIELD: &str = "entry";
/// Field of a member record holding its [`Revocation`].
pub const REVOKED_FIELD: &str = "revoked";
/// Longest chain of admins presented in a handshake.
pub const CHAIN_MAX: usize = 8;
/// Most scopes one invite grants.
pub const SCOPES_MAX: usize = 32;

const INVITE_DOMAIN: &[u8] = b"meshsync-invite-v1\0";
const JOIN_DOMAIN: &[u8] = b"meshsync-join-v1\0";
const REVOKE_DOMAIN: &[u8] = b"meshsync-revoke-v1\0";

/// What a member may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including inviting and revoking.
    Admin,
    /// Reads and writes records (within its scopes, if it has any).
    Writer,
    /// Reads (within its scopes); its writes never leave its device.
    Reader,
}

impl Role {
    /// The role's name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    /// Parses `admin`, `writer` or `reader`.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "writer" => Some(Role::Writer),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }
}

/// Why a statement is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MembershipError {
    /// It does not decode.
    #[error("damaged membership statement")]
    Damaged,
    /// It is for another group.
    #[error("the statement is for another group")]
    OtherGroup,
    /// A signature does not verify.
    #[error("a signature does not verify: the statement is forged or altered")]
    Forged,
    /// It names another device than the record it is stored under.
    #[error("the statement is stored under another device's record")]
    WrongRecord,
    /// Its signer is not an admin of the group.
    #[error("signed by {0}, which is not an admin of this group")]
    NotAdmin(DeviceId),
    /// Too many scopes, or a bad one.
    #[error("bad scopes in the invite")]
    BadScopes,
}

/// What an admin grants with an invite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The group.
    pub group: GroupId,
    /// The public half of the invite's one-off key.
    pub invite_key: [u8; 32],
    /// The role a device joining with it gets.
    pub role: Role,
    /// The scopes it may see and write (empty: all).
    pub scopes: Vec<String>,
    /// When it stops admitting devices, ms since the epoch.
    pub expires_ms: u64,
    /// How many devices it admits.
    pub uses: u32,
    /// The admin who signed it.
    pub issuer_key: [u8; 32],
}

/// A grant with its issuer's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// What is granted.
    pub grant: Grant,
    /// The issuer's Ed25519 signature over [`INVITE_DOMAIN`] and the grant.
    pub signature: Vec<u8>,
}

/// A device admitted with an invite.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// The device.
    pub device: DeviceId,
    /// The invite it used.
    pub invite: Invite,
    /// The invite key's signature over the group and the device.
    pub join_signature: Vec<u8>,
}

/// A device cut off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The group.
    pub group: GroupId,
    /// The revoked device.
    pub device: DeviceId,
    /// Its changes up to this sequence number (what the admin had) stay; later ones are refused.
    pub after_seq: u64,
    /// When, ms since the epoch (informational).
    pub at_ms: u64,
    /// The admin who revoked it.
    pub by_key: [u8; 32],
    /// The admin's signature.
    pub signature: Vec<u8>,
}

fn signed<T: Serialize>(domain: &[u8], body: &T) -> Vec<u8> {
    let mut out = domain.to_vec();
    out.extend(postcard::to_stdvec(body).expect("encoding to a Vec cannot fail"));
    out
}

fn check_signature(key: &[u8; 32], message: &[u8], signature: &[u8]) -> Result<(), MembershipError> {
    let signature: &[u8; 64] = signature.try_into().map_err(|_| MembershipError::Forged)?;
    meshsync_net::verify(key, message, signature).map_err(|_| MembershipError::Forged)
}

/// Encodes a statement for a record cell (hex of postcard).
pub fn encode<T: Serialize>(statement: &T) -> String {
    postcard::to_stdvec(statement).expect("encoding to a Vec cannot fail").iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a statement from a record cell.
pub fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, MembershipError> {
    if !text.len().is_multiple_of(2) || text.len() > 64 * 1024 {
        return Err(MembershipError::Damaged);
    }
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect();
    postcard::from_bytes(&bytes.ok_or(MembershipError::Damaged)?).map_err(|_| MembershipError::Damaged)
}

impl Invite {
    /// Signs a grant as `issuer`.
    pub fn sign(issuer: &Identity, mut grant: Grant) -> Invite {
        grant.issuer_key = issuer.public_key();
        let signature = issuer.sign(&signed(INVITE_DOMAIN, &grant)).to_vec();
        Invite { grant, signature }
    }

    /// The device that signed it.
    pub fn issuer(&self) -> DeviceId {
        device_id_from_public_key(&self.grant.issuer_key)
    }

    /// Checks the signature and the grant's shape (not whether the issuer is an admin).
    pub fn check(&self, group: GroupId) -> Result<(), MembershipError> {
        if self.grant.group != group {
            return Err(MembershipError::OtherGroup);
        }
        if self.grant.scopes.len() > SCOPES_MAX
            || self.grant.scopes.iter().any(|s| s.is_empty() || s.len() > 128 || s.chars().any(char::is_control))
        {
            return Err(MembershipError::BadScopes);
        }
        check_signature(&self.grant.issuer_key, &signed(INVITE_DOMAIN, &self.grant), &self.signature)
    }
}

impl MemberEntry {
    /// The entry for `device` joining with `invite`, signed with the invite's key.
    pub fn join(invite: &Invite, invite_key: &Identity, device: DeviceId) -> MemberEntry {
        let join_signature = invite_key.sign(&signed(JOIN_DOMAIN, &(invite.grant.group, device))).to_vec();
        MemberEntry { device, invite: invite.clone(), join_signature }
    }

    /// Checks both signatures (not whether the issuer is an admin).
    pub fn check(&self, group: GroupId) -> Result<(), MembershipError> {
        self.invite.check(group)?;
        check_signature(
            &self.invite.grant.invite_key,
            &signed(JOIN_DOMAIN, &(group, self.device)),
            &self.join_signature,
        )
    }
}

impl Revocation {
    /// Revokes `device` as `admin`.
    pub fn sign(admin: &Identity, group: GroupId, device: DeviceId, after_seq: u64, at_ms: u64) -> Revocation {
        let mut revocation =
            Revocation { group, device, after_seq, at_ms, by_key: admin.public_key(), signature: Vec::new() };
        revocation.signature = admin.sign(&signed(REVOKE_DOMAIN, &revocation.body())).to_vec();
        revocation
    }

    fn body(&self) -> (GroupId, DeviceId, u64, u64, [u8; 32]) {
        (self.group, self.device, self.after_seq, self.at_ms, self.by_key)
    }

    /// The admin who signed it.
    pub fn by(&self) -> DeviceId {
        device_id_from_public_key(&self.by_key)
    }

    /// Checks the signature (not whether the signer is an admin).
    pub fn check(&self, group: GroupId) -> Result<(), MembershipError> {
        if self.group != group {
            return Err(MembershipError::OtherGroup);
        }
        check_signature(&self.by_key, &signed(REVOKE_DOMAIN, &self.body()), &self.signature)
    }
}

/// One member as a roster sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its role.
    pub role: Role,
    /// Its scopes (empty: all).
    pub scopes: Vec<String>,
    /// If revoked: its changes above this sequence number are refused.
    pub revoked_after: Option<u64>,
    /// Who revoked it.
    pub revoked_by: Option<DeviceId>,
    /// The entry that admitted it (`None` for the founder).
    pub entry: Option<MemberEntry>,
}

impl Member {
    /// Whether it may connect.
    pub fn active(&self) -> bool {
        self.revoked_after.is_none()
    }

    /// Whether a record in `scope` is within its scopes.
    pub fn sees(&self, scope: Option<&str>) -> bool {
        self.scopes.is_empty() || scope.is_some_and(|s| self.scopes.iter().any(|m| m == s))
    }

    /// The scopes to send it (`None`: all).
    pub fn scope_filter(&self) -> Option<Vec<String>> {
        (!self.scopes.is_empty()).then(|| self.scopes.clone())
    }
}

/// The group's membership as one node knows it.
#[derive(Clone, Debug)]
pub struct Roster {
    group: GroupId,
    founder: DeviceId,
    members: HashMap<DeviceId, Member>,
    uses: HashMap<[u8; 32], u32>,
}

impl Roster {
    /// Builds the roster from stored entries and revocations (in any order): an entry counts once
    /// its signatures verify and its issuer is an admin who counts; a revocation counts once its
    /// signer is an admin who counts. Returns the roster and what did not count, with why.
    pub fn build(
        group: GroupId,
        founder_key: [u8; 32],
        entries: Vec<MemberEntry>,
        revocations: Vec<Revocation>,
    ) -> (Roster, Vec<(DeviceId, MembershipError)>) {
        let founder = device_id_from_public_key(&founder_key);
        let mut members = HashMap::new();
        members.insert(
            founder,
            Member { role: Role::Admin, scopes: Vec::new(), revoked_after: None, revoked_by: None, entry: None },
        );
        let mut refused = Vec::new();
        let mut pending: Vec<MemberEntry> = Vec::new();
        for entry in entries {
            match entry.check(group) {
                Ok(()) if entry.device != founder => pending.push(entry),
                Ok(()) => {}
                Err(e) => refused.push((entry.device, e)),
            }
        }
        // Admins admitted by admins: repeat until nothing more joins.
        loop {
            let before = pending.len();
            pending.retain(|entry| {
                let issuer = entry.invite.issuer();
                if members.get(&issuer).is_some_and(|m| m.role == Role::Admin) {
                    members.entry(entry.device).or_insert_with(|| Member {
                        role: entry.invite.grant.role,
                        scopes: entry.invite.grant.scopes.clone(),
                        revoked_after: None,
                        revoked_by: None,
                        entry: Some(entry.clone()),
                    });
                    false
                } else {
                    true
                }
            });
            if pending.len() == before {
                break;
            }
        }
        for entry in pending {
            refused.push((entry.device, MembershipError::NotAdmin(entry.invite.issuer())));
        }
        let mut uses: HashMap<[u8; 32], u32> = HashMap::new();
        for member in members.values() {
            if let Some(entry) = &member.entry {
                *uses.entry(entry.invite.grant.invite_key).or_default() += 1;
            }
        }
        for revocation in revocations {
            if let Err(e) = revocation.check(group) {
                refused.push((revocation.device, e));
                continue;
            }
            let by = revocation.by();
            if !members.get(&by).is_some_and(|m| m.role == Role::Admin) {
                refused.push((revocation.device, MembershipError::NotAdmin(by)));
                continue;
            }
            if let Some(member) = members.get_mut(&revocation.device) {
                let after = member.revoked_after.map_or(revocation.after_seq, |a| a.min(revocation.after_seq));
                member.revoked_after = Some(after);
                member.revoked_by = Some(by);
            }
        }
        (Roster { group, founder, members, uses }, refused)
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The founder.
    pub fn founder(&self) -> DeviceId {
        self.founder
    }

    /// A member, revoked or not.
    pub fn member(&self, device: DeviceId) -> Option<&Member> {
        self.members.get(&device)
    }

    /// Every member.
    pub fn members(&self) -> impl Iterator<Item = (&DeviceId, &Member)> {
        self.members.iter()
    }

    /// Devices admitted with the invite whose key is `invite_key`.
    pub fn uses(&self, invite_key: &[u8; 32]) -> u32 {
        self.uses.get(invite_key).copied().unwrap_or(0)
    }

    /// The entries that prove `device`'s membership to a node that knows only the founder: its
    /// own entry, then its issuer's, and so on up to the founder.
    pub fn chain(&self, device: DeviceId) -> Vec<MemberEntry> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut current = device;
        while let Some(entry) = self.members.get(&current).and_then(|m| m.entry.as_ref()) {
            if !seen.insert(current) || out.len() >= CHAIN_MAX {
                break;
            }
            out.push(entry.clone());
            current = entry.invite.issuer();
        }
        out
    }

    /// This roster with `entries` (a chain presented by a peer) added: how a node that has not
    /// heard of a member yet checks the member's own proof.
    pub fn with_chain(&self, founder_key: [u8; 32], entries: &[MemberEntry]) -> Roster {
        self.with_entries(founder_key, &entries[..entries.len().min(CHAIN_MAX)])
    }

    /// This roster with `entries` added (those that verify and chain to an admin count).
    pub fn with_entries(&self, founder_key: [u8; 32], entries: &[MemberEntry]) -> Roster {
        let known: Vec<MemberEntry> = self.members.values().filter_map(|m| m.entry.clone()).collect();
        let (mut roster, _) = Roster::build(
            self.group,
            founder_key,
            known.into_iter().chain(entries.iter().cloned()).collect(),
            Vec::new(),
        );
        // Keep what this roster knew of revocations.
        for (device, member) in &self.members {
            if let Some(m) = roster.members.get_mut(device) {
                m.revoked_after = member.revoked_after;
                m.revoked_by = member.revoked_by;
            }
        }
        roster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(group: GroupId, invite: &Identity, role: Role, scopes: &[&str]) -> Grant {
        Grant {
            group,
            invite_key: invite.public_key(),
            role,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_ms: u64::MAX,
            uses: 1,
            issuer_key: [0; 32],
        }
    }

    struct World {
        group: GroupId,
        founder: Identity,
    }

    impl World {
        fn new() -> World {
            World { group: GroupId([7; 16]), founder: Identity::generate().unwrap() }
        }

        fn admit(&self, by: &Identity, role: Role, scopes: &[&str]) -> (Identity, MemberEntry) {
            let device = Identity::generate().unwrap();
            let key = Identity::generate().unwrap();
            let invite = Invite::sign(by, grant(self.group, &key, role, scopes));
            let entry = MemberEntry::join(&invite, &key, device.device_id());
            (device, entry)
        }

        fn roster(&self, entries: Vec<MemberEntry>, revocations: Vec<Revocation>) -> Roster {
            Roster::build(self.group, self.founder.public_key(), entries, revocations).0
        }
    }

    #[test]
    fn the_founder_is_the_first_admin_and_its_invites_admit() {
        let w = World::new();
        let (device, entry) = w.admit(&w.founder, Role::Writer, &["kitchen"]);
        let roster = w.roster(vec![entry], vec![]);
        let founder = roster.member(w.founder.device_id()).unwrap();
        assert_eq!(founder.role, Role::Admin);
        let member = roster.member(device.device_id()).unwrap();
        assert_eq!((member.role, member.scopes.clone()), (Role::Writer, vec!["kitchen".to_string()]));
        assert!(member.sees(Some("kitchen")) && !member.sees(Some("bar")) && !member.sees(None));
    }

    #[test]
    fn admins_admitted_by_admins_count_in_any_order() {
        let w = World::new();
        let (admin, admin_entry) = w.admit(&w.founder, Role::Admin, &[]);
        let (writer, writer_entry) = w.admit(&admin, Role::Writer, &[]);
        let roster = w.roster(vec![writer_entry, admin_entry], vec![]);
        assert_eq!(roster.member(writer.device_id()).unwrap().role, Role::Writer);
        assert_eq!(roster.chain(writer.device_id()).len(), 2);
    }

    #[test]
    fn forged_and_unauthorised_entries_do_not_count() {
        let w = World::new();
        let (writer, writer_entry) = w.admit(&w.founder, Role::Writer, &[]);
        // A writer cannot admit.
        let (by_writer, by_writer_entry) = w.admit(&writer, Role::Admin, &[]);
        // A stranger's self-made invite.
        let stranger = Identity::generate().unwrap();
        let (_, strangers) = w.admit(&stranger, Role::Admin, &[]);
        // An altered grant (role raised after signing).
        let (raised, mut altered) = w.admit(&w.founder, Role::Reader, &[]);
        altered.invite.grant.role = Role::Admin;
        let (roster, refused) = Roster::build(
            w.group,
            w.founder.public_key(),
            vec![writer_entry, by_writer_entry, strangers, altered],
            vec![],
        );
        assert!(roster.member(by_writer.device_id()).is_none());
        assert!(roster.member(raised.device_id()).is_none());
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused.contains(&(raised.device_id(), MembershipError::Forged)));
    }

    #[test]
    fn revocations_count_only_from_admins() {
        let w = World::new();
        let (writer, entry) = w.admit(&w.founder, Role::Writer, &[]);
        let (other, other_entry) = w.admit(&w.founder, Role::Writer, &[]);
        let by_writer = Revocation::sign(&other, w.group, writer.device_id(), 3, 0);
        let roster = w.roster(vec![entry.clone(), other_entry.clone()], vec![by_writer]);
        assert!(roster.member(writer.device_id()).unwrap().active());
        let by_founder = Revocation::sign(&w.founder, w.group, writer.device_id(), 3, 0);
        let roster = w.roster(vec![entry, other_entry], vec![by_founder]);
        assert_eq!(roster.member(writer.device_id()).unwrap().revoked_after, Some(3));
    }

    #[test]
    fn statements_survive_encoding_and_refuse_damage() {
        let w = World::new();
        let (_, entry) = w.admit(&w.founder, Role::Writer, &[]);
        let text = encode(&entry);
        assert_eq!(decode::<MemberEntry>(&text).unwrap(), entry);
        assert_eq!(decode::<MemberEntry>(&text[..text.len() - 2]), Err(MembershipError::Damaged));
        assert_eq!(decode::<MemberEntry>("zz"), Err(MembershipError::Damaged));
    }

    #[test]
    fn entries_arriving_later_extend_a_roster_and_keep_its_revocations() {
        let w = World::new();
        let (writer, entry) = w.admit(&w.founder, Role::Writer, &[]);
        let (other, other_entry) = w.admit(&w.founder, Role::Writer, &[]);
        let revoked = Revocation::sign(&w.founder, w.group, other.device_id(), 5, 0);
        let roster = w.roster(vec![other_entry], vec![revoked]);
        assert!(roster.member(writer.device_id()).is_none());
        let extended = roster.with_entries(w.founder.public_key(), &[entry]);
        assert_eq!(extended.member(writer.device_id()).unwrap().role, Role::Writer);
        assert_eq!(extended.member(other.device_id()).unwrap().revoked_after, Some(5));
    }

    #[test]
    fn uses_count_admitted_devices_per_invite() {
        let w = World::new();
        let key = Identity::generate().unwrap();
        let mut g = grant(w.group, &key, Role::Writer, &[]);
        g.uses = 2;
        let invite = Invite::sign(&w.founder, g);
        let a = MemberEntry::join(&invite, &key, Identity::generate().unwrap().device_id());
        let b = MemberEntry::join(&invite, &key, Identity::generate().unwrap().device_id());
        let roster = w.roster(vec![a, b], vec![]);
        assert_eq!(roster.uses(&key.public_key()), 2);
    }
}
