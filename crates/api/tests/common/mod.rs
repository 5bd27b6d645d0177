//! Test support: a real node on a temporary data dir behind the API router, and helpers to call
//! it without a socket and to snapshot the store (to prove a refused request changed nothing).
#![allow(dead_code)] // Each test file uses its own subset.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use meshsync_api::ApiState;
use meshsync_node::config::Config;
use meshsync_node::{Node, VersionVector};
use serde_json::Value;
use tower::ServiceExt;

/// The token every fixture uses.
pub const TOKEN: &str = "test-token-0123456789abcdef";
/// The API address the fixture's settings name (nothing listens there: requests go to the router).
pub const API: &str = "127.0.0.1:7711";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub node: Node,
    pub state: ApiState,
    pub app: Router,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config(Config { api: API.parse().unwrap(), name: "till-1".into(), ..Config::default() })
    }

    pub fn with_config(config: Config) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(dir.path()).unwrap();
        node.set_name(&config.name).unwrap();
        let state = ApiState::new(node.clone(), config, Some(dir.path().join("meshsync.toml")), TOKEN.into());
        let app = meshsync_api::router(state.clone());
        Fixture { dir, node, state, app }
    }

    /// A request with the loopback Host and the token; `body` is sent as JSON.
    pub fn request(method: Method, uri: &str, body: Option<Value>) -> Request<Body> {
        let builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, API)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        match body {
            Some(body) => builder.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => builder.body(Body::empty()),
        }
        .unwrap()
    }

    /// Sends a request through the router and returns the status and the body as JSON
    /// (`Value::Null` for an empty or non-JSON body).
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(Fixture::request(method, uri, body)).await
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Method::GET, uri, None).await
    }

    /// Everything a request could change: records, the version vector, settings, the pause flag.
    pub fn snapshot(&self) -> Snapshot {
        let store = self.node.store();
        Snapshot {
            records: store.canonical_state().unwrap(),
            vector: store.version_vector().unwrap(),
            config: self.state.config(),
            config_file: std::fs::read_to_string(self.dir.path().join("meshsync.toml")).ok(),
            paused: self.state.paused(),
            name: self.node.name(),
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub records: Vec<(String, String, Vec<u8>)>,
    pub vector: VersionVector,
    pub config: Config,
    pub config_file: Option<String>,
    pub paused: bool,
    pub name: String,
}

/// Asserts the error shape `{"error":{"code","message"}}` and returns the code.
pub fn error_code(body: &Value) -> String {
    let error = body.get("error").unwrap_or_else(|| panic!("no error object in {body}"));
    let message = error["message"].as_str().unwrap_or_else(|| panic!("no message in {body}"));
    assert!(!message.is_empty(), "empty message in {body}");
    error["code"].as_str().unwrap_or_else(|| panic!("no code in {body}")).to_string()
}

/// Makes a real conflict on `products/tea.name`: another node writes it concurrently with this
/// one, and its changes are applied here the way a sync session will apply them.
pub fn make_conflict(fixture: &Fixture) -> tempfile::TempDir {
    let other_dir = tempfile::tempdir().unwrap();
    let other = Node::open(other_dir.path()).unwrap();
    other.put("products", "tea", serde_json::json!({"name": "Black tea"})).unwrap();
    fixture.node.put("products", "tea", serde_json::json!({"name": "Green tea"})).unwrap();
    let store = fixture.node.store();
    let changes: Vec<_> = other
        .store()
        .changes_since(&store.version_vector().unwrap(), meshsync_store::ScopeFilter::All)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    store.apply_remote(meshsync_store::RemoteBatch::in_order(changes)).unwrap();
    assert_eq!(store.conflict_count().unwrap(), 1);
    other.close();
    other_dir
}

/// Reads Server-Sent Events from a streaming body: `(id, data as JSON)` per event, skipping
/// keep-alive comments. Panics if nothing arrives within 10 s.
pub struct SseReader<B> {
    body: B,
    buffer: String,
}

impl<B> SseReader<B>
where
    B: hyper::body::Body<Data = hyper::body::Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    pub fn new(body: B) -> SseReader<B> {
        SseReader { body, buffer: String::new() }
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<(Option<u64>, Value)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    } else if let Some(value) = line.strip_prefix("id:") {
                        id = Some(value.trim().parse().unwrap());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                return Some((id, serde_json::from_str(&data).unwrap()));
            }
            let frame = tokio::time::timeout(std::time::Duration::from_secs(10), self.body.frame())
                .await
                .expect("an event within 10 s")?
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// Whether no event arrives within `ms` (keep-alives aside).
    pub async fn quiet_for(&mut self, ms: u64) -> bool {
        tokio::time::timeout(std::time::Duration::from_millis(ms), self.next()).await.is_err()
    }
}

/// Opens `GET /v1/events` as Server-Sent Events through the router.
pub async fn open_sse(fixture: &Fixture, query: &str) -> SseReader<axum::body::Body> {
    let mut request = Fixture::request(Method::GET, &format!("/v1/events{query}"), None);
    request.headers_mut().insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    let response = fixture.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    SseReader::new(response.into_body())
}

/// Resolves `#/components/schemas/NAME` references.
pub fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap();
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

pub fn response_schema<'a>(document: &'a Value, method: &str, path: &str, status: &str) -> &'a Value {
    let schema =
        &document["paths"][path][method.to_lowercase()]["responses"][status]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} {status} has no JSON schema");
    resolve(document, schema)
}

/// Checks that `body` has exactly the documented properties, recursively through objects and
/// arrays of objects.
pub fn assert_shape(document: &Value, schema: &Value, body: &Value, at: &str) {
    let schema = resolve(document, schema);
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return };
    let object = body.as_object().unwrap_or_else(|| panic!("{at}: expected an object, got {body}"));
    let documented: BTreeSet<&String> = properties.keys().collect();
    let actual: BTreeSet<&String> = object.keys().collect();
    assert_eq!(actual, documented, "{at}: fields differ from the document");
    for (key, property) in properties {
        let property = resolve(document, property);
        let value = &object[key];
        if let (Some(items), Some(array)) = (property.get("items"), value.as_array()) {
            for (i, item) in array.iter().enumerate() {
                assert_shape(document, items, item, &format!("{at}.{key}[{i}]"));
            }
        } else if value.is_object() {
            // An optional object is `oneOf: [null, {$ref}]`: check against the object variant.
            let variant = property
                .get("oneOf")
                .and_then(Value::as_array)
                .and_then(|variants| variants.iter().find(|v| v.get("$ref").is_some()))
                .unwrap_or(property);
            assert_shape(document, variant, value, &format!("{at}.{key}"));
        }
    }
}
