//! Shared helpers for the rendezvous tests: start the real server on `127.0.0.1:0`, stop it
//! cleanly, send raw HTTP requests, make signed registrations.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use meshsync_net::Identity;
use meshsync_rendezvous::{room_id, serve, Clock, Registration, ServerOptions};
use serde_json::Value;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Stops the server and waits until it has shut down (and saved its snapshot).
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.expect("the server task").expect("the server stops cleanly");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Starts the server with `options` on a free loopback port.
pub async fn start(options: ServerOptions) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, options, async move {
        let _ = stopped.await;
    }));
    Server { addr, url: format!("http://{addr}"), stop: Some(stop), task: Some(task) }
}

/// Options with a manual clock at the real time, and its handle.
pub fn manual_options() -> (ServerOptions, Arc<AtomicU64>) {
    let (clock, handle) = Clock::manual(Clock::System.now_ms());
    (ServerOptions { clock, ..ServerOptions::default() }, handle)
}

/// Moves a manual clock forward.
pub fn advance(clock: &AtomicU64, ms: u64) {
    clock.fetch_add(ms, Ordering::Relaxed);
}

/// The time on the system clock.
pub fn now_ms() -> u64 {
    Clock::System.now_ms()
}

/// A device identity, the same for the same `n`.
pub fn device(n: u8) -> Identity {
    Identity::from_seed(&[n; 32]).unwrap()
}

/// A room id for a test.
pub fn room(name: &str) -> String {
    room_id(name.as_bytes())
}

/// A registration of device `n` in `room` issued at `at`.
pub fn signed(n: u8, room: &str, ttl_s: u64, at: u64) -> Registration {
    Registration::sign(&device(n), room, vec![format!("10.0.0.{n}:7710"), format!("[fd00::{n}]:7710")], ttl_s, at)
}

/// A response: status, headers, body as JSON (`Value::Null` if it is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The stable error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {}", self.body))
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn request(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut builder = Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = sender.send_request(builder.body(Full::new(Bytes::copy_from_slice(body))).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer { status, headers, body }
}

/// `GET path`.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    request(addr, Method::GET, path, &[], b"").await
}

/// `POST path` with a JSON body.
pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Answer {
    let bytes = serde_json::to_vec(body).unwrap();
    request(addr, Method::POST, path, &[("content-type", "application/json")], &bytes).await
}

/// `POST /discovery/register`.
pub async fn register(addr: SocketAddr, registration: &Registration) -> Answer {
    post(addr, "/discovery/register", &serde_json::to_value(registration).unwrap()).await
}

/// The device ids listed in `room`, as the server sends them.
pub async fn listed(addr: SocketAddr, room: &str) -> Vec<String> {
    let answer = get(addr, &format!("/discovery/peers?room={room}")).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    answer.body["peers"].as_array().unwrap().iter().map(|p| p["device_id"].as_str().unwrap().to_string()).collect()
}
