//! The dashboard's files and the reads added for it: the page and its assets load without the
//! token, with a strict Content-Security-Policy, the right types and revalidation; data still
//! needs the token; `GET /v1/collections` and `GET /v1/c/{collection}/{id}/versions` answer what
//! the records browser shows. (The page itself is tested in a browser: tests/dashboard/.)

mod common;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{error_code, make_conflict, Fixture, API};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// A GET with only a Host header (no token) and extra headers; answers the response parts.
async fn fetch(fx: &Fixture, uri: &str, headers: &[(&str, &str)]) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder().method(Method::GET).uri(uri).header(header::HOST, API);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = fx.app.clone().oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.unwrap().to_bytes().to_vec())
}

#[tokio::test]
async fn the_page_and_its_assets_load_without_the_token_with_strict_headers() {
    let fx = Fixture::new();
    let (status, headers, body) = fetch(&fx, "/?token=ignored-here", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let page = String::from_utf8(body).unwrap();
    assert!(page.contains(r#"<script type="module" src="/assets/app.js">"#), "{page}");
    assert!(!page.contains("<script>") && !page.contains(" style="), "nothing inline for the CSP to allow");

    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(headers[header::CACHE_CONTROL], "no-cache");

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let (status, headers, body) = fetch(&fx, &format!("/assets/{file}"), &[]).await;
        assert_eq!(status, StatusCode::OK, "{file}");
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{file}");
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{file}");
        assert!(!body.is_empty());
        // Revalidation: the same tag answers 304 with no body.
        let etag = headers[header::ETAG].to_str().unwrap().to_string();
        let (status, headers, body) = fetch(&fx, &format!("/assets/{file}"), &[("if-none-match", &etag)]).await;
        assert_eq!((status, body.len()), (StatusCode::NOT_MODIFIED, 0), "{file}");
        assert_eq!(headers[header::ETAG], etag.as_str());
    }
    let (status, _, _) = fetch(&fx, "/assets/app.js", &[("if-none-match", "\"stale\"")]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn only_the_dashboard_files_are_public() {
    let fx = Fixture::new();
    for uri in ["/assets/nope.js", "/assets/index.html", "/assets/..%2Fv1%2Fstatus", "/assets/APP.JS"] {
        let (status, headers, body) = fetch(&fx, uri, &[]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/json"));
        assert_eq!(error_code(&serde_json::from_slice(&body).unwrap()), "not_found", "{uri}");
    }
    // Data still needs the token, and a foreign host gets nothing, not even the page.
    for uri in ["/v1/status", "/v1/collections", "/v1/c/products/tea/versions"] {
        assert_eq!(fetch(&fx, uri, &[]).await.0, StatusCode::UNAUTHORIZED, "{uri}");
    }
    for uri in ["/", "/assets/app.js"] {
        let request = Request::builder().uri(uri).header(header::HOST, "evil.example").body(Body::empty()).unwrap();
        let (status, body) = fx.send(request).await;
        assert_eq!((status, error_code(&body).as_str()), (StatusCode::FORBIDDEN, "forbidden_host"), "{uri}");
    }
    // Other methods are not allowed on the files.
    let (status, body) = fx.call(Method::POST, "/assets/app.js", None).await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

#[tokio::test]
async fn collections_lists_application_collections_by_name() {
    let fx = Fixture::new();
    assert_eq!(fx.get("/v1/collections").await, (StatusCode::OK, json!({"collections": []})));
    fx.call(Method::PUT, "/v1/schema/zebra", Some(json!({"fields": {"n": "counter"}}))).await;
    for (collection, id) in [("sales", "t-1"), ("products", "tea"), ("products", "coffee"), ("gone", "x")] {
        let (status, _) = fx.call(Method::PUT, &format!("/v1/c/{collection}/{id}"), Some(json!({"a": 1}))).await;
        assert_eq!(status, StatusCode::OK);
    }
    fx.call(Method::DELETE, "/v1/c/gone/x", None).await;
    let (status, body) = fx.get("/v1/collections").await;
    assert_eq!(status, StatusCode::OK);
    // Sorted; a schema alone makes no collection, meshsync's own `_schemas` is hidden; a
    // collection whose records were deleted is still listed (its tombstones replicate).
    assert_eq!(body, json!({"collections": [{"name": "gone"}, {"name": "products"}, {"name": "sales"}]}));
    let (status, body) = fx.get("/v1/collections?limit=5").await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::BAD_REQUEST, "bad_query"));
}

fn field<'a>(versions: &'a Value, name: &str) -> &'a Value {
    versions["fields"].as_array().unwrap().iter().find(|f| f["field"] == name).unwrap_or_else(|| panic!("{name}"))
}

#[tokio::test]
async fn versions_name_the_writer_of_each_field_and_what_is_kept_beside_it() {
    let fx = Fixture::new();
    let me = fx.node.device_id().to_string();
    let _other = make_conflict(&fx); // products/tea.name: "Green tea" here, "Black tea" elsewhere
    fx.call(Method::PUT, "/v1/schema/products", Some(json!({"fields": {"stock": "counter"}}))).await;
    fx.call(Method::POST, "/v1/c/products/tea/incr", Some(json!({"field": "stock", "by": 5}))).await;
    fx.call(Method::PUT, "/v1/c/products/tea", Some(json!({"price": 2.5, "_scope": "shop:1"}))).await;

    let (status, versions) = fx.get("/v1/c/products/tea/versions").await;
    assert_eq!(status, StatusCode::OK, "{versions}");
    let record = fx.get("/v1/c/products/tea").await.1;
    assert_eq!(
        (&versions["collection"], &versions["id"], &versions["deleted"]),
        (&json!("products"), &json!("tea"), &json!(false))
    );
    assert_eq!(versions["cursor"], record["cursor"]);
    assert_eq!(versions["updated_at"], record["updated_at"]);
    assert_eq!(versions["deleted_by"], Value::Null);
    let names: Vec<&str> =
        versions["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert_eq!(names, ["name", "price", "stock"], "field order, without meshsync's own _scope");

    // A conflict: two versions side by side, the shown one is the writer's, the other waits.
    let name = field(&versions, "name");
    assert_eq!(name["policy"], "lww");
    assert_eq!(name["value"], record["fields"]["name"]);
    let kept: Vec<&Value> = name["versions"].as_array().unwrap().iter().filter(|v| v["wins"] == true).collect();
    assert_eq!((name["versions"].as_array().unwrap().len(), kept.len()), (2, 1), "{name}");
    assert_eq!(kept[0]["value"], name["value"]);
    assert_eq!(
        (&kept[0]["device"], &kept[0]["at"], &kept[0]["seq"]),
        (&name["writer"]["device"], &name["writer"]["at"], &name["writer"]["seq"])
    );
    let conflict = &fx.get("/v1/conflicts").await.1["conflicts"][0];
    assert_eq!(name["writer"]["device"], conflict["kept"]["device"]);
    assert_eq!(name["writer"]["at"], conflict["kept"]["at"]);

    let price = field(&versions, "price");
    assert_eq!((&price["value"], &price["writer"]["device"]), (&json!(2.5), &json!(me)));
    assert!(price["writer"]["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(price["versions"].as_array().unwrap().len(), 1);

    // A counter: no single writer; every device's total counts.
    let stock = field(&versions, "stock");
    assert_eq!((&stock["policy"], &stock["value"], &stock["writer"]), (&json!("counter"), &json!(5), &Value::Null));
    assert!(stock["versions"].as_array().unwrap().iter().all(|v| v["wins"] == true && v["device"] == me));

    // A deleted record still answers, with who deleted it.
    fx.call(Method::DELETE, "/v1/c/products/tea", None).await;
    let (status, versions) = fx.get("/v1/c/products/tea/versions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!((&versions["deleted"], &versions["deleted_by"]["device"]), (&json!(true), &json!(me)));
    assert_eq!(versions["fields"], json!([]));

    let (status, body) = fx.get("/v1/c/products/nothing/versions").await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = fx.get("/v1/c/bad%20name/tea/versions").await;
    assert_eq!((status, error_code(&body).as_str()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid"));
}
