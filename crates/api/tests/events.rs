//! The event stream through the router, as Server-Sent Events: replay from a cursor then live,
//! no gaps and no duplicates across the switch, catching up from the store after a lag, the
//! collection filter, `Last-Event-ID`, and the limits. The WebSocket form is in `socket.rs`.

mod common;

use axum::http::{header, Method, StatusCode};
use common::{error_code, make_conflict, open_sse, Fixture};
use meshsync_store::LocalWrite;
use serde_json::json;

fn put(fx: &Fixture, collection: &str, id: &str) -> u64 {
    fx.node.put(collection, id, json!({"n": id})).unwrap().lsn
}

#[tokio::test]
async fn replays_from_a_cursor_then_continues_live() {
    let fx = Fixture::new();
    let first = put(&fx, "products", "a");
    put(&fx, "products", "b");
    put(&fx, "products", "c");
    // `a` changes again: the replay gives its latest change once.
    let last = put(&fx, "products", "a");

    let mut events = open_sse(&fx, &format!("?cursor={first}")).await;
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let (id, event) = events.next().await.unwrap();
        assert_eq!(event["type"], "record.changed");
        assert_eq!(id, event["cursor"].as_u64(), "the SSE id is the cursor");
        assert_eq!(event["origin"], fx.node.device_id().to_string());
        assert_eq!(event["local"], true);
        replayed.push((event["id"].as_str().unwrap().to_string(), event["cursor"].as_u64().unwrap()));
    }
    assert_eq!(replayed.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>(), ["b", "c", "a"]);
    assert_eq!(replayed[2].1, last);
    assert!(events.quiet_for(200).await, "nothing more than the replay");

    let live = put(&fx, "products", "d");
    let (_, event) = events.next().await.unwrap();
    assert_eq!((event["id"].as_str(), event["cursor"].as_u64()), (Some("d"), Some(live)));
    fx.node.delete("products", "d").unwrap();
    let (_, event) = events.next().await.unwrap();
    assert_eq!((event["id"].as_str(), event["deleted"].as_bool()), (Some("d"), Some(true)));
}

#[tokio::test]
async fn without_a_cursor_only_new_events_arrive() {
    let fx = Fixture::new();
    put(&fx, "products", "old");
    let mut events = open_sse(&fx, "").await;
    assert!(events.quiet_for(200).await);
    put(&fx, "products", "new");
    assert_eq!(events.next().await.unwrap().1["id"], "new");
}

#[tokio::test]
async fn messages_conflicts_and_schemas_are_events() {
    let fx = Fixture::new();
    let mut events = open_sse(&fx, "").await;
    let (status, _) = fx.call(Method::POST, "/v1/messages", Some(json!({"type": "print", "data": [1]}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (id, event) = events.next().await.unwrap();
    assert_eq!(id, None, "messages are not replayable and carry no cursor");
    assert_eq!(event["type"], "message");
    assert_eq!(event["message"]["type"], "print");
    assert_eq!(event["message"]["data"], json!([1]));
    assert_eq!(event["message"]["from"], fx.node.device_id().to_string());

    fx.call(Method::PUT, "/v1/schema/products", Some(json!({"fields": {"stock": "counter"}}))).await;
    let (_, event) = events.next().await.unwrap();
    assert_eq!((event["type"].as_str(), event["collection"].as_str()), (Some("schema.changed"), Some("products")));

    let _other = make_conflict(&fx);
    let mut types = Vec::new();
    while types.len() < 3 {
        let (_, event) = events.next().await.unwrap();
        types.push(event["type"].as_str().unwrap().to_string());
        if event["type"] == "conflict.detected" {
            assert_eq!(
                (event["collection"].as_str(), event["record"].as_str(), event["field"].as_str()),
                (Some("products"), Some("tea"), Some("name"))
            );
            assert_eq!(event["id"].as_str().unwrap(), fx.node.conflicts(1).unwrap()[0].id);
        }
    }
    types.sort();
    assert_eq!(types, ["conflict.detected", "record.changed", "record.changed"], "local write, remote write, conflict");
}

#[tokio::test]
async fn the_collection_filter_keeps_one_collection() {
    let fx = Fixture::new();
    let mut events = open_sse(&fx, "?collection=sales").await;
    put(&fx, "products", "tea");
    put(&fx, "sales", "s1");
    let (_, event) = events.next().await.unwrap();
    assert_eq!((event["collection"].as_str(), event["id"].as_str()), (Some("sales"), Some("s1")));
    assert!(events.quiet_for(200).await);
}

#[tokio::test]
async fn a_lagging_stream_catches_up_from_the_store_without_gaps_or_duplicates() {
    let fx = Fixture::new();
    let mut events = open_sse(&fx, "").await;
    // One transaction of more changes than the bus buffers: the subscriber lags for certain.
    let count = meshsync_node::EVENT_BUFFER + 1000;
    let writes = (0..count)
        .map(|i| LocalWrite {
            collection: "products".into(),
            id: format!("p{i:05}"),
            op: meshsync_core::Op::Put { fields: vec![("n".into(), meshsync_node::Value::Int(i as i64))], scope: None },
        })
        .collect();
    fx.node.store().write_batch(writes).unwrap();
    let after = put(&fx, "products", "after");

    let mut seen = Vec::new();
    let mut last_cursor = 0;
    while seen.len() < count + 1 {
        let (_, event) = events.next().await.unwrap();
        let cursor = event["cursor"].as_u64().unwrap();
        assert!(cursor > last_cursor, "cursors only grow: {cursor} after {last_cursor}");
        last_cursor = cursor;
        seen.push(event["id"].as_str().unwrap().to_string());
    }
    let mut expected: Vec<String> = (0..count).map(|i| format!("p{i:05}")).collect();
    expected.push("after".into());
    assert_eq!(seen, expected);
    assert_eq!(last_cursor, after);
    assert!(events.quiet_for(300).await, "no duplicates after catching up");
}

#[tokio::test]
async fn last_event_id_resumes_an_event_source() {
    let fx = Fixture::new();
    let first = put(&fx, "products", "a");
    put(&fx, "products", "b");
    let mut request = Fixture::request(Method::GET, "/v1/events", None);
    request.headers_mut().insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    request.headers_mut().insert("last-event-id", first.to_string().parse().unwrap());
    let response = {
        use tower::ServiceExt;
        fx.app.clone().oneshot(request).await.unwrap()
    };
    let mut events = common::SseReader::new(response.into_body());
    assert_eq!(events.next().await.unwrap().1["id"], "b");
}

#[tokio::test]
async fn a_cursor_ahead_of_the_node_is_refused() {
    let fx = Fixture::new();
    let last = put(&fx, "products", "a");
    let mut request = Fixture::request(Method::GET, &format!("/v1/events?cursor={}", last + 1), None);
    request.headers_mut().insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    let (status, body) = fx.send(request).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "cursor_ahead");
}

#[tokio::test]
async fn open_streams_are_capped_and_counted() {
    let fx = Fixture::new();
    let mut open = Vec::new();
    for _ in 0..meshsync_api::EVENT_STREAMS_MAX {
        open.push(open_sse(&fx, "").await);
    }
    let mut request = Fixture::request(Method::GET, "/v1/events", None);
    request.headers_mut().insert(header::ACCEPT, "text/event-stream".parse().unwrap());
    let (status, body) = fx.send(request).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), "too_many_streams");

    let metrics = |fx: &Fixture| {
        let fx_app = fx.app.clone();
        async move {
            use http_body_util::BodyExt;
            use tower::ServiceExt;
            let response = fx_app.oneshot(Fixture::request(Method::GET, "/metrics", None)).await.unwrap();
            String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
        }
    };
    let text = metrics(&fx).await;
    assert!(text.contains(&format!("meshsync_event_subscribers {}", meshsync_api::EVENT_STREAMS_MAX)), "{text}");
    open.truncate(10);
    assert!(metrics(&fx).await.contains("meshsync_event_subscribers 10"));
    // A closed stream frees its slot.
    open_sse(&fx, "").await;
}
