//! Peers, sync, invites, members and audit. This build has no peer links yet, so these answer
//! what is true of a node without them: static peers from the settings, never connected; one
//! member, this device; an empty audit log; invites refused with `sync_unavailable`. The shapes
//! are those of the contract, so clients written now keep working when sync arrives.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meshsync_node::config::check_peer_addr;
use meshsync_node::DeviceId;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::docs::{
    AuditLog, Errors, Invite, MemberList, Paused, PeerDocument, PeerList, PeerRemoved, PeerTest, Reconnecting,
    SyncState,
};
use crate::extract::{blocking, clip, ApiPath, JsonBody};
use crate::system::update_config;
use crate::{ApiError, ApiState};

/// How long a connection test waits.
const PEER_TEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest invite lifetime: 30 days.
const INVITE_TTL_S_MAX: u64 = 30 * 24 * 3600;
/// Most uses of one invite.
const INVITE_USES_MAX: u32 = 10_000;
/// Most scopes one invite grants.
const INVITE_SCOPES_MAX: usize = 64;

/// The peer document of a static peer that no link has reached.
fn static_peer_json(addr: &str) -> Value {
    json!({
        "device_id": null, "name": null, "addrs": [addr], "state": "disconnected", "sources": ["static"],
        "last_seen": null, "rtt_ms": null, "last_sync": null, "lag": null,
    })
}

/// Finds a static peer by address (or, once links exist, by device id).
fn find_peer(state: &ApiState, peer: &str) -> Result<String, ApiError> {
    state
        .config()
        .peers
        .into_iter()
        .find(|addr| addr.eq_ignore_ascii_case(peer))
        .ok_or_else(|| ApiError::NotFound(format!("no peer {:?}; GET /v1/peers lists them", clip(peer))))
}

/// Known peers and their state.
#[utoipa::path(
    get, path = "/v1/peers", tag = "peers",
    responses((status = 200, description = "Known peers", body = PeerList), Errors)
)]
pub(crate) async fn list_peers(State(state): State<ApiState>) -> Json<Value> {
    let peers: Vec<Value> = state.config().peers.iter().map(|addr| static_peer_json(addr)).collect();
    Json(json!({"peers": peers}))
}

/// A static peer to add.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddPeerBody {
    /// `host:port`, e.g. `192.168.1.20:7710`.
    addr: String,
}

/// Add a static peer (saved in the settings).
#[utoipa::path(
    post, path = "/v1/peers", tag = "peers",
    request_body = AddPeerBody,
    responses(
        (status = 201, description = "Added", body = PeerDocument),
        (status = 200, description = "Already known", body = PeerDocument),
        Errors
    )
)]
pub(crate) async fn add_peer(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<AddPeerBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let addr = body.addr.trim().to_string();
    check_peer_addr(&addr)?;
    let mut added = false;
    update_config(&state, |config| {
        if !config.peers.iter().any(|p| p.eq_ignore_ascii_case(&addr)) {
            config.peers.push(addr.clone());
            added = true;
        }
        Ok(())
    })
    .await?;
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(static_peer_json(&addr))))
}

/// Remove a static peer, by address (or device id).
#[utoipa::path(
    delete, path = "/v1/peers/{device}", tag = "peers",
    params(("device" = String, Path, description = "The peer's address (host:port) or device id")),
    responses((status = 200, description = "Removed", body = PeerRemoved), Errors)
)]
pub(crate) async fn remove_peer(
    State(state): State<ApiState>,
    ApiPath(peer): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let addr = find_peer(&state, &peer)?;
    update_config(&state, |config| {
        config.peers.retain(|p| *p != addr);
        Ok(())
    })
    .await?;
    Ok(Json(json!({"removed": addr})))
}

/// Try a TCP connection to a known peer (3 s timeout).
#[utoipa::path(
    post, path = "/v1/peers/{device}/test", tag = "peers",
    params(("device" = String, Path, description = "The peer's address (host:port) or device id")),
    responses((status = 200, description = "The outcome", body = PeerTest), Errors)
)]
pub(crate) async fn test_peer(
    State(state): State<ApiState>,
    ApiPath(peer): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let addr = find_peer(&state, &peer)?;
    let started = Instant::now();
    let outcome = match tokio::time::timeout(PEER_TEST_TIMEOUT, tokio::net::TcpStream::connect(addr.as_str())).await {
        Ok(Ok(_stream)) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {} s", PEER_TEST_TIMEOUT.as_secs())),
    };
    Ok(Json(match outcome {
        Ok(rtt) => json!({"addr": addr, "reachable": true, "rtt_ms": rtt.as_secs_f64() * 1000.0, "error": null}),
        Err(error) => json!({"addr": addr, "reachable": false, "rtt_ms": null, "error": error}),
    }))
}

/// Drop and re-dial every peer link.
#[utoipa::path(
    post, path = "/v1/sync/reconnect", tag = "peers",
    responses((status = 202, description = "Links being re-dialed (none without peer links)", body = Reconnecting), Errors)
)]
pub(crate) async fn sync_reconnect() -> (StatusCode, Json<Value>) {
    (StatusCode::ACCEPTED, Json(json!({"reconnecting": 0})))
}

/// Pause sync. Local reads and writes go on.
#[utoipa::path(
    post, path = "/v1/sync/pause", tag = "peers",
    responses((status = 200, description = "Paused", body = Paused), Errors)
)]
pub(crate) async fn sync_pause(State(state): State<ApiState>) -> Json<Value> {
    state.set_paused(true);
    Json(json!({"paused": true}))
}

/// Resume sync.
#[utoipa::path(
    post, path = "/v1/sync/resume", tag = "peers",
    responses((status = 200, description = "Resumed", body = Paused), Errors)
)]
pub(crate) async fn sync_resume(State(state): State<ApiState>) -> Json<Value> {
    state.set_paused(false);
    Json(json!({"paused": false}))
}

/// Sync progress: this node's version vector and per-peer state.
#[utoipa::path(
    get, path = "/v1/sync/state", tag = "peers",
    responses((status = 200, description = "Sync state", body = SyncState), Errors)
)]
pub(crate) async fn sync_state(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let node = state.node().clone();
    let vector =
        blocking(move || node.store().version_vector().map_err(|e| crate::error::from_store(e, "", ""))).await?;
    let vector: serde_json::Map<String, Value> =
        vector.iter().map(|(device, seq)| (device.to_string(), json!(seq))).collect();
    Ok(Json(json!({"paused": state.paused(), "vector": vector, "peers": []})))
}

/// An invite request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    /// `admin`, `writer` or `reader` (default `writer`).
    #[serde(default)]
    role: Option<String>,
    /// Scopes granted (default: none).
    #[serde(default)]
    scopes: Vec<String>,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    ttl_s: Option<u64>,
    /// How many devices may use it (default 1).
    #[serde(default)]
    uses: Option<u32>,
}

/// Create an invite for a new device. Not available in this build: node-to-node sync is not
/// there yet, so the request is checked and then refused with 409 `sync_unavailable`.
#[utoipa::path(
    post, path = "/v1/invites", tag = "group",
    request_body = InviteBody,
    responses((status = 201, description = "The invite (once sync exists)", body = Invite), Errors)
)]
pub(crate) async fn create_invite(JsonBody(body): JsonBody<InviteBody>) -> Result<Json<Value>, ApiError> {
    if let Some(role) = &body.role {
        if !matches!(role.as_str(), "admin" | "writer" | "reader") {
            return Err(ApiError::Invalid(format!("role {:?}: use admin, writer or reader", clip(role))));
        }
    }
    if body.scopes.len() > INVITE_SCOPES_MAX {
        return Err(ApiError::Invalid(format!("at most {INVITE_SCOPES_MAX} scopes")));
    }
    if body
        .scopes
        .iter()
        .any(|s| s.is_empty() || s.len() > meshsync_core::record::SCOPE_BYTES_MAX || s.chars().any(char::is_control))
    {
        return Err(ApiError::Invalid(format!(
            "scopes: use 1-{} bytes without control characters",
            meshsync_core::record::SCOPE_BYTES_MAX
        )));
    }
    if body.ttl_s.is_some_and(|t| t == 0 || t > INVITE_TTL_S_MAX) {
        return Err(ApiError::Invalid(format!("ttl_s: use 1 to {INVITE_TTL_S_MAX}")));
    }
    if body.uses.is_some_and(|u| u == 0 || u > INVITE_USES_MAX) {
        return Err(ApiError::Invalid(format!("uses: use 1 to {INVITE_USES_MAX}")));
    }
    Err(ApiError::Conflict {
        code: "sync_unavailable",
        message: "node-to-node sync is not in this build yet, so there is no group to invite a device to".into(),
    })
}

/// The group's members. Without sync, the group is this device, its admin.
#[utoipa::path(
    get, path = "/v1/members", tag = "group",
    responses((status = 200, description = "Members", body = MemberList), Errors)
)]
pub(crate) async fn list_members(State(state): State<ApiState>) -> Json<Value> {
    let node = state.node();
    Json(json!({"members": [{
        "device_id": node.device_id().to_string(), "name": node.name(), "role": "admin", "scopes": [], "revoked": false,
    }]}))
}

/// Revoke a member's access.
#[utoipa::path(
    post, path = "/v1/members/{device}/revoke", tag = "group",
    params(crate::docs::DevicePath),
    responses((status = 200, description = "Revoked", body = crate::docs::Member), Errors)
)]
pub(crate) async fn revoke_member(
    State(state): State<ApiState>,
    ApiPath(device): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let device: DeviceId = device.parse().map_err(|e| ApiError::Invalid(format!("device: {e}")))?;
    if device == state.node().device_id() {
        return Err(ApiError::Conflict {
            code: "cannot_revoke_self",
            message: "a node cannot revoke itself; revoke it from another admin device".into(),
        });
    }
    Err(ApiError::NotFound(format!("device {device} is not a member of this group")))
}

/// The audit log: joins, revocations, refused connections and writes, sync sessions.
#[utoipa::path(
    get, path = "/v1/audit", tag = "group",
    responses((status = 200, description = "Audit entries, newest first", body = AuditLog), Errors)
)]
pub(crate) async fn audit() -> Json<Value> {
    Json(json!({"entries": []}))
}
