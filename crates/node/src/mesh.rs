//! The mesh: this node's links to its peers. It listens, dials known peers with jittered
//! exponential backoff, runs one sync [`Session`] per peer device over mutual TLS, applies what
//! arrives to the store, streams local and relayed changes out, floods ephemeral messages, and
//! keeps the peer table that `GET /v1/peers` shows (sources, addresses, state, last dial error).
//!
//! One task per link drives its session: frames and timers in, store work on the blocking pool,
//! frames out. A duplicate link to the same device (both sides dialed at once) is resolved the
//! same way on both ends: the link dialed by the smaller device id stays.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use meshsync_core::record::{Change, SCOPE_FIELD};
use meshsync_core::vv::Dot;
use meshsync_core::{DeviceId, VersionVector};
use meshsync_net::{Connection, Endpoint, FrameReceiver, FrameSender, Identity};
use meshsync_store::{RemoteBatch, ScopeFilter};
use meshsync_sync::{Page, Session, SessionConfig, SessionEvent};
use meshsync_wire::{Envelope, Hello, PeerAddrs, PROTOCOL_VERSION};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{mpsc, watch, Notify};

use crate::audit;
use crate::group::Group;
use crate::membership::{self, MemberEntry, Role, Roster};
use crate::{Event, Inner, Message, NodeError};

/// Most links at once.
pub const LINKS_MAX: usize = 256;
/// Most ephemeral messages waiting to go out on one link; more are dropped (they are ephemeral,
/// and a slow or stalled peer must not make this node hold an unbounded queue).
pub const MESSAGES_QUEUED_MAX: usize = 1024;
/// Ephemeral messages accepted from one link per second; more are dropped unread.
pub const MESSAGES_PER_S: u32 = 200;
/// Most dials under way at once; peers beyond wait for the next round.
pub const DIALS_MAX: usize = 32;
/// Most peers remembered.
pub const PEERS_MAX: usize = 1024;
/// Hops an ephemeral message may travel.
pub const MESSAGE_HOPS: u8 = 8;
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay before the next address of a peer is tried while earlier attempts are still under way
/// (as in "happy eyeballs"): a stale address costs this much, not a whole dial timeout.
const DIAL_STAGGER: Duration = Duration::from_millis(250);
/// Most addresses remembered per peer.
const PEER_ADDRS_MAX: usize = 16;
const BACKOFF_MS_MIN: u64 = 250;
const BACKOFF_MS_MAX: u64 = 30_000;
const SEEN_MESSAGES_MAX: usize = 4096;
/// Frames read without waiting after one arrives, before the session's work is done.
const FRAMES_DRAINED_MAX: usize = 16;
/// Most changes applied in one transaction when several batches are waiting.
const REMOTE_APPLY_CHANGES_MAX: usize = meshsync_store::REMOTE_BATCH_CHANGES_MAX;

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Settings of the mesh.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Where to accept peers.
    pub listen: SocketAddr,
    /// Static peers (`host:port`).
    pub peers: Vec<String>,
    /// Heartbeat interval; a peer silent for four intervals is dropped.
    pub heartbeat_interval_ms: u64,
    /// How to find peers besides static addresses and peer exchange.
    pub discovery: crate::discovery::DiscoveryOptions,
}

impl Default for MeshOptions {
    /// Loopback on a free port, no static peers, no discovery: what an embedding app or a test
    /// starts from.
    fn default() -> MeshOptions {
        MeshOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: Vec::new(),
            heartbeat_interval_ms: 2_000,
            discovery: crate::discovery::DiscoveryOptions::default(),
        }
    }
}

/// A peer's connection state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// A session is open.
    Connected,
    /// A dial or handshake is under way.
    Connecting,
    /// Not connected.
    Disconnected,
}

/// What the mesh knows of one peer, as shown by the API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its device id, once known.
    pub device_id: Option<String>,
    /// Its name, once known.
    pub name: Option<String>,
    /// Addresses to reach it.
    pub addrs: Vec<String>,
    /// Connection state.
    pub state: PeerState,
    /// How we learned of it: static, invite, inbound, pex, mdns, beacon, rendezvous.
    pub sources: Vec<String>,
    /// Last frame received, ms since the epoch.
    pub last_seen_ms: Option<u64>,
    /// Last measured round trip.
    pub rtt_ms: Option<u64>,
    /// Last time it acknowledged changes from us, ms since the epoch.
    pub last_sync_ms: Option<u64>,
    /// Our changes it has not acknowledged yet.
    pub lag: u64,
    /// Why the last dial or link failed.
    pub last_error: Option<String>,
    /// The last dial: when, each address tried and what happened.
    #[serde(default)]
    pub last_dial: Option<DialReport>,
    /// What it has acknowledged.
    pub acked: VersionVector,
    /// Changes received from it since start.
    pub received: u64,
    /// Changes it acknowledged since start.
    pub sent: u64,
    /// Whether the initial catch-up from it has completed.
    pub caught_up: bool,
}

impl PeerInfo {
    /// A peer we know nothing about yet.
    pub fn unknown() -> PeerInfo {
        PeerInfo {
            device_id: None,
            name: None,
            addrs: Vec::new(),
            state: PeerState::Disconnected,
            sources: Vec::new(),
            last_seen_ms: None,
            rtt_ms: None,
            last_sync_ms: None,
            lag: 0,
            last_error: None,
            last_dial: None,
            acked: VersionVector::new(),
            received: 0,
            sent: 0,
            caught_up: false,
        }
    }
}

/// What an invite grants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteOptions {
    /// The new device's role.
    pub role: Role,
    /// Its scopes (empty: all).
    pub scopes: Vec<String>,
    /// How many devices the code admits.
    pub uses: u32,
    /// Lifetime in seconds.
    pub ttl_s: u64,
    /// Whether the code carries this node's addresses.
    pub include_addrs: bool,
}

impl Default for InviteOptions {
    /// A single-use writer invite for an hour, with this node's addresses.
    fn default() -> InviteOptions {
        InviteOptions { role: Role::Writer, scopes: Vec::new(), uses: 1, ttl_s: 3600, include_addrs: true }
    }
}

/// One dial of a peer: the addresses tried, in order, and their outcomes.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialReport {
    /// When the dial started, ms since the epoch.
    pub at_ms: u64,
    /// Every address tried.
    pub tried: Vec<DialAttempt>,
    /// The address that answered, if one did.
    pub connected: Option<String>,
}

/// One address tried during a dial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialAttempt {
    /// The address.
    pub addr: String,
    /// Why it failed; `None` if it answered (or the dial ended before it did).
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
struct Entry {
    info: PeerInfo,
    device: Option<DeviceId>,
    sources: BTreeSet<String>,
    /// Which sources reported each address, so a source can withdraw what it reported.
    addr_sources: BTreeMap<String, BTreeSet<String>>,
    failures: u32,
    next_dial_ms: u64,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            info: PeerInfo::unknown(),
            device: None,
            sources: BTreeSet::new(),
            addr_sources: BTreeMap::new(),
            failures: 0,
            next_dial_ms: 0,
        }
    }

    /// Records `addr` from `source`; a new address goes first when `fresh` (a discovery source
    /// reporting where the peer is now), last otherwise.
    fn add_addr(&mut self, addr: &str, source: &str, fresh: bool) {
        if !self.info.addrs.iter().any(|a| a == addr) {
            if self.info.addrs.len() >= PEER_ADDRS_MAX {
                // Forget the address that has gone longest without a report.
                let Some(old) = self.info.addrs.pop() else { return };
                self.addr_sources.remove(&old);
            }
            if fresh {
                self.info.addrs.insert(0, addr.to_string());
            } else {
                self.info.addrs.push(addr.to_string());
            }
        } else if fresh {
            let i = self.info.addrs.iter().position(|a| a == addr).expect("present");
            let moved = self.info.addrs.remove(i);
            self.info.addrs.insert(0, moved);
        }
        self.addr_sources.entry(addr.to_string()).or_default().insert(source.to_string());
    }

    /// Withdraws what `source` reported, except the addresses in `keep`; an address no source
    /// vouches for any more is dropped. Returns the dropped addresses.
    fn withdraw(&mut self, source: &str, keep: &[String]) -> Vec<String> {
        let mut dropped = Vec::new();
        self.addr_sources.retain(|addr, sources| {
            if !keep.contains(addr) {
                sources.remove(source);
            }
            if sources.is_empty() {
                dropped.push(addr.clone());
            }
            !sources.is_empty()
        });
        self.info.addrs.retain(|a| !dropped.contains(a));
        dropped
    }
}

/// Events the mesh publishes on the node's bus.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerEvent {
    /// A session opened.
    Connected {
        /// The peer.
        device: DeviceId,
        /// Its name.
        name: String,
        /// Its address.
        addr: String,
    },
    /// A session ended.
    Disconnected {
        /// The peer.
        device: DeviceId,
        /// Why.
        reason: String,
    },
    /// Catch-up progress from a peer.
    Progress {
        /// The peer.
        device: DeviceId,
        /// Changes received on this link so far.
        received: u64,
        /// Changes the peer still has queued for us (estimate).
        remaining: u64,
        /// Whether the initial catch-up completed.
        caught_up: bool,
    },
}

enum Command {
    Pause(bool),
    Send(Envelope),
    Close(String),
}

struct LinkHandle {
    id: u64,
    /// Messages queued for this link and not yet handed to its session.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Set when the link held back changes whose author was not a known member yet.
    deferred: Arc<AtomicBool>,
    dialer: DeviceId,
    /// The peer's end and ours.
    remote: SocketAddr,
    local: Option<SocketAddr>,
    commands: mpsc::UnboundedSender<Command>,
    notify: Arc<Notify>,
}

/// Ids of recent messages (a set for lookups, a queue for eviction), to drop flood duplicates.
type SeenMessages = (HashSet<[u8; 16]>, VecDeque<[u8; 16]>);

struct MeshInner {
    node: Weak<Inner>,
    endpoint: Endpoint,
    group: Group,
    me: DeviceId,
    options: MeshOptions,
    listen_addr: SocketAddr,
    table: Mutex<Vec<Entry>>,
    links: Mutex<HashMap<DeviceId, LinkHandle>>,
    paused: AtomicBool,
    next_link_id: AtomicU64,
    /// Dials under way.
    dials: Arc<std::sync::atomic::AtomicUsize>,
    seen: Mutex<SeenMessages>,
    wake_dialer: Notify,
    shutdown: watch::Sender<bool>,
}

/// A running mesh. Cheap to clone; stops when [`Mesh::shutdown`] is called.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<MeshInner>,
}

impl Mesh {
    pub(crate) async fn start(
        node: &crate::Node,
        group: Group,
        identity: Identity,
        options: MeshOptions,
    ) -> Result<Mesh, NodeError> {
        let endpoint = Endpoint::new(identity).map_err(|e| NodeError::Network(e.to_string()))?;
        let mut listener = endpoint.bind(options.listen).await.map_err(|e| {
            NodeError::Network(format!(
                "cannot listen for peers on {}: {e}; choose another address with --listen",
                options.listen
            ))
        })?;
        let listen_addr = listener.local_addr().map_err(|e| NodeError::Network(e.to_string()))?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(MeshInner {
            node: Arc::downgrade(&node.inner),
            me: endpoint.device_id(),
            endpoint,
            group,
            options: options.clone(),
            listen_addr,
            table: Mutex::new(Vec::new()),
            links: Mutex::new(HashMap::new()),
            paused: AtomicBool::new(false),
            next_link_id: AtomicU64::new(1),
            dials: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
            wake_dialer: Notify::new(),
            shutdown,
        });
        let mesh = Mesh { inner };
        // Peers remembered from earlier runs, then the configured static ones.
        if let Ok(saved) = node.store().peers() {
            for (device, doc) in saved {
                if let Ok(info) = serde_json::from_str::<PeerInfo>(&doc) {
                    for source in &info.sources {
                        mesh.learn(Some(device), &info.addrs, source, false);
                    }
                    mesh.update(device, |e| {
                        e.info.name = info.name.clone();
                        e.info.acked = info.acked.clone();
                        e.info.last_sync_ms = info.last_sync_ms;
                    });
                }
            }
        }
        for addr in &options.peers {
            mesh.learn(None, std::slice::from_ref(addr), "static", true);
        }
        let accept_mesh = mesh.clone();
        let mut stop = mesh.inner.shutdown.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(conn) => {
                            let mesh = accept_mesh.clone();
                            tokio::spawn(async move { mesh.run_link(conn, false).await });
                        }
                        Err(e) => {
                            tracing::info!(error = %e, "refused an incoming connection");
                            if !matches!(e, meshsync_net::NetError::Incoming { .. }) {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    },
                }
            }
        });
        tokio::spawn(mesh.clone().dialer());
        tokio::spawn(mesh.clone().notifier());
        crate::discovery::start(&mesh, &options.discovery, mesh.inner.shutdown.subscribe());
        tracing::info!(listen = %listen_addr, group = %mesh.inner.group.id_text(), "mesh started");
        Ok(mesh)
    }

    fn node(&self) -> Option<crate::Node> {
        self.inner.node.upgrade().map(|inner| crate::Node { inner })
    }

    /// This device.
    pub fn device_id(&self) -> DeviceId {
        self.inner.me
    }

    /// This device's identity (its key signs rendezvous registrations).
    pub fn identity(&self) -> &Identity {
        self.inner.endpoint.identity()
    }

    /// Whether a session with `device` is open.
    pub fn is_connected(&self, device: DeviceId) -> bool {
        self.inner.links.lock().expect("lock").contains_key(&device)
    }

    /// The group.
    pub fn group(&self) -> &Group {
        &self.inner.group
    }

    /// Where the mesh accepts peers.
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen_addr
    }

    /// Addresses other devices can dial: the listen address, or every interface's if it is
    /// unspecified (loopback last).
    pub fn advertised_addrs(&self) -> Vec<String> {
        let addr = self.inner.listen_addr;
        if !addr.ip().is_unspecified() {
            return vec![addr.to_string()];
        }
        let mut out: Vec<(bool, String)> = if_addrs::get_if_addrs()
            .unwrap_or_default()
            .into_iter()
            .filter(|i| i.ip().is_ipv4() || addr.is_ipv6())
            .map(|i| (i.is_loopback(), SocketAddr::new(i.ip(), addr.port()).to_string()))
            .collect();
        out.sort();
        out.into_iter().map(|(_, a)| a).collect()
    }

    /// A single-use writer invite for this group, valid `ttl_s` seconds, carrying this node's
    /// addresses. Panics if this device is not an admin (see [`Mesh::create_invite`]).
    pub fn invite(&self, ttl_s: u64) -> (String, u64) {
        self.create_invite(&InviteOptions { ttl_s, ..InviteOptions::default() }).expect("this device is an admin")
    }

    /// An invite code signed by this device, which must be an admin. A code without addresses
    /// is shorter; the new device then finds the group's members by discovery alone.
    pub fn create_invite(&self, options: &InviteOptions) -> Result<(String, u64), NodeError> {
        let node = self.node().ok_or_else(|| NodeError::Unavailable("the node is closed".into()))?;
        match node.membership() {
            Some(me) if me.role == Role::Admin && me.active() => {}
            Some(me) => {
                return Err(NodeError::Forbidden(format!(
                    "only admins invite; this device is a {}",
                    if me.active() { me.role.name() } else { "revoked member" }
                )))
            }
            None => return Err(NodeError::Unavailable("this node has no group yet".into())),
        }
        let expires_ms = now_ms() + options.ttl_s.saturating_mul(1000);
        let addrs = if options.include_addrs { self.advertised_addrs() } else { Vec::new() };
        let code = self.inner.group.invite(
            self.inner.endpoint.identity(),
            options.role,
            options.scopes.clone(),
            options.uses,
            expires_ms,
            &addrs,
        );
        Ok((code, expires_ms))
    }

    /// Revokes `device`: signs a revocation (keeping its changes up to the last one this node
    /// has), stores it in the replicated membership and closes its link. Every node that hears
    /// of it closes the device's sessions, refuses it from then on and refuses its later changes.
    pub fn revoke(&self, device: DeviceId) -> Result<membership::Revocation, NodeError> {
        let node = self.node().ok_or_else(|| NodeError::Unavailable("the node is closed".into()))?;
        match node.membership() {
            Some(me) if me.role == Role::Admin && me.active() => {}
            _ => return Err(NodeError::Forbidden("only admins revoke members".into())),
        }
        let roster = node.roster().ok_or_else(|| NodeError::Unavailable("this node has no group yet".into()))?;
        if device == roster.founder() || device == self.inner.me {
            return Err(NodeError::Invalid("the founder and this device cannot be revoked".into()));
        }
        if roster.member(device).is_none() {
            return Err(NodeError::NotFound {
                collection: membership::MEMBERS_COLLECTION.into(),
                id: device.to_string(),
            });
        }
        let after_seq = node.store().version_vector()?.get(&device);
        let revocation = membership::Revocation::sign(
            self.inner.endpoint.identity(),
            self.inner.group.id,
            device,
            after_seq,
            now_ms(),
        );
        node.write_member_field(device, membership::REVOKED_FIELD, membership::encode(&revocation))?;
        node.audit(
            audit::REVOKED,
            Some(device),
            json!({"by": self.inner.me.to_string(), "reason": "revoked here", "after_seq": after_seq}),
        );
        self.enforce_roster();
        Ok(revocation)
    }

    /// Closes the links of devices that are no longer active members, and links that held back
    /// changes of authors unknown then (they are sent again on the new link).
    pub(crate) fn enforce_roster(&self) {
        let Some(roster) = self.node().and_then(|n| n.roster()) else { return };
        for (device, link) in self.inner.links.lock().expect("lock").iter() {
            match roster.member(*device) {
                Some(m) if !m.active() => {
                    let _ = link.commands.send(Command::Close("this device was revoked from the group".into()));
                }
                _ if link.deferred.swap(false, Ordering::SeqCst) => {
                    let _ = link.commands.send(Command::Close(
                        "membership changed: reconnecting to receive changes held back earlier".into(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Whether sync traffic is paused.
    pub fn paused(&self) -> bool {
        self.inner.paused.load(Ordering::SeqCst)
    }

    /// Pauses (stops all sync traffic) or resumes (catches up) every link.
    pub fn set_paused(&self, paused: bool) {
        self.inner.paused.store(paused, Ordering::SeqCst);
        for link in self.inner.links.lock().expect("lock").values() {
            let _ = link.commands.send(Command::Pause(paused));
        }
    }

    /// Drops every link and dials again now.
    pub fn reconnect(&self) {
        for link in self.inner.links.lock().expect("lock").values() {
            let _ = link.commands.send(Command::Close("reconnect requested".into()));
        }
        for entry in self.inner.table.lock().expect("lock").iter_mut() {
            entry.failures = 0;
            entry.next_dial_ms = 0;
        }
        self.inner.wake_dialer.notify_one();
    }

    /// Adds a static peer address; it is dialed at once.
    pub fn add_peer(&self, addr: &str) {
        self.learn(None, &[addr.to_string()], "static", true);
    }

    /// Forgets a peer (by device id or address) and closes its link.
    pub fn remove_peer(&self, key: &str) -> bool {
        let device: Option<DeviceId> = key.parse().ok();
        let mut table = self.inner.table.lock().expect("lock");
        let before = table.len();
        table.retain(|e| !(device.is_some() && e.device == device || e.info.addrs.iter().any(|a| a == key)));
        let removed = table.len() != before;
        drop(table);
        if let Some(device) = device {
            if let Some(link) = self.inner.links.lock().expect("lock").get(&device) {
                let _ = link.commands.send(Command::Close("peer removed".into()));
            }
            if let Some(node) = self.node() {
                let _ = node.store().save_peer(device, None);
            }
        }
        removed
    }

    /// Snapshot of the peer table.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let vector = self.node().and_then(|n| n.store().version_vector().ok()).unwrap_or_default();
        let table = self.inner.table.lock().expect("lock");
        table
            .iter()
            .map(|e| {
                let mut info = e.info.clone();
                info.sources = e.sources.iter().cloned().collect();
                info.lag = info.acked.lag_behind(&vector);
                info
            })
            .collect()
    }

    /// Number of open sessions.
    pub fn connected(&self) -> usize {
        self.inner.table.lock().expect("lock").iter().filter(|e| e.info.state == PeerState::Connected).count()
    }

    /// Tries to reach a peer (by device id or address): dial, handshake, close. Returns the round
    /// trip of the TLS handshake in ms.
    pub async fn test_peer(&self, key: &str) -> Result<u64, String> {
        let device: Option<DeviceId> = key.parse().ok();
        let addrs = {
            let table = self.inner.table.lock().expect("lock");
            table
                .iter()
                .find(|e| device.is_some() && e.device == device || e.info.addrs.iter().any(|a| a == key))
                .map(|e| e.info.addrs.clone())
        };
        let addrs = match (addrs, device) {
            (Some(addrs), _) if !addrs.is_empty() => addrs,
            (_, None) => vec![key.to_string()],
            _ => return Err("no known address for that device".into()),
        };
        let mut last = String::new();
        for addr in addrs {
            let started = std::time::Instant::now();
            match self.inner.endpoint.dial(addr.as_str(), device, DIAL_TIMEOUT).await {
                Ok(conn) => {
                    let rtt = started.elapsed().as_millis() as u64;
                    let _ = conn.close().await;
                    return Ok(rtt);
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }

    /// Sends an ephemeral message to every peer (or the addressee) through the mesh.
    pub fn send(&self, message: &Message, id: [u8; 16]) {
        let envelope = Envelope {
            id,
            from: message.from,
            to: message.to,
            kind: message.kind.clone(),
            data: message.data.to_string(),
            sent_ms: message.sent_ms,
            hops: MESSAGE_HOPS,
        };
        self.remember(id);
        self.forward(&envelope, None);
    }

    /// Stops every task and closes every link.
    pub fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        for link in self.inner.links.lock().expect("lock").values() {
            let _ = link.commands.send(Command::Close("shutting down".into()));
        }
    }

    fn remember(&self, id: [u8; 16]) -> bool {
        let mut seen = self.inner.seen.lock().expect("lock");
        if !seen.0.insert(id) {
            return false;
        }
        seen.1.push_back(id);
        if seen.1.len() > SEEN_MESSAGES_MAX {
            if let Some(old) = seen.1.pop_front() {
                seen.0.remove(&old);
            }
        }
        true
    }

    fn forward(&self, envelope: &Envelope, except: Option<DeviceId>) {
        if envelope.hops == 0 {
            return;
        }
        let mut next = envelope.clone();
        next.hops -= 1;
        for (device, link) in self.inner.links.lock().expect("lock").iter() {
            if Some(*device) != except && Some(*device) != Some(envelope.from) {
                if link.queued.load(Ordering::SeqCst) >= MESSAGES_QUEUED_MAX {
                    tracing::debug!(peer = %device.short(), "message queue full: an ephemeral message is dropped");
                    continue;
                }
                link.queued.fetch_add(1, Ordering::SeqCst);
                let _ = link.commands.send(Command::Send(next.clone()));
            }
        }
    }

    fn on_message(&self, envelope: Envelope, from_link: DeviceId) {
        if !self.remember(envelope.id) {
            return;
        }
        if envelope.to.is_none() || envelope.to == Some(self.inner.me) {
            if let (Some(node), Ok(data)) = (self.node(), serde_json::from_str(&envelope.data)) {
                node.publish(Event::Message(Message {
                    from: envelope.from,
                    to: envelope.to,
                    kind: envelope.kind.clone(),
                    data,
                    sent_ms: envelope.sent_ms,
                }));
            }
        }
        if envelope.to != Some(self.inner.me) {
            self.forward(&envelope, Some(from_link));
        }
    }

    /// Adds addresses (and maybe a device id) to the peer table under `source`.
    pub(crate) fn learn(&self, device: Option<DeviceId>, addrs: &[String], source: &str, wake: bool) {
        if device == Some(self.inner.me) {
            return;
        }
        let mut table = self.inner.table.lock().expect("lock");
        let Some(entry) = Self::entry_for(&mut table, device, addrs) else { return };
        if let Some(device) = device {
            entry.device = Some(device);
            entry.info.device_id = Some(device.to_string());
        }
        // Where a peer just connected from is where it is now: first. Other sources' addresses
        // (static, invite, peer exchange) may be stale and queue behind.
        let fresh = source == "inbound";
        for addr in addrs {
            entry.add_addr(addr, source, fresh);
        }
        entry.sources.insert(source.to_string());
        drop(table);
        if wake {
            self.inner.wake_dialer.notify_one();
        }
    }

    /// What a discovery source (mdns, beacon, rendezvous) says about where `device` is now: its
    /// addresses go first, and what the source reported before and no longer does is withdrawn.
    /// A live link over an address the peer stopped announcing is closed (the peer moved), so both
    /// sides redial at the new address instead of waiting for heartbeats to time out.
    pub(crate) fn learn_discovered(&self, device: DeviceId, addrs: &[String], source: &str) {
        if device == self.inner.me {
            return;
        }
        let mut table = self.inner.table.lock().expect("lock");
        let Some(entry) = Self::entry_for(&mut table, Some(device), addrs) else { return };
        entry.device = Some(device);
        entry.info.device_id = Some(device.to_string());
        let known_before = entry.sources.contains(source);
        let dropped = entry.withdraw(source, addrs);
        for addr in addrs.iter().rev() {
            entry.add_addr(addr, source, true);
        }
        let is_new = !known_before || !dropped.is_empty();
        entry.sources.insert(source.to_string());
        if is_new && entry.info.state == PeerState::Disconnected {
            // New news of the peer: dial now rather than at the end of a long backoff.
            entry.failures = 0;
            entry.next_dial_ms = 0;
        }
        drop(table);
        let gone: Vec<IpAddr> = dropped.iter().filter_map(|a| a.parse::<SocketAddr>().ok()).map(|a| a.ip()).collect();
        if !gone.is_empty() {
            if let Some(link) = self.inner.links.lock().expect("lock").get(&device) {
                if gone.contains(&link.remote.ip()) && !link.remote.ip().is_loopback() {
                    let _ = link
                        .commands
                        .send(Command::Close(format!("the peer no longer announces {} ({source})", link.remote.ip())));
                }
            }
        }
        self.inner.wake_dialer.notify_one();
    }

    /// A discovery source says `device` has gone (an mDNS goodbye): withdraw what it reported.
    pub(crate) fn forget_discovered(&self, device: DeviceId, source: &str) {
        let mut table = self.inner.table.lock().expect("lock");
        if let Some(entry) = table.iter_mut().find(|e| e.device == Some(device)) {
            entry.withdraw(source, &[]);
            entry.sources.remove(source);
        }
    }

    /// Closes every link whose local address is no longer one of this machine's: the machine was
    /// readdressed and such a link can only time out.
    pub(crate) fn close_links_on_lost_addrs(&self, local: &HashSet<IpAddr>) {
        for link in self.inner.links.lock().expect("lock").values() {
            if let Some(ours) = link.local {
                if !ours.ip().is_loopback() && !ours.ip().is_unspecified() && !local.contains(&ours.ip()) {
                    let _ = link.commands.send(Command::Close(format!("this machine no longer has {}", ours.ip())));
                }
            }
        }
        self.inner.wake_dialer.notify_one();
    }

    /// The table entry for `device` (or, without one, for any of `addrs`), created if new.
    fn entry_for<'t>(table: &'t mut Vec<Entry>, device: Option<DeviceId>, addrs: &[String]) -> Option<&'t mut Entry> {
        let position = table.iter().position(|e| device.is_some() && e.device == device).or_else(|| {
            table.iter().position(|e| {
                e.info.addrs.iter().any(|a| addrs.contains(a))
                    && (e.device.is_none() || device.is_none() || e.device == device)
            })
        });
        match position {
            Some(i) => Some(&mut table[i]),
            None if table.len() >= PEERS_MAX => None,
            None => {
                table.push(Entry::new());
                table.last_mut()
            }
        }
    }

    fn update(&self, device: DeviceId, change: impl FnOnce(&mut Entry)) {
        let mut table = self.inner.table.lock().expect("lock");
        if let Some(entry) = table.iter_mut().find(|e| e.device == Some(device)) {
            change(entry);
        }
    }

    async fn dialer(self) {
        let mut stop = self.inner.shutdown.subscribe();
        loop {
            let now = now_ms();
            let due: Vec<(usize, Option<DeviceId>, Vec<String>)> = {
                let links = self.inner.links.lock().expect("lock");
                let mut table = self.inner.table.lock().expect("lock");
                let room = DIALS_MAX.saturating_sub(self.inner.dials.load(Ordering::SeqCst));
                table
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, e)| {
                        e.info.state == PeerState::Disconnected && e.next_dial_ms <= now && !e.info.addrs.is_empty()
                    })
                    .filter(|(_, e)| e.device.is_none_or(|d| !links.contains_key(&d)))
                    .take(room)
                    .map(|(i, e)| {
                        e.info.state = PeerState::Connecting;
                        (i, e.device, e.info.addrs.clone())
                    })
                    .collect()
            };
            for (_, device, addrs) in due {
                let mesh = self.clone();
                let slot = DialSlot::take(&self.inner.dials);
                tokio::spawn(async move { mesh.dial(device, addrs, slot).await });
            }
            tokio::select! {
                _ = stop.changed() => return,
                _ = self.inner.wake_dialer.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn dial(self, device: Option<DeviceId>, addrs: Vec<String>, slot: DialSlot) {
        let started_ms = now_ms();
        let (result, tried) = self.dial_any(device, &addrs).await;
        // The dial is over either way; a link that follows does not hold a dial slot.
        drop(slot);
        let report = DialReport {
            at_ms: started_ms,
            connected: result.as_ref().ok().map(|(_, addr)| addr.clone()),
            tried: tried.into_iter().map(|(addr, error)| DialAttempt { addr, error }).collect(),
        };
        match result {
            Ok((conn, addr)) => {
                let found = conn.peer_device_id();
                self.note_connected_dial(device, found, &addr, report);
                self.run_link(conn, true).await;
            }
            Err(reason) => {
                tracing::debug!(peer = ?device, %reason, "dial failed");
                let mut table = self.inner.table.lock().expect("lock");
                if let Some(entry) = table
                    .iter_mut()
                    .find(|e| (device.is_some() && e.device == device) || (device.is_none() && e.info.addrs == addrs))
                {
                    if entry.info.state == PeerState::Connecting {
                        entry.info.state = PeerState::Disconnected;
                    }
                    entry.info.last_error = Some(reason);
                    entry.info.last_dial = Some(report);
                    entry.failures = (entry.failures + 1).min(20);
                    entry.next_dial_ms = now_ms() + backoff_ms(entry.failures);
                }
            }
        }
    }

    /// After a successful dial: gives a static entry its device (merging it into the device's
    /// entry if there is one) and records the dial report.
    fn note_connected_dial(&self, device: Option<DeviceId>, found: DeviceId, addr: &str, report: DialReport) {
        let addr = addr.to_string();
        let mut table = self.inner.table.lock().expect("lock");
        if device.is_none() {
            // A static address now has a device behind it: merge what we know.
            if let Some(i) = table.iter().position(|e| e.device.is_none() && e.info.addrs.contains(&addr)) {
                if let Some(j) = table.iter().position(|e| e.device == Some(found)) {
                    let merged = table.remove(i);
                    let j = if j > i { j - 1 } else { j };
                    let target = &mut table[j];
                    target.sources.extend(merged.sources);
                    for (a, sources) in merged.addr_sources {
                        for source in sources {
                            target.add_addr(&a, &source, false);
                        }
                    }
                    target.info.state = PeerState::Connecting;
                } else {
                    table[i].device = Some(found);
                    table[i].info.device_id = Some(found.to_string());
                }
            }
        }
        if let Some(entry) = table.iter_mut().find(|e| e.device == Some(found)) {
            entry.info.last_dial = Some(report);
            // The address that answered goes first.
            if let Some(i) = entry.info.addrs.iter().position(|a| *a == addr) {
                let answered = entry.info.addrs.remove(i);
                entry.info.addrs.insert(0, answered);
            }
        }
    }

    /// Dials the addresses of one peer, starting the next one every [`DIAL_STAGGER`] while
    /// earlier ones are still trying (or at once when one fails); the first to complete the TLS
    /// handshake wins and the others are dropped. Addresses discovered while the dial is under
    /// way join it, first (a readdressed peer is reached at its new address without waiting for
    /// the old one to time out). Returns the connection and its address, or every failure, plus
    /// each address tried with its outcome.
    #[allow(clippy::type_complexity)]
    async fn dial_any(
        &self,
        device: Option<DeviceId>,
        addrs: &[String],
    ) -> (Result<(Connection, String), String>, Vec<(String, Option<String>)>) {
        let mut tried: Vec<(String, Option<String>)> = Vec::new();
        let mut queue: VecDeque<String> = addrs.iter().cloned().collect();
        let mut attempts = FuturesUnordered::new();
        loop {
            if let Some(device) = device {
                let current = self.addrs_of(device);
                for addr in current.into_iter().rev() {
                    if !tried.iter().any(|(a, _)| *a == addr) && !queue.contains(&addr) {
                        queue.push_front(addr);
                    }
                }
            }
            if let Some(addr) = queue.pop_front() {
                let endpoint = self.inner.endpoint.clone();
                tried.push((addr.clone(), None));
                attempts.push(async move {
                    let result = endpoint.dial(addr.as_str(), device, DIAL_TIMEOUT).await;
                    (addr, result)
                });
            }
            if attempts.is_empty() {
                let errors: Vec<String> =
                    tried.iter().map(|(a, e)| format!("{a}: {}", e.as_deref().unwrap_or("no answer"))).collect();
                let reason = if errors.is_empty() { "no address to dial".to_string() } else { errors.join("; ") };
                return (Err(reason), tried);
            }
            tokio::select! {
                Some((addr, result)) = attempts.next() => match result {
                    Ok(conn) => return (Ok((conn, addr)), tried),
                    Err(e) => {
                        if let Some(slot) = tried.iter_mut().find(|(a, _)| *a == addr) {
                            slot.1 = Some(e.to_string());
                        }
                    }
                },
                _ = tokio::time::sleep(DIAL_STAGGER) => {}
            }
        }
    }

    /// The addresses the peer table has for `device`, freshest first.
    fn addrs_of(&self, device: DeviceId) -> Vec<String> {
        let table = self.inner.table.lock().expect("lock");
        table.iter().find(|e| e.device == Some(device)).map(|e| e.info.addrs.clone()).unwrap_or_default()
    }

    /// Registers a link unless a better one to the same device exists.
    fn register(&self, device: DeviceId, link: &Link, commands: mpsc::UnboundedSender<Command>) -> Option<u64> {
        let (outbound, notify, remote, local) = (link.outbound, link.notify.clone(), link.remote, link.local);
        let dialer = if outbound { self.inner.me } else { device };
        let mut links = self.inner.links.lock().expect("lock");
        if let Some(existing) = links.get(&device) {
            let keep_existing = existing.dialer != dialer && existing.dialer == self.inner.me.min(device);
            if keep_existing {
                return None;
            }
            let _ = existing.commands.send(Command::Close("replaced by a newer link".into()));
        } else if links.len() >= LINKS_MAX {
            return None;
        }
        let id = self.inner.next_link_id.fetch_add(1, Ordering::SeqCst);
        links.insert(
            device,
            LinkHandle {
                id,
                queued: link.queued.clone(),
                deferred: link.deferred.clone(),
                dialer,
                remote,
                local,
                commands,
                notify,
            },
        );
        Some(id)
    }

    /// Rebuilds the roster after membership changed, and acts on it.
    async fn refresh_roster(&self) {
        let Some(node) = self.node() else { return };
        let before = node.roster();
        let refreshing = node.clone();
        match tokio::task::spawn_blocking(move || refreshing.refresh_roster()).await {
            Ok(Ok(after)) => {
                // What the mesh brought: new members and revocations made elsewhere.
                for (device, member) in after.members() {
                    let known = before.as_ref().and_then(|b| b.member(*device));
                    if known.is_none() {
                        let by = member.entry.as_ref().map(|e| e.invite.issuer().to_string());
                        node.audit(
                            audit::MEMBER_ADMITTED,
                            Some(*device),
                            json!({"role": member.role.name(), "scopes": member.scopes, "by": by}),
                        );
                    }
                    if !member.active() && known.is_none_or(|k| k.active()) {
                        let by = member.revoked_by.map(|d| d.to_string());
                        node.audit(audit::REVOKED, Some(*device), json!({"by": by, "reason": "revocation received"}));
                    }
                }
                self.enforce_roster();
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot rebuild the membership roster"),
            Err(_) => {}
        }
    }

    async fn notifier(self) {
        let Some(node) = self.node() else { return };
        let mut events = node.subscribe();
        drop(node);
        let mut stop = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                event = events.recv() => match event {
                    Ok(Event::Store(ref store_event)) => {
                        if let meshsync_store::StoreEvent::RecordChanged { collection, local: false, .. } = store_event {
                            if collection == membership::MEMBERS_COLLECTION {
                                self.refresh_roster().await;
                            }
                        }
                        for link in self.inner.links.lock().expect("lock").values() {
                            link.notify.notify_one();
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        self.refresh_roster().await;
                        for link in self.inner.links.lock().expect("lock").values() {
                            link.notify.notify_one();
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
            }
        }
    }

    async fn run_link(self, conn: Connection, outbound: bool) {
        let peer = *conn.peer();
        let device = peer.device_id;
        let addr = peer.addr.to_string();
        if device == self.inner.me {
            let _ = conn.close().await;
            return;
        }
        let mut link = Link {
            outbound,
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            incoming: (0, 0),
            started: std::time::Instant::now(),
            received: 0,
            deferred: Arc::new(AtomicBool::new(false)),
            admitted: Arc::new(Mutex::new(None)),
            remote: peer.addr,
            local: peer.local_addr,
            id: None,
            notify: Arc::new(Notify::new()),
            commands: None,
        };
        let (commands_tx, mut commands) = mpsc::unbounded_channel();
        link.commands = Some(commands_tx);
        let reason = match self.drive(conn, device, &addr, &mut link, &mut commands).await {
            Ok(()) => "closed".to_string(),
            Err(reason) => reason,
        };
        let Some(link_id) = link.id else {
            // Never established (a probe, a refused or a duplicate link): nothing to undo.
            tracing::debug!(peer = %device.short(), %reason, "link ended before it was established");
            if outbound {
                self.update(device, |e| {
                    if e.info.state == PeerState::Connecting {
                        e.info.state = PeerState::Disconnected;
                        e.info.last_error = Some(reason.clone());
                        e.failures = (e.failures + 1).min(20);
                        e.next_dial_ms = now_ms() + backoff_ms(e.failures);
                    }
                });
            }
            return;
        };
        let mut links = self.inner.links.lock().expect("lock");
        let still_ours = links.get(&device).is_some_and(|l| l.id == link_id);
        if still_ours {
            links.remove(&device);
        }
        drop(links);
        if still_ours {
            self.update(device, |e| {
                e.info.state = PeerState::Disconnected;
                e.info.last_error = Some(reason.clone());
                e.failures = (e.failures + 1).min(20);
                e.next_dial_ms = now_ms() + backoff_ms(e.failures.min(3));
            });
            if let Some(node) = self.node() {
                node.publish(Event::Peer(PeerEvent::Disconnected { device, reason: reason.clone() }));
                let sent = {
                    let table = self.inner.table.lock().expect("lock");
                    table.iter().find(|e| e.device == Some(device)).map_or(0, |e| e.info.sent)
                };
                node.audit(
                    audit::SESSION_ENDED,
                    Some(device),
                    json!({
                        "addr": addr,
                        "duration_ms": link.started.elapsed().as_millis() as u64,
                        "received": link.received,
                        "sent": sent,
                        "reason": reason,
                    }),
                );
            }
            tracing::info!(peer = %device.short(), %reason, "peer disconnected");
        }
    }

    async fn drive(
        &self,
        conn: Connection,
        device: DeviceId,
        addr: &str,
        link: &mut Link,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<(), String> {
        let notify = link.notify.clone();
        let node = self.node().ok_or("node closed")?;
        let binding = conn.channel_binding();
        let group = self.inner.group.clone();
        let store_vector = {
            let node = node.clone();
            tokio::task::spawn_blocking(move || node.store().version_vector())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            device: self.inner.me,
            name: node.name(),
            group: group.id,
            proof: group.proof(&binding, self.inner.me),
            vector: store_vector,
            scopes: Vec::new(),
            listen_port: Some(self.inner.listen_addr.port()),
            chain: self.own_chain(&node),
        };
        let roster = node.roster().ok_or("this node has no membership roster")?;
        let me = self.inner.me;
        let admitted = link.admitted.clone();
        let (audit_node, peer_addr, direction) =
            (node.clone(), addr.to_string(), if link.outbound { "outbound" } else { "inbound" });
        let admission = Box::new(move |h: &Hello| {
            admit(&group, &roster, me, &binding, h, &admitted).map_err(|(kind, reason)| {
                let detail = match kind {
                    audit::INVITE_REFUSED => json!({"addr": peer_addr, "reason": reason}),
                    _ => json!({"addr": peer_addr, "direction": direction, "reason": reason}),
                };
                audit_node.audit(kind, Some(h.device), detail);
                reason
            })
        });
        let config = SessionConfig::with_heartbeat(self.inner.options.heartbeat_interval_ms);
        let mut session = Session::new(config, hello, device, admission, now_ms());
        session.set_paused(self.paused());
        let (mut tx, mut rx): (FrameSender, FrameReceiver) = conn.split();
        let mut stop = self.inner.shutdown.subscribe();
        let mut received_on_link = 0u64;
        let mut close_reason = None;
        let result = loop {
            // Do everything the session asks, then wait for the next input.
            if let Err(e) = self.service(&node, &mut session, device, addr, link, &mut received_on_link).await {
                session.close(&e);
                close_reason.get_or_insert(e);
            }
            let mut wrote = false;
            while let Some(frame) = session.poll_transmit() {
                if let Err(e) = tx.feed(frame).await {
                    session.close(&e.to_string());
                    break;
                }
                wrote = true;
            }
            if wrote {
                if let Err(e) = tx.flush().await {
                    break Err(e.to_string());
                }
            }
            if session.is_closed() {
                let mut reason = close_reason.take().unwrap_or_else(|| "closed".to_string());
                while let Some(event) = session.poll_event() {
                    if let SessionEvent::Closed(e) = event {
                        reason = e.to_string();
                    }
                }
                break Err(reason);
            }
            let deadline = session.next_timeout().unwrap_or(now_ms() + 1000);
            let sleep = Duration::from_millis(deadline.saturating_sub(now_ms()).max(1));
            tokio::select! {
                frame = rx.recv() => match frame {
                    Ok(Some(bytes)) => {
                        let _ = session.handle_frame(now_ms(), &bytes);
                        // Take the frames that are already here before doing the work they ask
                        // for, so batches that arrived together commit in one transaction.
                        for _ in 0..FRAMES_DRAINED_MAX {
                            match rx.recv().now_or_never() {
                                Some(Ok(Some(bytes))) => {
                                    let _ = session.handle_frame(now_ms(), &bytes);
                                }
                                // Not ready, or the link ended: the next `recv` reports it.
                                _ => break,
                            }
                        }
                        self.update(device, |e| e.info.last_seen_ms = Some(now_ms()));
                    }
                    Ok(None) => break Err("the peer closed the connection".into()),
                    Err(e) => break Err(e.to_string()),
                },
                _ = notify.notified() => session.notify_changes(),
                command = commands.recv() => match command {
                    Some(Command::Pause(paused)) => session.set_paused(paused),
                    Some(Command::Send(envelope)) => {
                        link.queued.fetch_sub(1, Ordering::SeqCst);
                        session.send_message(envelope)
                    }
                    Some(Command::Close(reason)) => session.close(&reason),
                    None => session.close("link dropped"),
                },
                _ = tokio::time::sleep(sleep) => session.handle_timeout(now_ms()),
                _ = stop.changed() => session.close("shutting down"),
            }
        };
        let _ = tx.close().await;
        link.received = received_on_link;
        result
    }
}

/// Decides whether the peer that sent `hello` may join this link, and what it may receive: it
/// must know the group secret (bound to this TLS session) and be a member: known to our roster
/// and not revoked, or proven by the entries it presents (a chain of signatures back to the
/// founder). A newcomer (its entry not in our roster) is admitted only while its invite is
/// unexpired, not used up and signed by an unrevoked admin; this node then writes its entry to
/// the group's membership. A node not in its own roster yet (it has just joined) takes a valid
/// chain as proof and leaves invite checks to the members who know the group.
fn admit(
    group: &Group,
    roster: &Roster,
    me: DeviceId,
    binding: &[u8],
    hello: &Hello,
    admitted: &Mutex<Option<MemberEntry>>,
) -> Result<Option<Vec<String>>, (&'static str, String)> {
    let refuse = |why: &str| (audit::CONNECTION_REFUSED, why.to_string());
    let refuse_invite = |why: String| (audit::INVITE_REFUSED, why);
    if !group.verify(binding, hello.device, &hello.proof) {
        return Err(refuse("membership proof does not verify: the peer is not a member of this group"));
    }
    if let Some(member) = roster.member(hello.device) {
        if !member.active() {
            return Err(refuse("this device was revoked from the group"));
        }
        return Ok(member.scope_filter());
    }
    let chain: Vec<MemberEntry> =
        hello.chain.iter().take(membership::CHAIN_MAX).filter_map(|bytes| postcard::from_bytes(bytes).ok()).collect();
    let extended = roster.with_chain(group.founder_key, &chain);
    let Some(member) = extended.member(hello.device) else {
        return Err(refuse("no valid membership entry: the device was never admitted to this group"));
    };
    if roster.member(me).is_some() {
        let entry = member.entry.clone().ok_or_else(|| refuse("the founder needs no entry"))?;
        let grant = &entry.invite.grant;
        if now_ms() > grant.expires_ms {
            return Err(refuse_invite("its invite has expired; ask an admin for a new one".into()));
        }
        if roster.uses(&grant.invite_key) >= grant.uses {
            return Err(refuse_invite(format!(
                "its invite was already used by {} device(s); ask an admin for a new one",
                grant.uses
            )));
        }
        if roster.member(entry.invite.issuer()).is_some_and(|m| !m.active()) {
            return Err(refuse_invite("its invite was signed by an admin who has since been revoked".into()));
        }
        *admitted.lock().expect("lock") = Some(entry);
    }
    Ok(member.scope_filter())
}

/// Remote changes sorted by what may be applied.
struct Screened {
    /// What to apply.
    changes: Vec<Change>,
    /// Dots the vector may rise to (without those of held-back authors).
    advance: Vec<Dot>,
    /// Changes refused for good, with why.
    rejected: Vec<(Dot, String)>,
    /// Authors not known as members yet: their changes are held back (the vector does not rise
    /// past them, so they are sent again on a later link).
    deferred: HashSet<DeviceId>,
}

/// Checks every remote change against its author's role and scopes, and every membership
/// statement against its signatures. Reads the store for the scope of records a change does not
/// name one for.
fn screen(
    store: &meshsync_store::Store,
    group: &Group,
    roster: &Roster,
    changes: Vec<Change>,
    advance: Vec<Dot>,
) -> Screened {
    let mut out = Screened { changes: Vec::new(), advance: Vec::new(), rejected: Vec::new(), deferred: HashSet::new() };
    // Members admitted in this very batch count for the rest of it (a newcomer's entry and its
    // first changes usually travel together).
    let arriving: Vec<MemberEntry> = changes
        .iter()
        .filter(|c| c.collection == membership::MEMBERS_COLLECTION)
        .flat_map(|c| &c.cells)
        .filter(|cell| cell.field == membership::MEMBER_FIELD)
        .filter_map(|cell| match &cell.value {
            meshsync_core::Value::Str(text) => membership::decode::<MemberEntry>(text).ok(),
            _ => None,
        })
        .filter(|entry| entry.check(group.id).is_ok())
        .collect();
    let extended;
    let roster = if arriving.is_empty() {
        roster
    } else {
        extended = roster.with_entries(group.founder_key, &arriving);
        &extended
    };
    for change in changes {
        let author = change.dot.origin;
        let verdict = match roster.member(author) {
            None => {
                out.deferred.insert(author);
                continue;
            }
            Some(m) if m.revoked_after.is_some_and(|after| change.dot.seq > after) => {
                Err("its author was revoked before making it".to_string())
            }
            Some(m) => authorize(store, group, m, &change),
        };
        match verdict {
            Ok(()) => out.changes.push(change),
            Err(why) => out.rejected.push((change.dot, why)),
        }
    }
    let deferred = &out.deferred;
    out.changes.retain(|c| !deferred.contains(&c.dot.origin));
    out.advance = advance.into_iter().filter(|d| !deferred.contains(&d.origin)).collect();
    out
}

/// Whether `author` may make `change`.
fn authorize(
    store: &meshsync_store::Store,
    group: &Group,
    author: &membership::Member,
    change: &Change,
) -> Result<(), String> {
    if change.collection == membership::MEMBERS_COLLECTION {
        for cell in &change.cells {
            let meshsync_core::Value::Str(text) = &cell.value else {
                return Err(format!("membership field {:?} is not a statement", cell.field));
            };
            let device = match cell.field.as_str() {
                membership::MEMBER_FIELD => membership::decode::<MemberEntry>(text)
                    .and_then(|e| e.check(group.id).map(|_| e.device))
                    .map_err(|e| format!("membership entry refused: {e}"))?,
                membership::REVOKED_FIELD => membership::decode::<membership::Revocation>(text)
                    .and_then(|r| r.check(group.id).map(|_| r.device))
                    .map_err(|e| format!("revocation refused: {e}"))?,
                other => return Err(format!("membership records have no field {other:?}")),
            };
            if device.to_string() != change.record {
                return Err("membership statement stored under another device's record".into());
            }
        }
        return Ok(());
    }
    match author.role {
        Role::Admin => Ok(()),
        Role::Reader => Err("its author is a reader".into()),
        Role::Writer if author.scopes.is_empty() => Ok(()),
        Role::Writer => {
            if change.collection == meshsync_store::SCHEMAS_COLLECTION {
                return Err("a writer with scopes cannot change schemas".into());
            }
            let named = change.cells.iter().find(|c| c.field == SCOPE_FIELD).map(|c| match &c.value {
                meshsync_core::Value::Str(s) => Some(s.clone()),
                _ => None,
            });
            let scope = match named {
                Some(scope) => scope,
                None => store.get(&change.collection, &change.record).ok().flatten().and_then(|d| d.scope),
            };
            if author.sees(scope.as_deref()) {
                Ok(())
            } else {
                Err(format!("outside its author's scopes {:?}", author.scopes))
            }
        }
    }
}

impl Mesh {
    /// The entries that prove this device's membership: its chain in the roster, or, before the
    /// group's copy reached it, its own saved entry.
    fn own_chain(&self, node: &crate::Node) -> Vec<Vec<u8>> {
        let roster = node.roster();
        let chain = match roster.as_ref() {
            Some(r) if r.member(self.inner.me).is_some() => r.chain(self.inner.me),
            _ => node.own_entry().into_iter().collect(),
        };
        chain.iter().map(|e| postcard::to_stdvec(e).expect("encoding to a Vec cannot fail")).collect()
    }

    /// Handles the session's events and requests for changes until it has none.
    async fn service(
        &self,
        node: &crate::Node,
        session: &mut Session,
        device: DeviceId,
        addr: &str,
        link: &mut Link,
        received_on_link: &mut u64,
    ) -> Result<(), String> {
        loop {
            let mut progressed = false;
            let mut pending: VecDeque<SessionEvent> = std::iter::from_fn(|| session.poll_event()).collect();
            while let Some(event) = pending.pop_front() {
                progressed = true;
                match event {
                    SessionEvent::Established(info) => {
                        // Only an admitted peer takes a link slot, so a probe or a stranger can
                        // never displace a working link.
                        let commands = link.commands.take().ok_or("link registered twice")?;
                        link.id =
                            Some(self.register(device, link, commands).ok_or("a link to this peer already exists")?);
                        let mut addrs = Vec::new();
                        if let (Some(port), Ok(socket)) = (info.listen_port, addr.parse::<SocketAddr>()) {
                            addrs.push(SocketAddr::new(socket.ip(), port).to_string());
                        }
                        self.learn(Some(device), &addrs, "inbound", false);
                        self.update(device, |e| {
                            e.info.state = PeerState::Connected;
                            e.info.name = Some(info.name.clone());
                            e.info.last_error = None;
                            e.info.acked = info.vector.clone();
                            e.info.caught_up = false;
                            e.failures = 0;
                        });
                        let newcomer = link.admitted.lock().expect("lock").take();
                        if let Some(entry) = newcomer {
                            // Written before anything else of the newcomer is applied here, so its
                            // changes reach other members after its entry.
                            let store_node = node.clone();
                            let text = membership::encode(&entry);
                            tokio::task::spawn_blocking(move || {
                                store_node.write_member_field(device, membership::MEMBER_FIELD, text)
                            })
                            .await
                            .map_err(|e| e.to_string())?
                            .map_err(|e| format!("cannot record the new member: {e}"))?;
                            tracing::info!(peer = %device.short(), role = entry.invite.grant.role.name(), "admitted a new member");
                            let grant = &entry.invite.grant;
                            let uses_left = node
                                .roster()
                                .map(|r| grant.uses.saturating_sub(r.uses(&grant.invite_key)))
                                .unwrap_or(0);
                            node.audit(
                                audit::INVITE_USED,
                                Some(device),
                                json!({"addr": addr, "role": grant.role.name(), "scopes": grant.scopes, "uses_left": uses_left}),
                            );
                            node.audit(
                                audit::MEMBER_ADMITTED,
                                Some(device),
                                json!({"role": grant.role.name(), "scopes": grant.scopes, "by": self.inner.me.to_string()}),
                            );
                        }
                        tracing::info!(peer = %device.short(), name = %info.name, %addr, "peer connected");
                        node.audit(
                            audit::SESSION_STARTED,
                            Some(device),
                            json!({"addr": addr, "direction": if link.outbound { "outbound" } else { "inbound" }}),
                        );
                        node.publish(Event::Peer(PeerEvent::Connected {
                            device,
                            name: info.name,
                            addr: addr.to_string(),
                        }));
                        // Peer exchange: tell the newcomer where the others are.
                        let others: Vec<PeerAddrs> = self
                            .peers()
                            .into_iter()
                            .filter_map(|p| {
                                Some(PeerAddrs { device: p.device_id.as_deref()?.parse().ok()?, addrs: p.addrs })
                            })
                            .filter(|p| p.device != device && !p.addrs.is_empty())
                            .take(64)
                            .collect();
                        session.send_peers(others);
                    }
                    SessionEvent::Apply { seq, mut changes, mut advance, mut remaining, mut caught_up } => {
                        // Batches that arrived together commit together: a commit costs about the
                        // pages it touches, so fewer, larger transactions write far less.
                        let mut seqs = vec![seq];
                        while let Some(SessionEvent::Apply { .. }) = pending.front() {
                            if changes.len() >= REMOTE_APPLY_CHANGES_MAX / 2 {
                                break;
                            }
                            let Some(SessionEvent::Apply {
                                seq,
                                changes: more,
                                advance: more_advance,
                                remaining: r,
                                caught_up: c,
                            }) = pending.pop_front()
                            else {
                                unreachable!("checked by the loop condition")
                            };
                            seqs.push(seq);
                            changes.extend(more);
                            advance.extend(more_advance);
                            remaining = r;
                            caught_up |= c;
                        }
                        let store_node = node.clone();
                        let group = self.inner.group.clone();
                        let roster = node.roster().ok_or("this node has no membership roster")?;
                        let (applied, count, rejected, deferred) = tokio::task::spawn_blocking(move || {
                            let Screened { changes, advance, rejected, deferred } =
                                screen(store_node.store(), &group, &roster, changes, advance);
                            let count = changes.len() as u64;
                            let applied = store_node.store().apply_remote(RemoteBatch { changes, advance });
                            (applied, count, rejected, deferred)
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                        if let Err(meshsync_store::StoreError::Clock(meshsync_core::ClockError::ClockSkew {
                            ahead_ms,
                            limit_ms,
                        })) = &applied
                        {
                            node.audit(
                                audit::CLOCK_SKEW,
                                Some(device),
                                json!({"ahead_ms": ahead_ms, "limit_ms": limit_ms}),
                            );
                        }
                        applied.map_err(|e| format!("cannot apply changes from the peer: {e}"))?;
                        if let Some((dot, why)) = rejected.first() {
                            node.audit(
                                audit::WRITE_REJECTED,
                                Some(device),
                                json!({"origin": dot.origin.to_string(), "seq": dot.seq, "count": rejected.len(), "reason": why}),
                            );
                        }
                        if !deferred.is_empty() {
                            link.deferred.store(true, Ordering::SeqCst);
                            tracing::debug!(
                                peer = %device.short(),
                                authors = deferred.len(),
                                "held back changes of authors not known as members yet"
                            );
                        }
                        for (dot, why) in &rejected {
                            tracing::warn!(peer = %device.short(), author = %dot.origin.short(), seq = dot.seq, %why, "refused a remote change");
                        }
                        for seq in seqs {
                            session.applied(seq);
                        }
                        *received_on_link += count;
                        let received = *received_on_link;
                        self.update(device, |e| {
                            e.info.received += count;
                            e.info.caught_up |= caught_up;
                        });
                        node.publish(Event::Peer(PeerEvent::Progress { device, received, remaining, caught_up }));
                    }
                    SessionEvent::Acked { acked, changes } => {
                        let now = now_ms();
                        let mut doc = None;
                        self.update(device, |e| {
                            e.info.acked = acked;
                            e.info.sent += changes;
                            e.info.last_sync_ms = Some(now);
                            doc = serde_json::to_string(&e.info).ok();
                        });
                        if let Some(doc) = doc {
                            let store_node = node.clone();
                            let _ =
                                tokio::task::spawn_blocking(move || store_node.store().save_peer(device, Some(doc)))
                                    .await;
                        }
                    }
                    SessionEvent::Message(envelope) => {
                        let second = now_ms() / 1000;
                        if link.incoming.0 != second {
                            link.incoming = (second, 0);
                        }
                        link.incoming.1 += 1;
                        if link.incoming.1 <= MESSAGES_PER_S {
                            self.on_message(envelope, device);
                        } else if link.incoming.1 == MESSAGES_PER_S + 1 {
                            tracing::warn!(peer = %device.short(), "more than {MESSAGES_PER_S} messages a second: dropping the rest");
                        }
                    }
                    SessionEvent::Peers(list) => {
                        for peer in list {
                            self.learn(Some(peer.device), &peer.addrs, "pex", true);
                        }
                    }
                    SessionEvent::Rtt(ms) => self.update(device, |e| e.info.rtt_ms = Some(ms)),
                    SessionEvent::Closed(e) => return Err(e.to_string()),
                }
            }
            if let Some(want) = session.poll_want() {
                progressed = true;
                let store_node = node.clone();
                let page = tokio::task::spawn_blocking(move || {
                    let filter = want.scopes.map(ScopeFilter::Scopes).unwrap_or(ScopeFilter::All);
                    store_node.store().changes_page(&want.cursor, &filter, want.limit, want.bytes_max)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("cannot read changes to send: {e}"))?;
                session.send_page(Page {
                    changes: page.changes,
                    cursor: page.cursor,
                    exhausted: page.exhausted,
                    remaining: page.remaining,
                });
            }
            if !progressed {
                return Ok(());
            }
        }
    }
}

/// One of the [`DIALS_MAX`] dials allowed at once, given back when dropped.
struct DialSlot(Arc<std::sync::atomic::AtomicUsize>);

impl DialSlot {
    fn take(dials: &Arc<std::sync::atomic::AtomicUsize>) -> DialSlot {
        dials.fetch_add(1, Ordering::SeqCst);
        DialSlot(dials.clone())
    }
}

impl Drop for DialSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One link's registration: filled in when its session is established.
struct Link {
    outbound: bool,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Incoming messages this second: (second, count).
    incoming: (u64, u32),
    started: std::time::Instant,
    /// Changes received on this link.
    received: u64,
    deferred: Arc<AtomicBool>,
    /// A newcomer this node admitted with its invite: its entry is written once established.
    admitted: Arc<Mutex<Option<MemberEntry>>>,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    id: Option<u64>,
    notify: Arc<Notify>,
    commands: Option<mpsc::UnboundedSender<Command>>,
}

fn backoff_ms(failures: u32) -> u64 {
    let base = (BACKOFF_MS_MIN << failures.min(8)).min(BACKOFF_MS_MAX);
    base / 2 + rand::rng().random_range(0..=base / 2)
}
