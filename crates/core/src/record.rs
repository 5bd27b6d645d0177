//! The state of one record as a set of field versions, how changes merge into it, how local
//! operations become changes, and what the application sees (the materialized record).
//!
//! Each field holds the versions that no other version dominates, grouped by the policy they were
//! written under (a schema change starts a new group instead of mixing rules). Inside a group:
//! - `lww`, `fww`, `max`, `min`: version `w` dominates `v` when `w`'s writer had seen `v`
//!   (`w.ctx` covers `v.dot`). Versions that remain side by side are concurrent.
//! - `counter`: each origin keeps one version, its running total; a later one from the same
//!   origin replaces the earlier.
//!
//! A tombstone hides, and drops, every version older than itself. The field's visible value comes
//! from the group of its newest version. This makes merge a join: the result depends only on the
//! set of changes received, never on their order or repetition.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::DeviceId;
use crate::hlc::Hlc;
use crate::name::{check_field, NameError, WRITE_FIELDS_MAX};
use crate::policy::{Policy, Schema};
use crate::value::Value;
use crate::vv::{Ctx, Dot};

/// Reserved field that carries a record's scope in a change.
pub const SCOPE_FIELD: &str = "_scope";
/// Longest scope, in bytes.
pub const SCOPE_BYTES_MAX: usize = 128;

/// One write of one field: its value and provenance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version {
    /// The rule the writer wrote it under.
    pub policy: Policy,
    /// The value (for counters, the writer's running total).
    pub value: Value,
    /// When it was written.
    pub hlc: Hlc,
    /// Who wrote it, and their write number.
    pub dot: Dot,
    /// What the writer had seen of this field.
    pub ctx: Ctx,
}

impl Version {
    fn stamp(&self) -> (Hlc, DeviceId, u64) {
        (self.hlc, self.dot.origin, self.dot.seq)
    }

    fn dominates(&self, other: &Version) -> bool {
        debug_assert_eq!(self.policy, other.policy);
        if self.policy == Policy::Counter {
            self.dot.origin == other.dot.origin && self.dot.seq > other.dot.seq
        } else {
            self.ctx.covers(&other.dot)
        }
    }
}

/// A delete: when, and by which write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tombstone {
    /// When the record was deleted.
    pub hlc: Hlc,
    /// The delete's write.
    pub dot: Dot,
}

impl Tombstone {
    fn stamp(&self) -> (Hlc, DeviceId, u64) {
        (self.hlc, self.dot.origin, self.dot.seq)
    }
}

/// One field of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellWrite {
    /// The field (or [`SCOPE_FIELD`]).
    pub field: String,
    /// The policy it is written under.
    pub policy: Policy,
    /// The value.
    pub value: Value,
    /// What the writer had seen of this field.
    pub ctx: Ctx,
}

/// The unit of replication: everything one write did to one record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The collection.
    pub collection: String,
    /// The record id.
    pub record: String,
    /// When it was written.
    pub hlc: Hlc,
    /// Who wrote it and their write number.
    pub dot: Dot,
    /// Whether this write deleted the record.
    pub delete: bool,
    /// The fields it wrote (possibly only those not yet superseded).
    pub cells: Vec<CellWrite>,
}

/// Everything known about one record: its tombstone and its fields' undominated versions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordState {
    tombstone: Option<Tombstone>,
    /// Field name to versions sorted by (policy, hlc, origin, seq).
    fields: BTreeMap<String, Vec<Version>>,
}

/// Why a local operation was refused. A refused operation changes nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    /// A bad field name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Nothing to write.
    #[error("the write sets no fields")]
    NoFields,
    /// Too many fields in one write.
    #[error("one write sets at most {max} fields")]
    TooManyFields {
        /// The limit.
        max: usize,
    },
    /// A first-writer-wins field already holds a different value.
    #[error("field {field:?} is first-writer-wins and already set; resolve or delete the record to change it")]
    FieldAlreadySet {
        /// The field.
        field: String,
    },
    /// An append-only record already exists with different content.
    #[error("record already exists in append-only collection with different content")]
    AppendOnlyExists,
    /// Append-only records cannot be changed, incremented or deleted.
    #[error("records of an append-only collection cannot be {action}")]
    AppendOnlyImmutable {
        /// What was attempted.
        action: &'static str,
    },
    /// A counter operand or a counter's target is not a number.
    #[error("field {field:?} is a counter and needs a number")]
    NotANumber {
        /// The field.
        field: String,
    },
    /// Incrementing a field that is not a counter.
    #[error("field {field:?} is {policy}, not counter; declare it as counter in the schema to increment it")]
    NotACounter {
        /// The field.
        field: String,
        /// Its policy.
        policy: Policy,
    },
    /// The counter would leave the 64-bit integer range.
    #[error("counter {field:?} would overflow")]
    CounterOverflow {
        /// The field.
        field: String,
    },
    /// A scope that is not a string of 1 to 128 bytes (or null).
    #[error("scope must be null or a string of 1 to 128 bytes without control characters")]
    BadScope,
    /// Nothing to resolve on that field.
    #[error("field {field:?} has no conflict")]
    NoConflict {
        /// The field.
        field: String,
    },
    /// The record does not exist.
    #[error("record not found")]
    NotFound,
}

/// A local operation on one record, before it gets a timestamp.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Sets fields (partial update); optionally sets (`Some(Some)`) or clears (`Some(None)`)
    /// the scope.
    Put {
        /// Fields to set.
        fields: Vec<(String, Value)>,
        /// Scope change, if any.
        scope: Option<Option<String>>,
    },
    /// Writes an immutable event (append-only collections) or creates a record.
    Append {
        /// The event's fields.
        fields: Vec<(String, Value)>,
        /// The event's scope.
        scope: Option<String>,
    },
    /// Deletes the record.
    Delete,
    /// Adds to a counter field.
    Incr {
        /// The counter.
        field: String,
        /// The amount (integer or float; may be negative).
        by: Value,
    },
    /// Resolves a field's conflict by writing `value` (or the current winner) over every
    /// concurrent version.
    Resolve {
        /// The field.
        field: String,
        /// The chosen value; `None` keeps the winner.
        value: Option<Value>,
    },
}

/// What a local operation will write, before the clock assigns it a timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Whether it deletes the record.
    pub delete: bool,
    /// The fields it writes.
    pub cells: Vec<CellWrite>,
}

impl Plan {
    /// Whether the operation would change nothing (an idempotent retry, say).
    pub fn is_noop(&self) -> bool {
        !self.delete && self.cells.is_empty()
    }

    /// Attaches a timestamp and write number.
    pub fn into_change(self, collection: &str, record: &str, hlc: Hlc, dot: Dot) -> Change {
        Change {
            collection: collection.to_string(),
            record: record.to_string(),
            hlc,
            dot,
            delete: self.delete,
            cells: self.cells,
        }
    }
}

/// A conflict on one field: the winning version and one concurrent loser.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldConflict {
    /// The field.
    pub field: String,
    /// The version the rule picked.
    pub kept: Version,
    /// A concurrent version that lost.
    pub lost: Version,
}

/// Where a field's visible value comes from: the versions written under the policy in force and
/// the one that shows. Versions superseded by a later write are not kept, so this is the field's
/// current provenance, not its whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldVersions<'a> {
    /// The policy in force (that of the field's newest version).
    pub policy: Policy,
    /// The versions side by side under that policy: concurrent writes, or for a counter each
    /// device's running total. Sorted by (hlc, origin, seq).
    pub versions: &'a [Version],
    /// The version whose value shows; `None` for a counter, whose value is the sum of all.
    pub winner: Option<&'a Version>,
}

/// The record as the application sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Materialized {
    /// Visible field values.
    pub fields: BTreeMap<String, Value>,
    /// The record's scope.
    pub scope: Option<String>,
    /// Whether the record is deleted (a tombstone and no newer field).
    pub deleted: bool,
    /// Newest timestamp of anything visible, or of the delete.
    pub updated: Hlc,
    /// Number of unresolved conflicts.
    pub conflicts: usize,
}

fn checked_add(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.checked_add(*y).map(Value::Int),
        _ => {
            let sum = a.as_f64()? + b.as_f64()?;
            sum.is_finite().then_some(Value::Float(sum))
        }
    }
}

fn checked_sub(a: &Value, b: &Value) -> Option<Value> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.checked_sub(*y).map(Value::Int),
        _ => {
            let diff = a.as_f64()? - b.as_f64()?;
            diff.is_finite().then_some(Value::Float(diff))
        }
    }
}

/// Sums counter totals; integer while it fits, float beyond.
fn counter_sum<'a>(values: impl Iterator<Item = &'a Value>) -> Value {
    let mut int_sum: i128 = 0;
    let mut float_sum = 0.0f64;
    let mut any_float = false;
    for value in values {
        match value {
            Value::Int(i) => int_sum += i128::from(*i),
            Value::Float(f) => {
                any_float = true;
                float_sum += f;
            }
            _ => {}
        }
    }
    if !any_float {
        if let Ok(i) = i64::try_from(int_sum) {
            return Value::Int(i);
        }
    }
    Value::Float(float_sum + int_sum as f64)
}

fn check_scope(scope: &Option<String>) -> Result<(), WriteError> {
    match scope {
        Some(s) if s.is_empty() || s.len() > SCOPE_BYTES_MAX || s.chars().any(char::is_control) => {
            Err(WriteError::BadScope)
        }
        _ => Ok(()),
    }
}

fn scope_value(scope: &Option<String>) -> Value {
    scope.as_ref().map(|s| Value::Str(s.clone())).unwrap_or(Value::Null)
}

impl RecordState {
    /// A record nobody has written.
    pub fn new() -> RecordState {
        RecordState::default()
    }

    /// The tombstone, if the record was ever deleted.
    pub fn tombstone(&self) -> Option<Tombstone> {
        self.tombstone
    }

    /// Every field's versions.
    pub fn fields(&self) -> &BTreeMap<String, Vec<Version>> {
        &self.fields
    }

    /// Whether nothing is known about this record.
    pub fn is_empty(&self) -> bool {
        self.tombstone.is_none() && self.fields.is_empty()
    }

    /// Every dot still referenced by this record, sorted, without repeats.
    pub fn dots(&self) -> Vec<Dot> {
        let mut dots: Vec<Dot> = self
            .fields
            .values()
            .flat_map(|versions| versions.iter().map(|v| v.dot))
            .chain(self.tombstone.map(|t| t.dot))
            .collect();
        dots.sort_unstable();
        dots.dedup();
        dots
    }

    /// The highest timestamp held.
    pub fn max_hlc(&self) -> Hlc {
        self.fields.values().flatten().map(|v| v.hlc).chain(self.tombstone.map(|t| t.hlc)).max().unwrap_or(Hlc::ZERO)
    }

    /// Reassembles what remains of the write `dot`, as a change to send to a peer.
    pub fn change_for(&self, collection: &str, record: &str, dot: Dot) -> Option<Change> {
        let mut hlc = None;
        let delete = self.tombstone.is_some_and(|t| {
            let is = t.dot == dot;
            if is {
                hlc = Some(t.hlc);
            }
            is
        });
        let mut cells = Vec::new();
        for (field, versions) in &self.fields {
            for v in versions.iter().filter(|v| v.dot == dot) {
                hlc = Some(v.hlc);
                cells.push(CellWrite {
                    field: field.clone(),
                    policy: v.policy,
                    value: v.value.clone(),
                    ctx: v.ctx.clone(),
                });
            }
        }
        Some(Change { collection: collection.into(), record: record.into(), hlc: hlc?, dot, delete, cells })
    }

    /// Merges a change. Returns whether anything changed. Idempotent, commutative, associative.
    pub fn apply(&mut self, change: &Change) -> bool {
        let mut changed = false;
        if change.delete {
            let tomb = Tombstone { hlc: change.hlc, dot: change.dot };
            if self.tombstone.is_none_or(|t| tomb.stamp() > t.stamp()) {
                self.tombstone = Some(tomb);
                let floor = tomb.stamp();
                self.fields.retain(|_, versions| {
                    let before = versions.len();
                    versions.retain(|v| v.stamp() > floor);
                    changed |= versions.len() != before;
                    !versions.is_empty()
                });
                changed = true;
            }
        }
        let floor = self.tombstone.map(|t| t.stamp());
        for cell in &change.cells {
            let version = Version {
                policy: cell.policy,
                value: cell.value.clone(),
                hlc: change.hlc,
                dot: change.dot,
                ctx: cell.ctx.clone(),
            };
            if floor.is_some_and(|f| version.stamp() < f) {
                continue;
            }
            let versions = self.fields.entry(cell.field.clone()).or_default();
            changed |= insert_version(versions, version);
        }
        changed
    }

    fn effective(&self, field: &str) -> Option<&[Version]> {
        let versions = self.fields.get(field)?;
        let newest = versions.iter().max_by_key(|v| v.stamp())?;
        let start = versions.iter().position(|v| v.policy == newest.policy)?;
        let end =
            versions[start..].iter().position(|v| v.policy != newest.policy).map_or(versions.len(), |n| start + n);
        Some(&versions[start..end])
    }

    /// The winning version of a non-counter group.
    fn winner(group: &[Version]) -> Option<&Version> {
        match group.first()?.policy {
            Policy::Lww => group.iter().max_by_key(|v| v.stamp()),
            Policy::Fww => group.iter().min_by_key(|v| v.stamp()),
            Policy::Max => group.iter().max_by(|a, b| a.value.cmp(&b.value).then(a.stamp().cmp(&b.stamp()))),
            Policy::Min => group.iter().min_by(|a, b| a.value.cmp(&b.value).then(b.stamp().cmp(&a.stamp()))),
            Policy::Counter => None,
        }
    }

    /// The visible value of a field.
    pub fn value(&self, field: &str) -> Option<Value> {
        let group = self.effective(field)?;
        if group[0].policy == Policy::Counter {
            return Some(counter_sum(group.iter().map(|v| &v.value)));
        }
        Self::winner(group).map(|v| v.value.clone())
    }

    /// Where the visible value of `field` comes from; `None` if the record has no such field.
    pub fn field_versions(&self, field: &str) -> Option<FieldVersions<'_>> {
        let versions = self.effective(field)?;
        let policy = versions[0].policy;
        Some(FieldVersions { policy, versions, winner: Self::winner(versions) })
    }

    /// The policy of a field's newest version.
    pub fn policy(&self, field: &str) -> Option<Policy> {
        self.effective(field).map(|g| g[0].policy)
    }

    /// Unresolved conflicts: for `lww` and `fww` fields, every concurrent version whose value
    /// differs from the winner's.
    pub fn conflicts(&self) -> Vec<FieldConflict> {
        let mut out = Vec::new();
        for field in self.fields.keys() {
            let Some(group) = self.effective(field) else { continue };
            if !matches!(group[0].policy, Policy::Lww | Policy::Fww) || group.len() < 2 {
                continue;
            }
            let kept = Self::winner(group).expect("group is not empty");
            for lost in group.iter().filter(|v| v.dot != kept.dot && v.value != kept.value) {
                out.push(FieldConflict { field: field.clone(), kept: kept.clone(), lost: lost.clone() });
            }
        }
        out
    }

    /// Number of unresolved conflicts, without building them.
    pub fn conflict_count(&self) -> usize {
        // Fast path: a field with one version has none.
        if self.fields.values().all(|v| v.len() < 2) {
            return 0;
        }
        self.conflicts().len()
    }

    /// The record's scope.
    pub fn scope(&self) -> Option<String> {
        match self.value(SCOPE_FIELD) {
            Some(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether the record is deleted: a tombstone and no field written after it.
    pub fn is_deleted(&self) -> bool {
        self.tombstone.is_some() && self.fields.keys().all(|f| f == SCOPE_FIELD)
    }

    /// What the application sees.
    pub fn materialize(&self) -> Materialized {
        let mut fields = BTreeMap::new();
        for name in self.fields.keys() {
            if name.starts_with('_') {
                continue;
            }
            if let Some(value) = self.value(name) {
                fields.insert(name.clone(), value);
            }
        }
        Materialized {
            fields,
            scope: self.scope(),
            deleted: self.is_deleted(),
            updated: self.max_hlc(),
            conflicts: self.conflict_count(),
        }
    }

    /// The context a new write of `field` under `policy` carries: everything it supersedes.
    fn ctx_for(&self, field: &str, policy: Policy) -> Ctx {
        let mut ctx = Ctx::new();
        if policy == Policy::Counter {
            return ctx;
        }
        for v in self.fields.get(field).into_iter().flatten().filter(|v| v.policy == policy) {
            ctx.add(v.dot);
            ctx.absorb(&v.ctx);
        }
        ctx
    }

    /// The sum of a field's counter versions, whichever policy its newest version has: what a
    /// counter write builds on (0 when there are none).
    fn counter_value(&self, field: &str) -> Value {
        let versions = self.fields.get(field).into_iter().flatten();
        counter_sum(versions.filter(|v| v.policy == Policy::Counter).map(|v| &v.value))
    }

    fn own_counter_total(&self, field: &str, me: DeviceId) -> Value {
        self.fields
            .get(field)
            .into_iter()
            .flatten()
            .find(|v| v.policy == Policy::Counter && v.dot.origin == me)
            .map(|v| v.value.clone())
            .unwrap_or(Value::Int(0))
    }

    fn counter_cell(&self, field: &str, me: DeviceId, delta: &Value) -> Result<CellWrite, WriteError> {
        let total = checked_add(&self.own_counter_total(field, me), delta)
            .ok_or_else(|| WriteError::CounterOverflow { field: field.to_string() })?;
        Ok(CellWrite { field: field.to_string(), policy: Policy::Counter, value: total, ctx: Ctx::new() })
    }

    fn plan_field(
        &self,
        schema: &Schema,
        me: DeviceId,
        field: &str,
        value: &Value,
    ) -> Result<Option<CellWrite>, WriteError> {
        let policy = schema.policy(field);
        let current = if self.policy(field) == Some(policy) { self.value(field) } else { None };
        let value = match policy {
            Policy::Counter => {
                if value.as_f64().is_none() {
                    return Err(WriteError::NotANumber { field: field.to_string() });
                }
                // Setting a counter adds the difference to the counter's sum, so concurrent
                // increments still count and the writer reads back what it set. Only a field
                // that already shows that sum is left alone: an absent field, or one last written
                // under another policy, is written even when the sum matches.
                let shown = current.is_some();
                let current = self.counter_value(field);
                if shown && current == *value {
                    return Ok(None);
                }
                let delta = checked_sub(value, &current)
                    .ok_or_else(|| WriteError::CounterOverflow { field: field.to_string() })?;
                return self.counter_cell(field, me, &delta).map(Some);
            }
            Policy::Fww => match current {
                Some(existing) if existing == *value => return Ok(None),
                Some(_) => return Err(WriteError::FieldAlreadySet { field: field.to_string() }),
                None => value.clone(),
            },
            Policy::Max => match current {
                Some(existing) if existing >= *value => return Ok(None),
                _ => value.clone(),
            },
            Policy::Min => match current {
                Some(existing) if existing <= *value => return Ok(None),
                _ => value.clone(),
            },
            Policy::Lww => value.clone(),
        };
        Ok(Some(CellWrite { field: field.to_string(), policy, ctx: self.ctx_for(field, policy), value }))
    }

    fn check_fields(fields: &[(String, Value)]) -> Result<(), WriteError> {
        if fields.len() > WRITE_FIELDS_MAX {
            return Err(WriteError::TooManyFields { max: WRITE_FIELDS_MAX });
        }
        for (name, _) in fields {
            check_field(name)?;
        }
        Ok(())
    }

    fn scope_cell(&self, scope: &Option<String>) -> Option<CellWrite> {
        check_scope(scope).ok()?;
        let value = scope_value(scope);
        let live = !self.is_deleted();
        if live && self.value(SCOPE_FIELD).unwrap_or(Value::Null) == value && self.fields.contains_key(SCOPE_FIELD) {
            return None;
        }
        Some(CellWrite {
            field: SCOPE_FIELD.to_string(),
            policy: Policy::Lww,
            ctx: self.ctx_for(SCOPE_FIELD, Policy::Lww),
            value,
        })
    }

    /// Works out what a local operation writes. `me` is this device. Pure: nothing changes
    /// until the caller stamps the plan and applies it.
    pub fn plan(&self, schema: &Schema, me: DeviceId, op: &Op) -> Result<Plan, WriteError> {
        let exists = !self.is_empty() && !self.is_deleted();
        match op {
            Op::Put { fields, scope } => {
                Self::check_fields(fields)?;
                if let Some(scope) = scope {
                    check_scope(scope)?;
                }
                if fields.is_empty() && scope.is_none() {
                    return Err(WriteError::NoFields);
                }
                if schema.append_only {
                    let scope = scope.clone().flatten();
                    return self.plan(schema, me, &Op::Append { fields: fields.clone(), scope });
                }
                let mut cells = Vec::with_capacity(fields.len() + 1);
                for (name, value) in fields {
                    if let Some(cell) = self.plan_field(schema, me, name, value)? {
                        cells.push(cell);
                    }
                }
                if let Some(scope) = scope {
                    cells.extend(self.scope_cell(scope));
                }
                Ok(Plan { delete: false, cells })
            }
            Op::Append { fields, scope } => {
                Self::check_fields(fields)?;
                check_scope(scope)?;
                if fields.is_empty() {
                    return Err(WriteError::NoFields);
                }
                if exists {
                    // A retried append of the same event is fine; different content is not.
                    let current = self.materialize();
                    let same = current.fields.len() == fields.len()
                        && fields.iter().all(|(k, v)| current.fields.get(k) == Some(v))
                        && current.scope == *scope;
                    return if same {
                        Ok(Plan { delete: false, cells: Vec::new() })
                    } else {
                        Err(WriteError::AppendOnlyExists)
                    };
                }
                let mut cells: Vec<CellWrite> = fields
                    .iter()
                    .map(|(name, value)| {
                        let policy = schema.policy(name);
                        let value = value.clone();
                        CellWrite { field: name.clone(), policy, ctx: self.ctx_for(name, policy), value }
                    })
                    .collect();
                if scope.is_some() {
                    cells.extend(self.scope_cell(scope));
                }
                for cell in &cells {
                    if cell.policy == Policy::Counter && cell.value.as_f64().is_none() {
                        return Err(WriteError::NotANumber { field: cell.field.clone() });
                    }
                }
                Ok(Plan { delete: false, cells })
            }
            Op::Delete => {
                if schema.append_only {
                    return Err(WriteError::AppendOnlyImmutable { action: "deleted" });
                }
                if !exists {
                    return Err(WriteError::NotFound);
                }
                Ok(Plan { delete: true, cells: Vec::new() })
            }
            Op::Incr { field, by } => {
                check_field(field)?;
                if schema.append_only {
                    return Err(WriteError::AppendOnlyImmutable { action: "incremented" });
                }
                let policy = schema.policy(field);
                if policy != Policy::Counter {
                    return Err(WriteError::NotACounter { field: field.clone(), policy });
                }
                if by.as_f64().is_none() {
                    return Err(WriteError::NotANumber { field: field.clone() });
                }
                let cell = self.counter_cell(field, me, by)?;
                // Check the counter's sum too, so that reads never overflow.
                let current = self.counter_value(field);
                if checked_add(&current, by).is_none() {
                    return Err(WriteError::CounterOverflow { field: field.clone() });
                }
                Ok(Plan { delete: false, cells: vec![cell] })
            }
            Op::Resolve { field, value } => {
                let group = self.effective(field).ok_or_else(|| WriteError::NoConflict { field: field.clone() })?;
                let policy = group[0].policy;
                if !matches!(policy, Policy::Lww | Policy::Fww) || group.len() < 2 {
                    return Err(WriteError::NoConflict { field: field.clone() });
                }
                let value = match value {
                    Some(v) => v.clone(),
                    None => Self::winner(group).expect("group is not empty").value.clone(),
                };
                Ok(Plan {
                    delete: false,
                    cells: vec![CellWrite { field: field.clone(), policy, ctx: self.ctx_for(field, policy), value }],
                })
            }
        }
    }
}

/// Inserts a version into a field's sorted versions unless something there dominates it;
/// removes what it dominates. Returns whether anything changed.
fn insert_version(versions: &mut Vec<Version>, version: Version) -> bool {
    let same_policy = |v: &&Version| v.policy == version.policy;
    if versions.iter().filter(same_policy).any(|v| v.dot == version.dot || v.dominates(&version)) {
        return false;
    }
    versions.retain(|v| v.policy != version.policy || !version.dominates(v));
    let key = (version.policy, version.stamp());
    let at = versions.partition_point(|v| (v.policy, v.stamp()) < key);
    versions.insert(at, version);
    true
}

/// A stable id for a conflict: 16 hex digits of FNV-1a over its coordinates.
pub fn conflict_id(collection: &str, record: &str, field: &str, lost: &Dot) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    eat(collection.as_bytes());
    eat(record.as_bytes());
    eat(field.as_bytes());
    eat(&lost.origin.0);
    eat(&lost.seq.to_le_bytes());
    format!("{hash:016x}")
}

// ---- canonical encoding ----

#[derive(Serialize, Deserialize)]
struct EncodedVersion {
    policy: Policy,
    value: Value,
    hlc: u64,
    origin: u32,
    seq: u64,
    ctx: Vec<(u32, u64)>,
}

/// The borrowed twin of [`EncodedVersion`]: serializes to the same bytes without cloning values.
#[derive(Serialize)]
struct EncodedVersionRef<'a> {
    policy: Policy,
    value: &'a Value,
    hlc: u64,
    origin: u32,
    seq: u64,
    ctx: Vec<(u32, u64)>,
}

/// The borrowed twin of [`EncodedRecord`].
#[derive(Serialize)]
struct EncodedRecordRef<'a> {
    origins: &'a [DeviceId],
    tombstone: Option<(u64, u32, u64)>,
    fields: Vec<(&'a str, Vec<EncodedVersionRef<'a>>)>,
}

#[derive(Serialize, Deserialize)]
struct EncodedRecord {
    origins: Vec<DeviceId>,
    tombstone: Option<(u64, u32, u64)>,
    fields: Vec<(String, Vec<EncodedVersion>)>,
}

/// Why stored record bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid encoding.
    #[error("record state is corrupt: {0}")]
    Corrupt(String),
}

impl RecordState {
    /// The canonical encoding: equal states give equal bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut origins: Vec<DeviceId> = Vec::with_capacity(2);
        let mut note = |id: DeviceId| {
            if let Err(at) = origins.binary_search(&id) {
                origins.insert(at, id);
            }
        };
        for v in self.fields.values().flatten() {
            note(v.dot.origin);
            for d in v.ctx.dots() {
                note(d.origin);
            }
        }
        if let Some(t) = self.tombstone {
            note(t.dot.origin);
        }
        let index = |id: &DeviceId| origins.binary_search(id).expect("collected above") as u32;
        let encoded = EncodedRecordRef {
            origins: &origins,
            tombstone: self.tombstone.map(|t| (t.hlc.as_u64(), index(&t.dot.origin), t.dot.seq)),
            fields: self
                .fields
                .iter()
                .map(|(name, versions)| {
                    let versions = versions
                        .iter()
                        .map(|v| EncodedVersionRef {
                            policy: v.policy,
                            value: &v.value,
                            hlc: v.hlc.as_u64(),
                            origin: index(&v.dot.origin),
                            seq: v.dot.seq,
                            ctx: v.ctx.dots().iter().map(|d| (index(&d.origin), d.seq)).collect(),
                        })
                        .collect();
                    (name.as_str(), versions)
                })
                .collect(),
        };
        let mut out = Vec::with_capacity(128);
        out = postcard::to_extend(&encoded, out).expect("encoding to a Vec cannot fail");
        out
    }

    /// Decodes [`RecordState::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<RecordState, DecodeError> {
        let encoded: EncodedRecord = postcard::from_bytes(bytes).map_err(|e| DecodeError::Corrupt(e.to_string()))?;
        let origin = |i: u32| {
            encoded
                .origins
                .get(i as usize)
                .copied()
                .ok_or_else(|| DecodeError::Corrupt(format!("origin index {i} out of range")))
        };
        let tombstone = match encoded.tombstone {
            Some((hlc, o, seq)) => Some(Tombstone { hlc: Hlc::from_u64(hlc), dot: Dot { origin: origin(o)?, seq } }),
            None => None,
        };
        let mut fields = BTreeMap::new();
        for (name, versions) in &encoded.fields {
            let mut out = Vec::with_capacity(versions.len());
            for v in versions {
                let mut ctx = Ctx::new();
                for (o, seq) in &v.ctx {
                    ctx.add(Dot { origin: origin(*o)?, seq: *seq });
                }
                out.push(Version {
                    policy: v.policy,
                    value: v.value.clone(),
                    hlc: Hlc::from_u64(v.hlc),
                    dot: Dot { origin: origin(v.origin)?, seq: v.seq },
                    ctx,
                });
            }
            fields.insert(name.clone(), out);
        }
        Ok(RecordState { tombstone, fields })
    }
}
