//! `GET /v1/audit`: the node's audit log, newest first, with a cursor, a kind filter and, on
//! request, the check of its hash chain. Also the API's own entries: invites created (see
//! `peers.rs`) and the refusals of the guard in `security.rs`, folded to at most one entry per
//! reason per hour so that a flood of bad requests cannot push real entries out of the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use meshsync_core::hlc::rfc3339_from_ms;
use meshsync_node::{audit, AuditBroken, AuditCheck, AuditEntry, AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX};
use serde_json::{json, Value};

use crate::docs::{AuditLog, Errors};
use crate::extract::{clip, number_param, query_pairs, single, store_read};
use crate::{ApiError, ApiState};

/// Longest `kind` filter, in characters (a kind is at most 64 bytes).
const KIND_FILTER_CHARS_MAX: usize = 64;
/// Refusals of one reason recorded at most this often; those between are counted.
const REFUSAL_INTERVAL: Duration = Duration::from_secs(3600);

/// The audit log, newest first.
///
/// Entries record joins, invites, members admitted and revoked, refused connections and
/// writes, clock-skew refusals, sync sessions and refusals of this API. Each holds the hash of
/// the one before (`prev`) and its own (`hash`, SHA-256 over its fields and `prev`; docs/api.md
/// gives the exact bytes), so a changed, removed or reordered entry shows. Page with `next` as
/// `?before=`. With `?verify=true` the answer also carries `chain`, the check of every link
/// from the oldest entry kept to the newest; it reads the whole log (at most 100,000 entries),
/// so it is off by default and `chain` is null.
#[utoipa::path(
    get, path = "/v1/audit", tag = "group",
    params(
        ("limit" = Option<u64>, Query, description = "At most this many entries, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("before" = Option<u64>, Query, description = "Only entries older than this seq: pass the previous page's `next`", minimum = 1, maximum = 9223372036854775807_u64),
        ("kind" = Option<String>, Query, description = "Only entries whose kind starts with this, e.g. `member.` or `connection.refused`", min_length = 1, max_length = 64, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"),
        ("verify" = Option<bool>, Query, description = "Also check the whole hash chain (`chain`); default false"),
    ),
    responses((status = 200, description = "Audit entries, newest first", body = AuditLog), Errors)
)]
pub(crate) async fn audit_log(State(state): State<ApiState>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(&uri, &["limit", "before", "kind", "verify"], &[])?;
    let limit = number_param(&pairs, "limit", 1..=AUDIT_PAGE_MAX as u64)?.map_or(AUDIT_PAGE_DEFAULT, |n| n as usize);
    let before = number_param(&pairs, "before", 1..=i64::MAX as u64)?;
    let kind = single(&pairs, "kind")?.map(str::to_string);
    if let Some(kind) = &kind {
        if kind.is_empty() || kind.chars().count() > KIND_FILTER_CHARS_MAX || kind.chars().any(char::is_control) {
            return Err(ApiError::BadQuery(format!(
                "kind must be 1-{KIND_FILTER_CHARS_MAX} characters without control characters, not {:?}",
                clip(kind)
            )));
        }
    }
    let verify = match single(&pairs, "verify")? {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(ApiError::BadQuery(format!("verify must be true or false, not {:?}", clip(other)))),
    };
    let node = state.node().clone();
    let (page, chain) = store_read(&state, move || {
        let page = node.audit_page(before, limit, kind.as_deref())?;
        let chain = if verify { Some(node.audit_verify()?) } else { None };
        Ok((page, chain))
    })
    .await?;
    let entries: Vec<Value> = page.entries.iter().map(entry_json).collect();
    Ok(Json(json!({
        "entries": entries,
        "next": page.next,
        "chain": chain.as_ref().map(chain_json),
    })))
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry as the API shows it.
fn entry_json(entry: &AuditEntry) -> Value {
    json!({
        "seq": entry.seq,
        "at": rfc3339_from_ms(entry.at_ms),
        "kind": entry.kind,
        "device": entry.device,
        "detail": entry.detail,
        "hash": hex(&entry.hash),
        "prev": hex(&entry.prev),
    })
}

/// The outcome of a chain check.
fn chain_json(check: &Result<AuditCheck, AuditBroken>) -> Value {
    match check {
        Ok(check) => json!({
            "ok": true, "entries": check.entries, "head": hex(&check.head), "broken_at": null, "reason": null,
        }),
        Err(broken) => json!({
            "ok": false, "entries": broken.verified, "head": null, "broken_at": broken.seq, "reason": broken.reason,
        }),
    }
}

/// Why the guard refused a request, as recorded in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A `Host` header the API does not answer to (DNS rebinding).
    Host,
    /// A foreign `Origin` (a cross-site request from a page in the user's browser).
    Origin,
    /// A token was presented, and it was wrong. A missing token is not recorded: it is what
    /// every misconfigured client sends, and says nothing of an attack.
    Token,
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::Token => "token",
        }
    }
}

/// Per reason: when its last entry was written and the refusals counted since.
#[derive(Default)]
pub(crate) struct Refusals {
    slots: Mutex<[(Option<Instant>, u64); 3]>,
}

impl Refusals {
    /// Counts a refusal; says how many refusals to record now (this one and those folded since
    /// the last entry), or `None` while the last entry of this reason is recent.
    fn count(&self, refusal: Refusal, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().expect("lock poisoned");
        let (last, count) = &mut slots[refusal as usize];
        *count += 1;
        if last.is_some_and(|at| now.duration_since(at) < REFUSAL_INTERVAL) {
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(count))
    }
}

/// Records a refusal of the guard in the audit log, at most once per reason per
/// [`REFUSAL_INTERVAL`]. `value` is the refused host or origin (never a token).
pub(crate) fn record_refusal(state: &ApiState, refusal: Refusal, method: &str, path: &str, value: Option<&str>) {
    let Some(count) = state.shared.refusals.count(refusal, Instant::now()) else { return };
    let mut detail = json!({"reason": refusal.name(), "method": clip(method), "path": clip(path), "count": count});
    if let Some(value) = value {
        detail["value"] = json!(clip(value));
    }
    state.node().audit(audit::API_REFUSED, None, detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_recorded_once_per_reason_per_interval_with_a_count() {
        let refusals = Refusals::default();
        let start = Instant::now();
        assert_eq!(refusals.count(Refusal::Token, start), Some(1), "the first is recorded at once");
        assert_eq!(refusals.count(Refusal::Token, start + Duration::from_secs(1)), None);
        assert_eq!(refusals.count(Refusal::Token, start + Duration::from_secs(2)), None);
        assert_eq!(refusals.count(Refusal::Host, start + Duration::from_secs(2)), Some(1), "reasons apart");
        assert_eq!(refusals.count(Refusal::Token, start + REFUSAL_INTERVAL), Some(3), "two folded in");
        assert_eq!(refusals.count(Refusal::Token, start + REFUSAL_INTERVAL), None);
    }
}
