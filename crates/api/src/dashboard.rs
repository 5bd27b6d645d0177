//! The dashboard: one HTML page, plain ES modules and one stylesheet from `crates/api/dashboard/`,
//! embedded in the binary (no network, no build step) and served at `/` and `/assets/{file}`.
//! These load without the token (the guard lets them through); the page itself sends the token
//! with every data call. Owns the security headers of the page: a Content-Security-Policy that
//! allows only this origin's scripts and styles (no inline code) and `data:` images (the invite
//! QR code), no framing, no referrer. Knows nothing of what the page shows.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::extract::{clip, ApiPath};
use crate::ApiError;

/// What the page may load and do. `connect-src 'self'` covers the API and its event stream;
/// `img-src data:` the QR code; nothing inline, no plugins, no `<base>`, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

/// Browsers revalidate every load (a 304 costs one loopback round trip), so a new binary's page
/// never runs beside an old script from the cache.
const CACHE_CONTROL: &str = "no-cache";

/// A file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset { name: $name, content_type: $content_type, body: include_bytes!(concat!("../dashboard/", $name)) }
    };
}

/// The page is `index.html`; the rest are served under `/assets/`.
const ASSETS: [Asset; 12] = [
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("dom.js", "text/javascript; charset=utf-8"),
    asset!("overview.js", "text/javascript; charset=utf-8"),
    asset!("peers.js", "text/javascript; charset=utf-8"),
    asset!("sync.js", "text/javascript; charset=utf-8"),
    asset!("conflicts.js", "text/javascript; charset=utf-8"),
    asset!("members.js", "text/javascript; charset=utf-8"),
    asset!("records.js", "text/javascript; charset=utf-8"),
    asset!("log.js", "text/javascript; charset=utf-8"),
];

/// The page's name in [`ASSETS`]; it is served at `/`, not under `/assets/`.
const PAGE: &str = "index.html";

/// Entity tags of the assets, in [`ASSETS`] order: a hash of the content, the same for every
/// process of one binary.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                // SipHash with fixed keys: stable for a given content, which is all a tag needs.
                let mut hasher = std::hash::DefaultHasher::new();
                asset.body.hash(&mut hasher);
                format!("\"{:016x}\"", hasher.finish())
            })
            .collect()
    })
}

fn serve(index: usize, request_headers: &HeaderMap) -> Response {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = request_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim().trim_start_matches("W/") == etag || tag.trim() == "*");
    let mut response = if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("a hex tag is a header value"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The page's URL may still carry `?token=` when it loads its assets.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// The dashboard. Needs no token to load; open it with the URL `meshsync run` prints
/// (`/?token=..`): the page keeps the token for the browser tab and takes it out of the address.
#[utoipa::path(
    get, path = "/", tag = "node", security(()),
    responses((status = 200, description = "The dashboard page", content_type = "text/html", body = String))
)]
pub(crate) async fn dashboard(headers: HeaderMap) -> Response {
    let index = ASSETS.iter().position(|a| a.name == PAGE).expect("the page is an asset");
    serve(index, &headers)
}

/// A script or stylesheet of the dashboard. Needs no token: it holds no data.
#[utoipa::path(
    get, path = "/assets/{file}", tag = "node", security(()),
    params(("file" = String, Path, description = "File name, e.g. `app.js`")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "No such file (not_found)", body = crate::docs::ErrorBody),
    )
)]
pub(crate) async fn dashboard_asset(ApiPath(file): ApiPath<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    match ASSETS.iter().position(|a| a.name == file && a.name != PAGE) {
        Some(index) => Ok(serve(index, &headers)),
        None => Err(ApiError::NotFound(format!("no dashboard file {:?}", clip(&file)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names and values from peers reach the page as text only: no script of the dashboard may
    /// use a markup sink, and the page has no inline handlers (the CSP would block them anyway).
    #[test]
    fn no_markup_sinks_and_no_inline_code() {
        for asset in &ASSETS {
            let text = std::str::from_utf8(asset.body).expect("assets are UTF-8");
            for sink in [".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
                assert!(!text.contains(sink), "{} uses {sink}", asset.name);
            }
        }
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert_eq!(ASSETS[0].name, PAGE);
        for inline in [" onclick=", " onload=", " onerror=", " style=", "<script>", "javascript:"] {
            assert!(!page.contains(inline), "the page has {inline}");
        }
    }

    #[test]
    fn every_module_the_page_imports_is_embedded() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in &ASSETS {
            let text = std::str::from_utf8(asset.body).expect("assets are UTF-8");
            for quote in ['"', '\''] {
                for (i, _) in text.match_indices(&format!("{quote}./")) {
                    let rest = &text[i + 3..];
                    let name = &rest[..rest.find(quote).unwrap_or(0)];
                    assert!(names.contains(&name), "{} refers to {name:?}, which is not embedded", asset.name);
                }
                for (i, _) in text.match_indices(&format!("{quote}/assets/")) {
                    let rest = &text[i + 9..];
                    let name = &rest[..rest.find(quote).unwrap_or(0)];
                    assert!(names.contains(&name), "{} refers to {name:?}, which is not embedded", asset.name);
                }
            }
        }
    }
}
