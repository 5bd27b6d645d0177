//! Peers, sync, invites and members. When the node runs a mesh, these answer from it: its peer
//! table, its links (pause, resume, reconnect, connection tests), its group (invites) and the
//! devices it has met (members). A node without a mesh (an embedding app that never started
//! one, or the tests) answers what is true of it: static peers from the settings, never
//! connected; one member, this device; invites refused with `sync_unavailable`. The shapes are
//! the same either way. Invites created are audited; the audit log itself is in `audit.rs`.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use meshsync_core::hlc::rfc3339_from_ms;
use meshsync_node::config::check_peer_addr;
use meshsync_node::membership::Role;
use meshsync_node::mesh::{InviteOptions, Mesh, PeerInfo};
use meshsync_node::{audit, DeviceId};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::docs::{
    Errors, Invite, MemberList, Paused, PeerDocument, PeerList, PeerRemoved, PeerTest, Reconnecting, SyncState,
};
use crate::extract::{blocking, clip, ApiPath, JsonBody};
use crate::system::update_config;
use crate::{ApiError, ApiState};

/// How long a connection test waits without a mesh (a TCP connect).
const PEER_TEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a connection test through the mesh waits in all (a TLS handshake per address).
const MESH_TEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest invite lifetime: 30 days.
const INVITE_TTL_S_MAX: u64 = 30 * 24 * 3600;
/// Invite lifetime when the request names none: one hour.
const INVITE_TTL_S_DEFAULT: u64 = 3600;
/// Most uses of one invite.
const INVITE_USES_MAX: u32 = 10_000;
/// Most scopes one invite grants.
const INVITE_SCOPES_MAX: usize = 64;

/// The peer document of a static peer that no link has reached.
fn static_peer_json(addr: &str) -> Value {
    json!({
        "device_id": null, "name": null, "addrs": [addr], "state": "disconnected", "sources": ["static"],
        "last_seen": null, "rtt_ms": null, "last_sync": null, "lag": null,
        "last_error": null, "last_dial": null, "received": 0, "sent": 0, "caught_up": false,
    })
}

/// The peer document of an entry of the mesh's peer table.
fn peer_json(peer: &PeerInfo) -> Value {
    json!({
        "device_id": peer.device_id,
        "name": peer.name,
        "addrs": peer.addrs,
        "state": peer.state,
        "sources": peer.sources,
        "last_seen": peer.last_seen_ms.map(rfc3339_from_ms),
        "rtt_ms": peer.rtt_ms,
        "last_sync": peer.last_sync_ms.map(rfc3339_from_ms),
        // Without a device id nothing is known of what the peer has.
        "lag": peer.device_id.as_ref().map(|_| peer.lag),
        "last_error": peer.last_error,
        "last_dial": peer.last_dial.as_ref().map(|d| json!({
            "at": rfc3339_from_ms(d.at_ms),
            "tried": d.tried.iter().map(|t| json!({"addr": t.addr, "error": t.error})).collect::<Vec<_>>(),
            "connected": d.connected,
        })),
        "received": peer.received,
        "sent": peer.sent,
        "caught_up": peer.caught_up,
    })
}

/// The mesh's peer table, read off the async threads (it reads the store's version vector).
async fn mesh_peers(mesh: &Mesh) -> Result<Vec<PeerInfo>, ApiError> {
    let mesh = mesh.clone();
    blocking(move || Ok(mesh.peers())).await
}

/// Whether a peer table entry is the one `key` (a device id or an address) names.
fn matches(peer: &PeerInfo, key: &str) -> bool {
    match key.parse::<DeviceId>() {
        Ok(device) => peer.device_id.as_deref() == Some(device.to_string().as_str()),
        Err(_) => peer.addrs.iter().any(|a| a.eq_ignore_ascii_case(key)),
    }
}

/// Makes the mesh forget every peer `key` names, closing their links; whether there was one.
/// An address that belongs to a device forgets the device (its link included), since the mesh
/// would otherwise keep the link of an entry it no longer lists. Blocking: call it off the async
/// threads.
pub(crate) fn forget(mesh: &Mesh, key: &str) -> bool {
    let mut removed = false;
    for peer in mesh.peers().into_iter().filter(|p| matches(p, key)) {
        match &peer.device_id {
            Some(device) => removed |= mesh.remove_peer(device),
            None => {
                for addr in peer.addrs.iter().filter(|a| a.eq_ignore_ascii_case(key)) {
                    removed |= mesh.remove_peer(addr);
                }
            }
        }
    }
    removed
}

/// The static peer of the settings that `peer` names (addresses compare case-insensitively).
fn config_peer(state: &ApiState, peer: &str) -> Option<String> {
    state.config().peers.into_iter().find(|addr| addr.eq_ignore_ascii_case(peer))
}

fn no_such_peer(peer: &str) -> ApiError {
    ApiError::NotFound(format!("no peer {:?}; GET /v1/peers lists them", clip(peer)))
}

/// Known peers and their state.
#[utoipa::path(
    get, path = "/v1/peers", tag = "peers",
    responses((status = 200, description = "Known peers", body = PeerList), Errors)
)]
pub(crate) async fn list_peers(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let peers: Vec<Value> = match state.node().mesh() {
        Some(mesh) => mesh_peers(mesh).await?.iter().map(peer_json).collect(),
        None => state.config().peers.iter().map(|addr| static_peer_json(addr)).collect(),
    };
    Ok(Json(json!({"peers": peers})))
}

/// A static peer to add.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddPeerBody {
    /// `host:port`, e.g. `192.168.1.20:7710`.
    addr: String,
}

/// Add a static peer: saved in the settings, and dialed at once when the mesh runs.
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
    let Some(mesh) = state.node().mesh() else {
        return Ok((status, Json(static_peer_json(&addr))));
    };
    mesh.add_peer(&addr);
    let document = mesh_peers(mesh)
        .await?
        .iter()
        .find(|p| matches(p, &addr))
        .map(peer_json)
        .unwrap_or_else(|| static_peer_json(&addr));
    Ok((status, Json(document)))
}

/// Forget a peer, by address or device id.
///
/// The peer is removed from the settings (an address) and from the mesh, whose link to it
/// closes. A device that is still a member of the group may connect again.
#[utoipa::path(
    delete, path = "/v1/peers/{device}", tag = "peers",
    params(("device" = String, Path, description = "The peer's address (host:port) or device id")),
    responses((status = 200, description = "Removed", body = PeerRemoved), Errors)
)]
pub(crate) async fn remove_peer(
    State(state): State<ApiState>,
    ApiPath(peer): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let peer = peer.trim().to_string();
    // Static addresses to drop from the settings: the one named, or those of the device named.
    let mut addrs: Vec<String> = config_peer(&state, &peer).into_iter().collect();
    let mut in_mesh = false;
    if let Some(mesh) = state.node().mesh().cloned() {
        let key = peer.clone();
        let (found, device_addrs) = blocking(move || {
            let device_addrs: Vec<String> =
                mesh.peers().into_iter().filter(|p| matches(p, &key)).flat_map(|p| p.addrs).collect();
            Ok((forget(&mesh, &key), device_addrs))
        })
        .await?;
        in_mesh = found;
        let config = state.config();
        for addr in device_addrs {
            if let Some(saved) = config.peers.iter().find(|p| p.eq_ignore_ascii_case(&addr)) {
                if !addrs.contains(saved) {
                    addrs.push(saved.clone());
                }
            }
        }
    }
    if addrs.is_empty() && !in_mesh {
        return Err(no_such_peer(&peer));
    }
    if !addrs.is_empty() {
        update_config(&state, |config| {
            config.peers.retain(|p| !addrs.contains(p));
            Ok(())
        })
        .await?;
    }
    let removed = match peer.parse::<DeviceId>() {
        Ok(device) => device.to_string(),
        Err(_) => addrs.first().cloned().unwrap_or(peer),
    };
    Ok(Json(json!({"removed": removed})))
}

/// Test a connection to a known peer.
///
/// With the mesh: dial it and complete the mutual-TLS handshake (up to 10 s
/// in all), timing the handshake. Without: a TCP connection (3 s timeout).
#[utoipa::path(
    post, path = "/v1/peers/{device}/test", tag = "peers",
    params(("device" = String, Path, description = "The peer's address (host:port) or device id")),
    responses((status = 200, description = "The outcome", body = PeerTest), Errors)
)]
pub(crate) async fn test_peer(
    State(state): State<ApiState>,
    ApiPath(peer): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let peer = peer.trim().to_string();
    let saved = config_peer(&state, &peer);
    let outcome = match state.node().mesh() {
        Some(mesh) => {
            let entry = mesh_peers(mesh).await?.into_iter().find(|p| matches(p, &peer));
            // Only known peers are tested: the API does not dial arbitrary addresses.
            let key = match (&entry, &saved) {
                (Some(entry), _) => match peer.parse::<DeviceId>() {
                    Ok(device) => device.to_string(),
                    Err(_) => entry.addrs.iter().find(|a| a.eq_ignore_ascii_case(&peer)).cloned().unwrap_or(peer),
                },
                (None, Some(saved)) => saved.clone(),
                (None, None) => return Err(no_such_peer(&peer)),
            };
            let outcome = match tokio::time::timeout(MESH_TEST_TIMEOUT, mesh.test_peer(&key)).await {
                Ok(Ok(rtt_ms)) => Ok(rtt_ms as f64),
                Ok(Err(error)) => Err(error),
                Err(_) => Err(format!("no handshake within {} s", MESH_TEST_TIMEOUT.as_secs())),
            };
            (key, outcome)
        }
        None => {
            let addr = saved.ok_or_else(|| no_such_peer(&peer))?;
            let started = Instant::now();
            let outcome =
                match tokio::time::timeout(PEER_TEST_TIMEOUT, tokio::net::TcpStream::connect(addr.as_str())).await {
                    Ok(Ok(_stream)) => Ok(started.elapsed().as_secs_f64() * 1000.0),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} s", PEER_TEST_TIMEOUT.as_secs())),
                };
            (addr, outcome)
        }
    };
    Ok(Json(match outcome {
        (addr, Ok(rtt_ms)) => json!({"addr": addr, "reachable": true, "rtt_ms": rtt_ms, "error": null}),
        (addr, Err(error)) => json!({"addr": addr, "reachable": false, "rtt_ms": null, "error": error}),
    }))
}

/// Drop every peer link and dial every known peer again now (backoff reset).
#[utoipa::path(
    post, path = "/v1/sync/reconnect", tag = "peers",
    responses((status = 202, description = "Links being re-dialed (none without a mesh)", body = Reconnecting), Errors)
)]
pub(crate) async fn sync_reconnect(State(state): State<ApiState>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Some(mesh) = state.node().mesh() else {
        return Ok((StatusCode::ACCEPTED, Json(json!({"reconnecting": 0}))));
    };
    let dialable = mesh_peers(mesh).await?.iter().filter(|p| !p.addrs.is_empty()).count();
    mesh.reconnect();
    Ok((StatusCode::ACCEPTED, Json(json!({"reconnecting": dialable}))))
}

/// Pause sync: stop sending changes to peers (links stay open). Local reads and writes go on.
///
/// In this version a paused node still applies the changes its peers send.
#[utoipa::path(
    post, path = "/v1/sync/pause", tag = "peers",
    responses((status = 200, description = "Paused", body = Paused), Errors)
)]
pub(crate) async fn sync_pause(State(state): State<ApiState>) -> Json<Value> {
    state.set_paused(true);
    Json(json!({"paused": true}))
}

/// Resume sync: every link sends what waited.
#[utoipa::path(
    post, path = "/v1/sync/resume", tag = "peers",
    responses((status = 200, description = "Resumed", body = Paused), Errors)
)]
pub(crate) async fn sync_resume(State(state): State<ApiState>) -> Json<Value> {
    state.set_paused(false);
    Json(json!({"paused": false}))
}

/// Sync progress: this node's version vector and, per peer device, what it has acknowledged.
#[utoipa::path(
    get, path = "/v1/sync/state", tag = "peers",
    responses((status = 200, description = "Sync state", body = SyncState), Errors)
)]
pub(crate) async fn sync_state(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let node = state.node().clone();
    let (vector, peers) = blocking(move || {
        let vector = node.store().version_vector().map_err(|e| crate::error::from_store(e, "", ""))?;
        Ok((vector, node.mesh().map(Mesh::peers).unwrap_or_default()))
    })
    .await?;
    let vector: serde_json::Map<String, Value> =
        vector.iter().map(|(device, seq)| (device.to_string(), json!(seq))).collect();
    let peers: Vec<Value> = peers
        .iter()
        .filter(|p| p.device_id.is_some())
        .map(|p| {
            let acked: serde_json::Map<String, Value> =
                p.acked.iter().map(|(device, seq)| (device.to_string(), json!(seq))).collect();
            json!({
                "device_id": p.device_id, "name": p.name, "state": p.state, "acked": acked, "lag": p.lag,
                "last_sync": p.last_sync_ms.map(rfc3339_from_ms), "received": p.received, "sent": p.sent,
                "caught_up": p.caught_up,
            })
        })
        .collect();
    Ok(Json(json!({"paused": state.paused(), "vector": vector, "peers": peers})))
}

/// An invite request.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InviteBody {
    /// `admin`, `writer` or `reader` (default `writer`). Not enforced yet.
    #[serde(default)]
    role: Option<String>,
    /// Scopes granted (default: none). Not enforced yet.
    #[serde(default)]
    scopes: Vec<String>,
    /// Lifetime in seconds (default 3600), 1 to 30 days' worth. Advisory for now.
    #[serde(default)]
    ttl_s: Option<u64>,
    /// How many devices may use it (default 1). Not enforced yet.
    #[serde(default)]
    uses: Option<u32>,
    /// Whether the code carries this node's addresses (default true). Without them the code is
    /// shorter and the new device finds the group by discovery (mDNS, beacon, rendezvous).
    #[serde(default)]
    addrs: Option<bool>,
}

/// Create an invite for a new device.
///
/// The answer is a code (and the same as an SVG QR code) that carries the group's key and this
/// node's addresses; `meshsync run --join CODE` on the new device uses it. Needs the mesh (409
/// `sync_unavailable` without one). Not enforced yet (access control comes later): `role`,
/// `scopes` and `uses` are checked and echoed, but a device that joins can read and write
/// everything, any number of devices may use the code, and `expires_at` is advisory (the code
/// carries the group key; treat it like a password).
#[utoipa::path(
    post, path = "/v1/invites", tag = "group",
    request_body = InviteBody,
    responses((status = 201, description = "The invite", body = Invite), Errors)
)]
pub(crate) async fn create_invite(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<InviteBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
    let Some(mesh) = state.node().mesh().cloned() else {
        return Err(ApiError::Conflict {
            code: "sync_unavailable",
            message: "this node runs no mesh (node-to-node sync), so there is no group to invite a device to".into(),
        });
    };
    let ttl_s = body.ttl_s.unwrap_or(INVITE_TTL_S_DEFAULT);
    let role = body.role.as_deref().map(Role::parse).unwrap_or(Some(Role::Writer)).expect("checked above");
    let uses = body.uses.unwrap_or(1);
    let include_addrs = body.addrs.unwrap_or(true);
    let options = InviteOptions { role, scopes: body.scopes.clone(), uses, ttl_s, include_addrs };
    let node = state.node().clone();
    let scopes = body.scopes.clone();
    // Reads the network interfaces, signs, renders the QR code and waits for the audit entry's
    // commit: off the async threads.
    let (code, expires_ms, qr_svg) = blocking(move || {
        let (code, expires_ms) = mesh.create_invite(&options)?;
        let qr_svg = qr_svg(&code)?;
        // Recorded before the code is handed out; never the code itself: it carries the group key.
        let detail = json!({
            "role": role.name(), "scopes": scopes, "uses": uses, "expires_at": rfc3339_from_ms(expires_ms),
            "addrs": include_addrs,
        });
        node.audit_wait(audit::INVITE_CREATED, None, detail)?;
        Ok((code, expires_ms, qr_svg))
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "code": code,
            "expires_at": rfc3339_from_ms(expires_ms),
            "qr_svg": qr_svg,
            "role": role.name(),
            "scopes": body.scopes,
            "uses": uses,
        })),
    ))
}

/// The invite code as an SVG QR code. Codes are upper-case letters, digits and `-`, which QR's
/// alphanumeric mode packs densely; medium error correction, low if the code is too long for it.
fn qr_svg(code: &str) -> Result<String, ApiError> {
    use qrcode::render::svg;
    use qrcode::{EcLevel, QrCode};
    let qr = QrCode::with_error_correction_level(code, EcLevel::M)
        .or_else(|_| QrCode::with_error_correction_level(code, EcLevel::L))
        .map_err(|e| ApiError::Internal(format!("cannot draw the invite as a QR code: {e}")))?;
    Ok(qr.render::<svg::Color<'_>>().min_dimensions(256, 256).quiet_zone(true).build())
}

/// The group's members.
///
/// This device, its admin, and every device the mesh has met. Roles and scopes are not enforced
/// yet: every member other than this device shows as a `writer`.
#[utoipa::path(
    get, path = "/v1/members", tag = "group",
    responses((status = 200, description = "Members", body = MemberList), Errors)
)]
pub(crate) async fn list_members(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let node = state.node().clone();
    let Some(roster) = node.roster() else {
        // No group (an embedding app without sync): this device alone, and it may do anything.
        return Ok(Json(json!({"members": [{
            "device_id": node.device_id().to_string(), "name": node.name(), "role": "admin", "scopes": [],
            "revoked": false, "founder": true, "this_device": true, "invited_by": null, "revoked_by": null,
        }]})));
    };
    let names: std::collections::HashMap<String, String> = match node.mesh() {
        Some(mesh) => mesh_peers(mesh).await?.into_iter().filter_map(|p| Some((p.device_id?, p.name?))).collect(),
        None => Default::default(),
    };
    let me = node.device_id();
    let mut members: Vec<Value> = roster
        .members()
        .map(|(device, member)| {
            let id = device.to_string();
            let name = if *device == me { Some(node.name()) } else { names.get(&id).cloned() };
            json!({
                "device_id": id,
                "name": name,
                "role": member.role.name(),
                "scopes": member.scopes,
                "revoked": !member.active(),
                "founder": *device == roster.founder(),
                "this_device": *device == me,
                "invited_by": member.entry.as_ref().map(|e| e.invite.issuer().to_string()),
                "revoked_by": member.revoked_by.map(|d| d.to_string()),
            })
        })
        .collect();
    members.sort_by(|a, b| {
        (b["founder"] == true, a["device_id"].as_str()).cmp(&(a["founder"] == true, b["device_id"].as_str()))
    });
    Ok(Json(json!({"members": members})))
}

/// Revoke a member's access.
///
/// Only an admin may revoke. The revocation is signed by this device and spreads through the
/// mesh: every node closes the device's sessions at once, refuses it from then on, and refuses
/// changes it made after the last one this node had.
#[utoipa::path(
    post, path = "/v1/members/{device}/revoke", tag = "group",
    params(crate::docs::DevicePath),
    responses((status = 200, description = "Revoked", body = crate::docs::Revoked), Errors)
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
    let Some(mesh) = state.node().mesh().cloned() else {
        return Err(ApiError::Conflict {
            code: "sync_unavailable",
            message: "this node runs no mesh (node-to-node sync), so it has no group members to revoke".into(),
        });
    };
    let revocation = blocking(move || mesh.revoke(device).map_err(ApiError::from)).await?;
    let node = state.node();
    let member = node.roster().and_then(|r| r.member(device).cloned());
    Ok(Json(json!({
        "device_id": device.to_string(),
        "name": null,
        "role": member.as_ref().map(|m| m.role.name()),
        "scopes": member.as_ref().map(|m| m.scopes.clone()).unwrap_or_default(),
        "revoked": true,
        "revoked_after_seq": revocation.after_seq,
    })))
}
