//! Fuzzes the JSON bodies of the node's HTTP API: `meshsync_api::router` over a real `Node`
//! (in a temporary dir, no mesh), called in process on one current-thread runtime reused by
//! every input. The first byte picks the route, the second the path's names, the
//! rest is the body:
//! `PUT /v1/c/{c}/{id}`, `POST /v1/c/{c}/{id}/incr`, `POST /v1/c/{c}`, `PUT /v1/schema/{c}`,
//! `POST /v1/invites`, `PUT /v1/config`, `POST /v1/peers`, `POST /v1/messages`,
//! `POST /v1/conflicts/{id}/resolve` (on a real conflict, made again once resolved).
//!
//! Checked: no answer is a 5xx; every answer is JSON, and every refusal has the error shape
//! `{"error":{"code","message"}}`. The settings are put back after each request, so a fuzzed
//! `PUT /v1/config` cannot shut later inputs out. Every [`INPUTS_PER_NODE`] inputs the node is
//! replaced by a fresh one, and its data dir removed (the last one at exit).

#![no_main]

use std::sync::{Mutex, Once, OnceLock};

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
/// Inputs one node serves before a fresh one replaces it. Nothing limits how many fields a
/// record gathers over many writes (see docs/fuzzing.md), and the few records every input
/// writes to grow until each write re-encodes hundreds of KiB: the fuzzer would then spend its
/// time there instead of on the bodies.
const INPUTS_PER_NODE: u64 = 20_000;

struct Fixture {
    node: Node,
    /// Another device whose concurrent writes make conflicts on `node`.
    other: Node,
    state: ApiState,
    app: Router,
    config: Config,
    conflict_id: Option<String>,
    round: u64,
    inputs: u64,
    /// Last, so that both nodes are closed before their dirs are removed.
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Fixture {
    fn new() -> Fixture {
        let dirs = (tempfile::tempdir().expect("a temp dir"), tempfile::tempdir().expect("a temp dir"));
        let node = Node::open(dirs.0.path()).expect("the node opens");
        let other = Node::open(dirs.1.path()).expect("the other node opens");
        let config = Config { api: API.parse().expect("an address"), name: "fuzz".into(), ..Config::default() };
        node.set_name(&config.name).expect("a valid name");
        // No config file: settings changed by the API last only for the process.
        let state = ApiState::new(node.clone(), config.clone(), None, TOKEN.into());
        let app = meshsync_api::router(state.clone());
        Fixture { node, other, state, app, config, conflict_id: None, round: 0, inputs: 0, _dirs: dirs }
    }

    /// Makes a conflict if none is open: both devices write the same field concurrently, and the
    /// other's change is applied here the way a sync session applies it.
    fn conflict_id(&mut self) -> Option<String> {
        if self.conflict_id.is_none() {
            self.round += 1;
            let (collection, id) = CONFLICTS;
            self.other.put(collection, id, serde_json::json!({"name": format!("theirs {}", self.round)})).ok()?;
            self.node.put(collection, id, serde_json::json!({"name": format!("ours {}", self.round)})).ok()?;
            let store = self.node.store();
            let vector = store.version_vector().ok()?;
            let changes: Vec<_> =
                self.other.store().changes_since(&vector, meshsync_store::ScopeFilter::All).ok()?.flatten().collect();
            store.apply_remote(meshsync_store::RemoteBatch::in_order(changes)).ok()?;
            self.conflict_id = self.node.conflicts(1).ok()?.first().map(|c| c.id.clone());
        }
        self.conflict_id.clone()
    }
}

static FIXTURE: Mutex<Option<Fixture>> = Mutex::new(None);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(http::runtime)
}

/// libFuzzer ends the process with `exit`, which drops no statics: remove the data dirs then.
extern "C" fn remove_data_dirs() {
    if let Ok(mut fixture) = FIXTURE.try_lock() {
        fixture.take();
    }
}

fn remove_data_dirs_at_exit() {
    static REGISTER: Once = Once::new();
    extern "C" {
        fn atexit(callback: extern "C" fn()) -> std::os::raw::c_int;
    }
    // SAFETY: `atexit` only stores the pointer; the callback takes no arguments and cannot
    // unwind (it only drops values whose drops do not panic, under `try_lock`).
    REGISTER.call_once(|| unsafe {
        atexit(remove_data_dirs);
    });
}

fuzz_target!(|data: &[u8]| {
    let [route, names, body @ ..] = data else { return };
    remove_data_dirs_at_exit();
    let mut held = FIXTURE.lock().expect("lock poisoned");
    if held.as_ref().is_none_or(|f| f.inputs >= INPUTS_PER_NODE) {
        // Drop the old node (closing its store, removing its dirs) before opening the next.
        held.take();
        *held = Some(Fixture::new());
    }
    let fixture = held.as_mut().expect("set above");
    fixture.inputs += 1;
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
    let (status, answer) = http::call(runtime(), &fixture.app, request);
    let answer = answer.unwrap_or_else(|| panic!("{uri} answered {status} without a body"));
    if status.is_client_error() {
        let error = &answer["error"];
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{uri} refused ({status}) without the error shape: {answer}"
        );
    }
    if resolving && status.is_success() {
        fixture.conflict_id = None;
    }
    *fixture.state.config_handle().write().expect("lock poisoned") = fixture.config.clone();
});
