//! Bad input of every kind answers 4xx with `{"error":{"code","message"}}` and changes nothing:
//! malformed JSON, wrong types, huge bodies, bad names, unknown ids, wrong content types, missing
//! or wrong tokens, foreign Host and Origin headers. Each request would change the node if it were
//! accepted; the store's canonical state, its version vector, the settings (in memory and on disk)
//! and the pause flag are compared before and after.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{error_code, make_conflict, Fixture, API, TOKEN};
use serde_json::json;

struct Case {
    what: &'static str,
    method: Method,
    uri: String,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    token: Option<String>,
    status: u16,
    code: &'static str,
}

fn case(
    what: &'static str,
    method: Method,
    uri: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    let body = body.into();
    let content_type = if body.is_empty() { None } else { Some("application/json") };
    Case {
        what,
        method,
        uri: uri.to_string(),
        body,
        content_type,
        headers: Vec::new(),
        token: Some(TOKEN.to_string()),
        status,
        code,
    }
}

fn nested(depth: usize) -> String {
    format!("{{\"x\": {}1{}}}", "[".repeat(depth), "]".repeat(depth))
}

fn cases(conflict_id: &str, me: &str) -> Vec<Case> {
    use Method as M;
    let put = |what, uri: &str, body: &str, status, code| case(what, M::PUT, uri, body, status, code);
    let good = r#"{"name":"Changed"}"#;
    let long_collection = format!("/v1/c/{}/x", "c".repeat(65));
    let long_id = format!("/v1/c/products/{}", "i".repeat(257));
    let huge = format!("{{\"x\":\"{}\"}}", "a".repeat(3 << 20));
    let big_message = format!("{{\"type\":\"t\",\"data\":\"{}\"}}", "a".repeat(70 << 10));
    let mut cases = vec![
        // Malformed JSON.
        put("truncated JSON", "/v1/c/products/tea", r#"{"name":"#, 400, "bad_json"),
        put("not JSON", "/v1/c/products/tea", "name=Tea", 400, "bad_json"),
        put("two documents", "/v1/c/products/tea", r#"{"a":1}{"b":2}"#, 400, "bad_json"),
        put("deeper than the parser allows", "/v1/c/products/tea", &nested(200), 400, "bad_json"),
        put("empty body", "/v1/c/products/tea", "", 400, "bad_json"),
        case("truncated incr", M::POST, "/v1/c/products/tea/incr", r#"{"field":"stock","by":1"#, 400, "bad_json"),
        case("malformed append", M::POST, "/v1/c/sales", "{,}", 400, "bad_json"),
        put("malformed config", "/v1/config", "{name}", 400, "bad_json"),
        // Well-formed, wrong shape or value.
        put("array body", "/v1/c/products/tea", "[1,2]", 422, "invalid"),
        put("string body", "/v1/c/products/tea", r#""Tea""#, 422, "invalid"),
        put("no fields", "/v1/c/products/tea", "{}", 422, "invalid"),
        put("scope not a string", "/v1/c/products/tea", r#"{"_scope":5,"name":"x"}"#, 422, "invalid"),
        put("reserved field", "/v1/c/products/tea", r#"{"_price":1}"#, 422, "invalid"),
        put("_id in a put", "/v1/c/products/tea", r#"{"_id":"x","name":"x"}"#, 422, "invalid"),
        put("value nested too deep", "/v1/c/products/tea", &nested(40), 422, "invalid"),
        put("bad field name", "/v1/c/products/tea", "{\"a\\u0000b\":1}", 422, "invalid"),
        case("incr by a string", M::POST, "/v1/c/products/tea/incr", r#"{"field":"stock","by":"1"}"#, 422, "invalid"),
        case("incr without by", M::POST, "/v1/c/products/tea/incr", r#"{"field":"stock"}"#, 422, "invalid"),
        case(
            "incr with extra key",
            M::POST,
            "/v1/c/products/tea/incr",
            r#"{"field":"stock","by":1,"x":1}"#,
            422,
            "invalid",
        ),
        case("incr a non-counter", M::POST, "/v1/c/products/tea/incr", r#"{"field":"name","by":1}"#, 422, "invalid"),
        case(
            "incr overflows",
            M::POST,
            "/v1/c/products/tea/incr",
            r#"{"field":"stock","by":9223372036854775807}"#,
            422,
            "invalid",
        ),
        case("append with numeric _id", M::POST, "/v1/c/sales", r#"{"_id":5,"total":1}"#, 422, "invalid"),
        case("append with empty _id", M::POST, "/v1/c/sales", r#"{"_id":"","total":1}"#, 422, "invalid"),
        case("append-only id reused", M::POST, "/v1/c/sales", r#"{"_id":"s1","total":99}"#, 409, "rejected"),
        case("append-only record changed", M::PUT, "/v1/c/sales/s1", r#"{"total":99}"#, 409, "rejected"),
        case("append-only record deleted", M::DELETE, "/v1/c/sales/s1", "", 409, "rejected"),
        put("first writer wins", "/v1/c/products/tea", r#"{"parent":"box-2"}"#, 409, "rejected"),
        put("unknown policy", "/v1/schema/products", r#"{"fields":{"stock":"sum"}}"#, 422, "invalid"),
        put("reserved schema field", "/v1/schema/products", r#"{"fields":{"_x":"lww"}}"#, 422, "invalid"),
        put("schema default not a string", "/v1/schema/products", r#"{"default":5}"#, 422, "invalid"),
        put("schema unknown key", "/v1/schema/products", r#"{"colour":"red"}"#, 422, "invalid"),
        case("message without type", M::POST, "/v1/messages", r#"{"data":1}"#, 422, "invalid"),
        case("message empty type", M::POST, "/v1/messages", r#"{"type":""}"#, 422, "invalid"),
        case("message to a bad device", M::POST, "/v1/messages", r#"{"type":"t","to":"nobody"}"#, 422, "invalid"),
        case("message data too large", M::POST, "/v1/messages", big_message, 422, "invalid"),
        put("empty name", "/v1/config", r#"{"name":""}"#, 422, "invalid"),
        put("name not a string", "/v1/config", r#"{"name":5}"#, 422, "invalid"),
        put("unknown setting", "/v1/config", r#"{"colour":1}"#, 422, "invalid"),
        put("bad listen address", "/v1/config", r#"{"listen":"x"}"#, 422, "invalid"),
        put("bad peer in config", "/v1/config", r#"{"peers":["nohost"]}"#, 422, "invalid"),
        put("body limit too small", "/v1/config", r#"{"api_body_bytes_max":5}"#, 422, "invalid"),
        put("config not an object", "/v1/config", "[]", 422, "invalid"),
        case("peer without port", M::POST, "/v1/peers", r#"{"addr":"nohost"}"#, 422, "invalid"),
        case("peer addr not a string", M::POST, "/v1/peers", r#"{"addr":5}"#, 422, "invalid"),
        case("peer without addr", M::POST, "/v1/peers", "{}", 422, "invalid"),
        case("invite with a bad role", M::POST, "/v1/invites", r#"{"role":"god"}"#, 422, "invalid"),
        case("invite that never lives", M::POST, "/v1/invites", r#"{"ttl_s":0}"#, 422, "invalid"),
        case(
            "resolve with an extra key",
            M::POST,
            &format!("/v1/conflicts/{conflict_id}/resolve"),
            r#"{"value":1,"x":2}"#,
            422,
            "invalid",
        ),
        case(
            "resolve with a too-deep value",
            M::POST,
            &format!("/v1/conflicts/{conflict_id}/resolve"),
            nested(40).replacen("\"x\"", "\"value\"", 1),
            422,
            "invalid",
        ),
        // Huge bodies.
        put("body over the limit", "/v1/c/products/tea", &huge, 413, "too_large"),
        case("config body over the limit", M::PUT, "/v1/config", huge.clone(), 413, "too_large"),
        // Bad names.
        put("system collection", "/v1/c/_schemas/x", good, 422, "invalid"),
        case("list a system collection", M::GET, "/v1/c/_schemas", "", 422, "invalid"),
        put("schema of a system collection", "/v1/schema/_schemas", "{}", 422, "invalid"),
        put("space in a collection", "/v1/c/a%20b/x", good, 422, "invalid"),
        put("collection too long", &long_collection, good, 422, "invalid"),
        put("id too long", &long_id, good, 422, "invalid"),
        put("control character in an id", "/v1/c/products/a%00b", good, 422, "invalid"),
        put("id not UTF-8", "/v1/c/products/%FF", good, 400, "bad_path"),
        case("filter on a reserved field", M::GET, "/v1/c/products?where._x=1", "", 400, "bad_query"),
        case("limit zero", M::GET, "/v1/c/products?limit=0", "", 400, "bad_query"),
        case("limit too large", M::GET, "/v1/c/products?limit=1001", "", 400, "bad_query"),
        case("limit not a number", M::GET, "/v1/c/products?limit=ten", "", 400, "bad_query"),
        case("limit twice", M::GET, "/v1/c/products?limit=1&limit=2", "", 400, "bad_query"),
        case("bad list cursor", M::GET, "/v1/c/products?cursor=zz", "", 422, "invalid"),
        case("unknown query parameter", M::GET, "/v1/c/products?colour=red", "", 400, "bad_query"),
        case("events cursor not a number", M::GET, "/v1/events?cursor=abc", "", 400, "bad_query"),
        case("events for a bad collection", M::GET, "/v1/events?collection=_schemas", "", 400, "bad_query"),
        case("events without a transport", M::GET, "/v1/events", "", 406, "not_acceptable"),
        // Unknown ids and routes.
        case("delete a missing record", M::DELETE, "/v1/c/products/missing", "", 404, "not_found"),
        case("get a missing record", M::GET, "/v1/c/products/missing", "", 404, "not_found"),
        case("resolve an unknown conflict", M::POST, "/v1/conflicts/nope/resolve", r#"{"value":1}"#, 404, "not_found"),
        case("remove an unknown peer", M::DELETE, "/v1/peers/10.0.0.1:7710", "", 404, "not_found"),
        case("test an unknown peer", M::POST, "/v1/peers/10.0.0.1:7710/test", "", 404, "not_found"),
        case("revoke a malformed device", M::POST, "/v1/members/nobody/revoke", "", 422, "invalid"),
        case("revoke myself", M::POST, &format!("/v1/members/{me}/revoke"), "", 409, "cannot_revoke_self"),
        case("unknown route", M::PUT, "/v1/records/products/tea", good, 404, "unknown_route"),
        case("unknown method", M::PATCH, "/v1/c/products/tea", good, 405, "method_not_allowed"),
    ];

    // Content types.
    let mut c = put("text/plain body", "/v1/c/products/tea", good, 415, "unsupported_media_type");
    c.content_type = Some("text/plain");
    cases.push(c);
    let mut c = put("no content type", "/v1/c/products/tea", good, 415, "unsupported_media_type");
    c.content_type = None;
    cases.push(c);
    let mut c = put("form body", "/v1/config", "name=x", 415, "unsupported_media_type");
    c.content_type = Some("application/x-www-form-urlencoded");
    cases.push(c);
    let mut c = put("declared length over the limit", "/v1/c/products/tea", good, 413, "too_large");
    c.headers.push(("content-length", (3u64 << 20).to_string()));
    c.body = vec![b' '; 3 << 20];
    cases.push(c);

    // Tokens.
    let mut c = put("no token", "/v1/c/products/tea", good, 401, "unauthorized");
    c.token = None;
    cases.push(c);
    let mut c = put("wrong token", "/v1/c/products/tea", good, 401, "unauthorized");
    c.token = Some("not-the-token".into());
    cases.push(c);
    let mut c = put("token prefix", "/v1/c/products/tea", good, 401, "unauthorized");
    c.token = Some(TOKEN[..TOKEN.len() - 1].into());
    cases.push(c);
    let mut c = put("basic auth", "/v1/c/products/tea", good, 401, "unauthorized");
    c.token = None;
    c.headers.push(("authorization", format!("Basic {TOKEN}")));
    cases.push(c);
    let mut c = put("query token on a write", &format!("/v1/c/products/tea?token={TOKEN}"), good, 401, "unauthorized");
    c.token = None;
    cases.push(c);
    let mut c = case("no token on pause", M::POST, "/v1/sync/pause", "", 401, "unauthorized");
    c.token = None;
    cases.push(c);
    let mut c = case("no token on an unknown route", M::GET, "/v1/nope", "", 401, "unauthorized");
    c.token = None;
    cases.push(c);

    // Hosts and origins, with a valid token: the guard comes first.
    for host in ["evil.example", "evil.example:7711", "localhost.evil.example:7711", "127.0.0.1.nip.io:7711", ""] {
        let mut c = put("foreign host", "/v1/c/products/tea", good, 403, "forbidden_host");
        c.headers.push(("host", host.to_string()));
        cases.push(c);
    }
    let mut c = case("foreign host on the dashboard", M::GET, "/", "", 403, "forbidden_host");
    c.headers.push(("host", "evil.example".into()));
    cases.push(c);
    for origin in ["http://evil.example", "http://127.0.0.1:9999", "https://127.0.0.1:7711", "null"] {
        let mut c = put("foreign origin", "/v1/c/products/tea", good, 403, "forbidden_origin");
        c.headers.push(("origin", origin.to_string()));
        cases.push(c);
    }
    let mut c = case("foreign origin pauses sync", M::POST, "/v1/sync/pause", "", 403, "forbidden_origin");
    c.headers.push(("origin", "http://evil.example".into()));
    cases.push(c);
    let mut c = case("foreign preflight", M::OPTIONS, "/v1/c/products/tea", "", 403, "forbidden_origin");
    c.headers.push(("origin", "http://evil.example".into()));
    c.headers.push(("access-control-request-method", "PUT".into()));
    cases.push(c);
    cases
}

fn build(case: &Case) -> Request<Body> {
    let mut builder = Request::builder().method(case.method.clone()).uri(&case.uri);
    if !case.headers.iter().any(|(name, _)| *name == "host") {
        builder = builder.header("host", API);
    }
    for (name, value) in &case.headers {
        builder = builder.header(*name, value.as_str());
    }
    if let Some(token) = &case.token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(content_type) = case.content_type {
        builder = builder.header("content-type", content_type);
    }
    builder.body(Body::from(case.body.clone())).unwrap()
}

#[tokio::test]
async fn every_bad_request_is_a_4xx_with_the_error_shape_and_changes_nothing() {
    let fx = Fixture::new();
    let _other = make_conflict(&fx);
    fx.node
        .declare_schema(
            "products",
            meshsync_node::Schema {
                fields: [
                    ("stock".to_string(), meshsync_node::Policy::Counter),
                    ("parent".to_string(), meshsync_node::Policy::Fww),
                ]
                .into(),
                ..Default::default()
            },
        )
        .unwrap();
    fx.node.declare_schema("sales", meshsync_node::Schema { append_only: true, ..Default::default() }).unwrap();
    fx.node.put("products", "tea", json!({"parent": "box-1", "price": 2})).unwrap();
    fx.node.incr("products", "tea", "stock", json!(5)).unwrap();
    fx.node.append("sales", Some("s1"), json!({"total": 3})).unwrap();
    // Save the settings once so the file's content is part of what must not change.
    fx.call(Method::PUT, "/v1/config", Some(json!({"name": "till-1"}))).await;
    let conflict_id = fx.node.conflicts(1).unwrap()[0].id.clone();
    let me = fx.node.device_id().to_string();

    let before = fx.snapshot();
    let mut failures = Vec::new();
    for case in cases(&conflict_id, &me) {
        let (status, body) = fx.send(build(&case)).await;
        let code = body.get("error").map(|_| error_code(&body));
        if status.as_u16() != case.status || code.as_deref() != Some(case.code) {
            failures.push(format!(
                "{} ({} {}): expected {} {}, got {} {}",
                case.what,
                case.method,
                &case.uri[..case.uri.len().min(80)],
                case.status,
                case.code,
                status,
                body
            ));
        }
        assert!(status.is_client_error(), "{}: {status}", case.what);
        assert_eq!(fx.snapshot(), before, "{} changed the node", case.what);
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn a_lowered_body_limit_applies_at_once() {
    let fx = Fixture::new();
    let (status, _) = fx.call(Method::PUT, "/v1/config", Some(json!({"api_body_bytes_max": 1024}))).await;
    assert_eq!(status, StatusCode::OK);
    let before = fx.snapshot();
    let (status, body) = fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"note": "x".repeat(2000)}))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "too_large");
    assert_eq!(fx.snapshot(), before);
}

#[tokio::test]
async fn refused_origins_get_no_cors_headers() {
    let fx = Fixture::new();
    let request = Request::builder()
        .method(Method::GET)
        .uri("/v1/status")
        .header("host", API)
        .header("origin", "http://evil.example")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = {
        use tower::ServiceExt;
        fx.app.clone().oneshot(request).await.unwrap()
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().keys().all(|name| !name.as_str().starts_with("access-control-")));
}
