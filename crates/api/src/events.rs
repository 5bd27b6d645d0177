//! `GET /v1/events`: the node's events as JSON, over a WebSocket (on upgrade) or Server-Sent
//! Events (`Accept: text/event-stream`).
//!
//! Resuming without gaps or duplicates: a stream subscribes to the node's bus *before* it
//! replays the store from the client's cursor, so every change is either in the replay or
//! in the subscription (or both). Record events carry their cursor (the store's change number),
//! and the stream skips any whose cursor it has already passed. If the subscription lags, the
//! stream goes back to the store from the last cursor it delivered. Replay gives the latest
//! state of each record changed since the cursor (two changes to one record replay as one).
//! Conflict, message and peer events are not stored and are not replayed.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use meshsync_core::hlc::rfc3339_from_ms;
use meshsync_node::mesh::PeerEvent;
use meshsync_node::{Event, Message, Node, StoreEvent};
use meshsync_store::SCHEMAS_COLLECTION;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit};

use crate::docs::Errors;
use crate::extract::{blocking, number_param, query_pairs, single};
use crate::metrics::StreamGauge;
use crate::{ApiError, ApiState, EVENT_STREAMS_MAX};

/// Changes read from the store per replay step.
const REPLAY_PAGE: usize = 1000;
/// A WebSocket client that takes longer than this to accept one message is dropped.
const WS_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Pings keep idle WebSockets alive through proxies and detect dead clients.
const WS_PING_INTERVAL: Duration = Duration::from_secs(20);
/// SSE comments sent while idle, for the same reasons.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Largest message a client may send on the WebSocket (it has nothing to say; this bounds it).
const WS_INCOMING_BYTES_MAX: usize = 4096;

/// The JSON of a message, as sent and as received in the event stream.
pub(crate) fn message_json(message: &Message) -> Value {
    json!({
        "from": message.from.to_string(),
        "to": message.to.map(|d| d.to_string()),
        "type": message.kind,
        "data": message.data,
        "sent_at": rfc3339_from_ms(message.sent_ms),
    })
}

/// The JSON of a peer event: `peer.connected`, `peer.disconnected` or `sync.progress`.
fn peer_event_json(event: &PeerEvent) -> Value {
    match event {
        PeerEvent::Connected { device, name, addr } => {
            json!({"type": "peer.connected", "device_id": device.to_string(), "name": name, "addr": addr})
        }
        PeerEvent::Disconnected { device, reason } => {
            json!({"type": "peer.disconnected", "device_id": device.to_string(), "reason": reason})
        }
        PeerEvent::Progress { device, received, remaining, caught_up } => json!({
            "type": "sync.progress", "device_id": device.to_string(), "received": received,
            "remaining": remaining, "caught_up": caught_up,
        }),
    }
}

/// One event ready to send: its JSON text and, for record events, its cursor.
struct Out {
    json: String,
    cursor: Option<u64>,
}

/// Events for one client: replay from a cursor, then live, filtered by collection.
struct Feed {
    node: Node,
    live: broadcast::Receiver<Event>,
    /// The highest change number delivered (or skipped by the filter): the resume point.
    cursor: u64,
    replaying: bool,
    ready: VecDeque<Out>,
    collection: Option<String>,
    shutdown: watch::Receiver<bool>,
}

impl Feed {
    /// Turns an event into JSON, or `None` when the filter (or its being internal) hides it.
    fn render(&self, event: &Event) -> Option<Out> {
        let wanted = |collection: &str| self.collection.as_deref().is_none_or(|c| c == collection);
        let (json, cursor) = match event {
            Event::Store(StoreEvent::RecordChanged { lsn, collection, id, origin, local, deleted }) => {
                if collection == SCHEMAS_COLLECTION {
                    if !wanted(id) {
                        return None;
                    }
                    (json!({"type": "schema.changed", "cursor": lsn, "collection": id}), Some(*lsn))
                } else if collection.starts_with('_') || !wanted(collection) {
                    return None;
                } else {
                    let event = json!({
                        "type": "record.changed", "cursor": lsn, "collection": collection, "id": id,
                        "origin": origin.to_string(), "local": local, "deleted": deleted,
                    });
                    (event, Some(*lsn))
                }
            }
            Event::Store(StoreEvent::ConflictDetected { id, collection, record, field }) => {
                if !wanted(collection) {
                    return None;
                }
                let event = json!({"type": "conflict.detected", "id": id, "collection": collection, "record": record, "field": field});
                (event, None)
            }
            Event::Message(message) => (json!({"type": "message", "message": message_json(message)}), None),
            Event::Peer(event) => (peer_event_json(event), None),
        };
        Some(Out { json: json.to_string(), cursor })
    }

    /// The next event, or `None` when the stream ends (shutdown, or the store failed).
    /// Cancel-safe: dropping the future loses nothing, as state changes only after an await.
    async fn next(&mut self) -> Option<Out> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            if let Some(out) = self.ready.pop_front() {
                return Some(out);
            }
            if self.replaying {
                let node = self.node.clone();
                let after = self.cursor;
                let page = match blocking(move || Ok(node.events_since(after, REPLAY_PAGE)?)).await {
                    Ok(page) => page,
                    Err(e) => {
                        tracing::warn!(error = %e, "event replay failed; closing the stream");
                        return None;
                    }
                };
                if page.is_empty() {
                    self.replaying = false;
                }
                for event in page {
                    if let StoreEvent::RecordChanged { lsn, .. } = &event {
                        self.cursor = self.cursor.max(*lsn);
                    }
                    if let Some(out) = self.render(&Event::Store(event)) {
                        self.ready.push_back(out);
                    }
                }
                continue;
            }
            let received = tokio::select! {
                received = self.live.recv() => received,
                _ = self.shutdown.changed() => return None,
            };
            match received {
                Ok(event) => {
                    if let Event::Store(StoreEvent::RecordChanged { lsn, .. }) = &event {
                        if *lsn <= self.cursor {
                            // Already delivered by the replay.
                            continue;
                        }
                        self.cursor = *lsn;
                    }
                    if let Some(out) = self.render(&event) {
                        self.ready.push_back(out);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, cursor = self.cursor, "event stream lagged; replaying from the store");
                    self.replaying = true;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Stream the node's events.
///
/// Each event is a `StreamEvent` (see the schema). `record.changed` and
/// `schema.changed` events carry a `cursor`; reconnect with `?cursor=` (or SSE's
/// `Last-Event-ID`) to resume without missing a change. Other events (not replayed):
/// `conflict.detected`, `message`, and from the mesh `peer.connected`, `peer.disconnected`,
/// `sync.progress`. Open with a WebSocket upgrade, or with `Accept: text/event-stream` for
/// Server-Sent Events.
#[utoipa::path(
    get, path = "/v1/events", tag = "live",
    params(
        ("cursor" = Option<u64>, Query, description = "Replay changes after this cursor first"),
        ("collection" = Option<String>, Query, description = "Only events of this collection (messages and peer events always pass)"),
    ),
    responses(
        (status = 101, description = "WebSocket: one JSON `StreamEvent` per text message"),
        (status = 200, description = "Server-Sent Events: one JSON `StreamEvent` per `data:` line", content_type = "text/event-stream", body = String),
        (status = 406, description = "Neither a WebSocket upgrade nor Accept: text/event-stream (not_acceptable)", body = crate::docs::ErrorBody),
        (status = 429, description = "Too many open streams (too_many_streams)", body = crate::docs::ErrorBody),
        Errors
    )
)]
pub(crate) async fn events(State(state): State<ApiState>, request: Request) -> Result<Response, ApiError> {
    let (mut parts, _body) = request.into_parts();
    let pairs = query_pairs(&parts.uri, &["cursor", "collection"], &[])?;
    let mut cursor = number_param(&pairs, "cursor", 0..=i64::MAX as u64)?;
    let collection = single(&pairs, "collection")?.map(str::to_string);
    if let Some(collection) = &collection {
        meshsync_core::name::check_collection(collection).map_err(|e| ApiError::BadQuery(e.to_string()))?;
    }
    let websocket = is_websocket(&parts.headers);
    if !websocket && !accepts_event_stream(&parts.headers) {
        return Err(ApiError::NotAcceptable(
            "open this endpoint as a WebSocket, or send Accept: text/event-stream for Server-Sent Events".into(),
        ));
    }
    if cursor.is_none() && !websocket {
        // A browser's EventSource resumes by itself with the last `id:` it saw.
        if let Some(last) = parts.headers.get("last-event-id") {
            let text = last.to_str().unwrap_or_default();
            cursor = Some(text.trim().parse().map_err(|_| {
                ApiError::BadRequest(format!("Last-Event-ID {:?} is not a cursor", crate::extract::clip(text)))
            })?);
        }
    }
    let permit =
        state.shared.streams.clone().try_acquire_owned().map_err(|_| ApiError::TooManyStreams(EVENT_STREAMS_MAX))?;

    // Subscribe before reading the store's position: nothing committed in between is lost.
    let node = state.node().clone();
    let live = node.subscribe();
    let reader = node.clone();
    let last = blocking(move || reader.store().last_lsn().map_err(|e| crate::error::from_store(e, "", ""))).await?;
    let (start, replaying) = match cursor {
        Some(c) if c > last => {
            return Err(ApiError::Conflict {
                code: "cursor_ahead",
                message: format!("cursor {c} is ahead of this node's last change ({last}); resume without a cursor"),
            })
        }
        Some(c) => (c, true),
        None => (last, false),
    };
    let feed = Feed {
        node,
        live,
        cursor: start,
        replaying,
        ready: VecDeque::new(),
        collection,
        shutdown: state.shared.shutdown.subscribe(),
    };
    let gauge = state.shared.metrics.stream_opened();

    if websocket {
        let upgrade = WebSocketUpgrade::from_request_parts(&mut parts, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("WebSocket upgrade: {}", e.body_text())))?;
        let upgrade = upgrade.max_message_size(WS_INCOMING_BYTES_MAX).max_frame_size(WS_INCOMING_BYTES_MAX);
        return Ok(upgrade.on_upgrade(move |socket| run_websocket(socket, feed, permit, gauge)).into_response());
    }
    let stream = futures_util::stream::unfold((feed, permit, gauge), |(mut feed, permit, gauge)| async move {
        let out = feed.next().await?;
        let mut event = SseEvent::default().data(out.json);
        if let Some(cursor) = out.cursor {
            event = event.id(cursor.to_string());
        }
        Some((Ok::<_, Infallible>(event), (feed, permit, gauge)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE)).into_response())
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers.get(header::UPGRADE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("text/event-stream"))
}

async fn run_websocket(mut socket: WebSocket, mut feed: Feed, _permit: OwnedSemaphorePermit, _gauge: StreamGauge) {
    let mut ping = tokio::time::interval(WS_PING_INTERVAL);
    ping.tick().await;
    loop {
        tokio::select! {
            out = feed.next() => match out {
                Some(out) => {
                    if send(&mut socket, WsMessage::Text(out.json.into())).await.is_err() {
                        return;
                    }
                }
                None => {
                    let frame = CloseFrame { code: 1001, reason: "the node is shutting down".into() };
                    let _ = send(&mut socket, WsMessage::Close(Some(frame))).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return,
                // The client has nothing to say here; the library answers its pings.
                Some(Ok(_)) => {}
            },
            _ = ping.tick() => {
                if send(&mut socket, WsMessage::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn send(socket: &mut WebSocket, message: WsMessage) -> Result<(), ()> {
    match tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
