//! The meshsync embedding API: open a node on a data dir, declare schemas, read and write
//! records, handle conflicts, and subscribe to changes. Writes return once durable and never wait
//! for the network.
//!
//! ```no_run
//! use meshsync_node::{Node, Schema, Policy};
//! use serde_json::json;
//!
//! let node = Node::open("./shop-data")?;
//! node.declare_schema("products", Schema {
//!     fields: [("stock".to_string(), Policy::Counter)].into(),
//!     ..Schema::default()
//! })?;
//! node.put("products", "tea", json!({"name": "Tea", "price": 2.5}))?;
//! node.incr("products", "tea", "stock", json!(12))?;
//! let tea = node.get("products", "tea")?.expect("just written");
//! assert_eq!(tea.fields["stock"], 12.into());
//! # Ok::<(), meshsync_node::NodeError>(())
//! ```
//!
//! # Layout
//! - `lib.rs`: [`Node`], its options and errors.
//! - [`audit`]: the kinds of audit entries and what each records; [`Node::audit`] appends them.
//! - `identity`: the device id kept in the data dir.
//! - `json`: conversions between the app's JSON and the core's values, and the record document.

pub mod audit;
pub mod config;
pub mod discovery;
pub mod group;
mod identity;
mod json;
pub mod membership;
pub mod mesh;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshsync_core::{name, Op};
pub use meshsync_core::{DeviceId, Hlc, Policy, Schema, Value, VersionVector};
pub use meshsync_store::{
    AuditBroken, AuditCheck, AuditEntry, AuditPage, ConflictDoc as Conflict, ConflictSide, Durability, ListPage,
    RecordDoc as Record, StoreEvent, AUDIT_PAGE_MAX, LIST_LIMIT_MAX,
};
use meshsync_store::{LocalWrite, Store, StoreError, StoreOptions};
use tokio::sync::broadcast;

pub use json::{conflict_json, fields_from_json, record_json};

/// Audit entries per page when the caller names no limit.
pub const AUDIT_PAGE_DEFAULT: usize = 100;
/// Events buffered per subscriber before it starts to lag (and should resume from its cursor).
pub const EVENT_BUFFER: usize = 4096;
/// File name of the database inside the data dir.
pub const DATABASE_FILE: &str = "meshsync.db";

/// Options for [`Node::open_with`].
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// What an acknowledged write survives.
    pub durability: Durability,
    /// How far ahead of our clock a remote timestamp may be, in ms.
    pub clock_drift_ms_max: u64,
    /// Human name of this device.
    pub name: String,
}

impl Default for NodeOptions {
    fn default() -> NodeOptions {
        NodeOptions {
            durability: Durability::Process,
            clock_drift_ms_max: meshsync_core::CLOCK_DRIFT_MS_MAX_DEFAULT,
            name: config::default_name(),
        }
    }
}

/// What can go wrong, in words an application can act on.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Invalid input: a bad name, value, schema or operation.
    #[error("{0}")]
    Invalid(String),
    /// The record does not exist.
    #[error("record {collection}/{id} not found")]
    NotFound {
        /// The collection.
        collection: String,
        /// The record id.
        id: String,
    },
    /// The write contradicts the merge rules (first-writer-wins field set, append-only record).
    #[error("{0}")]
    Rejected(String),
    /// No conflict with that id.
    #[error("no conflict with id {0:?}")]
    UnknownConflict(String),
    /// The data dir cannot be used.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
    /// The network could not be set up.
    #[error("network: {0}")]
    Network(String),
    /// The operation needs the mesh, which is not running.
    #[error("{0}")]
    Unavailable(String),
    /// This device's role or scopes do not allow it.
    #[error("{0}")]
    Forbidden(String),
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> NodeError {
        use meshsync_core::WriteError as W;
        match e {
            StoreError::Write(W::NotFound) => NodeError::NotFound { collection: String::new(), id: String::new() },
            StoreError::Write(
                w @ (W::FieldAlreadySet { .. }
                | W::AppendOnlyExists
                | W::AppendOnlyImmutable { .. }
                | W::NoConflict { .. }),
            ) => NodeError::Rejected(w.to_string()),
            StoreError::Write(w) => NodeError::Invalid(w.to_string()),
            StoreError::Name(n) => NodeError::Invalid(n.to_string()),
            StoreError::Value(v) => NodeError::Invalid(v.to_string()),
            StoreError::Schema(s) => NodeError::Invalid(s.to_string()),
            StoreError::BadCursor => NodeError::Invalid("invalid cursor".into()),
            StoreError::UnknownConflict(id) => NodeError::UnknownConflict(id),
            other => NodeError::Storage(other.to_string()),
        }
    }
}

/// A query for [`Node::list`].
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Keep records whose field equals the value, for every entry.
    pub filters: Vec<(String, serde_json::Value)>,
    /// Continue after a previous page.
    pub cursor: Option<String>,
    /// Page size (1 to [`LIST_LIMIT_MAX`]; 0 means 100).
    pub limit: usize,
}

/// Something that happened on this node.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A committed change to the store.
    Store(StoreEvent),
    /// An ephemeral message, sent here or received from a peer. Not stored.
    Message(Message),
    /// A peer connected, disconnected, or made progress.
    Peer(mesh::PeerEvent),
}

/// An ephemeral typed message between devices of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The sending device.
    pub from: DeviceId,
    /// The addressee, or `None` for the whole group.
    pub to: Option<DeviceId>,
    /// Application-chosen type, e.g. `"print-receipt"`.
    pub kind: String,
    /// Application data.
    pub data: serde_json::Value,
    /// When it was sent, in ms since the epoch.
    pub sent_ms: u64,
}

/// Longest message type name, in bytes.
pub const MESSAGE_KIND_BYTES_MAX: usize = 128;
/// Largest message data, as JSON text.
pub const MESSAGE_DATA_BYTES_MAX: usize = 64 << 10;

pub(crate) struct Inner {
    dir: PathBuf,
    identity: meshsync_net::Identity,
    mesh: std::sync::OnceLock<mesh::Mesh>,
    name: std::sync::RwLock<String>,
    started: std::time::Instant,
    device: DeviceId,
    store: Store,
    events: broadcast::Sender<Event>,
    /// The group's membership as this node knows it, once it has a group.
    roster: std::sync::RwLock<Option<Arc<membership::Roster>>>,
}

/// File in the data dir holding this device's own membership entry until the group's copy of it
/// reaches this node (a device that just joined presents it to the members it meets).
pub const OWN_ENTRY_FILE: &str = "member.entry";

/// A meshsync node: one device's replica of its group's data. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

fn check_app_collection(collection: &str) -> Result<(), NodeError> {
    name::check_collection(collection).map_err(|e| NodeError::Invalid(e.to_string()))
}

fn check_id(id: &str) -> Result<(), NodeError> {
    name::check_record_id(id).map_err(|e| NodeError::Invalid(e.to_string()))
}

impl Node {
    /// Opens the node whose data lives in `dir`, creating it on first use.
    pub fn open(dir: impl AsRef<Path>) -> Result<Node, NodeError> {
        Node::open_with(dir, NodeOptions::default())
    }

    /// Opens with explicit options.
    pub fn open_with(dir: impl AsRef<Path>, options: NodeOptions) -> Result<Node, NodeError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| NodeError::DataDir { path: dir.clone(), reason: e.to_string() })?;
        let identity = meshsync_net::Identity::load_or_create(&dir)
            .map_err(|e| NodeError::DataDir { path: dir.clone(), reason: e.to_string() })?;
        let device = identity.device_id();
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let sink_events = events.clone();
        let store = Store::open_with_sink(
            dir.join(DATABASE_FILE),
            device,
            StoreOptions {
                durability: options.durability,
                clock_drift_ms_max: options.clock_drift_ms_max,
                ..StoreOptions::default()
            },
            Box::new(move |batch| {
                for event in batch {
                    // No subscribers is fine: events are also replayable from the store.
                    let _ = sink_events.send(Event::Store(event.clone()));
                }
            }),
        )
        .map_err(|e| NodeError::DataDir { path: dir.clone(), reason: e.to_string() })?;
        tracing::info!(device = %device, dir = %dir.display(), "node opened");
        let name = std::sync::RwLock::new(options.name);
        Ok(Node {
            inner: Arc::new(Inner {
                dir,
                identity,
                mesh: std::sync::OnceLock::new(),
                name,
                started: std::time::Instant::now(),
                device,
                store,
                events,
                roster: std::sync::RwLock::new(None),
            }),
        })
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.inner.device
    }

    /// This device's human name.
    pub fn name(&self) -> String {
        self.inner.name.read().expect("lock poisoned").clone()
    }

    /// Renames this device (validated like the `name` setting).
    pub fn set_name(&self, name: &str) -> Result<(), NodeError> {
        let candidate = config::Config { name: name.to_string(), ..config::Config::default() };
        candidate.validate()?;
        *self.inner.name.write().expect("lock poisoned") = name.to_string();
        Ok(())
    }

    /// Time since this node was opened.
    pub fn uptime(&self) -> std::time::Duration {
        self.inner.started.elapsed()
    }

    /// The data dir.
    pub fn data_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The underlying store, for the sync and API layers.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Declares (or replaces) a collection's schema. Schemas replicate to the group like data.
    pub fn declare_schema(&self, collection: &str, schema: Schema) -> Result<(), NodeError> {
        check_app_collection(collection)?;
        if let Some(me) = self.membership() {
            if me.role == membership::Role::Reader || (me.role == membership::Role::Writer && !me.scopes.is_empty()) {
                return Err(NodeError::Forbidden(format!(
                    "this device is a {}{}: only admins and writers without scopes declare schemas",
                    me.role.name(),
                    if me.scopes.is_empty() { "" } else { " with scopes" }
                )));
            }
        }
        self.inner.store.put_schema(collection, &schema)?;
        Ok(())
    }

    /// A collection's schema (the defaults if none was declared).
    pub fn schema(&self, collection: &str) -> Result<Schema, NodeError> {
        check_app_collection(collection)?;
        Ok(self.inner.store.schema(collection)?.unwrap_or_default())
    }

    fn write(&self, collection: &str, id: &str, op: Op) -> Result<Record, NodeError> {
        check_app_collection(collection)?;
        check_id(id)?;
        self.check_write(collection, id, &op)?;
        let outcome =
            self.inner.store.write(LocalWrite { collection: collection.into(), id: id.into(), op }).map_err(|e| {
                match NodeError::from(e) {
                    NodeError::NotFound { .. } => NodeError::NotFound { collection: collection.into(), id: id.into() },
                    other => other,
                }
            })?;
        Ok(outcome.record)
    }

    /// Sets fields of a record (a partial update; creates the record if needed). `fields` is a
    /// JSON object; the reserved key `_scope` sets the record's scope (a string, or null).
    pub fn put(&self, collection: &str, id: &str, fields: serde_json::Value) -> Result<Record, NodeError> {
        let (fields, scope, _) = fields_from_json(&fields)?;
        self.write(collection, id, Op::Put { fields, scope })
    }

    /// Reads a live record.
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>, NodeError> {
        check_app_collection(collection)?;
        check_id(id)?;
        Ok(self.inner.store.get(collection, id)?.filter(|r| !r.deleted))
    }

    /// Deletes a record (a tombstone that replicates).
    pub fn delete(&self, collection: &str, id: &str) -> Result<(), NodeError> {
        self.write(collection, id, Op::Delete).map(|_| ())
    }

    /// Adds `by` (an integer or a float, possibly negative) to a counter field.
    pub fn incr(&self, collection: &str, id: &str, field: &str, by: serde_json::Value) -> Result<Record, NodeError> {
        let by = Value::from_json(&by).map_err(|e| NodeError::Invalid(e.to_string()))?;
        self.write(collection, id, Op::Incr { field: field.into(), by })
    }

    /// Appends an immutable event. Without `id`, one is generated. Retrying with the same id
    /// and content is harmless; the same id with other content is rejected.
    pub fn append(&self, collection: &str, id: Option<&str>, fields: serde_json::Value) -> Result<Record, NodeError> {
        let (fields, scope, _) = fields_from_json(&fields)?;
        let generated;
        let id = match id {
            Some(id) => id,
            None => {
                generated = identity::event_id(self.inner.device);
                &generated
            }
        };
        self.write(collection, id, Op::Append { fields, scope: scope.flatten() })
    }

    /// Lists live records with equality filters and cursor paging.
    pub fn list(&self, collection: &str, query: &ListQuery) -> Result<ListPage, NodeError> {
        check_app_collection(collection)?;
        let filters = query
            .filters
            .iter()
            .map(|(field, value)| {
                Ok((field.clone(), Value::from_json(value).map_err(|e| NodeError::Invalid(e.to_string()))?))
            })
            .collect::<Result<Vec<_>, NodeError>>()?;
        let limit = if query.limit == 0 { 100 } else { query.limit };
        if limit > LIST_LIMIT_MAX {
            return Err(NodeError::Invalid(format!("limit must be at most {LIST_LIMIT_MAX}")));
        }
        Ok(self.inner.store.list(collection, &filters, query.cursor.as_deref(), limit)?)
    }

    /// Unresolved conflicts, oldest first.
    pub fn conflicts(&self, limit: usize) -> Result<Vec<Conflict>, NodeError> {
        Ok(self.inner.store.conflicts(limit)?)
    }

    /// Resolves a conflict by writing `value` over every concurrent version of the field
    /// (`None` keeps the current winner). The resolution replicates like any write.
    pub fn resolve(&self, conflict_id: &str, value: Option<serde_json::Value>) -> Result<Record, NodeError> {
        let conflict =
            self.inner.store.conflict(conflict_id)?.ok_or_else(|| NodeError::UnknownConflict(conflict_id.into()))?;
        let value = match value {
            Some(v) => Some(Value::from_json_checked(&v).map_err(|e| NodeError::Invalid(e.to_string()))?),
            None => None,
        };
        self.write(&conflict.collection, &conflict.record, Op::Resolve { field: conflict.field, value })
    }

    /// Subscribes to events from now on. A subscriber that falls more than [`EVENT_BUFFER`]
    /// events behind gets `Lagged` and should catch up with [`Node::events_since`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Replays record changes committed after `cursor` (an event's `lsn`).
    pub fn events_since(&self, cursor: u64, limit: usize) -> Result<Vec<StoreEvent>, NodeError> {
        Ok(self.inner.store.events_since(cursor, limit)?)
    }

    /// Sends an ephemeral message: delivered to this node's subscribers now, and to peers once
    /// they are connected. Returns the message as sent.
    pub fn send_message(
        &self,
        to: Option<DeviceId>,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<Message, NodeError> {
        if kind.is_empty() || kind.len() > MESSAGE_KIND_BYTES_MAX || kind.chars().any(char::is_control) {
            return Err(NodeError::Invalid(format!(
                "message type: use 1-{MESSAGE_KIND_BYTES_MAX} bytes without control characters"
            )));
        }
        let bytes = data.to_string().len();
        if bytes > MESSAGE_DATA_BYTES_MAX {
            return Err(NodeError::Invalid(format!(
                "message data is {bytes} bytes as JSON, the limit is {MESSAGE_DATA_BYTES_MAX}"
            )));
        }
        Value::from_json(&data).map_err(|e| NodeError::Invalid(format!("message data: {e}")))?;
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let message = Message { from: self.inner.device, to, kind: kind.to_string(), data, sent_ms };
        if to != Some(self.inner.device) {
            if let Some(mesh) = self.mesh() {
                mesh.send(&message, identity::message_id());
            }
        }
        if to.is_none() || to == Some(self.inner.device) {
            self.publish(Event::Message(message.clone()));
        }
        Ok(message)
    }

    /// Records an entry in the audit log (`kind`: one of [`audit`]'s constants). Fire and forget:
    /// queues it for the store's next group commit and returns at once, never waiting for the
    /// commit or for room in the write queue, so it is safe on async threads and hot paths. It
    /// cannot fail the caller: a kind or detail over the limits is clamped, and an entry that
    /// cannot be queued (the queue is full, the store closed) is logged as a warning; the store
    /// counts entries lost to a full queue in the log itself ([`audit::DROPPED`]).
    pub fn audit(&self, kind: &str, device: Option<DeviceId>, detail: serde_json::Value) {
        match self.inner.store.audit_append_nowait(kind, device, detail) {
            Ok(()) => {}
            Err(StoreError::Closed) => tracing::debug!(kind, "audit entry after the store closed: not recorded"),
            Err(e) => tracing::warn!(kind, error = %e, "audit entry not recorded"),
        }
    }

    /// Records an entry in the audit log and waits until it is durable; returns its seq. For rare
    /// events whose entry should exist before the caller answers (an invite handed out). Blocks:
    /// call it off async threads. `kind` and `detail` are clamped as with [`Node::audit`].
    pub fn audit_wait(
        &self,
        kind: &str,
        device: Option<DeviceId>,
        detail: serde_json::Value,
    ) -> Result<u64, NodeError> {
        Ok(self.inner.store.audit_append(kind, device, detail)?)
    }

    /// A page of the audit log, newest first: entries older than `before` (a seq; `None`: from
    /// the newest), at most `limit` (0 means [`AUDIT_PAGE_DEFAULT`]; at most [`AUDIT_PAGE_MAX`]),
    /// whose kind starts with `kind_prefix` (e.g. `member.`). Pass the page's `next` as `before`
    /// for the following page. Reads the store: call it off async threads.
    pub fn audit_page(
        &self,
        before: Option<u64>,
        limit: usize,
        kind_prefix: Option<&str>,
    ) -> Result<AuditPage, NodeError> {
        let limit = if limit == 0 { AUDIT_PAGE_DEFAULT } else { limit };
        if limit > AUDIT_PAGE_MAX {
            return Err(NodeError::Invalid(format!("limit must be at most {AUDIT_PAGE_MAX}")));
        }
        Ok(self.inner.store.audit_page(before, limit, kind_prefix)?)
    }

    /// Checks the audit log's hash chain from its oldest entry to its newest: `Ok(Ok(check))`
    /// when every link holds, `Ok(Err(broken))` naming the first entry that was changed, removed
    /// or moved. Reads the whole log (at most 100,000 entries, one at a time): call it off async
    /// threads, and not per request.
    pub fn audit_verify(&self) -> Result<Result<AuditCheck, AuditBroken>, NodeError> {
        Ok(self.inner.store.audit_verify()?)
    }

    /// Publishes an event to subscribers (used by the sync and API layers).
    pub fn publish(&self, event: Event) {
        let _ = self.inner.events.send(event);
    }

    /// This device's role and scopes in its group: from the roster, or, for a device that just
    /// joined and has not received the group's copy of its entry yet, from its own entry. `None`
    /// while the node has no group (an embedding app without sync may do anything).
    pub fn membership(&self) -> Option<membership::Member> {
        let roster = self.roster()?;
        if let Some(member) = roster.member(self.inner.device) {
            return Some(member.clone());
        }
        let entry = self.own_entry()?;
        Some(membership::Member {
            role: entry.invite.grant.role,
            scopes: entry.invite.grant.scopes.clone(),
            revoked_after: None,
            revoked_by: None,
            entry: Some(entry),
        })
    }

    /// The roster, once the node has a group and its mesh started.
    pub fn roster(&self) -> Option<Arc<membership::Roster>> {
        self.inner.roster.read().expect("lock").clone()
    }

    /// This device's own membership entry as saved when it joined.
    pub(crate) fn own_entry(&self) -> Option<membership::MemberEntry> {
        let text = std::fs::read_to_string(self.inner.dir.join(OWN_ENTRY_FILE)).ok()?;
        membership::decode(text.trim()).ok()
    }

    /// Rebuilds the roster from the `_members` collection. Statements that do not count are
    /// logged; the mesh refuses them when they arrive, so they are rare here.
    pub(crate) fn refresh_roster(&self) -> Result<Arc<membership::Roster>, NodeError> {
        let group = self.group()?.ok_or_else(|| NodeError::Unavailable("this node has no group yet".into()))?;
        let (mut entries, mut revocations) = (Vec::new(), Vec::new());
        let mut cursor: Option<String> = None;
        loop {
            let page = self.inner.store.list(membership::MEMBERS_COLLECTION, &[], cursor.as_deref(), 1000)?;
            for doc in &page.records {
                if let Some(Value::Str(text)) = doc.fields.get(membership::MEMBER_FIELD) {
                    if let Ok(entry) = membership::decode::<membership::MemberEntry>(text) {
                        entries.push(entry);
                    }
                }
                if let Some(Value::Str(text)) = doc.fields.get(membership::REVOKED_FIELD) {
                    if let Ok(revocation) = membership::decode::<membership::Revocation>(text) {
                        revocations.push(revocation);
                    }
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let (roster, refused) = membership::Roster::build(group.id, group.founder_key, entries, revocations);
        for (device, why) in refused {
            tracing::warn!(%device, %why, "a membership statement does not count");
        }
        let roster = Arc::new(roster);
        *self.inner.roster.write().expect("lock") = Some(roster.clone());
        Ok(roster)
    }

    /// Writes a membership statement into the replicated `_members` collection.
    pub(crate) fn write_member_field(&self, device: DeviceId, field: &str, text: String) -> Result<(), NodeError> {
        self.inner.store.write(LocalWrite {
            collection: membership::MEMBERS_COLLECTION.into(),
            id: device.to_string(),
            op: Op::Put { fields: vec![(field.into(), Value::Str(text))], scope: None },
        })?;
        self.refresh_roster()?;
        Ok(())
    }

    /// Whether this device may write anything anywhere (an active admin or unscoped writer, or a
    /// node without a group): then [`Node::check_write`] has nothing to check.
    pub fn may_write_anything(&self) -> bool {
        let unrestricted = |m: &membership::Member| {
            m.active()
                && (m.role == membership::Role::Admin || (m.role == membership::Role::Writer && m.scopes.is_empty()))
        };
        // Called on every API write: look the member up without cloning it (and without reading
        // the saved entry, which only a device not yet in its own roster needs).
        match self.roster() {
            None => true,
            Some(roster) => match roster.member(self.inner.device) {
                Some(member) => unrestricted(member),
                None => self.membership().is_none_or(|m| unrestricted(&m)),
            },
        }
    }

    /// Checks that this device's role and scopes allow a write to `collection/id` (reads the
    /// record's scope for a scoped writer that does not name one). [`Node::put`] and the other
    /// writes call it; code writing through [`Node::store`] directly must call it first.
    pub fn check_write(&self, collection: &str, id: &str, op: &Op) -> Result<(), NodeError> {
        let Some(me) = self.membership() else { return Ok(()) };
        if !me.active() {
            return Err(NodeError::Forbidden("this device was revoked from its group; it can no longer write".into()));
        }
        match me.role {
            membership::Role::Admin => Ok(()),
            membership::Role::Reader => Err(NodeError::Forbidden(
                "this device is a reader: its writes would never leave it; ask an admin for a writer invite".into(),
            )),
            membership::Role::Writer if me.scopes.is_empty() => Ok(()),
            membership::Role::Writer => {
                let given = match op {
                    Op::Put { scope, .. } => scope.clone(),
                    Op::Append { scope, .. } => Some(scope.clone()),
                    _ => None,
                };
                let scope = match given {
                    Some(scope) => scope,
                    None => self.inner.store.get(collection, id)?.and_then(|doc| doc.scope),
                };
                if me.sees(scope.as_deref()) {
                    Ok(())
                } else {
                    Err(NodeError::Forbidden(format!(
                        "this device may write only in scopes {:?}; set _scope to one of them",
                        me.scopes
                    )))
                }
            }
        }
    }

    /// The group this node belongs to, if it has one yet.
    pub fn group(&self) -> Result<Option<group::Group>, NodeError> {
        group::Group::load(&self.inner.dir)
    }

    /// Joins the group of an invite code: saves the group and remembers the inviter as a peer.
    /// Refused if this node already belongs to another group.
    pub fn join(&self, code: &str) -> Result<group::Invite, NodeError> {
        let invite = group::parse_invite(code)?;
        let joined = group::Group::from_invite(&invite);
        match self.group()? {
            Some(existing) if existing != joined => {
                return Err(NodeError::Invalid(format!(
                    "this node already belongs to group {}; use a fresh --data-dir to join another",
                    existing.id_text()
                )))
            }
            Some(_) => {}
            None => {
                joined.save(&self.inner.dir)?;
                self.audit(
                    audit::JOIN,
                    Some(invite.inviter),
                    serde_json::json!({"group": joined.id_text(), "addrs": invite.addrs}),
                );
            }
        }
        // Our own entry, signed with the invite's key: shown to the members we meet, who check
        // the invite (its admin, expiry and uses) and admit us.
        let entry = membership::MemberEntry::join(&invite.invite, &invite.key()?, self.inner.device);
        let path = self.inner.dir.join(OWN_ENTRY_FILE);
        std::fs::write(&path, membership::encode(&entry))
            .map_err(|e| NodeError::DataDir { path: path.clone(), reason: e.to_string() })?;
        let mut info = mesh::PeerInfo::unknown();
        info.device_id = Some(invite.inviter.to_string());
        info.addrs = invite.addrs.clone();
        info.sources = vec!["invite".into()];
        let doc = serde_json::to_string(&info).map_err(|e| NodeError::Storage(e.to_string()))?;
        self.inner.store.save_peer(invite.inviter, Some(doc))?;
        Ok(invite)
    }

    /// Starts the mesh: listens for peers, dials known ones and syncs. Creates a new group on
    /// first use unless [`Node::join`] was called. Needs a tokio runtime.
    pub async fn start_mesh(&self, options: mesh::MeshOptions) -> Result<mesh::Mesh, NodeError> {
        if let Some(mesh) = self.inner.mesh.get() {
            return Ok(mesh.clone());
        }
        let group = match self.group()? {
            Some(group) => group,
            None => {
                let group = group::Group::generate(self.inner.identity.public_key());
                group.save(&self.inner.dir)?;
                tracing::info!(group = %group.id_text(), "created a new group");
                self.audit(audit::GROUP_CREATED, None, serde_json::json!({"group": group.id_text()}));
                group
            }
        };
        self.refresh_roster()?;
        let mesh = mesh::Mesh::start(self, group, self.inner.identity.clone(), options).await?;
        let _ = self.inner.mesh.set(mesh.clone());
        Ok(mesh)
    }

    /// The running mesh, if started.
    pub fn mesh(&self) -> Option<&mesh::Mesh> {
        self.inner.mesh.get()
    }

    /// Stops the mesh, waits for pending writes and closes the store. Reads still work.
    pub fn close(&self) {
        if let Some(mesh) = self.mesh() {
            mesh.shutdown();
        }
        self.inner.store.close();
    }
}
