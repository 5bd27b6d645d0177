//! Calling an axum router in process, without a socket, on one current-thread runtime per
//! process, and the contract every answer must keep: never a 5xx, and a body that is JSON.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Largest answer read back; answers to fuzzed requests are small.
const ANSWER_BYTES_MAX: usize = 1 << 20;

/// A runtime for the process: one thread, reused by every input.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
}

/// Sends `request` through `app`; returns the status and the body parsed as JSON (`None` if
/// empty). Panics (a finding) on a 5xx, on a body that is not JSON, and on a failure to answer.
pub fn call(
    runtime: &tokio::runtime::Runtime,
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, Option<serde_json::Value>) {
    let what = format!("{} {}", request.method(), request.uri());
    runtime.block_on(async {
        let response = app.clone().oneshot(request).await.expect("the router always answers");
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX);
        let bytes = body.collect().await.expect("the answer is read back").to_bytes();
        assert!(
            !status.is_server_error(),
            "{what} answered {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(2000)])
        );
        if bytes.is_empty() {
            return (status, None);
        }
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!("{what} answered {status} with a body that is not JSON ({e}): {:?}", String::from_utf8_lossy(&bytes))
        });
        (status, Some(json))
    })
}
