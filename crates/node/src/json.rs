//! JSON at the edge: write bodies into core values (with the reserved `_scope` and `_id` keys),
//! and records and conflicts into the documents of the API contract.

use meshsync_core::Value;
use serde_json::{json, Map};

use crate::{Conflict, NodeError, Record};

/// Fields of a write body
pub type Fields = Vec<(String, Value)>;

/// Splits a JSON object into fields, an optional scope change and an optional `_id`.
/// Keys starting with `_` are reserved: `_scope` and `_id` are understood, others refused.
#[allow(clippy::type_complexity)]
pub fn fields_from_json(
    body: &serde_json::Value,
) -> Result<(Fields, Option<Option<String>>, Option<String>), NodeError> {
    let object =
        body.as_object().ok_or_else(|| NodeError::Invalid("the body must be a JSON object of fields".into()))?;
    let mut fields = Vec::with_capacity(object.len());
    let mut scope = None;
    let mut id = None;
    for (key, value) in object {
        match key.as_str() {
            "_scope" => {
                scope = Some(match value {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s.clone()),
                    _ => return Err(NodeError::Invalid("_scope must be a string or null".into())),
                })
            }
            "_id" => {
                id = Some(value.as_str().ok_or_else(|| NodeError::Invalid("_id must be a string".into()))?.to_string())
            }
            reserved if reserved.starts_with('_') => {
                return Err(NodeError::Invalid(format!(
                    "field name {reserved:?} is reserved (names starting with '_')"
                )))
            }
            _ => fields.push((
                key.clone(),
                Value::from_json_checked(value).map_err(|e| NodeError::Invalid(format!("field {key:?}: {e}")))?,
            )),
        }
    }
    Ok((fields, scope, id))
}

/// The record document of the API contract.
pub fn record_json(record: &Record) -> serde_json::Value {
    let fields: Map<String, serde_json::Value> = record.fields.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
    json!({
        "collection": record.collection,
        "id": record.id,
        "fields": fields,
        "scope": record.scope,
        "deleted": record.deleted,
        "updated_at": record.updated.to_rfc3339(),
        "conflicts": record.conflicts,
        "cursor": record.lsn,
    })
}

/// The conflict document of the API contract.
pub fn conflict_json(conflict: &Conflict) -> serde_json::Value {
    let side = |s: &crate::ConflictSide| json!({"value": s.value.to_json(), "device": s.device.to_string(), "at": s.at.to_rfc3339()});
    json!({
        "id": conflict.id,
        "collection": conflict.collection,
        "record": conflict.record,
        "field": conflict.field,
        "kept": side(&conflict.kept),
        "lost": side(&conflict.lost),
        "detected_at": meshsync_core::hlc::rfc3339_from_ms(conflict.detected_ms),
    })
}
