//! The API through a real socket: `serve` on 127.0.0.1:0, a real HTTP/1.1 client (hyper) and a
//! real WebSocket client (tokio-tungstenite). A WebSocket client that disconnects, misses writes,
//! and reconnects with its last cursor receives every change exactly once. Shutdown closes open
//! streams so the server stops.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use meshsync_api::ApiState;
use meshsync_node::config::Config;
use meshsync_node::Node;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "socket-test-token";

struct Server {
    _dir: tempfile::TempDir,
    node: Node,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(dir.path()).unwrap();
    // Port 0 in the settings, as with `--api 127.0.0.1:0`: `serve` learns the real port.
    let config = Config { api: "127.0.0.1:0".parse().unwrap(), ..Config::default() };
    let state = ApiState::new(node.clone(), config, None, TOKEN.into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(meshsync_api::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Server { _dir: dir, node, addr, stop: Some(stop), task }
}

/// One request on a fresh HTTP/1.1 connection.
async fn http(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut builder = Request::builder().method(method).uri(path);
    let host = addr.to_string();
    if !headers.iter().any(|(name, _)| *name == "host") {
        builder = builder.header("host", host.as_str());
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        Some(body) => {
            builder = builder.header("content-type", "application/json");
            Full::new(Bytes::from(body.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let response = sender.send_request(builder.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

const AUTH: (&str, &str) = ("authorization", "Bearer socket-test-token");

async fn websocket(
    addr: SocketAddr,
    query: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let url = format!("ws://{addr}/v1/events?token={TOKEN}{query}");
    let (socket, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    socket
}

/// The next text message as JSON (pings are answered by the library and skipped here).
async fn next_event(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream is open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_over_a_real_connection() {
    let server = start().await;
    let (status, doc) =
        http(server.addr, Method::PUT, "/v1/c/products/tea", &[AUTH], Some(json!({"name": "Tea", "stock": 3}))).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let (status, got) = http(server.addr, Method::GET, "/v1/c/products/tea", &[AUTH], None).await;
    assert_eq!((status, got), (StatusCode::OK, doc));
    let (status, body) = http(server.addr, Method::GET, "/v1/status", &[], None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (status, body) = http(server.addr, Method::GET, "/v1/status", &[AUTH, ("host", "evil.example:80")], None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden_host")));
    // The real port counts as our own origin even though the settings say port 0.
    let origin = format!("http://127.0.0.1:{}", server.addr.port());
    let (status, _) = http(server.addr, Method::GET, "/v1/status", &[AUTH, ("origin", origin.as_str())], None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = http(server.addr, Method::GET, "/", &[], None).await;
    assert_eq!((status, body), (StatusCode::OK, Value::Null), "the dashboard page is HTML");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_over_a_real_connection() {
    let server = start().await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("/v1/events?token={TOKEN}"))
        .header("host", server.addr.to_string())
        .header("accept", "text/event-stream")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = common::SseReader::new(response.into_body());
    http(server.addr, Method::PUT, "/v1/c/products/tea", &[AUTH], Some(json!({"name": "Tea"}))).await;
    let (id, event) = events.next().await.unwrap();
    assert_eq!((event["type"].as_str(), event["id"].as_str()), (Some("record.changed"), Some("tea")));
    assert_eq!(id, event["cursor"].as_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_resumes_from_its_cursor_and_misses_nothing() {
    let server = start().await;
    let mut socket = websocket(server.addr, "").await;
    let mut seen: Vec<(String, u64)> = Vec::new();

    for i in 0..20 {
        http(server.addr, Method::PUT, &format!("/v1/c/products/p{i:02}"), &[AUTH], Some(json!({"n": i}))).await;
    }
    while seen.len() < 20 {
        let event = next_event(&mut socket).await;
        assert_eq!(event["type"], "record.changed");
        seen.push((event["id"].as_str().unwrap().into(), event["cursor"].as_u64().unwrap()));
    }
    let cursor = seen.last().unwrap().1;
    socket.close(None).await.unwrap();
    drop(socket);

    // Writes while the client is away, including one to a record it has already seen.
    for i in 20..50 {
        server.node.put("products", &format!("p{i:02}"), json!({"n": i})).unwrap();
    }
    server.node.put("products", "p05", json!({"n": "again"})).unwrap();

    let mut socket = websocket(server.addr, &format!("&cursor={cursor}")).await;
    // Writes racing with the replay.
    let writer = {
        let node = server.node.clone();
        tokio::task::spawn_blocking(move || {
            for i in 50..80 {
                node.put("products", &format!("p{i:02}"), json!({"n": i})).unwrap();
            }
        })
    };
    let mut resumed = Vec::new();
    while resumed.len() < 61 {
        let event = next_event(&mut socket).await;
        resumed.push((event["id"].as_str().unwrap().to_string(), event["cursor"].as_u64().unwrap()));
    }
    writer.await.unwrap();
    let cursors: Vec<u64> = resumed.iter().map(|(_, c)| *c).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates: {cursors:?}");
    assert!(cursors[0] > cursor);
    let mut ids: Vec<&str> = resumed.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    let mut expected: Vec<String> = (20..80).map(|i| format!("p{i:02}")).collect();
    expected.push("p05".into());
    expected.sort();
    assert_eq!(ids, expected);
    // And then nothing more: no duplicate arrives late.
    let extra = tokio::time::timeout(Duration::from_millis(300), socket.next()).await;
    assert!(extra.is_err(), "unexpected {extra:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_a_foreign_origin_is_refused() {
    let server = start().await;
    let mut request = format!("ws://{}/v1/events?token={TOKEN}", server.addr).into_client_request().unwrap();
    request.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected a 403, got {other:?}"),
    }
    let request = format!("ws://{}/v1/events", server.addr).into_client_request().unwrap();
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams_and_stops_the_server() {
    let mut server = start().await;
    let mut socket = websocket(server.addr, "").await;
    server.stop.take().unwrap().send(()).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the stream closes on shutdown");
    assert_eq!(closed, Some(1001), "going away");
    drop(socket);
    tokio::time::timeout(Duration::from_secs(5), server.task).await.expect("the server stops").unwrap().unwrap();
}
