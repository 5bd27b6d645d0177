//! The OpenAPI document matches the real router and the contract: every documented operation is
//! routed, no path has an undocumented method, routes are declared only where the document sees
//! them, every endpoint of DESIGN.md section 6 is there, and real responses have the documented
//! fields.

mod common;

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use common::{assert_shape, make_conflict, response_schema, Fixture};
use serde_json::{json, Value};

/// The endpoints of the contract (DESIGN.md section 6), plus the document itself and what the
/// dashboard added: its assets, the collections and a record's field versions.
const CONTRACT: [(&str, &str); 33] = [
    ("PUT", "/v1/c/{collection}/{id}"),
    ("GET", "/v1/c/{collection}/{id}"),
    ("DELETE", "/v1/c/{collection}/{id}"),
    ("GET", "/v1/c/{collection}"),
    ("POST", "/v1/c/{collection}/{id}/incr"),
    ("POST", "/v1/c/{collection}"),
    ("PUT", "/v1/schema/{collection}"),
    ("GET", "/v1/schema/{collection}"),
    ("GET", "/v1/events"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/conflicts"),
    ("POST", "/v1/conflicts/{id}/resolve"),
    ("GET", "/v1/status"),
    ("GET", "/v1/peers"),
    ("POST", "/v1/peers"),
    ("DELETE", "/v1/peers/{device}"),
    ("POST", "/v1/peers/{device}/test"),
    ("POST", "/v1/sync/reconnect"),
    ("POST", "/v1/sync/pause"),
    ("POST", "/v1/sync/resume"),
    ("GET", "/v1/sync/state"),
    ("POST", "/v1/invites"),
    ("GET", "/v1/members"),
    ("POST", "/v1/members/{device}/revoke"),
    ("GET", "/v1/audit"),
    ("GET", "/v1/config"),
    ("PUT", "/v1/config"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/assets/{file}"),
    ("GET", "/v1/collections"),
    ("GET", "/v1/c/{collection}/{id}/versions"),
];

const METHODS: [&str; 5] = ["GET", "PUT", "POST", "DELETE", "PATCH"];

fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if METHODS.iter().any(|m| m.eq_ignore_ascii_case(method)) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

fn concrete(path: &str) -> String {
    path.replace("{collection}", "products")
        .replace("{id}", "tea")
        .replace("{device}", "MFRGG2LTM-NZXXE3DFO-RSXA5LTMA")
        .replace("{file}", "app.js")
}

#[tokio::test]
async fn the_document_and_the_router_agree() {
    let fx = Fixture::new();
    let (status, document) = fx.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(document, serde_json::to_value(meshsync_api::openapi()).unwrap(), "served as generated");
    let documented = operations(&document);

    let contract: BTreeSet<(String, String)> = CONTRACT.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(documented, contract, "the document lists exactly the contract's endpoints");

    for (method, path) in &documented {
        let uri = concrete(path);
        let (status, body) = fx.call(method.parse().unwrap(), &uri, None).await;
        let code = body["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !matches!(code, "unknown_route" | "method_not_allowed"),
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
    let paths: BTreeSet<&String> = documented.iter().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            if documented.contains(&(method.to_string(), path.clone())) {
                continue;
            }
            let (status, body) = fx.call(method.parse().unwrap(), &concrete(path), None).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
                "{method} {path} is routed but not documented"
            );
        }
    }
    let (status, body) = fx.get("/v1/undocumented").await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("unknown_route")));
}

/// Routes reach the router only through `routes!`, which documents them; a plain `.route(` (or a
/// nested or merged router) would add a route the document cannot see.
#[test]
fn routes_are_declared_only_through_the_documenting_macro() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for needle in [".route(", ".route_service(", ".nest(", ".nest_service(", ".merge("] {
            assert!(!text.contains(needle), "{} calls {needle}", path.display());
        }
    }
}

#[tokio::test]
async fn every_operation_is_described_and_secured() {
    let document = serde_json::to_value(meshsync_api::openapi()).unwrap();
    let schemes = document["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(document["security"], json!([{"bearer": []}, {"query_token": []}]));
    let mut ids = BTreeSet::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(ids.insert(operation["operationId"].as_str().unwrap().to_string()), "duplicate operationId");
            assert!(operation["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path} has no summary");
            let public = path == "/" || path == "/v1/openapi.json" || path.starts_with("/assets/");
            assert_eq!(operation.get("security") == Some(&json!([{}])), public, "{method} {path}: security");
            if !public {
                assert!(operation["responses"]["401"].is_object(), "{method} {path} documents no 401");
            }
        }
    }
}

#[tokio::test]
async fn responses_have_the_documented_fields() {
    let fx = Fixture::new();
    let _other = make_conflict(&fx);
    fx.call(Method::POST, "/v1/peers", Some(json!({"addr": "192.168.1.20:7710"}))).await;
    fx.node.store().audit_append("session.ended", Some(fx.node.device_id()), json!({"received": 1})).unwrap();
    let document = serde_json::to_value(meshsync_api::openapi()).unwrap();
    let calls: Vec<(Method, &str, &str, Option<Value>, &str)> = vec![
        (Method::PUT, "/v1/c/products/coffee", "/v1/c/{collection}/{id}", Some(json!({"name": "Coffee"})), "200"),
        (Method::GET, "/v1/c/products/tea", "/v1/c/{collection}/{id}", None, "200"),
        (Method::GET, "/v1/c/products", "/v1/c/{collection}", None, "200"),
        (Method::GET, "/v1/collections", "/v1/collections", None, "200"),
        (Method::GET, "/v1/c/products/tea/versions", "/v1/c/{collection}/{id}/versions", None, "200"),
        (Method::POST, "/v1/c/sales", "/v1/c/{collection}", Some(json!({"total": 1})), "201"),
        (Method::GET, "/v1/schema/products", "/v1/schema/{collection}", None, "200"),
        (Method::GET, "/v1/conflicts", "/v1/conflicts", None, "200"),
        (Method::POST, "/v1/messages", "/v1/messages", Some(json!({"type": "t"})), "202"),
        (Method::GET, "/v1/status", "/v1/status", None, "200"),
        (Method::GET, "/v1/peers", "/v1/peers", None, "200"),
        (Method::POST, "/v1/peers/192.168.1.20:7710/test", "/v1/peers/{device}/test", None, "200"),
        (Method::GET, "/v1/sync/state", "/v1/sync/state", None, "200"),
        (Method::POST, "/v1/sync/pause", "/v1/sync/pause", None, "200"),
        (Method::POST, "/v1/sync/reconnect", "/v1/sync/reconnect", None, "202"),
        (Method::GET, "/v1/members", "/v1/members", None, "200"),
        (Method::GET, "/v1/audit", "/v1/audit", None, "200"),
        (Method::GET, "/v1/audit?verify=true", "/v1/audit", None, "200"),
        (Method::DELETE, "/v1/c/products/coffee", "/v1/c/{collection}/{id}", None, "200"),
        (Method::DELETE, "/v1/peers/192.168.1.20:7710", "/v1/peers/{device}", None, "200"),
        (Method::POST, "/v1/invites", "/v1/invites", Some(json!({})), "409"),
    ];
    for (method, uri, path, body, status) in calls {
        let (got, answer) = fx.call(method.clone(), uri, body).await;
        assert_eq!(got.as_str(), status, "{method} {uri}: {answer}");
        let schema = response_schema(&document, method.as_str(), path, status);
        assert_shape(&document, schema, &answer, &format!("{method} {uri}"));
    }
}

/// Every event the stream sends is described, peer events included.
#[test]
fn every_event_type_is_documented() {
    let document = serde_json::to_value(meshsync_api::openapi()).unwrap();
    let event = &document["components"]["schemas"]["StreamEvent"];
    let variants = event["oneOf"].as_array().unwrap_or_else(|| panic!("StreamEvent is not a oneOf: {event}"));
    let types: BTreeSet<&str> = variants
        .iter()
        .flat_map(|v| v["properties"]["type"]["enum"].as_array().unwrap_or_else(|| panic!("no type in {v}")))
        .map(|t| t.as_str().unwrap())
        .collect();
    let expected = [
        "record.changed",
        "schema.changed",
        "conflict.detected",
        "message",
        "peer.connected",
        "peer.disconnected",
        "sync.progress",
    ];
    assert_eq!(types, BTreeSet::from(expected));
    let description = document["paths"]["/v1/events"]["get"]["description"].as_str().unwrap_or_default();
    for kind in expected {
        assert!(description.contains(kind), "{kind} is not mentioned in the description of GET /v1/events");
    }
}
