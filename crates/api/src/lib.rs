//! The local HTTP API of a meshsync node: records, schemas, conflicts, messages, the live event
//! stream (WebSocket and Server-Sent Events), status, settings, peers, Prometheus metrics and the
//! OpenAPI document, behind a bearer token and `Host`/`Origin` allow-lists. It owns no data: every
//! request goes to the [`Node`]. Opening sockets is the caller's business: [`serve`] takes a bound
//! listener, so the CLI decides the address and reports a port in use in its own words.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use meshsync_api::{load_or_create_token, serve, ApiState};
//! use meshsync_node::{config::Config, Node};
//!
//! let node = Node::open("./shop-data").expect("open the data dir");
//! let token = load_or_create_token(node.data_dir())?;
//! let state = ApiState::new(node, Config::default(), None, token);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7711").await?;
//! serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Layout
//! - `lib.rs`: [`ApiState`], [`router`] (the one place routes are declared), [`serve`].
//! - `error`: [`ApiError`], the one error type, and its mapping to status codes and the
//!   `{"error":{"code","message"}}` body.
//! - `extract`: request parsing with limits: JSON bodies (content type, size), path segments,
//!   query strings.
//! - `security`: the guard in front of every route (`Host`, `Origin`, token, CORS for configured
//!   origins) and the token file.
//! - `records`: records, schemas, conflicts and messages.
//! - `events`: `GET /v1/events`: replay from a cursor, then live, over WebSocket or SSE.
//! - `system`: status, settings, metrics and the OpenAPI document.
//! - `dashboard`: the dashboard page and its scripts, embedded from `crates/api/dashboard/`, with
//!   their security headers (Content-Security-Policy).
//! - `peers`: peers, sync, invites and members, from the node's mesh when it runs (and what a
//!   node without one can say when it does not).
//! - `audit`: `GET /v1/audit` (the audit log, its cursor, filter and chain check), and the
//!   rate-limited record of the guard's refusals.
//! - `metrics`: the Prometheus registry and the per-route middleware.
//! - `docs`: the OpenAPI document's frame and the types that only describe responses.

mod audit;
mod dashboard;
mod docs;
mod error;
mod events;
mod extract;
mod metrics;
mod peers;
mod records;
mod security;
mod system;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use axum::Router;
use meshsync_node::config::Config;
use meshsync_node::Node;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;
pub use security::{load_or_create_token, TOKEN_FILE};

/// Open HTTP connections served at once; further clients wait in the kernel's accept queue.
pub const CONNECTIONS_MAX: usize = 1024;
/// Open event streams (WebSocket or SSE) at once; more are refused with 429.
pub const EVENT_STREAMS_MAX: usize = 256;
/// Store reads (get, list, schema, conflicts, counts) that requests run at once; more wait their
/// turn without holding a thread. The store keeps 4 read connections and opens (and then closes)
/// a fresh one for every read beyond them, which costs far more than the read itself: under 16
/// concurrent GETs that churn took most of the node's CPU. 3 leaves one for the mesh's scans.
const STORE_READS_MAX: usize = 3;

/// What every request handler shares: the node, the settings and the API's own state.
/// Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    shared: Arc<Shared>,
}

struct Shared {
    node: Node,
    config: Arc<RwLock<Config>>,
    config_path: Option<PathBuf>,
    token: String,
    /// Sync is paused by the API. The mesh owns the flag when it runs; this copy is kept in step
    /// and is what a node without a mesh reports.
    paused: AtomicBool,
    /// The address the API is served on: `config.api` until [`serve`] learns the real one.
    api_addr: RwLock<SocketAddr>,
    metrics: metrics::Metrics,
    streams: Arc<Semaphore>,
    /// Permits for store reads: see [`STORE_READS_MAX`].
    reads: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
    /// Serializes read-modify-write of the settings, so two concurrent updates cannot lose one.
    config_update: tokio::sync::Mutex<()>,
    /// When the guard's refusals were last audited, per reason.
    refusals: audit::Refusals,
}

impl ApiState {
    /// Builds the state for a node. `config_path` is where `PUT /v1/config` and `POST /v1/peers`
    /// save the settings (`None`: changes last until the process stops). `token` is the bearer
    /// token clients must present, usually from [`load_or_create_token`].
    pub fn new(node: Node, config: Config, config_path: Option<PathBuf>, token: String) -> ApiState {
        let api_addr = config.api;
        let (shutdown, _) = watch::channel(false);
        ApiState {
            shared: Arc::new(Shared {
                node,
                config: Arc::new(RwLock::new(config)),
                config_path,
                token,
                paused: AtomicBool::new(false),
                api_addr: RwLock::new(api_addr),
                metrics: metrics::Metrics::new(),
                streams: Arc::new(Semaphore::new(EVENT_STREAMS_MAX)),
                reads: Arc::new(Semaphore::new(STORE_READS_MAX)),
                shutdown,
                config_update: tokio::sync::Mutex::new(()),
                refusals: audit::Refusals::default(),
            }),
        }
    }

    /// The node behind the API.
    pub fn node(&self) -> &Node {
        &self.shared.node
    }

    /// The current settings, including changes made through the API.
    pub fn config(&self) -> Config {
        self.shared.config.read().expect("lock poisoned").clone()
    }

    /// The settings as shared with the API, for a caller that applies them at runtime.
    pub fn config_handle(&self) -> Arc<RwLock<Config>> {
        self.shared.config.clone()
    }

    /// Whether sync is paused (`POST /v1/sync/pause`): the mesh's flag when it runs.
    pub fn paused(&self) -> bool {
        match self.node().mesh() {
            Some(mesh) => mesh.paused(),
            None => self.shared.paused.load(Ordering::Relaxed),
        }
    }

    /// Records the address the API is really served on (it differs from `config.api` when that
    /// asks for port 0). [`serve`] calls this; a caller serving [`router`] itself should too, or
    /// browsers on the real port are refused as a foreign origin.
    pub fn set_api_addr(&self, addr: SocketAddr) {
        *self.shared.api_addr.write().expect("lock poisoned") = addr;
    }

    /// Ends every open event stream (WebSocket clients get a "going away" close). Called by
    /// [`serve`] on shutdown, since a graceful shutdown otherwise waits for streams that never end.
    pub fn close_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }

    fn body_bytes_max(&self) -> usize {
        self.shared.config.read().expect("lock poisoned").api_body_bytes_max
    }

    fn api_addr(&self) -> SocketAddr {
        *self.shared.api_addr.read().expect("lock poisoned")
    }

    /// Pauses or resumes sync: every link of the mesh if it runs, and the flag kept here.
    fn set_paused(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Relaxed);
        if let Some(mesh) = self.node().mesh() {
            mesh.set_paused(paused);
        }
    }
}

/// The API's routes and their OpenAPI description, built together: a route exists only through
/// `routes!`, which registers the handler and its `#[utoipa::path]` description at once, so the
/// document cannot forget a route (a test checks this against the real router too).
fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(docs::frame())
        .routes(routes!(dashboard::dashboard))
        .routes(routes!(dashboard::dashboard_asset))
        .routes(routes!(system::openapi_json))
        .routes(routes!(system::metrics))
        .routes(routes!(system::status))
        .routes(routes!(system::get_config, system::put_config))
        .routes(routes!(records::list_collections))
        .routes(routes!(records::list_records, records::append_record))
        .routes(routes!(records::get_record, records::put_record, records::delete_record))
        .routes(routes!(records::incr_record))
        .routes(routes!(records::record_versions))
        .routes(routes!(records::get_schema, records::put_schema))
        .routes(routes!(records::list_conflicts))
        .routes(routes!(records::resolve_conflict))
        .routes(routes!(records::send_message))
        .routes(routes!(events::events))
        .routes(routes!(peers::list_peers, peers::add_peer))
        .routes(routes!(peers::remove_peer))
        .routes(routes!(peers::test_peer))
        .routes(routes!(peers::sync_reconnect))
        .routes(routes!(peers::sync_pause))
        .routes(routes!(peers::sync_resume))
        .routes(routes!(peers::sync_state))
        .routes(routes!(peers::create_invite))
        .routes(routes!(peers::list_members))
        .routes(routes!(peers::revoke_member))
        .routes(routes!(audit::audit_log))
}

/// The OpenAPI document of this API, as served at `/v1/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The HTTP application: every route, behind the security guard, with metrics.
pub fn router(state: ApiState) -> Router {
    let (routes, api) = api_routes().split_for_parts();
    let document = Arc::new(api.to_pretty_json().expect("the OpenAPI document serializes"));
    routes
        // Runs after routing, so it sees the matched route template and keeps label sets small.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .fallback(error::unknown_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::Extension(system::OpenApiDocument(document)))
        // Outermost: nothing, not even a 404, is answered to a foreign host or origin.
        .layer(axum::middleware::from_fn_with_state(state.clone(), security::guard))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then closes event streams and waits
/// for requests in flight. Connections are capped at [`CONNECTIONS_MAX`].
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.set_api_addr(listener.local_addr()?);
    let app = router(state.clone());
    let listener = CappedListener { inner: listener, permits: Arc::new(Semaphore::new(CONNECTIONS_MAX)) };
    let signal = async move {
        shutdown.await;
        state.close_streams();
    };
    axum::serve(listener, app).with_graceful_shutdown(signal).await
}

/// A listener that holds a permit per open connection.
struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        // Wait for a free slot before accepting, so excess clients queue in the kernel.
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Small request/response exchanges: waiting for Nagle would add tens of ms.
        let _ = stream.set_nodelay(true);
        (CappedStream { stream, _permit: permit }, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection and its permit, released when the connection closes.
struct CappedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for CappedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
