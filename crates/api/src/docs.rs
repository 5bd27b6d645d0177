//! The frame of the OpenAPI document (title, security schemes, tags) and the types that only
//! describe responses. Responses are built from the node's documents (`record_json`,
//! `conflict_json`) and small `json!` values; the types here say what those contain, and a test
//! checks real responses against them so the two cannot drift apart.
#![allow(dead_code)] // The structs are read by the derive macros only.

use std::collections::BTreeMap;

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "meshsync local API",
        description = "The local HTTP API of one meshsync node. Send `Authorization: Bearer <token>`; the token \
                       is in `<data-dir>/api-token`. GET requests may carry it as `?token=` instead (for \
                       EventSource, WebSocket and the dashboard link). Errors are \
                       `{\"error\":{\"code\":\"..\",\"message\":\"..\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&Security),
    components(schemas(ErrorBody, ErrorDetail, StreamEvent)),
    tags(
        (name = "records", description = "Records of application collections"),
        (name = "schemas", description = "Merge policies of collections"),
        (name = "conflicts", description = "Values that lost to a concurrent write"),
        (name = "live", description = "Event stream and messages"),
        (name = "node", description = "Status, settings, metrics"),
        (name = "peers", description = "Peers and sync"),
        (name = "group", description = "Invites, members and audit"),
    )
)]
struct Frame;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme("query_token", SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))));
        openapi.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("query_token", Vec::<String>::new()),
        ]);
    }
}

/// The document before routes add their paths.
pub(crate) fn frame() -> utoipa::openapi::OpenApi {
    Frame::openapi()
}

/// The error answers every authenticated endpoint may give, each with an [`ErrorBody`].
pub(crate) struct Errors;

impl utoipa::IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            ("400", "Malformed JSON, query string or path (bad_json, bad_query, bad_path)"),
            ("401", "No or wrong token (unauthorized)"),
            ("403", "Foreign Host or Origin header (forbidden_host, forbidden_origin)"),
            ("404", "No such record, conflict, peer or member (not_found)"),
            ("409", "Refused by the merge rules or the node's state (rejected, sync_unavailable, ...)"),
            ("413", "Body larger than api_body_bytes_max (too_large)"),
            ("415", "Body not sent as application/json (unsupported_media_type)"),
            ("422", "Well-formed but invalid input: names, types, values, settings (invalid)"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
            (
                status.to_string(),
                ResponseBuilder::new().description(description).content("application/json", content).build().into(),
            )
        })
        .collect()
    }
}

/// The error body of every 4xx and 5xx answer.
#[derive(ToSchema)]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable code, e.g. `invalid`, `not_found`, `forbidden_host`.
    code: String,
    /// What went wrong and what to do, for people.
    message: String,
}

/// One event of `GET /v1/events`, told apart by `type`. Only record and schema events carry a
/// `cursor` and are replayed after a reconnect.
#[derive(ToSchema, serde::Serialize)]
#[serde(tag = "type")]
pub(crate) enum StreamEvent {
    /// A record changed here or arrived from a peer.
    #[serde(rename = "record.changed")]
    RecordChanged {
        cursor: u64,
        collection: String,
        id: String,
        /// The device that wrote the change.
        origin: String,
        /// Whether it was written on this node.
        local: bool,
        deleted: bool,
    },
    /// A collection's schema changed.
    #[serde(rename = "schema.changed")]
    SchemaChanged { cursor: u64, collection: String },
    /// A concurrent write lost; see `GET /v1/conflicts`.
    #[serde(rename = "conflict.detected")]
    ConflictDetected { id: String, collection: String, record: String, field: String },
    /// An ephemeral message.
    #[serde(rename = "message")]
    Message { message: MessageDocument },
    /// A sync session with a peer opened.
    #[serde(rename = "peer.connected")]
    PeerConnected {
        device_id: String,
        name: String,
        /// The peer's address on this link.
        addr: String,
    },
    /// A sync session with a peer ended.
    #[serde(rename = "peer.disconnected")]
    PeerDisconnected { device_id: String, reason: String },
    /// Changes arrived from a peer.
    #[serde(rename = "sync.progress")]
    SyncProgress {
        device_id: String,
        /// Changes received on this link so far.
        received: u64,
        /// Changes the peer still has queued for this node (an estimate).
        remaining: u64,
        /// Whether the first catch-up on this link completed.
        caught_up: bool,
    },
}

/// Fields to set: any JSON values by field name. `_scope` (string or null) sets the record's
/// scope; `_id` names an appended event; other names starting with `_` are refused.
#[derive(ToSchema)]
pub(crate) struct FieldsBody(BTreeMap<String, serde_json::Value>);

/// A record as the application sees it.
#[derive(ToSchema)]
pub(crate) struct RecordDocument {
    collection: String,
    id: String,
    /// Visible field values.
    fields: BTreeMap<String, serde_json::Value>,
    scope: Option<String>,
    deleted: bool,
    /// Time of the newest change, RFC 3339.
    updated_at: String,
    /// Unresolved conflicts on this record.
    conflicts: u64,
    /// Event cursor of the record's last change: `GET /v1/events?cursor=` resumes after it.
    cursor: u64,
}

/// A page of records.
#[derive(ToSchema)]
pub(crate) struct RecordList {
    records: Vec<RecordDocument>,
    /// Pass as `?cursor=` for the next page; null on the last page.
    next: Option<String>,
}

/// A collection's merge rules, with whether they were declared or are the defaults.
#[derive(ToSchema)]
pub(crate) struct SchemaDocument {
    collection: String,
    /// Policy per field: `lww`, `fww`, `counter`, `max` or `min`.
    fields: BTreeMap<String, String>,
    /// Policy of fields not listed.
    default: String,
    append_only: bool,
    /// False when no schema was declared and these are the defaults.
    declared: bool,
}

/// One side of a conflict.
#[derive(ToSchema)]
pub(crate) struct ConflictSideDocument {
    value: serde_json::Value,
    /// Device id of the writer.
    device: String,
    /// RFC 3339.
    at: String,
}

/// An application collection.
#[derive(ToSchema)]
pub(crate) struct CollectionDocument {
    name: String,
}

/// Application collections that hold records (deleted ones included), by name.
#[derive(ToSchema)]
pub(crate) struct CollectionList {
    collections: Vec<CollectionDocument>,
}

/// Who wrote something and when.
#[derive(ToSchema)]
pub(crate) struct WriterDocument {
    /// Device id of the writer.
    device: String,
    /// When it was written (the write's hybrid logical clock), RFC 3339.
    at: String,
    /// The writer's own number for that write.
    seq: u64,
}

/// One version of a field that this node keeps.
#[derive(ToSchema)]
pub(crate) struct FieldVersionDocument {
    /// The value written (for a counter, that device's running total).
    value: serde_json::Value,
    /// Device id of the writer.
    device: String,
    /// RFC 3339.
    at: String,
    seq: u64,
    /// Whether this version's value is the one that shows.
    wins: bool,
}

/// Where a field's value comes from.
#[derive(ToSchema)]
pub(crate) struct FieldProvenance {
    field: String,
    /// The merge policy in force: `lww`, `fww`, `counter`, `max` or `min`.
    policy: String,
    /// The value that shows.
    value: serde_json::Value,
    /// The write whose value shows; null for a counter, whose value is the sum of its versions.
    writer: Option<WriterDocument>,
    /// Every version kept side by side: concurrent writes (two or more with different values are
    /// a conflict), or a counter's per-device totals. Oldest first.
    versions: Vec<FieldVersionDocument>,
}

/// The versions a node keeps of a record: per field, who wrote the value that shows and when.
/// Writes that a later one superseded are not kept, so this is where each value comes from now,
/// not the full history of the record.
#[derive(ToSchema)]
pub(crate) struct RecordVersions {
    collection: String,
    id: String,
    deleted: bool,
    /// The delete that hides older fields, if the record was ever deleted.
    deleted_by: Option<WriterDocument>,
    /// Time of the newest change, RFC 3339.
    updated_at: String,
    /// Event cursor of the record's last change.
    cursor: u64,
    /// In field name order; meshsync's own fields (such as the scope) left out.
    fields: Vec<FieldProvenance>,
}

/// A value that lost to a concurrent write, kept until resolved.
#[derive(ToSchema)]
pub(crate) struct ConflictDocument {
    id: String,
    collection: String,
    record: String,
    field: String,
    kept: ConflictSideDocument,
    lost: ConflictSideDocument,
    /// RFC 3339.
    detected_at: String,
}

/// Unresolved conflicts, oldest first.
#[derive(ToSchema)]
pub(crate) struct ConflictList {
    conflicts: Vec<ConflictDocument>,
}

/// An ephemeral message as sent.
#[derive(ToSchema, serde::Serialize)]
pub(crate) struct MessageDocument {
    /// Sending device.
    from: String,
    /// Addressee, or null for the whole group.
    to: Option<String>,
    /// Application-chosen type.
    r#type: String,
    data: serde_json::Value,
    /// RFC 3339.
    sent_at: String,
}

/// Peer counts in the status.
#[derive(ToSchema)]
pub(crate) struct PeerCounts {
    connected: u64,
    known: u64,
}

/// The node at a glance.
#[derive(ToSchema)]
pub(crate) struct Status {
    device_id: String,
    name: String,
    /// The group's id (hex); null until the node has a group (the mesh creates or joins one).
    group_id: Option<String>,
    /// meshsync version.
    version: String,
    /// Whether sync is paused.
    paused: bool,
    /// Live application records.
    records: u64,
    /// Unresolved conflicts.
    conflicts: u64,
    /// Without a mesh: no connections, and the static peers of the settings as known.
    peers: PeerCounts,
    /// Where the mesh accepts peers (`host:port`); null without a mesh.
    listen: Option<String>,
    /// Seconds since the node opened.
    uptime_s: u64,
    /// The last event cursor: read your records after noting it, then watch
    /// `GET /v1/events?cursor=` from it to miss nothing.
    cursor: u64,
}

/// A peer the node knows.
#[derive(ToSchema)]
pub(crate) struct PeerDocument {
    /// Null until the peer has been reached.
    device_id: Option<String>,
    name: Option<String>,
    addrs: Vec<String>,
    /// `connected`, `connecting` or `disconnected`.
    state: String,
    /// Where the node learned of it: `static`, `invite`, `inbound` (it dialed us), `pex` (another
    /// peer told us), `mdns`, `beacon`, `rendezvous`.
    sources: Vec<String>,
    /// Last frame received from it, RFC 3339.
    last_seen: Option<String>,
    /// Last measured round trip, in ms.
    rtt_ms: Option<f64>,
    /// Last time it acknowledged changes from us, RFC 3339.
    last_sync: Option<String>,
    /// Changes this node has that the peer has not acknowledged; null while its device is unknown.
    lag: Option<u64>,
    /// Why the last dial or link failed.
    last_error: Option<String>,
    /// The last dial: when, every address tried with its error (null: it answered), and the
    /// address that answered.
    last_dial: Option<DialDocument>,
    /// Changes received from it since this node started.
    received: u64,
    /// Changes it acknowledged from us since this node started.
    sent: u64,
    /// Whether the first catch-up from it on the current link completed.
    caught_up: bool,
}

/// One dial of a peer.
#[derive(ToSchema)]
pub(crate) struct DialDocument {
    /// When it started, RFC 3339.
    at: String,
    tried: Vec<DialAttemptDocument>,
    /// The address that answered, if any.
    connected: Option<String>,
}

/// One address tried.
#[derive(ToSchema)]
pub(crate) struct DialAttemptDocument {
    addr: String,
    /// Why it failed; null if it answered or the dial ended first.
    error: Option<String>,
}

/// Known peers.
#[derive(ToSchema)]
pub(crate) struct PeerList {
    peers: Vec<PeerDocument>,
}

/// A forgotten peer.
#[derive(ToSchema)]
pub(crate) struct PeerRemoved {
    /// The address or device id removed.
    removed: String,
}

/// The outcome of a connection test.
#[derive(ToSchema)]
pub(crate) struct PeerTest {
    /// The address (or, for a device, the device id) tried.
    addr: String,
    reachable: bool,
    /// Time to connect (with the mesh: to complete the TLS handshake) in ms, when reachable.
    rtt_ms: Option<f64>,
    /// Why not, when unreachable.
    error: Option<String>,
}

/// Whether sync is paused.
#[derive(ToSchema)]
pub(crate) struct Paused {
    paused: bool,
}

/// The answer to a reconnect request.
#[derive(ToSchema)]
pub(crate) struct Reconnecting {
    /// Peer links that will be re-dialed.
    reconnecting: u64,
}

/// Sync with one peer device.
#[derive(ToSchema)]
pub(crate) struct SyncPeer {
    device_id: String,
    name: Option<String>,
    /// `connected`, `connecting` or `disconnected`.
    state: String,
    /// Highest change number of each device the peer has acknowledged.
    acked: BTreeMap<String, u64>,
    /// Changes this node has that the peer has not acknowledged.
    lag: u64,
    /// Last acknowledgement, RFC 3339.
    last_sync: Option<String>,
    /// Changes received from it since this node started.
    received: u64,
    /// Changes it acknowledged from us since this node started.
    sent: u64,
    /// Whether the first catch-up from it on the current link completed.
    caught_up: bool,
}

/// Sync progress.
#[derive(ToSchema)]
pub(crate) struct SyncState {
    paused: bool,
    /// Highest change number seen from each device.
    vector: BTreeMap<String, u64>,
    /// Per peer device (empty without a mesh).
    peers: Vec<SyncPeer>,
}

/// A member of the group.
#[derive(ToSchema)]
pub(crate) struct Member {
    device_id: String,
    /// Null until the device has connected.
    name: Option<String>,
    /// `admin`, `writer` or `reader`.
    role: String,
    /// Scopes it may see and write; empty: all.
    scopes: Vec<String>,
    revoked: bool,
    /// Whether it created the group (the root of every membership chain).
    founder: bool,
    /// Whether it is the device answering.
    this_device: bool,
    /// The admin whose invite admitted it (null for the founder).
    invited_by: Option<String>,
    /// The admin who revoked it.
    revoked_by: Option<String>,
}

/// A revoked member.
#[derive(ToSchema)]
pub(crate) struct Revoked {
    device_id: String,
    /// Null (names are not part of membership).
    name: Option<String>,
    /// Its role before revocation.
    role: Option<String>,
    scopes: Vec<String>,
    /// Always true.
    revoked: bool,
    /// Its changes up to this sequence number stay; later ones are refused everywhere.
    revoked_after_seq: u64,
}

/// The group's members.
#[derive(ToSchema)]
pub(crate) struct MemberList {
    members: Vec<Member>,
}

/// One audit entry, a link of the hash chain.
#[derive(ToSchema)]
pub(crate) struct AuditEntry {
    /// Position in the log: 1, 2, ... without gaps.
    seq: u64,
    /// When it was recorded, RFC 3339.
    at: String,
    /// What happened, `family.event`: `group.created`, `group.joined`, `invite.created`,
    /// `invite.used`, `invite.refused`, `member.admitted`, `member.revoked`,
    /// `connection.refused`, `write.rejected`, `clock.skew`, `session.started`,
    /// `session.ended`, `api.refused`, `audit.dropped`.
    kind: String,
    /// The device it concerns, if any.
    device: Option<String>,
    /// Details, a JSON object whose keys depend on the kind (see docs/api.md).
    detail: serde_json::Value,
    /// SHA-256 of this entry's fields and `prev` (64 hex digits; docs/api.md gives the bytes).
    hash: String,
    /// The `hash` of the entry before (64 zeros before entry 1).
    prev: String,
}

/// The check of the audit log's hash chain.
#[derive(ToSchema)]
pub(crate) struct AuditChain {
    /// Whether every link holds, from the oldest entry kept to the newest.
    ok: bool,
    /// Entries that verified: all of them when `ok`, else those before `broken_at`.
    entries: u64,
    /// The newest entry's hash when `ok` (note it elsewhere to detect a rewrite of the whole
    /// log later); null when broken.
    head: Option<String>,
    /// The first entry missing, changed or out of place; null when `ok`.
    broken_at: Option<u64>,
    /// What is wrong there; null when `ok`.
    reason: Option<String>,
}

/// A page of the audit log, newest first.
#[derive(ToSchema)]
pub(crate) struct AuditLog {
    entries: Vec<AuditEntry>,
    /// Pass as `?before=` for the next (older) page; null on the last page.
    next: Option<u64>,
    /// The chain check with `?verify=true`; null without.
    chain: Option<AuditChain>,
}

/// An invite. `role`, `scopes` and `uses` are echoed from the request and not enforced yet;
/// `expires_at` is advisory.
#[derive(ToSchema)]
pub(crate) struct Invite {
    /// The code to pass to `meshsync run --join`.
    code: String,
    /// RFC 3339.
    expires_at: String,
    /// The code as an SVG QR code.
    qr_svg: String,
    role: String,
    scopes: Vec<String>,
    uses: u32,
}

/// The settings, as in the TOML file (see docs/config.md).
#[derive(ToSchema)]
pub(crate) struct ConfigDocument(BTreeMap<String, serde_json::Value>);

/// The settings after an update, with the changed settings that take effect on restart.
#[derive(ToSchema)]
pub(crate) struct ConfigUpdated(BTreeMap<String, serde_json::Value>);

/// The OpenAPI document.
#[derive(ToSchema)]
pub(crate) struct OpenApiJson(BTreeMap<String, serde_json::Value>);

/// Path parameters naming a collection.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct CollectionPath {
    /// Collection name: letters, digits, `_ - .`, starting with a letter or digit.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    collection: String,
}

/// Path parameters naming a record.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct RecordPath {
    /// Collection name: letters, digits, `_ - .`, starting with a letter or digit.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    collection: String,
    /// Record id: 1-256 bytes without control characters.
    #[param(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$")]
    id: String,
}

/// Path parameter naming a device.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct DevicePath {
    /// Device id, as shown by `GET /v1/status` (three groups of nine of `A-Z 2-7`).
    #[param(pattern = "^[A-Z2-7]{9}-[A-Z2-7]{9}-[A-Z2-7]{9}$")]
    device: String,
}
