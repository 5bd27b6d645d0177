//! `GET /v1/audit`: entries newest first with their hashes, the `before` cursor, the kind
//! filter, the chain check on request (and what it says once a row is changed behind the node's
//! back), bad query parameters, and the guard's refusals recorded at most once per reason.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{error_code, Fixture, API, TOKEN};
use meshsync_node::{audit, DeviceId};
use serde_json::{json, Value};

/// Waits until every fire-and-forget audit entry queued so far is committed: the store answers
/// a version-vector request after the group commit of everything queued before it.
fn flush(fx: &Fixture) {
    fx.node.store().version_vector().unwrap();
}

fn seqs(page: &Value) -> Vec<u64> {
    page["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[tokio::test]
async fn entries_page_newest_first_with_cursor_filter_and_chain() {
    let fx = Fixture::new();
    let peer = DeviceId([9; 16]);
    for i in 0..6 {
        let kind = if i % 2 == 0 { audit::SESSION_ENDED } else { audit::CONNECTION_REFUSED };
        fx.node.audit(kind, Some(peer), json!({"n": i}));
    }
    fx.node.audit(audit::GROUP_CREATED, None, json!({"group": "g"}));
    flush(&fx);

    let (status, page) = fx.get("/v1/audit").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(seqs(&page), vec![7, 6, 5, 4, 3, 2, 1]);
    assert_eq!((&page["next"], &page["chain"]), (&Value::Null, &Value::Null), "no check unless asked");
    let newest = &page["entries"][0];
    assert_eq!(newest["kind"], "group.created");
    assert_eq!(newest["device"], Value::Null);
    assert_eq!(newest["detail"], json!({"group": "g"}));
    assert!(newest["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(newest["prev"], page["entries"][1]["hash"], "each entry holds the hash before it");
    assert_eq!(page["entries"][6]["prev"], "0".repeat(64));
    assert_eq!(page["entries"][1]["device"], peer.to_string());
    assert_eq!(newest["hash"].as_str().unwrap().len(), 64);

    let (_, first) = fx.get("/v1/audit?limit=3").await;
    assert_eq!((seqs(&first), &first["next"]), (vec![7, 6, 5], &json!(5)));
    let (_, second) = fx.get("/v1/audit?limit=3&before=5").await;
    assert_eq!((seqs(&second), &second["next"]), (vec![4, 3, 2], &json!(2)));
    let (_, last) = fx.get("/v1/audit?limit=3&before=2").await;
    assert_eq!((seqs(&last), &last["next"]), (vec![1], &Value::Null));

    let (_, refused) = fx.get("/v1/audit?kind=connection.").await;
    assert_eq!(seqs(&refused), vec![6, 4, 2]);
    let (_, sessions) = fx.get("/v1/audit?kind=session.ended&limit=2").await;
    assert_eq!((seqs(&sessions), &sessions["next"]), (vec![5, 3], &json!(3)));
    let (_, none) = fx.get(&format!("/v1/audit?kind={}", "é".repeat(64))).await;
    assert_eq!(seqs(&none), Vec::<u64>::new(), "a filter longer than any kind matches nothing");

    let (status, checked) = fx.get("/v1/audit?verify=true&limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        checked["chain"],
        json!({"ok": true, "entries": 7, "head": page["entries"][0]["hash"], "broken_at": null, "reason": null})
    );
    assert_eq!(fx.get("/v1/audit?verify=false").await.1["chain"], Value::Null);

    // A row changed behind the node's back.
    let raw = rusqlite::Connection::open(fx.dir.path().join(meshsync_node::DATABASE_FILE)).unwrap();
    raw.execute("UPDATE audit SET detail = '{\"n\":99}' WHERE seq = 3", []).unwrap();
    let (status, checked) = fx.get("/v1/audit?verify=true").await;
    assert_eq!(status, StatusCode::OK, "a broken chain is an answer, not an error");
    let chain = &checked["chain"];
    assert_eq!((&chain["ok"], &chain["broken_at"], &chain["entries"]), (&json!(false), &json!(3), &json!(2)));
    assert_eq!(chain["head"], Value::Null);
    assert!(chain["reason"].as_str().unwrap().contains("changed"), "{chain}");
    assert_eq!(checked["entries"][4]["detail"], json!({"n": 99}), "the damaged entry shows as it is");
}

#[tokio::test]
async fn bad_query_parameters_are_400_and_never_5xx() {
    let fx = Fixture::new();
    for query in [
        "limit=0",
        "limit=1001",
        "limit=ten",
        "limit=-1",
        "before=0",
        "before=-5",
        "before=99999999999999999999",
        "kind=",
        "kind=a%0Ab",
        &format!("kind={}", "k".repeat(65)),
        "verify=yes",
        "verify=1",
        "verify=true&verify=false",
        "limit=1&limit=2",
        "cursor=5",
        "where.kind=x",
        "%zz=1",
    ] {
        let (status, body) = fx.get(&format!("/v1/audit?{query}")).await;
        assert_eq!((status, error_code(&body).as_str()), (StatusCode::BAD_REQUEST, "bad_query"), "?{query}: {body}");
    }
    let (status, body) = fx.call(Method::POST, "/v1/audit", None).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    // Past the end and before the start are empty pages, not errors.
    for query in ["before=1", "before=9223372036854775807", "limit=1000"] {
        let (status, body) = fx.get(&format!("/v1/audit?{query}")).await;
        assert_eq!((status, &body["entries"]), (StatusCode::OK, &json!([])), "?{query}");
    }
}

fn raw(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(Method::GET).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn refusals_of_the_guard_are_audited_once_per_reason_with_a_count() {
    let fx = Fixture::new();
    let bearer = format!("Bearer {TOKEN}");
    let wrong = "Bearer not-the-token";
    for _ in 0..3 {
        let status = fx.send(raw("/v1/status", &[("host", "evil.example"), ("authorization", &bearer)])).await.0;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let origin = [("host", API), ("origin", "http://evil.example"), ("authorization", bearer.as_str())];
        assert_eq!(fx.send(raw("/v1/status", &origin)).await.0, StatusCode::FORBIDDEN);
        let status = fx.send(raw("/v1/c/products?limit=1", &[("host", API), ("authorization", wrong)])).await.0;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        // No token at all is what misconfigured clients send: not recorded.
        assert_eq!(fx.send(raw("/v1/status", &[("host", API)])).await.0, StatusCode::UNAUTHORIZED);
    }
    flush(&fx);
    let (_, page) = fx.get("/v1/audit?kind=api.refused").await;
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "one per reason while the first is recent: {page}");
    let by_reason = |reason: &str| entries.iter().find(|e| e["detail"]["reason"] == reason).unwrap()["detail"].clone();
    assert_eq!(
        by_reason("host"),
        json!({"reason": "host", "method": "GET", "path": "/v1/status", "value": "evil.example", "count": 1})
    );
    assert_eq!(by_reason("origin")["value"], "http://evil.example");
    let token = by_reason("token");
    assert_eq!(token, json!({"reason": "token", "method": "GET", "path": "/v1/c/products", "count": 1}));
    assert!(!page.to_string().contains("not-the-token"), "a presented token never reaches the log");
}
