//! Fuzzes the JSON bodies of the node's HTTP API: `meshsync_api::router` over a real `Node`
//! (opened once per process in a temporary dir, no mesh), called in process on one
//! current-thread runtime. The first byte picks the route, the second the path's names, the
//! rest is the body:
//! `PUT /v1/c/{c}/{id}`, `POST /v1/c/{c}/{id}/incr`, `POST /v1/c/{c}`, `PUT /v1/schema/{c}`,
//! `POST /v1/invites`, `PUT /v1/config`, `POST /v1/peers`, `POST /v1/messages`,
//! `POST /v1/conflicts/{id}/resolve` (on a real conflict, made again once resolved).
//!
//! Checked: no answer is a 5xx; every answer is JSON, and every refusal has the error shape
//! `{"error":{"code","message"}}`. The settings are put back after each request, so a fuzzed
//! `PUT /v1/config` cannot shut later inputs out.

#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use libfuzzer_sys::fuzz_target;
use meshsync_api::ApiState;
use meshsync_fuzz::http;
use meshsync_node::config::Config;
use meshsync_node::Node;

const TOKEN: &str = "fuzz-token-0123456789abcdef";
const API: &str = "127.0.0.1:7711";
/// Collections and ids the path byte picks from (kept apart from the conflicts' collection).
const COLLECTIONS: [&str; 4] = ["products", "notes", "_schemas", "counters"];
const IDS: [&str; 4] = ["tea", "1", "_id", "r%20x"];
/// Where conflicts for `POST /v1/conflicts/{id}/resolve` are made.
const CONFLICTS: (&str, &str) = ("clashes", "tea");

struct Fixture {
    runtime: tokio::runtime::Runtime,
    node: Node,
    /// Another device whose concurrent writes make conflicts on `node`.
    other: Node,
    state: ApiState,
    app: Router,
    config: Config,
    conflict_id: std::sync::Mutex<Option<String>>,
    round: std::sync::atomic::AtomicU64,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    /// Makes a conflict if none is open: both devices write the same field concurrently, and the
    /// other's change is applied here the way a sync session applies it.
    fn conflict_id(&self) -> Option<String> {
        let mut held = self.conflict_id.lock().expect("lock poisoned");
        if held.is_none() {
            let round = self.round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (collection, id) = CONFLICTS;
            self.other.put(collection, id, serde_json::json!({"name": format!("theirs {round}")})).ok()?;
            self.node.put(collection, id, serde_json::json!({"name": format!("ours {round}")})).ok()?;
            let store = self.node.store();
            let vector = store.version_vector().ok()?;
            let changes: Vec<_> =
                self.other.store().changes_since(&vector, meshsync_store::ScopeFilter::All).ok()?.flatten().collect();
            store.apply_remote(meshsync_store::RemoteBatch::in_order(changes)).ok()?;
            *held = self.node.conflicts(1).ok()?.first().map(|c| c.id.clone());
        }
        held.clone()
    }
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dirs = (tempfile::tempdir().expect("a temp dir"), tempfile::tempdir().expect("a temp dir"));
        let node = Node::open(dirs.0.path()).expect("the node opens");
        let other = Node::open(dirs.1.path()).expect("the other node opens");
        let config = Config { api: API.parse().expect("an address"), name: "fuzz".into(), ..Config::default() };
        node.set_name(&config.name).expect("a valid name");
        // No config file: settings changed by the API last only for the process.
        let state = ApiState::new(node.clone(), config.clone(), None, TOKEN.into());
        let app = meshsync_api::router(state.clone());
        Fixture {
            runtime: http::runtime(),
            node,
            other,
            state,
            app,
            config,
            conflict_id: std::sync::Mutex::new(None),
            round: std::sync::atomic::AtomicU64::new(0),
            _dirs: dirs,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [route, names, body @ ..] = data else { return };
    let fixture = fixture();
    let collection = COLLECTIONS[usize::from(names & 0x0f) % COLLECTIONS.len()];
    let id = IDS[usize::from(names >> 4) % IDS.len()];
    let (method, uri) = match route % 9 {
        0 => (Method::PUT, format!("/v1/c/{collection}/{id}")),
        1 => (Method::POST, format!("/v1/c/{collection}/{id}/incr")),
        2 => (Method::POST, format!("/v1/c/{collection}")),
        3 => (Method::PUT, format!("/v1/schema/{collection}")),
        4 => (Method::POST, "/v1/invites".to_string()),
        5 => (Method::PUT, "/v1/config".to_string()),
        6 => (Method::POST, "/v1/peers".to_string()),
        7 => (Method::POST, "/v1/messages".to_string()),
        _ => {
            let conflict = if names % 2 == 0 { fixture.conflict_id() } else { None };
            (Method::POST, format!("/v1/conflicts/{}/resolve", conflict.as_deref().unwrap_or("nope")))
        }
    };
    let resolving = uri.starts_with("/v1/conflicts/");
    let request = Request::builder()
        .method(method)
        .uri(&uri)
        .header(header::HOST, API)
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a well-formed request");
    let (status, answer) = http::call(&fixture.runtime, &fixture.app, request);
    let answer = answer.unwrap_or_else(|| panic!("{uri} answered {status} without a body"));
    if status.is_client_error() {
        let error = &answer["error"];
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{uri} refused ({status}) without the error shape: {answer}"
        );
    }
    if resolving && status.is_success() {
        *fixture.conflict_id.lock().expect("lock poisoned") = None;
    }
    *fixture.state.config_handle().write().expect("lock poisoned") = fixture.config.clone();
});
