//! What the guard lets through: the token in its two forms, the configured hosts and origins
//! (which alone get CORS headers), and the token file in the data dir. What it refuses is in
//! `bad_input.rs`.

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Fixture, API, TOKEN};
use meshsync_node::config::Config;
use tower::ServiceExt;

fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn token_in_header_or_in_the_query_of_a_get() {
    let fx = Fixture::new();
    let bearer = format!("Bearer {TOKEN}");
    let lower = format!("bearer {TOKEN}");
    for headers in [
        vec![("host", API), ("authorization", bearer.as_str())],
        vec![("host", API), ("authorization", lower.as_str())],
    ] {
        assert_eq!(fx.send(request(Method::GET, "/v1/status", &headers)).await.0, StatusCode::OK);
    }
    let uri = format!("/v1/status?token={TOKEN}");
    assert_eq!(fx.send(request(Method::GET, &uri, &[("host", API)])).await.0, StatusCode::OK);
    // The token parameter is not mistaken for a filter or an unknown parameter.
    let uri = format!("/v1/c/products?token={TOKEN}&limit=5");
    assert_eq!(fx.send(request(Method::GET, &uri, &[("host", API)])).await.0, StatusCode::OK);
    let (status, body) = fx.send(request(Method::GET, "/v1/status?token=nope", &[("host", API)])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(common::error_code(&body), "unauthorized");
    let response = fx.app.clone().oneshot(request(Method::GET, "/v1/status", &[("host", API)])).await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn loopback_names_own_address_and_configured_hosts_pass() {
    let fx = Fixture::with_config(Config {
        api: "192.168.1.5:7711".parse().unwrap(),
        api_allowed_hosts: vec!["pos-1.local".into(), "till:8080".into()],
        ..Config::default()
    });
    let auth = format!("Bearer {TOKEN}");
    for host in [
        "localhost",
        "localhost:7711",
        "127.0.0.1:7711",
        "[::1]:7711",
        "192.168.1.5:7711",
        "POS-1.local:1234",
        "till:8080",
    ] {
        let (status, body) =
            fx.send(request(Method::GET, "/v1/status", &[("host", host), ("authorization", &auth)])).await;
        assert_eq!(status, StatusCode::OK, "{host}: {body}");
    }
    for host in ["till:9090", "192.168.1.6:7711", "pos-1.local.evil.example"] {
        let (status, _) =
            fx.send(request(Method::GET, "/v1/status", &[("host", host), ("authorization", &auth)])).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host}");
    }
}

#[tokio::test]
async fn listening_on_every_interface_accepts_ip_literals_only() {
    let fx = Fixture::with_config(Config { api: "0.0.0.0:7711".parse().unwrap(), ..Config::default() });
    let auth = format!("Bearer {TOKEN}");
    let (status, _) =
        fx.send(request(Method::GET, "/v1/status", &[("host", "10.1.2.3:7711"), ("authorization", &auth)])).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = fx
        .send(request(Method::GET, "/v1/status", &[("host", "rebind.evil.example:7711"), ("authorization", &auth)]))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn own_origin_passes_without_cors_and_configured_origins_get_cors() {
    let fx = Fixture::with_config(Config {
        api: API.parse().unwrap(),
        api_allowed_origins: vec!["http://localhost:3000".into()],
        ..Config::default()
    });
    let auth = format!("Bearer {TOKEN}");
    for origin in ["http://127.0.0.1:7711", "http://localhost:7711"] {
        let response = fx
            .app
            .clone()
            .oneshot(request(Method::GET, "/v1/status", &[("host", API), ("origin", origin), ("authorization", &auth)]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{origin}");
        assert!(response.headers().get("access-control-allow-origin").is_none(), "same origin needs no CORS");
    }
    let response = fx
        .app
        .clone()
        .oneshot(request(
            Method::GET,
            "/v1/status",
            &[("host", API), ("origin", "http://localhost:3000"), ("authorization", &auth)],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(response.headers()["vary"], "Origin");

    // The browser's preflight carries no token.
    let preflight = request(
        Method::OPTIONS,
        "/v1/c/products/tea",
        &[("host", API), ("origin", "http://localhost:3000"), ("access-control-request-method", "PUT")],
    );
    let response = fx.app.clone().oneshot(preflight).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["access-control-allow-origin"], "http://localhost:3000");
    assert!(response.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
}

#[tokio::test]
async fn responses_are_not_cached_or_sniffed() {
    let fx = Fixture::new();
    let response = fx.app.clone().oneshot(Fixture::request(Method::GET, "/v1/status", None)).await.unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
}

#[test]
fn the_token_file_is_created_once_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let token = meshsync_api::load_or_create_token(dir.path()).unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    let path = dir.path().join(meshsync_api::TOKEN_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    assert_eq!(meshsync_api::load_or_create_token(dir.path()).unwrap(), token);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "tightened");
    }
    let other = tempfile::tempdir().unwrap();
    assert_ne!(meshsync_api::load_or_create_token(other.path()).unwrap(), token);
    std::fs::write(&path, "\n").unwrap();
    assert!(
        meshsync_api::load_or_create_token(dir.path()).is_err(),
        "an empty token file is an error, not an open door"
    );
}
