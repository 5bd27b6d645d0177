//! The node as a whole: status, settings (read, and update with validation), Prometheus metrics
//! and the OpenAPI document.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use meshsync_node::config::Config;
use serde_json::{json, Value};

use crate::docs::{ConfigDocument, ConfigUpdated, Errors, OpenApiJson, Status};
use crate::extract::{blocking, clip, store_read, JsonBody};
use crate::metrics::PeerCounts;
use crate::{ApiError, ApiState};

/// Settings applied while the node runs; a change to any other setting needs a restart.
/// The API reads `api_*` on every request, and static peers are read when they are dialed.
const LIVE_SETTINGS: [&str; 5] = ["name", "peers", "api_body_bytes_max", "api_allowed_hosts", "api_allowed_origins"];

/// The OpenAPI document as served, rendered once when the router is built.
#[derive(Clone)]
pub(crate) struct OpenApiDocument(pub Arc<String>);

/// The OpenAPI document of this API.
#[utoipa::path(
    get, path = "/v1/openapi.json", tag = "node", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", body = OpenApiJson))
)]
pub(crate) async fn openapi_json(Extension(OpenApiDocument(document)): Extension<OpenApiDocument>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document.as_str().to_owned()).into_response()
}

/// Metrics in the Prometheus (OpenMetrics) text format.
#[utoipa::path(
    get, path = "/metrics", tag = "node",
    responses((status = 200, description = "Metrics", content_type = "application/openmetrics-text", body = String), Errors)
)]
pub(crate) async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let counts = counts(&state, false).await?;
    let uptime_s = state.node().uptime().as_secs_f64();
    let text = state.shared.metrics.render(counts.records, counts.conflicts, uptime_s, counts.peers);
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

/// What the status and the metrics read from the node.
struct Counts {
    /// Live application records.
    records: u64,
    /// Unresolved conflicts.
    conflicts: u64,
    /// The last event cursor.
    cursor: u64,
    /// The mesh's peers; `None` without a mesh.
    peers: Option<PeerCounts>,
    /// The group's id (hex), if the node has a group and it was asked for.
    group_id: Option<String>,
}

/// Reads the counts off the async threads (the store, and the mesh's peer table, which reads the
/// store's version vector), and the group's id if `with_group`.
async fn counts(state: &ApiState, with_group: bool) -> Result<Counts, ApiError> {
    let node = state.node().clone();
    store_read(state, move || {
        let store = node.store();
        let count = |r: Result<u64, meshsync_store::StoreError>| r.map_err(|e| crate::error::from_store(e, "", ""));
        let (records, conflicts, cursor) =
            (count(store.record_count())?, count(store.conflict_count())?, count(store.last_lsn())?);
        let (peers, group_id) = match node.mesh() {
            Some(mesh) => {
                let peers = PeerCounts { connected: mesh.connected() as u64, known: mesh.peers().len() as u64 };
                (Some(peers), Some(mesh.group().id_text()))
            }
            None if !with_group => (None, None),
            // Without a mesh the node may still have a group (joined, or from an earlier run).
            None => match node.group() {
                Ok(group) => (None, group.map(|g| g.id_text())),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the group file");
                    (None, None)
                }
            },
        };
        Ok(Counts { records, conflicts, cursor, peers, group_id })
    })
    .await
}

/// The node at a glance.
#[utoipa::path(
    get, path = "/v1/status", tag = "node",
    responses((status = 200, description = "Status", body = Status), Errors)
)]
pub(crate) async fn status(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let counts = counts(&state, true).await?;
    let node = state.node();
    let peers = match counts.peers {
        Some(peers) => json!({"connected": peers.connected, "known": peers.known}),
        // No mesh: the static peers of the settings, never connected.
        None => json!({"connected": 0, "known": state.config().peers.len()}),
    };
    Ok(Json(json!({
        "device_id": node.device_id().to_string(),
        "name": node.name(),
        "group_id": counts.group_id,
        "version": env!("CARGO_PKG_VERSION"),
        "paused": state.paused(),
        "records": counts.records,
        "conflicts": counts.conflicts,
        "peers": peers,
        "listen": node.mesh().map(|mesh| mesh.listen_addr().to_string()),
        "uptime_s": node.uptime().as_secs(),
        "cursor": counts.cursor,
    })))
}

fn config_json(config: &Config) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::to_value(config) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::Internal("the settings do not serialize as an object".into())),
    }
}

/// The node's settings.
#[utoipa::path(
    get, path = "/v1/config", tag = "node",
    responses((status = 200, description = "The settings", body = ConfigDocument), Errors)
)]
pub(crate) async fn get_config(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::Object(config_json(&state.config())?)))
}

/// Change settings. The body holds the settings to change (others keep their values); the
/// result is validated as a whole, saved to the config file, and `name` applies at once. The
/// answer is the new settings plus `restart_required`: the changed settings that take effect
/// on the next start.
#[utoipa::path(
    put, path = "/v1/config", tag = "node",
    request_body = ConfigDocument,
    responses((status = 200, description = "The settings now saved", body = ConfigUpdated), Errors)
)]
pub(crate) async fn put_config(
    State(state): State<ApiState>,
    JsonBody(changes): JsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let _serialized = state.shared.config_update.lock().await;
    let old = state.config();
    let mut merged = config_json(&old)?;
    for (key, value) in changes {
        if !merged.contains_key(&key) {
            return Err(ApiError::Invalid(format!(
                "unknown setting {:?}; see GET /v1/config for the settings",
                clip(&key)
            )));
        }
        merged.insert(key, value);
    }
    let new: Config =
        serde_json::from_value(Value::Object(merged)).map_err(|e| ApiError::Invalid(format!("settings: {e}")))?;
    new.validate()?;
    let old_json = config_json(&old)?;
    let new_json = config_json(&new)?;
    let restart_required: Vec<&String> = new_json
        .iter()
        .filter(|(key, value)| old_json.get(*key) != Some(value) && !LIVE_SETTINGS.contains(&key.as_str()))
        .map(|(key, _)| key)
        .collect();
    if new != old {
        if let Some(path) = state.shared.config_path.clone() {
            let to_save = new.clone();
            blocking(move || Ok(to_save.save(&path)?)).await?;
        }
        if new.name != old.name {
            state.node().set_name(&new.name)?;
        }
        *state.shared.config.write().expect("lock poisoned") = new.clone();
        if let Some(mesh) = state.node().mesh().cloned() {
            // Static peers apply at once: dial the new ones, forget the dropped ones.
            let added: Vec<String> = new.peers.iter().filter(|p| !old.peers.contains(p)).cloned().collect();
            let dropped: Vec<String> = old.peers.iter().filter(|p| !new.peers.contains(p)).cloned().collect();
            blocking(move || {
                for addr in &added {
                    mesh.add_peer(addr);
                }
                for addr in &dropped {
                    crate::peers::forget(&mesh, addr);
                }
                Ok(())
            })
            .await?;
        }
    }
    let mut answer = new_json.clone();
    answer.insert("restart_required".into(), json!(restart_required));
    Ok(Json(Value::Object(answer)))
}

/// Saves settings changed by another endpoint (static peers), serialized with `PUT /v1/config`.
pub(crate) async fn update_config(
    state: &ApiState,
    change: impl FnOnce(&mut Config) -> Result<(), ApiError>,
) -> Result<Config, ApiError> {
    let _serialized = state.shared.config_update.lock().await;
    let mut new = state.config();
    change(&mut new)?;
    new.validate()?;
    if let Some(path) = state.shared.config_path.clone() {
        let to_save = new.clone();
        blocking(move || Ok(to_save.save(&path)?)).await?;
    }
    *state.shared.config.write().expect("lock poisoned") = new.clone();
    Ok(new)
}
