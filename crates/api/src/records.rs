//! Records, schemas, conflicts and messages: the data endpoints. Writes go to the store's
//! asynchronous write path and answer once durable; reads run on the blocking pool. Names and
//! values are checked here or by the node, and a refused request changes nothing.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use meshsync_core::{name, Op, Policy, Schema};
use meshsync_node::{conflict_json, fields_from_json, record_json, DeviceId, ListQuery, LIST_LIMIT_MAX};
use meshsync_store::{LocalWrite, WriteOutcome};
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::docs::{
    CollectionList, CollectionPath, ConflictList, Errors, FieldsBody, MessageDocument, RecordDocument, RecordList,
    RecordPath, RecordVersions, SchemaDocument,
};
use crate::error::from_store;
use crate::extract::{
    blocking, clip, number_param, query_pairs, single, store_read, ApiPath, JsonBody, OptionalJsonBody,
};
use crate::{ApiError, ApiState};

/// Most `where.FIELD=VALUE` filters in one list request.
pub(crate) const LIST_FILTERS_MAX: usize = 16;
/// Prefix of filter parameters in a list query.
const WHERE_PREFIX: &str = "where.";

fn check_collection(collection: &str) -> Result<(), ApiError> {
    name::check_collection(collection).map_err(|e| ApiError::Invalid(e.to_string()))
}

fn check_record(collection: &str, id: &str) -> Result<(), ApiError> {
    check_collection(collection)?;
    name::check_record_id(id).map_err(|e| ApiError::Invalid(e.to_string()))
}

/// Performs a local write through the store's future: no blocking thread waits for the disk.
async fn write(state: &ApiState, collection: &str, id: &str, op: Op) -> Result<WriteOutcome, ApiError> {
    check_record(collection, id)?;
    if !state.node().may_write_anything() {
        // A reader, a scoped writer or a revoked device: 403 unless the role and scopes allow it.
        let (node, c, i, o) = (state.node().clone(), collection.to_string(), id.to_string(), op.clone());
        blocking(move || Ok(node.check_write(&c, &i, &o)?)).await?;
    }
    let write = LocalWrite { collection: collection.into(), id: id.into(), op };
    state.node().store().write_async(write).await.map_err(|e| from_store(e, collection, id))
}

/// Set fields of a record (a partial update; creates the record if needed).
#[utoipa::path(
    put, path = "/v1/c/{collection}/{id}", tag = "records",
    params(RecordPath),
    request_body = FieldsBody,
    responses((status = 200, description = "The record after the write", body = RecordDocument), Errors)
)]
pub(crate) async fn put_record(
    State(state): State<ApiState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, ApiError> {
    check_record(&collection, &id)?;
    let (fields, scope, event_id) = fields_from_json(&body)?;
    if event_id.is_some() {
        return Err(ApiError::Invalid(
            "_id names an appended event (POST /v1/c/{collection}); a PUT takes the id from the path".into(),
        ));
    }
    let outcome = write(&state, &collection, &id, Op::Put { fields, scope }).await?;
    Ok(Json(record_json(&outcome.record)))
}

/// Read a record.
#[utoipa::path(
    get, path = "/v1/c/{collection}/{id}", tag = "records",
    params(RecordPath),
    responses((status = 200, description = "The record", body = RecordDocument), Errors)
)]
pub(crate) async fn get_record(
    State(state): State<ApiState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_record(&collection, &id)?;
    let node = state.node().clone();
    let (c, i) = (collection.clone(), id.clone());
    match store_read(&state, move || Ok(node.get(&c, &i)?)).await? {
        Some(record) => Ok(Json(record_json(&record))),
        None => Err(ApiError::NotFound(format!("record {collection}/{} not found", clip(&id)))),
    }
}

/// Where each field of a record comes from: per field, the policy in force, the value that
/// shows, the write that put it there (device and time), and every version kept beside it
/// (concurrent writes, a counter's per-device totals). Deleted records answer too. Writes that a
/// later one superseded are not kept, so this is the provenance of the current values, not a
/// full history.
#[utoipa::path(
    get, path = "/v1/c/{collection}/{id}/versions", tag = "records",
    params(RecordPath),
    responses((status = 200, description = "The record's field versions", body = RecordVersions), Errors)
)]
pub(crate) async fn record_versions(
    State(state): State<ApiState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    check_record(&collection, &id)?;
    let node = state.node().clone();
    let (c, i) = (collection.clone(), id.clone());
    let found =
        store_read(&state, move || node.store().record_state(&c, &i).map_err(|e| from_store(e, &c, &i))).await?;
    let Some((record, cursor)) = found else {
        return Err(ApiError::NotFound(format!("record {collection}/{} not found", clip(&id))));
    };
    Ok(Json(versions_json(&collection, &id, &record, cursor)))
}

/// The document of `GET /v1/c/{collection}/{id}/versions`.
fn versions_json(collection: &str, id: &str, record: &meshsync_core::RecordState, cursor: u64) -> Value {
    let writer = |hlc: meshsync_core::Hlc, dot: meshsync_core::Dot| json!({"device": dot.origin.to_string(), "at": hlc.to_rfc3339(), "seq": dot.seq});
    let fields: Vec<Value> = record
        .fields()
        .keys()
        .filter(|field| !field.starts_with('_'))
        .filter_map(|field| {
            let provenance = record.field_versions(field)?;
            let versions: Vec<Value> = provenance
                .versions
                .iter()
                .map(|v| {
                    let wins = provenance.winner.is_none_or(|w| w.dot == v.dot);
                    json!({
                        "value": v.value.to_json(), "device": v.dot.origin.to_string(), "at": v.hlc.to_rfc3339(),
                        "seq": v.dot.seq, "wins": wins,
                    })
                })
                .collect();
            Some(json!({
                "field": field,
                "policy": provenance.policy.name(),
                "value": record.value(field).map(|v| v.to_json()),
                "writer": provenance.winner.map(|w| writer(w.hlc, w.dot)),
                "versions": versions,
            }))
        })
        .collect();
    let materialized = record.materialize();
    json!({
        "collection": collection,
        "id": id,
        "deleted": materialized.deleted,
        "deleted_by": record.tombstone().map(|t| writer(t.hlc, t.dot)),
        "updated_at": materialized.updated.to_rfc3339(),
        "cursor": cursor,
        "fields": fields,
    })
}

/// The application collections that hold records, by name: what there is to browse.
#[utoipa::path(
    get, path = "/v1/collections", tag = "records",
    responses((status = 200, description = "Collections", body = CollectionList), Errors)
)]
pub(crate) async fn list_collections(State(state): State<ApiState>, uri: Uri) -> Result<Json<Value>, ApiError> {
    query_pairs(&uri, &[], &[])?;
    let node = state.node().clone();
    let names = store_read(&state, move || node.store().collections().map_err(|e| from_store(e, "", ""))).await?;
    let collections: Vec<Value> = names.iter().map(|name| json!({"name": name})).collect();
    Ok(Json(json!({"collections": collections})))
}

/// Delete a record (a tombstone that replicates).
#[utoipa::path(
    delete, path = "/v1/c/{collection}/{id}", tag = "records",
    params(RecordPath),
    responses((status = 200, description = "The record, now deleted", body = RecordDocument), Errors)
)]
pub(crate) async fn delete_record(
    State(state): State<ApiState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let outcome = write(&state, &collection, &id, Op::Delete).await?;
    Ok(Json(record_json(&outcome.record)))
}

/// The body of an increment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct IncrBody {
    /// A field declared `counter` in the collection's schema.
    #[schema(min_length = 1, max_length = 128)]
    field: String,
    /// Amount to add: an integer or a float, possibly negative.
    #[schema(value_type = f64)]
    by: serde_json::Number,
}

/// Add to a counter field.
#[utoipa::path(
    post, path = "/v1/c/{collection}/{id}/incr", tag = "records",
    params(RecordPath),
    request_body = IncrBody,
    responses((status = 200, description = "The record after the increment", body = RecordDocument), Errors)
)]
pub(crate) async fn incr_record(
    State(state): State<ApiState>,
    ApiPath((collection, id)): ApiPath<(String, String)>,
    JsonBody(body): JsonBody<IncrBody>,
) -> Result<Json<Value>, ApiError> {
    check_record(&collection, &id)?;
    let by =
        meshsync_core::Value::from_json(&Value::Number(body.by)).map_err(|e| ApiError::Invalid(format!("by: {e}")))?;
    let outcome = write(&state, &collection, &id, Op::Incr { field: body.field, by }).await?;
    Ok(Json(record_json(&outcome.record)))
}

/// List live records in id order, with equality filters and cursor paging. Filter with
/// `?where.FIELD=VALUE` (repeatable): VALUE is read as JSON when it parses (`7`, `true`,
/// `"7"`), else as a string.
#[utoipa::path(
    get, path = "/v1/c/{collection}", tag = "records",
    params(
        CollectionPath,
        ("limit" = Option<u64>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "The `next` of the previous page"),
    ),
    responses((status = 200, description = "A page of records", body = RecordList), Errors)
)]
pub(crate) async fn list_records(
    State(state): State<ApiState>,
    ApiPath(collection): ApiPath<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    check_collection(&collection)?;
    let pairs = query_pairs(&uri, &["limit", "cursor"], &[WHERE_PREFIX])?;
    let limit = number_param(&pairs, "limit", 1..=LIST_LIMIT_MAX as u64)?.unwrap_or(100) as usize;
    let cursor = single(&pairs, "cursor")?.map(str::to_string);
    let mut filters = Vec::new();
    for (key, text) in &pairs {
        let Some(field) = key.strip_prefix(WHERE_PREFIX) else { continue };
        if filters.len() == LIST_FILTERS_MAX {
            return Err(ApiError::BadQuery(format!("at most {LIST_FILTERS_MAX} where. filters")));
        }
        name::check_field(field).map_err(|e| ApiError::BadQuery(format!("{key}: {e}")))?;
        // `?where.stock=7` means the number, `?where.code="7"` the string, `?where.name=Tea` a string.
        let value = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.clone()));
        filters.push((field.to_string(), value));
    }
    let node = state.node().clone();
    let page = store_read(&state, move || Ok(node.list(&collection, &ListQuery { filters, cursor, limit })?)).await?;
    let records: Vec<Value> = page.records.iter().map(record_json).collect();
    Ok(Json(json!({"records": records, "next": page.next})))
}

/// Append an immutable event (append-only collections) or create a record. Without `_id` in the
/// body an id is generated. Retrying with the same `_id` and content is harmless.
#[utoipa::path(
    post, path = "/v1/c/{collection}", tag = "records",
    params(CollectionPath),
    request_body = FieldsBody,
    responses((status = 201, description = "The appended record", body = RecordDocument), Errors)
)]
pub(crate) async fn append_record(
    State(state): State<ApiState>,
    ApiPath(collection): ApiPath<String>,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    check_collection(&collection)?;
    // Validates the whole body (and reads `_id`) before anything is written.
    let (_, _, id) = fields_from_json(&body)?;
    if let Some(id) = &id {
        name::check_record_id(id).map_err(|e| ApiError::Invalid(format!("_id: {e}")))?;
    }
    let node = state.node().clone();
    let record = blocking(move || Ok(node.append(&collection, id.as_deref(), body)?)).await?;
    Ok((StatusCode::CREATED, Json(record_json(&record))))
}

/// A collection's merge rules.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaBody {
    /// Policy per field: `lww`, `fww`, `counter`, `max` or `min`.
    #[serde(default)]
    fields: BTreeMap<String, String>,
    /// Policy of fields not listed (default `lww`).
    #[serde(default)]
    default: Option<String>,
    /// Records are immutable events.
    #[serde(default)]
    append_only: bool,
}

fn schema_json(collection: &str, schema: &Schema, declared: bool) -> Value {
    let fields: serde_json::Map<String, Value> =
        schema.fields.iter().map(|(field, policy)| (field.clone(), Value::from(policy.name()))).collect();
    json!({
        "collection": collection,
        "fields": fields,
        "default": schema.default.name(),
        "append_only": schema.append_only,
        "declared": declared,
    })
}

/// Declare (or replace) a collection's schema. Schemas replicate like data.
#[utoipa::path(
    put, path = "/v1/schema/{collection}", tag = "schemas",
    params(CollectionPath),
    request_body = SchemaBody,
    responses((status = 200, description = "The schema now in force", body = SchemaDocument), Errors)
)]
pub(crate) async fn put_schema(
    State(state): State<ApiState>,
    ApiPath(collection): ApiPath<String>,
    JsonBody(body): JsonBody<SchemaBody>,
) -> Result<Json<Value>, ApiError> {
    check_collection(&collection)?;
    if body.fields.len() > meshsync_core::policy::SCHEMA_FIELDS_MAX {
        return Err(ApiError::Invalid(format!(
            "a schema declares at most {} fields",
            meshsync_core::policy::SCHEMA_FIELDS_MAX
        )));
    }
    let policy = |text: &str| text.parse::<Policy>().map_err(|e| ApiError::Invalid(e.to_string()));
    let mut schema = Schema { append_only: body.append_only, ..Schema::default() };
    if let Some(default) = &body.default {
        schema.default = policy(default)?;
    }
    for (field, name) in &body.fields {
        schema.fields.insert(field.clone(), policy(name)?);
    }
    schema.validate().map_err(|e| ApiError::Invalid(e.to_string()))?;
    let node = state.node().clone();
    let (c, s) = (collection.clone(), schema.clone());
    blocking(move || Ok(node.declare_schema(&c, s)?)).await?;
    Ok(Json(schema_json(&collection, &schema, true)))
}

/// Read a collection's schema (the defaults, with `declared: false`, if none was declared).
#[utoipa::path(
    get, path = "/v1/schema/{collection}", tag = "schemas",
    params(CollectionPath),
    responses((status = 200, description = "The schema in force", body = SchemaDocument), Errors)
)]
pub(crate) async fn get_schema(
    State(state): State<ApiState>,
    ApiPath(collection): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    check_collection(&collection)?;
    let node = state.node().clone();
    let c = collection.clone();
    let declared = store_read(&state, move || node.store().schema(&c).map_err(|e| from_store(e, &c, ""))).await?;
    Ok(Json(match declared {
        Some(schema) => schema_json(&collection, &schema, true),
        None => schema_json(&collection, &Schema::default(), false),
    }))
}

/// Unresolved conflicts, oldest first.
#[utoipa::path(
    get, path = "/v1/conflicts", tag = "conflicts",
    params(("limit" = Option<u64>, Query, description = "At most this many, 1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Unresolved conflicts", body = ConflictList), Errors)
)]
pub(crate) async fn list_conflicts(State(state): State<ApiState>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(&uri, &["limit"], &[])?;
    let limit = number_param(&pairs, "limit", 1..=LIST_LIMIT_MAX as u64)?.unwrap_or(100) as usize;
    let node = state.node().clone();
    let conflicts = store_read(&state, move || Ok(node.conflicts(limit)?)).await?;
    let conflicts: Vec<Value> = conflicts.iter().map(conflict_json).collect();
    Ok(Json(json!({"conflicts": conflicts})))
}

/// The body of a resolution: `{"value": ..}` writes that value; an absent value (or no body)
/// keeps the current winner.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the body; the handler reads it as a map to tell null from absent.
pub(crate) struct ResolveBody {
    /// The value to keep (may be null). Absent: keep the winner.
    value: Option<serde_json::Value>,
}

/// Resolve a conflict; the resolution replicates like any write.
#[utoipa::path(
    post, path = "/v1/conflicts/{id}/resolve", tag = "conflicts",
    params(("id" = String, Path, description = "Conflict id")),
    request_body(content = Option<ResolveBody>, description = "Optional; absent keeps the winner"),
    responses((status = 200, description = "The record after the resolution", body = RecordDocument), Errors)
)]
pub(crate) async fn resolve_conflict(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    OptionalJsonBody(body): OptionalJsonBody<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let value = match body {
        None => None,
        Some(mut object) => {
            if let Some(key) = object.keys().find(|k| *k != "value") {
                return Err(ApiError::Invalid(format!("unknown key {:?}; the body is {{\"value\": ..}}", clip(key))));
            }
            object.remove("value")
        }
    };
    if id.is_empty() || id.len() > 256 {
        return Err(ApiError::NotFound(format!("no conflict with id {:?}", clip(&id))));
    }
    let node = state.node().clone();
    let record = blocking(move || Ok(node.resolve(&id, value)?)).await?;
    Ok(Json(record_json(&record)))
}

/// An ephemeral message to one device or the whole group.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessageBody {
    /// Device id of the addressee; absent or null for the whole group.
    #[serde(default)]
    #[schema(pattern = "^[A-Z2-7]{9}-[A-Z2-7]{9}-[A-Z2-7]{9}$")]
    to: Option<String>,
    /// Application-chosen type, e.g. `print-receipt` (1-128 bytes).
    #[serde(rename = "type")]
    #[schema(rename = "type", min_length = 1, max_length = 128)]
    kind: String,
    /// Any JSON (at most 64 KiB as text).
    #[serde(default)]
    data: Value,
}

/// Send an ephemeral message. It is delivered to this node's event stream now and to peers once
/// they are connected; it is not stored.
#[utoipa::path(
    post, path = "/v1/messages", tag = "live",
    request_body = MessageBody,
    responses((status = 202, description = "The message as sent", body = MessageDocument), Errors)
)]
pub(crate) async fn send_message(
    State(state): State<ApiState>,
    JsonBody(body): JsonBody<MessageBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let to = match body.to.as_deref() {
        None => None,
        Some(text) => Some(text.parse::<DeviceId>().map_err(|e| ApiError::Invalid(format!("to: {e}")))?),
    };
    let message = state.node().send_message(to, &body.kind, body.data)?;
    Ok((StatusCode::ACCEPTED, Json(crate::events::message_json(&message))))
}
