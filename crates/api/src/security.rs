//! Who may talk to the API. Every request passes, in order:
//! 1. the `Host` allow-list, against DNS rebinding (a hostile name that resolves to 127.0.0.1);
//! 2. the `Origin` allow-list, against cross-site requests from pages in the user's browser;
//! 3. the bearer token (`Authorization: Bearer`, or `?token=` on GET for `EventSource`,
//!    WebSocket and the dashboard link), compared in constant time.
//!
//! Only origins listed in `api_allowed_origins` get CORS headers; every other origin gets none.
//! Refusals of a foreign host or origin, or of a wrong token, are audited (see `audit.rs`).
//! Also here: the token file in the data dir.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::audit::{record_refusal, Refusal};
use crate::extract::TOKEN_PARAM;
use crate::{ApiError, ApiState};

/// File name of the API token inside the data dir.
pub const TOKEN_FILE: &str = "api-token";
/// Random bytes in a generated token (shown as twice as many hex digits).
const TOKEN_BYTES: usize = 32;
/// Longest token accepted from the token file.
const TOKEN_CHARS_MAX: usize = 256;
/// Routes a browser loads without the token: the dashboard page and the API description. They
/// hold no data; the page asks for the token and sends it with every data call.
const PUBLIC_PATHS: [&str; 2] = ["/", "/v1/openapi.json"];
/// The dashboard's scripts and stylesheet, also public.
const PUBLIC_PREFIX: &str = "/assets/";

/// Reads the API token from `<data_dir>/api-token`, or creates one (32 random bytes as hex,
/// written atomically, mode 0600). A token file readable by others is tightened to 0600.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.is_empty() || token.len() > TOKEN_CHARS_MAX || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{}: the token must be 1-{TOKEN_CHARS_MAX} printable ASCII characters; delete the file to get a new one",
                        path.display()
                    ),
                ));
            }
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let mut bytes = [0u8; TOKEN_BYTES];
            rand::rng().fill_bytes(&mut bytes);
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let tmp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            writeln!(file, "{token}")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

/// The guard in front of every route.
pub(crate) async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let cors_origin = match check_host_and_origin(&state, request.headers(), request.uri()) {
        Ok(cors_origin) => cors_origin,
        Err((reason, error)) => {
            let (refusal, value) = match &error {
                ApiError::ForbiddenHost(host) => (Refusal::Host, host.as_str()),
                ApiError::ForbiddenOrigin(origin) => (Refusal::Origin, origin.as_str()),
                _ => unreachable!("host and origin checks refuse only with these"),
            };
            record_refusal(&state, refusal, request.method().as_str(), request.uri().path(), Some(value));
            return reject(&state, reason, error);
        }
    };

    // A CORS preflight carries no credentials; answer it for configured origins only.
    if request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        if let Some(origin) = cors_origin {
            let mut response = StatusCode::NO_CONTENT.into_response();
            add_cors(response.headers_mut(), origin);
            let h = response.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, PUT, POST, DELETE"));
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            return response;
        }
    }

    let path = request.uri().path();
    let public = matches!(*request.method(), Method::GET | Method::HEAD)
        && (PUBLIC_PATHS.contains(&path) || path.starts_with(PUBLIC_PREFIX));
    if !public {
        if let Err(e) = check_token(&request, &state.shared.token) {
            if matches!(e, ApiError::Unauthorized(WRONG_TOKEN)) {
                record_refusal(&state, Refusal::Token, request.method().as_str(), path, None);
            }
            return reject(&state, "token", e);
        }
    }

    let mut response = next.run(request).await;
    let h = response.headers_mut();
    // Responses carry the group's data: never cache them (the dashboard's files set their own
    // policy), never let a browser guess their type.
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(origin) = cors_origin {
        add_cors(h, origin);
    }
    response
}

/// Checks `Host` and `Origin`; on success returns the origin to answer with CORS headers, if
/// the request comes from a configured origin.
fn check_host_and_origin(
    state: &ApiState,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Result<Option<HeaderValue>, (&'static str, ApiError)> {
    let api_addr = state.api_addr();
    // Read under the lock, without cloning the settings on every request.
    let config = state.shared.config.read().expect("lock poisoned");
    let host = match header_text(headers, header::HOST).or_else(|| uri.authority().map(|a| a.to_string())) {
        // HTTP/1.0 clients may send no Host; browsers always do, so its absence is no rebinding.
        None => None,
        Some(host) if host_allowed(&host, api_addr, &config.api_allowed_hosts) => Some(host),
        Some(host) => return Err(("host", ApiError::ForbiddenHost(crate::extract::clip(&host)))),
    };
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(None) };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    match origin_allowed(origin, host.as_deref(), api_addr.port(), &config.api_allowed_origins) {
        OriginCheck::SameSite => Ok(None),
        OriginCheck::Configured => Ok(HeaderValue::from_str(origin).ok()),
        OriginCheck::Foreign => Err(("origin", ApiError::ForbiddenOrigin(crate::extract::clip(origin)))),
    }
}

fn reject(state: &ApiState, reason: &'static str, error: ApiError) -> Response {
    state.shared.metrics.rejected(reason);
    error.into_response()
}

fn add_cors(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
}

/// Splits `host[:port]` (with `[v6]:port` brackets) and returns the host, lowercased.
fn host_name(host: &str) -> String {
    let host = host.trim().to_ascii_lowercase();
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((inside, _)) = rest.split_once(']') {
            return inside.to_string();
        }
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
        _ => host,
    }
}

/// Whether the API answers to this `Host` header.
pub(crate) fn host_allowed(host: &str, api_addr: SocketAddr, allowed: &[String]) -> bool {
    let name = host_name(host);
    if matches!(name.as_str(), "localhost" | "127.0.0.1" | "::1") {
        return true;
    }
    match name.parse::<IpAddr>() {
        // Rebinding needs a DNS name: a bare IP address cannot be rebound, so when the API
        // listens on every interface, any of the machine's addresses is fine.
        Ok(ip) if ip == api_addr.ip() || api_addr.ip().is_unspecified() => return true,
        _ => {}
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().to_ascii_lowercase();
        let entry_name = host_name(&entry);
        if entry_name == entry.trim_start_matches('[').trim_end_matches(']') {
            // A bare name allows every port.
            entry_name == name
        } else {
            entry == host.trim().to_ascii_lowercase()
        }
    })
}

/// How an `Origin` header relates to the API.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum OriginCheck {
    /// The API's own origin (the dashboard, a same-origin page).
    SameSite,
    /// Another origin the settings allow: it gets CORS headers.
    Configured,
    /// Anything else.
    Foreign,
}

/// Checks an `Origin` against the API's own origins and the configured ones.
pub(crate) fn origin_allowed(origin: &str, host: Option<&str>, port: u16, allowed: &[String]) -> OriginCheck {
    let origin = origin.to_ascii_lowercase();
    let own = [format!("http://localhost:{port}"), format!("http://127.0.0.1:{port}"), format!("http://[::1]:{port}")];
    // Same-origin: the page was loaded from the very host the browser is now talking to.
    let same_host = host.is_some_and(|h| origin == format!("http://{}", h.trim().to_ascii_lowercase()));
    if own.contains(&origin) || same_host {
        OriginCheck::SameSite
    } else if allowed.iter().any(|a| a.trim().trim_end_matches('/').eq_ignore_ascii_case(&origin)) {
        OriginCheck::Configured
    } else {
        OriginCheck::Foreign
    }
}

fn check_token(request: &Request, token: &str) -> Result<(), ApiError> {
    let presented = match request.headers().get(header::AUTHORIZATION) {
        Some(value) => {
            let value = value.to_str().map_err(|_| ApiError::Unauthorized("the Authorization header is not text"))?;
            let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(ApiError::Unauthorized("use Authorization: Bearer <token>"));
            }
            credentials.trim().to_string()
        }
        None if request.method() == Method::GET => match query_token(request) {
            Some(token) => token,
            None => return Err(ApiError::Unauthorized(MISSING)),
        },
        None => return Err(ApiError::Unauthorized(MISSING)),
    };
    if presented.as_bytes().ct_eq(token.as_bytes()).into() {
        Ok(())
    } else {
        Err(ApiError::Unauthorized(WRONG_TOKEN))
    }
}

const MISSING: &str = "send Authorization: Bearer <token>; the token is in <data-dir>/api-token";
const WRONG_TOKEN: &str = "wrong token; it is in <data-dir>/api-token";

fn query_token(request: &Request) -> Option<String> {
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri()).ok()?.0;
    pairs.into_iter().find(|(k, _)| k == TOKEN_PARAM).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let loopback: SocketAddr = "127.0.0.1:7711".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7711".parse().unwrap();
        let allowed = vec!["pos-1.local".to_string(), "till:8080".to_string()];
        for host in ["localhost", "localhost:7711", "127.0.0.1:9", "[::1]:7711", "LOCALHOST", "pos-1.local:7711"] {
            assert!(host_allowed(host, loopback, &allowed), "{host}");
        }
        for host in ["evil.example", "evil.example:7711", "localhost.evil.example", "192.168.1.5:7711", "till:9090", ""]
        {
            assert!(!host_allowed(host, loopback, &allowed), "{host}");
        }
        assert!(host_allowed("till:8080", loopback, &allowed));
        assert!(host_allowed("192.168.1.5:7711", any, &allowed));
        assert!(!host_allowed("evil.example", any, &allowed));
    }

    #[test]
    fn origins() {
        let allowed = vec!["http://localhost:3000".to_string()];
        assert_eq!(origin_allowed("http://127.0.0.1:7711", None, 7711, &allowed), OriginCheck::SameSite);
        assert_eq!(
            origin_allowed("http://pos-1.local:7711", Some("pos-1.local:7711"), 7711, &allowed),
            OriginCheck::SameSite
        );
        assert_eq!(origin_allowed("http://localhost:3000", None, 7711, &allowed), OriginCheck::Configured);
        for foreign in ["http://127.0.0.1:7712", "https://127.0.0.1:7711", "http://evil.example", "null", ""] {
            assert_eq!(
                origin_allowed(foreign, Some("127.0.0.1:7711"), 7711, &allowed),
                OriginCheck::Foreign,
                "{foreign}"
            );
        }
    }
}
