//! Every endpoint of the contract through the router (no socket), against a real node on a
//! temporary data dir: the shapes of DESIGN.md section 6 and what each call does to the node.

mod common;

use axum::http::{Method, StatusCode};
use common::{error_code, make_conflict, Fixture};
use serde_json::{json, Value};

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn records_put_get_delete_with_the_document_shape() {
    let fx = Fixture::new();
    let (status, doc) = fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"name": "Tea", "price": 2.5}))).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        keys(&doc),
        ["collection", "conflicts", "cursor", "deleted", "fields", "id", "scope", "updated_at"],
        "the record document of the contract"
    );
    assert_eq!(doc["collection"], "products");
    assert_eq!(doc["id"], "tea");
    assert_eq!(doc["fields"], json!({"name": "Tea", "price": 2.5}));
    assert_eq!(doc["scope"], Value::Null);
    assert_eq!(doc["deleted"], false);
    assert_eq!(doc["conflicts"], 0);
    assert!(doc["updated_at"].as_str().unwrap().contains('T'));
    let first_cursor = doc["cursor"].as_u64().unwrap();

    // A partial update keeps the other fields; `_scope` sets the scope.
    let (status, doc) = fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"price": 3, "_scope": "shop:1"}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["fields"], json!({"name": "Tea", "price": 3}));
    assert_eq!(doc["scope"], "shop:1");
    assert!(doc["cursor"].as_u64().unwrap() > first_cursor);

    let (status, got) = fx.get("/v1/c/products/tea").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, doc);

    // Ids may hold characters that need escaping in a path.
    let (status, doc) = fx.call(Method::PUT, "/v1/c/products/a%20b%2Fc%C3%A9", Some(json!({"x": 1}))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["id"], "a b/cé");
    assert_eq!(fx.get("/v1/c/products/a%20b%2Fc%C3%A9").await.1["fields"], json!({"x": 1}));

    let (status, doc) = fx.call(Method::DELETE, "/v1/c/products/tea", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["deleted"], true);
    let (status, body) = fx.get("/v1/c/products/tea").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    assert_eq!(fx.node.get("products", "tea").unwrap(), None);
}

#[tokio::test]
async fn list_pages_with_cursors_and_filters() {
    let fx = Fixture::new();
    for i in 0..25 {
        let kind = if i % 2 == 0 { "tea" } else { "coffee" };
        let fields = json!({"kind": kind, "n": i, "code": i.to_string(), "hot": i % 3 == 0});
        fx.node.put("products", &format!("p{i:02}"), fields).unwrap();
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/c/products?limit=4&where.kind=tea".to_string();
    loop {
        let (status, page) = fx.get(&uri).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(keys(&page), ["next", "records"]);
        let records = page["records"].as_array().unwrap();
        assert!(records.len() <= 4);
        seen.extend(records.iter().map(|r| r["id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => uri = format!("/v1/c/products?limit=4&where.kind=tea&cursor={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).filter(|i| i % 2 == 0).map(|i| format!("p{i:02}")).collect();
    assert_eq!(seen, expected);

    let ids = |page: &Value| -> Vec<String> {
        page["records"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    // VALUE is JSON when it parses: a number, a boolean, a quoted string; else a string.
    assert_eq!(ids(&fx.get("/v1/c/products?where.n=7").await.1), ["p07"]);
    assert_eq!(ids(&fx.get("/v1/c/products?where.code=7").await.1), Vec::<String>::new());
    assert_eq!(ids(&fx.get("/v1/c/products?where.code=%227%22").await.1), ["p07"]);
    assert_eq!(
        ids(&fx.get("/v1/c/products?where.hot=true&where.kind=coffee&limit=100").await.1),
        ["p03", "p09", "p15", "p21"]
    );
    assert_eq!(fx.get("/v1/c/products").await.1["records"].as_array().unwrap().len(), 25);
    // An unknown collection is an empty list, not an error.
    assert_eq!(fx.get("/v1/c/nothing-here").await.1, json!({"records": [], "next": null}));
}

#[tokio::test]
async fn incr_and_schemas() {
    let fx = Fixture::new();
    let (status, schema) = fx.get("/v1/schema/products").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        schema,
        json!({"collection": "products", "fields": {}, "default": "lww", "append_only": false, "declared": false})
    );

    let body = json!({"fields": {"parent": "fww", "stock": "counter"}, "default": "lww", "append_only": false});
    let (status, schema) = fx.call(Method::PUT, "/v1/schema/products", Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{schema}");
    assert_eq!(schema["fields"], json!({"parent": "fww", "stock": "counter"}));
    assert_eq!(schema["declared"], true);
    assert_eq!(fx.get("/v1/schema/products").await.1, schema);

    let (status, doc) =
        fx.call(Method::POST, "/v1/c/products/tea/incr", Some(json!({"field": "stock", "by": 12}))).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["fields"]["stock"], 12);
    let (_, doc) = fx.call(Method::POST, "/v1/c/products/tea/incr", Some(json!({"field": "stock", "by": -2}))).await;
    assert_eq!(doc["fields"]["stock"], 10);
    let (_, doc) = fx.call(Method::POST, "/v1/c/products/tea/incr", Some(json!({"field": "stock", "by": 0.5}))).await;
    assert_eq!(doc["fields"]["stock"], 10.5);

    // fww: a set field cannot be overwritten; that is a 409 from the merge rules.
    fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"parent": "box-1"}))).await;
    let (status, body) = fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"parent": "box-2"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "rejected");
    // Incrementing a field that is not a counter says how to fix it.
    let (status, body) =
        fx.call(Method::POST, "/v1/c/products/tea/incr", Some(json!({"field": "name", "by": 1}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["error"]["message"].as_str().unwrap().contains("counter"), "{body}");
}

#[tokio::test]
async fn append_generates_ids_and_retries_are_harmless() {
    let fx = Fixture::new();
    fx.call(Method::PUT, "/v1/schema/sales", Some(json!({"append_only": true}))).await;
    let (status, doc) = fx.call(Method::POST, "/v1/c/sales", Some(json!({"total": 12.5, "till": 1}))).await;
    assert_eq!(status, StatusCode::CREATED, "{doc}");
    assert!(!doc["id"].as_str().unwrap().is_empty());
    assert_eq!(doc["fields"], json!({"total": 12.5, "till": 1}));

    let event = json!({"_id": "sale-7", "_scope": "shop:1", "total": 3});
    let (status, doc) = fx.call(Method::POST, "/v1/c/sales", Some(event.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(doc["id"], "sale-7");
    assert_eq!(doc["scope"], "shop:1");
    let (status, again) = fx.call(Method::POST, "/v1/c/sales", Some(event)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again["cursor"], doc["cursor"], "an identical retry writes nothing");
    let (status, body) = fx.call(Method::POST, "/v1/c/sales", Some(json!({"_id": "sale-7", "total": 4}))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "rejected");
    assert_eq!(fx.get("/v1/c/sales").await.1["records"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn conflicts_list_and_resolve() {
    let fx = Fixture::new();
    let _other = make_conflict(&fx);
    let (status, list) = fx.get("/v1/conflicts").await;
    assert_eq!(status, StatusCode::OK);
    let conflicts = list["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1);
    let c = &conflicts[0];
    assert_eq!(keys(c), ["collection", "detected_at", "field", "id", "kept", "lost", "record"]);
    assert_eq!(keys(&c["kept"]), ["at", "device", "value"]);
    assert_eq!(
        (c["collection"].as_str(), c["record"].as_str(), c["field"].as_str()),
        (Some("products"), Some("tea"), Some("name"))
    );
    assert_eq!(fx.get("/v1/c/products/tea").await.1["conflicts"], 1);

    let id = c["id"].as_str().unwrap();
    let (status, doc) =
        fx.call(Method::POST, &format!("/v1/conflicts/{id}/resolve"), Some(json!({"value": "Oolong"}))).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["fields"]["name"], "Oolong");
    assert_eq!(doc["conflicts"], 0);
    assert_eq!(fx.get("/v1/conflicts").await.1, json!({"conflicts": []}));
    let (status, body) = fx.call(Method::POST, &format!("/v1/conflicts/{id}/resolve"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}

#[tokio::test]
async fn resolving_without_a_value_keeps_the_winner() {
    let fx = Fixture::new();
    let _other = make_conflict(&fx);
    let (_, list) = fx.get("/v1/conflicts?limit=1").await;
    let conflict = &list["conflicts"][0];
    let kept = conflict["kept"]["value"].clone();
    let (status, doc) =
        fx.call(Method::POST, &format!("/v1/conflicts/{}/resolve", conflict["id"].as_str().unwrap()), None).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["fields"]["name"], kept);
    assert_eq!(fx.node.store().conflict_count().unwrap(), 0);
}

#[tokio::test]
async fn messages_are_accepted_and_reach_subscribers() {
    let fx = Fixture::new();
    let mut events = fx.node.subscribe();
    let me = fx.node.device_id().to_string();
    let body = json!({"to": me, "type": "print-receipt", "data": {"ticket": 7}});
    let (status, sent) = fx.call(Method::POST, "/v1/messages", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(keys(&sent), ["data", "from", "sent_at", "to", "type"]);
    assert_eq!(sent["type"], "print-receipt");
    assert_eq!(sent["to"], me);
    match events.try_recv().unwrap() {
        meshsync_node::Event::Message(m) => {
            assert_eq!((m.kind.as_str(), m.data), ("print-receipt", json!({"ticket": 7})))
        }
        other => panic!("expected a message, got {other:?}"),
    }
    let (status, sent) = fx.call(Method::POST, "/v1/messages", Some(json!({"type": "hello"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!((sent["to"].clone(), sent["data"].clone()), (Value::Null, Value::Null));
}

#[tokio::test]
async fn status_reports_the_node() {
    let fx = Fixture::new();
    let written = fx.node.put("products", "tea", json!({"name": "Tea"})).unwrap();
    let (status, body) = fx.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["cursor"], written.lsn, "the last event cursor");
    for key in ["device_id", "name", "group_id", "version", "paused", "records", "peers", "conflicts", "uptime_s"] {
        assert!(body.get(key).is_some(), "{key} missing from {body}");
    }
    assert_eq!(body["device_id"], fx.node.device_id().to_string());
    assert_eq!(body["name"], "till-1");
    assert_eq!(body["group_id"], Value::Null);
    assert_eq!(body["records"], 1);
    assert_eq!(body["conflicts"], 0);
    assert_eq!(body["paused"], false);
    assert_eq!(body["peers"], json!({"connected": 0, "known": 0}));
}

#[tokio::test]
async fn config_get_and_put_validate_save_and_apply() {
    let fx = Fixture::new();
    let (status, config) = fx.get("/v1/config").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(config["name"], "till-1");
    assert_eq!(config["api"], common::API);

    let (status, body) =
        fx.call(Method::PUT, "/v1/config", Some(json!({"name": "till-2", "heartbeat_interval_ms": 5000}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "till-2");
    assert_eq!(body["heartbeat_interval_ms"], 5000);
    assert_eq!(body["restart_required"], json!(["heartbeat_interval_ms"]));
    assert_eq!(body["api"], common::API, "settings not in the body keep their values");
    assert_eq!(fx.node.name(), "till-2", "the name applies at once");
    assert_eq!(fx.get("/v1/status").await.1["name"], "till-2");
    let saved = meshsync_node::config::Config::load(&fx.dir.path().join("meshsync.toml")).unwrap();
    assert_eq!(saved.name, "till-2");
    assert_eq!(saved.heartbeat_interval_ms, 5000);
    let (_, again) = fx.call(Method::PUT, "/v1/config", Some(json!({"name": "till-2"}))).await;
    assert_eq!(again["restart_required"], json!([]));
}

#[tokio::test]
async fn peers_are_static_and_truthful() {
    let fx = Fixture::new();
    assert_eq!(fx.get("/v1/peers").await.1, json!({"peers": []}));
    let (status, peer) = fx.call(Method::POST, "/v1/peers", Some(json!({"addr": "192.168.1.20:7710"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{peer}");
    assert_eq!(
        peer,
        json!({"device_id": null, "name": null, "addrs": ["192.168.1.20:7710"], "state": "disconnected",
               "sources": ["static"], "last_seen": null, "rtt_ms": null, "last_sync": null, "lag": null,
               "last_error": null, "last_dial": null, "received": 0, "sent": 0, "caught_up": false})
    );
    let (status, _) = fx.call(Method::POST, "/v1/peers", Some(json!({"addr": "192.168.1.20:7710"}))).await;
    assert_eq!(status, StatusCode::OK, "adding a known peer again is harmless");
    assert_eq!(fx.get("/v1/peers").await.1["peers"].as_array().unwrap().len(), 1);
    assert_eq!(fx.get("/v1/status").await.1["peers"], json!({"connected": 0, "known": 1}));
    let saved = meshsync_node::config::Config::load(&fx.dir.path().join("meshsync.toml")).unwrap();
    assert_eq!(saved.peers, ["192.168.1.20:7710"]);

    let (status, body) = fx.call(Method::DELETE, "/v1/peers/192.168.1.20:7710", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"removed": "192.168.1.20:7710"}));
    assert_eq!(fx.get("/v1/peers").await.1, json!({"peers": []}));
    let (status, body) = fx.call(Method::DELETE, "/v1/peers/192.168.1.20:7710", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
}

#[tokio::test]
async fn peer_test_really_connects() {
    let fx = Fixture::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let open = listener.local_addr().unwrap().to_string();
    // A port that was just free: nothing listens there any more.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    for addr in [&open, &closed] {
        fx.call(Method::POST, "/v1/peers", Some(json!({"addr": addr}))).await;
    }
    let (status, body) = fx.call(Method::POST, &format!("/v1/peers/{open}/test"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reachable"], true, "{body}");
    assert!(body["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(body["error"], Value::Null);
    let (_, body) = fx.call(Method::POST, &format!("/v1/peers/{closed}/test"), None).await;
    assert_eq!(body["reachable"], false, "{body}");
    assert!(body["error"].as_str().is_some());
    let (status, body) = fx.call(Method::POST, "/v1/peers/10.9.9.9:7710/test", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "only known peers are tested: {body}");
}

#[tokio::test]
async fn sync_pause_resume_state_reconnect() {
    let fx = Fixture::new();
    fx.node.put("products", "tea", json!({"name": "Tea"})).unwrap();
    assert_eq!(fx.call(Method::POST, "/v1/sync/pause", None).await, (StatusCode::OK, json!({"paused": true})));
    assert!(fx.state.paused());
    assert_eq!(fx.get("/v1/status").await.1["paused"], true);
    // Local writes go on while sync is paused.
    assert_eq!(fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"price": 1}))).await.0, StatusCode::OK);
    let (status, state) = fx.get("/v1/sync/state").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["paused"], true);
    assert_eq!(state["peers"], json!([]));
    assert_eq!(state["vector"], json!({fx.node.device_id().to_string(): 2}));
    assert_eq!(fx.call(Method::POST, "/v1/sync/resume", None).await, (StatusCode::OK, json!({"paused": false})));
    assert!(!fx.state.paused());
    let (status, body) = fx.call(Method::POST, "/v1/sync/reconnect", None).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({"reconnecting": 0})));
}

#[tokio::test]
async fn group_endpoints_answer_for_a_node_alone() {
    let fx = Fixture::new();
    let (status, body) = fx
        .call(
            Method::POST,
            "/v1/invites",
            Some(json!({"role": "writer", "scopes": ["warehouse:kitchen"], "ttl_s": 3600, "uses": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "sync_unavailable");
    assert!(body["error"]["message"].as_str().unwrap().contains("sync"));

    let me = fx.node.device_id().to_string();
    let (status, members) = fx.get("/v1/members").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        members,
        json!({"members": [{"device_id": me, "name": "till-1", "role": "admin", "scopes": [], "revoked": false,
                            "founder": true, "this_device": true, "invited_by": null, "revoked_by": null}]})
    );
    let (status, body) = fx.call(Method::POST, &format!("/v1/members/{me}/revoke"), None).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::CONFLICT, "cannot_revoke_self"));
    let stranger = meshsync_node::DeviceId([9; 16]).to_string();
    let (status, body) = fx.call(Method::POST, &format!("/v1/members/{stranger}/revoke"), None).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::CONFLICT, "sync_unavailable"));

    // Nothing audited yet: no mesh (no group created), no invite. GET /v1/audit is in audit.rs.
    assert_eq!(fx.get("/v1/audit").await, (StatusCode::OK, json!({"entries": [], "next": null, "chain": null})));
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let fx = Fixture::new();
    fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"name": "Tea"}))).await;
    fx.get("/v1/c/products/tea").await;
    fx.get("/v1/c/products/nope").await;
    let response = {
        use tower::ServiceExt;
        fx.app.clone().oneshot(Fixture::request(Method::GET, "/metrics", None)).await.unwrap()
    };
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = {
        use http_body_util::BodyExt;
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    for needle in [
        "meshsync_records 1",
        "meshsync_conflicts 0",
        "meshsync_event_subscribers 0",
        "meshsync_uptime_seconds ",
        r#"meshsync_http_requests_total{route="/v1/c/{collection}/{id}",method="PUT",status="200"} 1"#,
        r#"meshsync_http_requests_total{route="/v1/c/{collection}/{id}",method="GET",status="404"} 1"#,
        r#"meshsync_http_request_duration_seconds_bucket{le="+Inf",route="/v1/c/{collection}/{id}"} 3"#,
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
}

#[tokio::test]
async fn dashboard_and_openapi_need_no_token() {
    let fx = Fixture::new();
    for uri in ["/", "/v1/openapi.json"] {
        let request = axum::http::Request::builder()
            .uri(uri)
            .header("host", common::API)
            .body(axum::body::Body::empty())
            .unwrap();
        let (status, _) = fx.send(request).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
    let response = {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .uri("/")
            .header("host", common::API)
            .body(axum::body::Body::empty())
            .unwrap();
        fx.app.clone().oneshot(request).await.unwrap()
    };
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let (_, document) = fx.get("/v1/openapi.json").await;
    assert_eq!(document["info"]["title"], "meshsync local API");
}
