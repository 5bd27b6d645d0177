//! A deterministic cluster: N nodes, each a real [`Store`] on disk with its own skewed clock,
//! joined pairwise by [`Session`]s over simulated links. Only the network is simulated: frames
//! are delivered after a latency, links fail (every frame in flight is lost, like a TCP reset)
//! and are redialed after a backoff, nodes are partitioned, healed and restarted (the store is
//! closed and reopened from disk).
//!
//! ```text
//! cluster.partition(0); cluster.write(1, ..); cluster.heal(); cluster.run_until_quiet();
//! cluster.assert_converged();
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use meshsync_core::{DeviceId, Op, Policy, Schema, Value, VersionVector};
use meshsync_store::{LocalWrite, RemoteBatch, ScopeFilter, Store, StoreOptions, WallClock};
use meshsync_sync::{Page, Session, SessionConfig, SessionEvent};
use meshsync_wire::{GroupId, Hello, PROTOCOL_VERSION};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: GroupId = GroupId([42; 16]);

/// One simulated device.
pub struct SimNode {
    /// Its device id.
    pub device: DeviceId,
    store: Option<Store>,
    path: std::path::PathBuf,
    clock: Arc<AtomicU64>,
    skew_ms: i64,
    partitioned: bool,
}

impl SimNode {
    /// The store (panics if the node is down: a test bug).
    pub fn store(&self) -> &Store {
        self.store.as_ref().expect("node is up")
    }

    fn is_up(&self) -> bool {
        self.store.is_some()
    }
}

struct Link {
    /// Sessions at each end, `None` while the link is down.
    ends: Option<[Session; 2]>,
    /// Frames in flight: (deliver at, to end, bytes).
    wire: VecDeque<(u64, usize, Vec<u8>)>,
    /// When to try to connect again.
    retry_at: u64,
    /// Failed attempts in a row, for backoff.
    failures: u32,
}

/// What the workload did that must never be lost.
#[derive(Default)]
pub struct Ledger {
    /// Acknowledged appends: (collection, id) -> node that wrote it.
    pub events: BTreeMap<String, usize>,
    /// Sum of acknowledged counter increments.
    pub counter_total: i64,
    /// Acknowledged writes in all.
    pub writes: u64,
}

/// A deterministic cluster. See the module docs.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<SimNode>,
    links: BTreeMap<(usize, usize), Link>,
    /// Simulated time in ms.
    pub now_ms: u64,
    rng: StdRng,
    _dir: tempfile::TempDir,
    /// What must survive.
    pub ledger: Ledger,
    config: SessionConfig,
    latency_ms: (u64, u64),
    /// Frames delivered, for reports.
    pub frames: u64,
}

const EPOCH_MS: u64 = 1_790_000_000_000;

impl Cluster {
    /// `n` nodes linked as `topology` (pairs) with latencies drawn in `latency_ms`.
    pub fn new(seed: u64, n: usize, topology: &[(usize, usize)], latency_ms: (u64, u64)) -> Cluster {
        // Real SQLite files, on a RAM disk where there is one: the simulation tests the
        // protocol, and fsync waits would only slow it down.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("temp dir");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut nodes = Vec::new();
        for i in 0..n {
            let mut id = [0u8; 16];
            rng.fill(&mut id);
            id[0] = i as u8;
            let clock = Arc::new(AtomicU64::new(EPOCH_MS));
            let skew_ms = rng.random_range(-20_000..20_000);
            let mut node = SimNode {
                device: DeviceId(id),
                store: None,
                path: dir.path().join(format!("n{i}.db")),
                clock,
                skew_ms,
                partitioned: false,
            };
            open(&mut node);
            nodes.push(node);
        }
        let links = topology
            .iter()
            .map(|&(a, b)| ((a.min(b), a.max(b)), Link { ends: None, wire: VecDeque::new(), retry_at: 0, failures: 0 }))
            .collect();
        let cluster = Cluster {
            nodes,
            links,
            now_ms: EPOCH_MS,
            rng,
            _dir: dir,
            ledger: Ledger::default(),
            config: SessionConfig { batch_changes_max: 7, window: 2, ..SessionConfig::with_heartbeat(1_000) },
            latency_ms,
            frames: 0,
        };
        cluster.tick_clocks();
        // Every app instance declares its schemas at start, as real apps do.
        let schema = Schema { fields: [("qty".to_string(), Policy::Counter)].into(), ..Schema::default() };
        let events = Schema { append_only: true, ..Schema::default() };
        for node in &cluster.nodes {
            node.store().put_schema("stock", &schema).expect("schema");
            node.store().put_schema("events", &events).expect("schema");
        }
        cluster
    }

    /// A full mesh of `n` nodes.
    pub fn mesh(seed: u64, n: usize) -> Cluster {
        let pairs: Vec<(usize, usize)> = (0..n).flat_map(|a| (a + 1..n).map(move |b| (a, b))).collect();
        Cluster::new(seed, n, &pairs, (1, 30))
    }

    fn tick_clocks(&self) {
        for node in &self.nodes {
            node.clock.store((self.now_ms as i64 + node.skew_ms) as u64, Ordering::SeqCst);
        }
    }

    fn link_usable(&self, a: usize, b: usize) -> bool {
        let (na, nb) = (&self.nodes[a], &self.nodes[b]);
        na.is_up() && nb.is_up() && !na.partitioned && !nb.partitioned
    }

    fn hello(&self, i: usize) -> Hello {
        let node = &self.nodes[i];
        Hello {
            protocol: PROTOCOL_VERSION,
            device: node.device,
            name: format!("n{i}"),
            group: GROUP,
            proof: Vec::new(),
            vector: node.store().version_vector().expect("vector"),
            scopes: Vec::new(),
            listen_port: None,
            chain: Vec::new(),
        }
    }

    fn connect(&mut self, key: (usize, usize)) {
        let (a, b) = key;
        let sa =
            Session::new(self.config.clone(), self.hello(a), self.nodes[b].device, Box::new(|_| Ok(None)), self.now_ms);
        let sb =
            Session::new(self.config.clone(), self.hello(b), self.nodes[a].device, Box::new(|_| Ok(None)), self.now_ms);
        let link = self.links.get_mut(&key).expect("link exists");
        link.ends = Some([sa, sb]);
        link.wire.clear();
    }

    fn drop_link(&mut self, key: (usize, usize)) {
        let now = self.now_ms;
        let backoff = {
            let link = self.links.get_mut(&key).expect("link exists");
            link.failures = (link.failures + 1).min(6);
            100u64 << link.failures
        };
        let jitter = self.rng.random_range(0..=backoff / 2);
        let link = self.links.get_mut(&key).expect("link exists");
        link.ends = None;
        link.wire.clear();
        link.retry_at = now + backoff + jitter;
    }

    /// Cuts node `i` off from every other node.
    pub fn partition(&mut self, i: usize) {
        self.nodes[i].partitioned = true;
        let keys: Vec<_> = self.links.keys().copied().filter(|(a, b)| *a == i || *b == i).collect();
        for key in keys {
            if self.links[&key].ends.is_some() {
                self.drop_link(key);
            }
        }
    }

    /// Reconnects every partitioned node.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.partitioned = false;
        }
    }

    /// Stops node `i` (its store closes; its links drop) and starts it again from disk.
    pub fn restart(&mut self, i: usize) {
        let keys: Vec<_> = self.links.keys().copied().filter(|(a, b)| *a == i || *b == i).collect();
        for key in keys {
            if self.links[&key].ends.is_some() {
                self.drop_link(key);
            }
        }
        self.nodes[i].store = None;
        open(&mut self.nodes[i]);
    }

    /// Fails one random live link (every frame in flight is lost).
    pub fn fail_random_link(&mut self) {
        let live: Vec<_> = self.links.iter().filter(|(_, l)| l.ends.is_some()).map(|(k, _)| *k).collect();
        if !live.is_empty() {
            let key = live[self.rng.random_range(0..live.len())];
            self.drop_link(key);
        }
    }

    /// Makes one random write at a random live node and records what must survive.
    pub fn random_write(&mut self) {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].is_up()).collect();
        let i = up[self.rng.random_range(0..up.len())];
        let roll = self.rng.random_range(0..100);
        let key = format!("k{}", self.rng.random_range(0..6));
        let (collection, id, op) = match roll {
            0..=29 => (
                "products".to_string(),
                key,
                Op::Put { fields: vec![("name".into(), Value::Int(self.rng.random_range(0..1000)))], scope: None },
            ),
            30..=54 => (
                "stock".to_string(),
                key,
                Op::Incr { field: "qty".into(), by: Value::Int(self.rng.random_range(-5..10)) },
            ),
            55..=79 => {
                let id = format!("e{}-{}", i, self.ledger.writes);
                (
                    "events".to_string(),
                    id,
                    Op::Append { fields: vec![("node".into(), Value::Int(i as i64))], scope: None },
                )
            }
            80..=89 => ("products".to_string(), key, Op::Delete),
            _ => (
                "products".to_string(),
                key,
                Op::Put { fields: vec![("price".into(), Value::Float(self.rng.random_range(0.0..9.0)))], scope: None },
            ),
        };
        let result =
            self.nodes[i].store().write(LocalWrite { collection: collection.clone(), id: id.clone(), op: op.clone() });
        match (result, &op) {
            (Ok(_), Op::Incr { by: Value::Int(by), .. }) => {
                self.ledger.counter_total += by;
                self.ledger.writes += 1;
            }
            (Ok(_), Op::Append { .. }) => {
                self.ledger.events.insert(id, i);
                self.ledger.writes += 1;
            }
            (Ok(_), _) => self.ledger.writes += 1,
            // Deleting a record this node does not have is refused: fine.
            (Err(_), Op::Delete) => {}
            (Err(e), _) => panic!("write {op:?} at n{i} failed: {e}"),
        }
        self.notify_node(i);
    }

    fn notify_node(&mut self, i: usize) {
        for ((a, b), link) in self.links.iter_mut() {
            if let Some(ends) = link.ends.as_mut() {
                if *a == i {
                    ends[0].notify_changes();
                } else if *b == i {
                    ends[1].notify_changes();
                }
            }
        }
    }

    /// Advances time by `ms`, delivering frames and running sessions.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms += 1;
            self.tick_clocks();
            self.step();
        }
    }

    fn step(&mut self) {
        let keys: Vec<_> = self.links.keys().copied().collect();
        for key in keys {
            let (a, b) = key;
            let usable = self.link_usable(a, b);
            let link = &self.links[&key];
            if link.ends.is_none() {
                if usable && self.now_ms >= link.retry_at {
                    self.connect(key);
                }
                continue;
            }
            if !usable {
                self.drop_link(key);
                continue;
            }
            // Deliver due frames.
            loop {
                let link = self.links.get_mut(&key).expect("link");
                let due = matches!(link.wire.front(), Some((at, _, _)) if *at <= self.now_ms);
                if !due {
                    break;
                }
                let (_, to, bytes) = link.wire.pop_front().expect("checked");
                let now = self.now_ms;
                let ends = link.ends.as_mut().expect("up");
                self.frames += 1;
                if ends[to].handle_frame(now, &bytes).is_err() {
                    break;
                }
            }
            for side in 0..2 {
                self.pump(key, side);
            }
            let failed = self.links[&key].ends.as_ref().is_some_and(|e| e[0].is_closed() || e[1].is_closed());
            if failed {
                self.drop_link(key);
            } else if let Some(link) = self.links.get_mut(&key) {
                if link.ends.as_ref().is_some_and(|e| e[0].is_open() && e[1].is_open()) {
                    link.failures = 0;
                }
            }
        }
    }

    /// Runs one end of a link: timeouts, events (applying batches to the store), wants, frames.
    fn pump(&mut self, key: (usize, usize), side: usize) {
        let node_index = if side == 0 { key.0 } else { key.1 };
        let now = self.now_ms;
        let mut applied_any = false;
        {
            let link = self.links.get_mut(&key).expect("link");
            let Some(ends) = link.ends.as_mut() else { return };
            ends[side].handle_timeout(now);
        }
        loop {
            let link = self.links.get_mut(&key).expect("link");
            let Some(ends) = link.ends.as_mut() else { return };
            let session = &mut ends[side];
            let mut progressed = false;
            while let Some(event) = session.poll_event() {
                progressed = true;
                if let SessionEvent::Apply { seq, changes, advance, .. } = event {
                    let store = self.nodes[node_index].store.as_ref().expect("up");
                    match store.apply_remote(RemoteBatch { changes, advance }) {
                        Ok(_) => {
                            session.applied(seq);
                            applied_any = true;
                        }
                        // Clock skew beyond the limit: the session is closed and retried later.
                        Err(e) => session.close(&e.to_string()),
                    }
                }
            }
            if let Some(want) = session.poll_want() {
                progressed = true;
                let store = self.nodes[node_index].store.as_ref().expect("up");
                let filter = want.scopes.clone().map(ScopeFilter::Scopes).unwrap_or(ScopeFilter::All);
                let page = store.changes_page(&want.cursor, &filter, want.limit, want.bytes_max).expect("page");
                session.send_page(Page {
                    changes: page.changes,
                    cursor: page.cursor,
                    exhausted: page.exhausted,
                    remaining: page.remaining,
                });
            }
            let frames: Vec<Vec<u8>> = std::iter::from_fn(|| session.poll_transmit()).collect();
            for bytes in frames {
                progressed = true;
                let latency = self.rng.random_range(self.latency_ms.0..=self.latency_ms.1);
                // A TCP stream keeps order: never deliver before the previous frame.
                let last = link.wire.iter().filter(|f| f.1 == 1 - side).map(|f| f.0).max().unwrap_or(0);
                link.wire.push_back(((now + latency).max(last), 1 - side, bytes));
                link.wire.make_contiguous().sort_by_key(|f| f.0);
            }
            if !progressed {
                break;
            }
        }
        if applied_any {
            self.notify_node(node_index);
        }
    }

    /// Heals everything and runs until no frame is in flight and no session wants to send,
    /// or `limit_ms` of simulated time passes. Returns whether it became quiet.
    pub fn run_until_quiet(&mut self, limit_ms: u64) -> bool {
        self.heal();
        let end = self.now_ms + limit_ms;
        let mut quiet_for = 0;
        while self.now_ms < end {
            self.advance(10);
            let all_up = self.links.values().all(|l| l.ends.as_ref().is_some_and(|e| e[0].is_open() && e[1].is_open()));
            let idle = self.links.values().all(|l| l.wire.iter().all(|f| is_heartbeat(&f.2)));
            if all_up && idle && self.converged() {
                quiet_for += 10;
                if quiet_for >= 100 {
                    return true;
                }
            } else {
                quiet_for = 0;
            }
        }
        false
    }

    fn converged(&self) -> bool {
        let first = self.nodes[0].store().canonical_state().expect("state");
        self.nodes[1..].iter().all(|n| n.store().canonical_state().expect("state") == first)
    }

    /// Checks that every node holds byte-identical state, and that nothing acknowledged was lost.
    pub fn check(&self) -> Result<(), String> {
        let first = self.nodes[0].store().canonical_state().map_err(|e| e.to_string())?;
        for (i, node) in self.nodes.iter().enumerate().skip(1) {
            let state = node.store().canonical_state().map_err(|e| e.to_string())?;
            if state != first {
                let a: BTreeSet<_> = first.iter().collect();
                let b: BTreeSet<_> = state.iter().collect();
                let diff: Vec<_> = a.symmetric_difference(&b).map(|(c, k, _)| format!("{c}/{k}")).take(5).collect();
                return Err(format!("n{i} differs from n0 (e.g. {diff:?})"));
            }
        }
        let vectors: Vec<VersionVector> =
            self.nodes.iter().map(|n| n.store().version_vector().expect("vector")).collect();
        if vectors.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("version vectors differ: {vectors:?}"));
        }
        for node in &self.nodes {
            let store = node.store();
            for (id, writer) in &self.ledger.events {
                if store.get("events", id).map_err(|e| e.to_string())?.is_none_or(|r| r.deleted) {
                    return Err(format!(
                        "acknowledged event {id} written at n{writer} is missing at {}",
                        node.device.short()
                    ));
                }
            }
            let total = store.get("stock", "k0").ok().flatten();
            let sum: i64 = (0..6)
                .map(|k| {
                    match store.get("stock", &format!("k{k}")).ok().flatten().and_then(|r| r.fields.get("qty").cloned())
                    {
                        Some(Value::Int(n)) => n,
                        _ => 0,
                    }
                })
                .sum();
            let _ = total;
            if sum != self.ledger.counter_total {
                return Err(format!(
                    "counters sum to {sum} at {}, acknowledged increments sum to {}",
                    node.device.short(),
                    self.ledger.counter_total
                ));
            }
        }
        Ok(())
    }

    /// A seeded random workload with partitions, restarts and link failures, then quiet.
    pub fn chaos(&mut self, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            match self.rng.random_range(0..100) {
                0..=59 => self.random_write(),
                60..=64 => {
                    let i = self.rng.random_range(0..self.nodes.len());
                    self.partition(i);
                }
                65..=69 => self.heal(),
                70..=72 => {
                    let i = self.rng.random_range(0..self.nodes.len());
                    self.restart(i);
                }
                73..=77 => self.fail_random_link(),
                _ => {
                    let ms = self.rng.random_range(1..200);
                    self.advance(ms);
                }
            }
        }
        if !self.run_until_quiet(120_000) {
            return Err(format!(
                "did not converge within 120 s of simulated time after healing ({})",
                self.check().err().unwrap_or_default()
            ));
        }
        self.check()
    }
}

fn is_heartbeat(bytes: &[u8]) -> bool {
    matches!(
        meshsync_wire::decode(bytes),
        Ok(meshsync_wire::Message::Ping { .. } | meshsync_wire::Message::Pong { .. })
    )
}

fn open(node: &mut SimNode) {
    let clock = node.clock.clone();
    let options =
        StoreOptions { clock: WallClock::from_fn(move || clock.load(Ordering::SeqCst)), ..StoreOptions::default() };
    node.store = Some(Store::open(&node.path, node.device, options).expect("open store"));
}
