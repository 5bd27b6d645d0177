//! Request parsing with limits, every failure an [`ApiError`]: JSON bodies (content type, size,
//! syntax versus shape), path segments and query strings. Axum's own extractors answer in plain
//! text; these keep the error shape of the contract.

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Uri};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::{ApiError, ApiState};

/// Query parameter that carries the token for clients that cannot set headers (GET only).
pub(crate) const TOKEN_PARAM: &str = "token";
/// Most query parameters one request may carry.
const QUERY_PARAMS_MAX: usize = 64;

/// A JSON body, required, parsed into `T`.
pub(crate) struct JsonBody<T>(pub T);

/// A JSON body that may be absent (an empty body).
pub(crate) struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<ApiState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<JsonBody<T>, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = read_body(&parts.headers, body, state.body_bytes_max()).await?;
        if bytes.is_empty() {
            return Err(ApiError::BadJson("this request needs a JSON body".into()));
        }
        check_json_content_type(&parts.headers)?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned> FromRequest<ApiState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<OptionalJsonBody<T>, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = read_body(&parts.headers, body, state.body_bytes_max()).await?;
        if bytes.is_empty() {
            return Ok(OptionalJsonBody(None));
        }
        check_json_content_type(&parts.headers)?;
        parse_json(&bytes).map(|value| OptionalJsonBody(Some(value)))
    }
}

/// Reads the whole body, refusing it as soon as it passes `limit` bytes, so a huge body costs
/// at most `limit` bytes of memory.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0).min(limit as u64) as usize);
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadJson(format!("cannot read the body: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Accepts `application/json` and `application/*+json`, with any parameters.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Err(ApiError::UnsupportedMediaType);
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Malformed JSON is 400; well-formed JSON of the wrong shape is 422.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Invalid(e.to_string()),
        _ => ApiError::BadJson(format!("malformed JSON: {e}")),
    })
}

/// Path segments, decoded, with decoding failures in the error shape.
pub(crate) struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<ApiPath<T>, ApiError> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(ApiError::BadPath(rejection.body_text())),
        }
    }
}

/// The query string as decoded pairs, without the token. Parameters not in `known` (nor
/// starting with one of `known_prefixes`) are refused, so a typo is reported, not ignored.
pub(crate) fn query_pairs(
    uri: &Uri,
    known: &[&str],
    known_prefixes: &[&str],
) -> Result<Vec<(String, String)>, ApiError> {
    let decoded = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::BadQuery(format!("cannot decode the query string: {}", e.body_text())))?
        .0;
    let mut pairs = Vec::new();
    for (key, value) in decoded {
        if pairs.len() == QUERY_PARAMS_MAX {
            return Err(ApiError::BadQuery(format!("at most {QUERY_PARAMS_MAX} query parameters")));
        }
        if key == TOKEN_PARAM {
            continue;
        }
        if !known.contains(&key.as_str()) && !known_prefixes.iter().any(|p| key.starts_with(p)) {
            let mut allowed: Vec<String> = known.iter().map(|k| k.to_string()).collect();
            allowed.extend(known_prefixes.iter().map(|p| format!("{p}FIELD")));
            return Err(ApiError::BadQuery(format!(
                "unknown query parameter {:?}; this endpoint takes {}",
                clip(&key),
                if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") }
            )));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

/// The value of a query parameter that may appear once.
pub(crate) fn single<'a>(pairs: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = pairs.iter().filter(|(k, _)| k == key);
    let first = found.next().map(|(_, v)| v.as_str());
    if found.next().is_some() {
        return Err(ApiError::BadQuery(format!("query parameter {key:?} given more than once")));
    }
    Ok(first)
}

/// A numeric query parameter within `range`.
pub(crate) fn number_param(
    pairs: &[(String, String)],
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ApiError> {
    match single(pairs, key)? {
        None => Ok(None),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::BadQuery(format!(
                "{key} must be an integer from {} to {}, not {:?}",
                range.start(),
                range.end(),
                clip(text)
            ))),
        },
    }
}

/// Shortens user input quoted back in messages.
pub(crate) fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Runs blocking node work (SQLite reads, synchronous writes) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| ApiError::Internal(format!("request task failed: {e}")))?
}

/// Like [`blocking`], for work that reads the store: at most `STORE_READS_MAX` run at once, so
/// reads reuse the store's open read connections instead of opening one each. The permit is held
/// by the work itself, so a request abandoned by its client still counts until its read ends.
pub(crate) async fn store_read<T: Send + 'static>(
    state: &ApiState,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = state.shared.reads.clone().acquire_owned().await.map_err(|_| ApiError::Unavailable)?;
    blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
}
