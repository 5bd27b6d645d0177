//! The API's one error type and the one place it becomes a response: a status code and
//! `{"error":{"code":"..","message":".."}}`. Bad input is always a 4xx; a 5xx means the node
//! itself failed (storage), never the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meshsync_node::NodeError;
use meshsync_store::StoreError;

/// Why a request failed. Each variant has a stable `code` that clients can match on.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not well-formed JSON (400 `bad_json`).
    #[error("{0}")]
    BadJson(String),
    /// The query string cannot be used (400 `bad_query`).
    #[error("{0}")]
    BadQuery(String),
    /// The request cannot be used as sent (400 `bad_request`).
    #[error("{0}")]
    BadRequest(String),
    /// A path segment cannot be decoded (400 `bad_path`).
    #[error("{0}")]
    BadPath(String),
    /// No or a wrong bearer token (401 `unauthorized`).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The `Host` header names a host this API does not answer to (403 `forbidden_host`).
    #[error("host {0:?} is not allowed; use localhost or 127.0.0.1, or add it to api_allowed_hosts")]
    ForbiddenHost(String),
    /// The request comes from a web page of another origin (403 `forbidden_origin`).
    #[error("origin {0:?} is not allowed; add it to api_allowed_origins to let that page use the API")]
    ForbiddenOrigin(String),
    /// This device's role or scopes do not allow it (403 `forbidden`).
    #[error("{0}")]
    Forbidden(String),
    /// The thing named does not exist (404 `not_found`).
    #[error("{0}")]
    NotFound(String),
    /// No route has this path (404 `unknown_route`).
    #[error("no such endpoint; see /v1/openapi.json")]
    UnknownRoute,
    /// The route exists, the method does not (405 `method_not_allowed`).
    #[error("method not allowed on this endpoint; see /v1/openapi.json")]
    MethodNotAllowed,
    /// The client asked for a representation we do not produce (406 `not_acceptable`).
    #[error("{0}")]
    NotAcceptable(String),
    /// The merge rules refuse the write (409 `rejected`).
    #[error("{0}")]
    Rejected(String),
    /// The request conflicts with the node's state (409, with its own code).
    #[error("{message}")]
    Conflict {
        /// Stable code, e.g. `sync_unavailable`.
        code: &'static str,
        /// What happened and what to do.
        message: String,
    },
    /// The body is larger than `api_body_bytes_max` (413 `too_large`).
    #[error("the body is larger than {limit} bytes (api_body_bytes_max)")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The body is not JSON (415 `unsupported_media_type`).
    #[error("send the body as JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    /// Well-formed but invalid input: a bad name, type, value or setting (422 `invalid`).
    #[error("{0}")]
    Invalid(String),
    /// Too many event streams are open (429 `too_many_streams`).
    #[error("at most {0} event streams may be open at once")]
    TooManyStreams(usize),
    /// The node failed (500 `internal`). Logged.
    #[error("{0}")]
    Internal(String),
    /// The node is shutting down (503 `unavailable`).
    #[error("the node is shutting down")]
    Unavailable,
}

impl ApiError {
    /// The status code and the stable error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadJson(_) => (StatusCode::BAD_REQUEST, "bad_json"),
            ApiError::BadQuery(_) => (StatusCode::BAD_REQUEST, "bad_query"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_path"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::ForbiddenHost(_) => (StatusCode::FORBIDDEN, "forbidden_host"),
            ApiError::ForbiddenOrigin(_) => (StatusCode::FORBIDDEN, "forbidden_origin"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::UnknownRoute => (StatusCode::NOT_FOUND, "unknown_route"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotAcceptable(_) => (StatusCode::NOT_ACCEPTABLE, "not_acceptable"),
            ApiError::Rejected(_) => (StatusCode::CONFLICT, "rejected"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            ApiError::TooManyStreams(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        }
        let body = serde_json::json!({"error": {"code": code, "message": self.to_string()}});
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> ApiError {
        match e {
            NodeError::Invalid(message) => ApiError::Invalid(message),
            e @ NodeError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            NodeError::Rejected(message) => ApiError::Rejected(message),
            e @ NodeError::UnknownConflict(_) => ApiError::NotFound(e.to_string()),
            e @ (NodeError::DataDir { .. } | NodeError::Storage(_) | NodeError::Network(_)) => {
                ApiError::Internal(e.to_string())
            }
            NodeError::Unavailable(message) => ApiError::Conflict { code: "sync_unavailable", message },
            NodeError::Forbidden(message) => ApiError::Forbidden(message),
        }
    }
}

/// Maps a store error from a write on `collection/id` the way [`meshsync_node::Node`] does, with
/// a closed store reported as the node shutting down.
pub(crate) fn from_store(e: StoreError, collection: &str, id: &str) -> ApiError {
    match e {
        StoreError::Closed => ApiError::Unavailable,
        e => match NodeError::from(e) {
            NodeError::NotFound { .. } => NodeError::NotFound { collection: collection.into(), id: id.into() }.into(),
            other => other.into(),
        },
    }
}

/// The fallback for paths no route matches.
pub(crate) async fn unknown_route() -> ApiError {
    ApiError::UnknownRoute
}

/// The fallback for a known path with a method it does not have.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
