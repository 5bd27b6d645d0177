//! The HTTP face of the service: [`router`] (the one place routes are declared), the request
//! guard (client address, rate limit), the handlers, and [`ServiceError`], the one error type
//! and the one place it becomes a status code and `{"error":{"code","message"}}`. Bad input is
//! always a 4xx; no handler can fail with a 5xx.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::book::{BookError, Verified};
use crate::rate::Limited;
use crate::server::{Remote, Shared};
use crate::{Registration, RendezvousError, BODY_BYTES_MAX, PROTOCOL_VERSION};

/// How long a client may take to send a request body.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request failed. Each variant has a stable `code` that clients can match on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// The body is not well-formed JSON (400 `bad_json`).
    #[error("{0}")]
    BadJson(String),
    /// The body is JSON of the wrong shape (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// The query string cannot be used (400 `bad_query`).
    #[error("{0}")]
    BadQuery(String),
    /// The book refused a registration or a room (400, 409 or 429, see [`ServiceError::status_and_code`]).
    #[error(transparent)]
    Book(#[from] BookError),
    /// The body did not arrive in time (408 `timeout`).
    #[error("the body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs())]
    BodyTimeout,
    /// The body is larger than [`BODY_BYTES_MAX`] (413 `too_large`).
    #[error("the body is larger than {BODY_BYTES_MAX} bytes")]
    TooLarge,
    /// No route has this path (404 `unknown_route`).
    #[error("no such endpoint; this service has GET /health, POST /rooms, POST /discovery/register, GET /discovery/peers?room=")]
    UnknownRoute,
    /// The route exists, the method does not (405 `method_not_allowed`).
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// This client sends too many requests (429 `rate_limited`, with `Retry-After`).
    #[error("too many requests from this address; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// Too many clients are active at once (429 `busy`, with `Retry-After`).
    #[error("this service is serving too many clients at once; retry shortly")]
    Busy,
}

impl ServiceError {
    /// The status code and the stable error code.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ServiceError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            ServiceError::Book(e) => book_status_and_code(e),
            ServiceError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ServiceError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ServiceError::UnknownRoute => (StatusCode::NOT_FOUND, "unknown_route"),
            ServiceError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ServiceError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ServiceError::Busy => (StatusCode::TOO_MANY_REQUESTS, "busy"),
        }
    }
}

fn book_status_and_code(e: &BookError) -> (StatusCode, &'static str) {
    let bad = StatusCode::BAD_REQUEST;
    match e {
        BookError::Invalid(invalid) => match invalid {
            RendezvousError::UnsupportedVersion(_) => (bad, "unsupported_version"),
            RendezvousError::BadRoom { .. } => (bad, "bad_room"),
            RendezvousError::BadDeviceId { .. } => (bad, "bad_device_id"),
            RendezvousError::BadPublicKey => (bad, "bad_public_key"),
            RendezvousError::DeviceIdMismatch => (bad, "device_id_mismatch"),
            RendezvousError::BadSignatureEncoding | RendezvousError::BadSignature => (bad, "bad_signature"),
            RendezvousError::TooManyAddrs { .. } => (bad, "too_many_addrs"),
            RendezvousError::BadAddr { .. } => (bad, "bad_addr"),
            _ => (bad, "bad_request"),
        },
        BookError::Stale { .. } => (bad, "stale"),
        BookError::TtlTooLong { .. } => (bad, "bad_ttl"),
        BookError::Expired { .. } => (bad, "expired"),
        BookError::Replay { .. } => (StatusCode::CONFLICT, "replay"),
        BookError::RoomFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "room_full"),
        BookError::RoomsFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "rooms_full"),
        BookError::RegistrationsFull { .. } => (StatusCode::TOO_MANY_REQUESTS, "full"),
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = serde_json::json!({"v": PROTOCOL_VERSION, "error": {"code": code, "message": self.to_string()}});
        let mut response = (status, Json(body)).into_response();
        let retry_after_s = match self {
            ServiceError::RateLimited { retry_after_s } => Some(retry_after_s),
            ServiceError::Busy => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after_s {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The address a request is from, as the rate limit and `observed` see it.
#[derive(Debug, Clone, Copy)]
struct ClientIp(IpAddr);

/// The service's routes behind the guard.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/rooms", post(create_room))
        .route("/discovery/register", post(register))
        .route("/discovery/peers", get(peers))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost: every request, even a 404, costs a token.
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Finds the client's address and takes a token from its bucket.
async fn guard(State(shared): State<Arc<Shared>>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<Remote>>().map(|info| info.0 .0.ip());
    let forwarded = if shared.options.trust_forwarded_for { forwarded_for(request.headers()) } else { None };
    // Without connection info (the router used without a socket) every request is one client.
    let ip = forwarded.or(peer).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let now_ms = shared.options.clock.now_ms();
    let checked = shared.limiter.lock().expect("lock poisoned").check(now_ms, ip);
    match checked {
        Ok(()) => {}
        Err(Limited::Client { retry_after_s }) => return ServiceError::RateLimited { retry_after_s }.into_response(),
        Err(Limited::Busy) => return ServiceError::Busy.into_response(),
    }
    request.extensions_mut().insert(ClientIp(ip));
    next.run(request).await
}

/// The client address a reverse proxy appended last to `X-Forwarded-For` (earlier entries are
/// whatever the client claimed, and are not trusted).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?.to_str().ok()?;
    let entry = last.rsplit(',').next()?.trim();
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
}

#[derive(Serialize)]
struct HealthResponse {
    status: &'static str,
    v: u32,
    version: &'static str,
    rooms: usize,
    registrations: usize,
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<HealthResponse> {
    let now_ms = shared.options.clock.now_ms();
    let mut book = shared.book.lock().expect("lock poisoned");
    book.sweep_if_due(now_ms);
    Json(HealthResponse {
        status: "ok",
        v: PROTOCOL_VERSION,
        version: env!("CARGO_PKG_VERSION"),
        rooms: book.rooms(),
        registrations: book.registrations(),
    })
}

/// The body of `POST /rooms`; its optional `"v"` is checked before.
#[derive(Deserialize)]
struct RoomRequest {
    room: String,
}

#[derive(Serialize)]
struct RoomResponse {
    v: u32,
    room: String,
    created: bool,
}

async fn create_room(
    State(shared): State<Arc<Shared>>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<RoomResponse>), ServiceError> {
    check_version(body.get("v"), false)?;
    let request: RoomRequest = from_value(body)?;
    let now_ms = shared.options.clock.now_ms();
    let created = shared.book.lock().expect("lock poisoned").create_room(now_ms, &request.room)?;
    if created {
        shared.changed();
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(RoomResponse { v: PROTOCOL_VERSION, room: request.room, created })))
}

#[derive(Serialize)]
struct RegisterResponse {
    v: u32,
    expires_at_ms: u64,
    observed: String,
}

async fn register(
    State(shared): State<Arc<Shared>>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    JsonBody(body): JsonBody,
) -> Result<Json<RegisterResponse>, ServiceError> {
    check_version(body.get("v"), true)?;
    let registration: Registration = from_value(body)?;
    let (room, device) = (registration.room.clone(), registration.device_id.clone());
    let verified = Verified::new(registration).map_err(BookError::from)?;
    let now_ms = shared.options.clock.now_ms();
    let observed = ip.to_string();
    let expires_at_ms =
        shared.book.lock().expect("lock poisoned").register(now_ms, verified, Some(observed.clone()))?;
    shared.changed();
    tracing::debug!(room = %&room[..8], device, %observed, expires_at_ms, "registered");
    Ok(Json(RegisterResponse { v: PROTOCOL_VERSION, expires_at_ms, observed }))
}

/// One entry of `GET /discovery/peers`: the registration as signed (without its room, which the
/// client asked for and must check the signature against), when it expires, and where from.
#[derive(Serialize)]
struct PeerEntry {
    device_id: String,
    public_key: String,
    addrs: Vec<String>,
    ttl_s: u64,
    issued_at_ms: u64,
    signature: String,
    expires_at_ms: u64,
    observed: Option<String>,
}

#[derive(Serialize)]
struct PeersResponse {
    v: u32,
    room: String,
    peers: Vec<PeerEntry>,
}

async fn peers(State(shared): State<Arc<Shared>>, uri: Uri) -> Result<Json<PeersResponse>, ServiceError> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map_err(|e| ServiceError::BadQuery(format!("cannot decode the query string: {}", e.body_text())))?
        .0;
    let mut rooms = pairs.into_iter().filter(|(key, _)| key == "room").map(|(_, value)| value);
    let (Some(room), None) = (rooms.next(), rooms.next()) else {
        return Err(ServiceError::BadQuery("give exactly one room: /discovery/peers?room=<64 hex>".into()));
    };
    let now_ms = shared.options.clock.now_ms();
    let entries = shared.book.lock().expect("lock poisoned").peers(now_ms, &room)?;
    let peers = entries
        .into_iter()
        .map(|entry| {
            let r = entry.registration;
            PeerEntry {
                device_id: r.device_id,
                public_key: r.public_key,
                addrs: r.addrs,
                ttl_s: r.ttl_s,
                issued_at_ms: r.issued_at_ms,
                signature: r.signature,
                expires_at_ms: entry.expires_at_ms,
                observed: entry.observed,
            }
        })
        .collect();
    Ok(Json(PeersResponse { v: PROTOCOL_VERSION, room, peers }))
}

async fn unknown_route() -> ServiceError {
    ServiceError::UnknownRoute
}

async fn method_not_allowed() -> ServiceError {
    ServiceError::MethodNotAllowed
}

/// `"v"` must be this protocol's version; `required` says whether it may be absent.
fn check_version(v: Option<&Value>, required: bool) -> Result<(), ServiceError> {
    match v {
        None if !required => Ok(()),
        None => Err(ServiceError::BadRequest(format!("the body needs \"v\": {PROTOCOL_VERSION}"))),
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => Ok(()),
        Some(v) => match v.as_u64() {
            Some(v) => {
                let v = u32::try_from(v).unwrap_or(u32::MAX);
                Err(BookError::Invalid(RendezvousError::UnsupportedVersion(v)).into())
            }
            None => Err(ServiceError::BadRequest(format!("\"v\" must be the number {PROTOCOL_VERSION}"))),
        },
    }
}

fn from_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ServiceError> {
    serde_json::from_value(value).map_err(|e| ServiceError::BadRequest(format!("the body does not fit: {e}")))
}

/// A JSON body of at most [`BODY_BYTES_MAX`] bytes, read within [`BODY_READ_TIMEOUT`]. Any
/// content type is accepted: the service has no cookies, so there is no cross-site form to fear,
/// and `curl -d` works as it is.
struct JsonBody(Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ServiceError;

    async fn from_request(request: Request, _state: &S) -> Result<JsonBody, ServiceError> {
        let (parts, body) = request.into_parts();
        let declared =
            parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > BODY_BYTES_MAX as u64) {
            return Err(ServiceError::TooLarge);
        }
        let bytes =
            tokio::time::timeout(BODY_READ_TIMEOUT, read_body(body)).await.map_err(|_| ServiceError::BodyTimeout)??;
        if bytes.is_empty() {
            return Err(ServiceError::BadJson("this request needs a JSON body".into()));
        }
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| ServiceError::BadJson(format!("malformed JSON: {e}")))
    }
}

/// Reads the body, refusing it as soon as it passes the limit.
async fn read_body(body: Body) -> Result<Vec<u8>, ServiceError> {
    let mut bytes = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ServiceError::BadJson(format!("cannot read the body: {e}")))?;
        if let Ok(chunk) = frame.into_data() {
            if bytes.len() + chunk.len() > BODY_BYTES_MAX {
                return Err(ServiceError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_appended_address_is_the_last_one() {
        let mut headers = HeaderMap::new();
        headers.append("x-forwarded-for", HeaderValue::from_static("203.0.113.1, 198.51.100.7"));
        assert_eq!(forwarded_for(&headers), Some("198.51.100.7".parse().unwrap()));
        headers.append("x-forwarded-for", HeaderValue::from_static("[2001:db8::1]:4711"));
        assert_eq!(forwarded_for(&headers), Some("2001:db8::1".parse().unwrap()));
        headers.insert("x-forwarded-for", HeaderValue::from_static("junk"));
        assert_eq!(forwarded_for(&headers), None);
    }

    #[test]
    fn every_refusal_is_a_4xx() {
        let errors = [
            ServiceError::BadJson(String::new()),
            ServiceError::Book(BookError::Replay { stored_ms: 1, issued_ms: 1 }),
            ServiceError::Book(BookError::RegistrationsFull { max: 1 }),
            ServiceError::Book(BookError::Invalid(RendezvousError::BadSignature)),
            ServiceError::Busy,
        ];
        for error in errors {
            assert!(error.status_and_code().0.is_client_error(), "{error:?}");
        }
    }
}
