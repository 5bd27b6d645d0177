//! The kinds of audit entries, in one place: what each records, which device it names and what
//! its detail holds. Code that audits something passes one of these to [`crate::Node::audit`]:
//!
//! ```no_run
//! # let node = meshsync_node::Node::open("./data")?;
//! # let device = node.device_id();
//! use meshsync_node::audit;
//! use serde_json::json;
//!
//! node.audit(audit::CONNECTION_REFUSED, Some(device), json!({"addr": "192.168.1.20:7710", "reason": "bad proof"}));
//! # Ok::<(), meshsync_node::NodeError>(())
//! ```
//!
//! Kinds are `family.event`, so `GET /v1/audit?kind=member.` (a prefix) selects a family.
//! Details are JSON objects with snake_case keys; addresses are `host:port` text, times RFC 3339,
//! durations `*_ms`. A detail never holds a secret: no group secret, invite code or API token.
//! The store clamps kinds to 64 bytes and details to 4 KiB (see `meshsync_store::audit`).
//! Entries are for events that matter to security and operations, not per request or per
//! change: the log keeps the newest 100,000 entries, and a flood would push out what matters.

/// This node created a new group (its first start without an invite). Device: none. Detail:
/// `{"group"}` (the group id).
pub const GROUP_CREATED: &str = "group.created";

/// This node joined a group with an invite code. Device: the inviter. Detail: `{"group",
/// "addrs"}` (the inviter's addresses from the code).
pub const JOIN: &str = "group.joined";

/// An invite code was created on this node. Device: none. Detail: `{"role", "scopes", "uses",
/// "expires_at", "addrs"}` (`addrs`: whether the code carries this node's addresses). Never the
/// code itself: it carries the group key.
pub const INVITE_CREATED: &str = "invite.created";

/// A device joined with an invite of this node. Device: the new device. Detail: `{"addr",
/// "role", "scopes"}`, plus `"uses_left"` once uses are counted.
pub const INVITE_USED: &str = "invite.used";

/// An invite was presented and refused: expired, used up, unknown or withdrawn. Device: the
/// device that presented it, if known. Detail: `{"addr", "reason"}`.
pub const INVITE_REFUSED: &str = "invite.refused";

/// A device became a member: first admitted by this node, or its membership arrived from the
/// mesh. Device: the member. Detail: `{"role", "scopes", "by"}` (`by`: the admitting device).
pub const MEMBER_ADMITTED: &str = "member.admitted";

/// A member was revoked, here or by another admin (the revocation arrived from the mesh).
/// Device: the revoked device. Detail: `{"by", "reason"}`.
pub const REVOKED: &str = "member.revoked";

/// A peer connection was refused: its certificate did not match the device it claimed, its
/// membership proof failed, it belongs to another group, or it was revoked. Device: the peer,
/// if known. Detail: `{"addr", "direction"` (`inbound` or `outbound`), `"reason"}`.
pub const CONNECTION_REFUSED: &str = "connection.refused";

/// Changes from a peer were rejected: outside the writer's role or scopes, or invalid. One
/// entry per rejected batch, not per change. Device: the peer that sent them. Detail:
/// `{"origin"` (the device that wrote them), `"collection", "record"` (the first rejected),
/// `"count", "reason"}`.
pub const WRITE_REJECTED: &str = "write.rejected";

/// A peer's timestamps were refused as too far ahead of this node's clock. Device: the peer.
/// Detail: `{"ahead_ms", "limit_ms"}`.
pub const CLOCK_SKEW: &str = "clock.skew";

/// A sync session with a peer opened (after admission). Device: the peer. Detail: `{"addr",
/// "direction"}`.
pub const SESSION_STARTED: &str = "session.started";

/// A sync session with a peer ended. Device: the peer. Detail: `{"addr", "duration_ms",
/// "received", "sent"` (changes each way), `"reason"}`.
pub const SESSION_ENDED: &str = "session.ended";

/// The local API refused requests with a foreign `Host` or `Origin` or a wrong token. At most
/// one entry per reason per hour: the first refusal is recorded at once, later ones are counted
/// into the next entry. Device: none. Detail: `{"reason"` (`host`, `origin` or `token`),
/// `"method", "path", "value"` (the refused host or origin; absent for a token, which is never
/// recorded), `"count"}` (refusals this entry stands for: itself and those since the previous
/// entry of that reason).
pub const API_REFUSED: &str = "api.refused";

/// Entries were lost because the store's write queue was full when they were queued (see
/// [`crate::Node::audit`]); written by the store before the next entry that got through.
/// Device: none. Detail: `{"entries"}` (how many).
pub const DROPPED: &str = meshsync_store::AUDIT_DROPPED_KIND;

/// Every kind above.
pub const KINDS: [&str; 14] = [
    GROUP_CREATED,
    JOIN,
    INVITE_CREATED,
    INVITE_USED,
    INVITE_REFUSED,
    MEMBER_ADMITTED,
    REVOKED,
    CONNECTION_REFUSED,
    WRITE_REJECTED,
    CLOCK_SKEW,
    SESSION_STARTED,
    SESSION_ENDED,
    API_REFUSED,
    DROPPED,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_dotted_and_fit_the_store() {
        let unique: std::collections::BTreeSet<&str> = KINDS.iter().copied().collect();
        assert_eq!(unique.len(), KINDS.len());
        for kind in KINDS {
            let (family, event) = kind.split_once('.').unwrap_or_else(|| panic!("{kind} is not family.event"));
            assert!(!family.is_empty() && !event.is_empty() && !event.contains('.'), "{kind}");
            assert!(kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_'), "{kind}");
            assert!(kind.len() <= meshsync_store::AUDIT_KIND_BYTES_MAX, "{kind}");
        }
    }
}
