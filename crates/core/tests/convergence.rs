//! Convergence of the merge core under random multi-device histories, checked against an
//! independent model.
//!
//! Five to seven simulated replicas (clock, device id, write counter, records, version vector,
//! log) perform random local operations: puts on lww, fww, counter, max and min fields,
//! increments, deletes, appends (also to an append-only collection), conflict resolutions, scope
//! changes and schema changes, with skewed wall clocks that sometimes jump backwards. They
//! exchange changes the way the store does: the sender streams, in (origin, seq) order, every
//! write it still references above the receiver's version vector, rebuilt with
//! `RecordState::change_for`; the receiver checks and observes each batch's timestamps, applies
//! the batch atomically and raises its vector to the batch's highest dot per origin. Streams break
//! midway (the rest comes with a retry or a later exchange), carry re-sent changes the receiver
//! already has, and are refused on clock skew.
//!
//! The model never looks inside a `RecordState`. It keeps every operation with the writer's
//! knowledge at that moment (the cells and deletes it had made or received) and derives a record
//! from that alone: tombstone = newest delete; per field, the writes newer than it, the policy
//! group of the newest write, the causally maximal writes of that group and the policy's rule;
//! counters as the sum of each origin's latest running total, where a write's total is its
//! increment plus its origin's previous total, unless a delete its writer knew of is newer than
//! that previous write (as in core, a delete concurrent with an origin's increments does not
//! reset the ones that origin carries forward in a write newer than the delete).
//!
//! Checked:
//! - every local operation: `RecordState::plan` gives exactly what the model predicts from the
//!   writer's knowledge (error kind, no-op, cells, counter totals);
//! - before every local operation and after every exchange, the replica's record materializes as
//!   the model says from the replica's knowledge, whenever the replica holds every delete its
//!   known writes had seen (see `Model::closed` for why only then);
//! - after a final all-pairs exchange until quiet: byte-identical canonical state on every
//!   replica, equal to the model's materialization; every replica's log merged in reverse order
//!   gives the same bytes; states survive encode/decode;
//! - a conflict resolved on a converged replica disappears from every replica once exchanged.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meshsync_core::record::SCOPE_FIELD;
use meshsync_core::{
    Change, Clock, DeviceId, Dot, Hlc, Materialized, Op, Plan, Policy, RecordState, Schema, Value, VersionVector,
    WriteError, CLOCK_DRIFT_MS_MAX_DEFAULT,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{FileFailurePersistence, TestCaseError, TestRunner};

const COLLECTIONS: [&str; 2] = ["tasks", "events"];
const RECORDS: [&str; 2] = ["a", "b"];
/// title: lww, owner: fww, votes: counter, best: max, low: min, note: the schema default (lww).
const FIELDS: [&str; 6] = ["title", "owner", "votes", "best", "low", "note"];
const SCOPES: [&str; 2] = ["team", "me"];
const START_MS: u64 = 1_790_000_000_000;

type Key = (String, String);
type Stamp = (Hlc, DeviceId, u64);

fn tasks_schema() -> Schema {
    let mut schema = Schema::default();
    for (field, policy) in [
        ("title", Policy::Lww),
        ("owner", Policy::Fww),
        ("votes", Policy::Counter),
        ("best", Policy::Max),
        ("low", Policy::Min),
    ] {
        schema.fields.insert(field.to_string(), policy);
    }
    schema
}

fn events_schema() -> Schema {
    Schema { append_only: true, ..Schema::default() }
}

// ---------------------------------------------------------------------------------------------
// Counter arithmetic as documented: integers while every operand is an integer, floats otherwise.
// The generated floats are halves, so sums are exact in any order.

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Float(_))
}

fn num_add(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x + y),
        _ => Value::Float(a.as_f64().unwrap() + b.as_f64().unwrap()),
    }
}

fn num_sub(a: &Value, b: &Value) -> Value {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => Value::Int(x - y),
        _ => Value::Float(a.as_f64().unwrap() - b.as_f64().unwrap()),
    }
}

fn num_sum<'a>(values: impl Iterator<Item = &'a Value>) -> Value {
    values.fold(Value::Int(0), |acc, v| num_add(&acc, v))
}

// ---------------------------------------------------------------------------------------------
// The model.

/// A set of model items (cells and deletes), as a bit set.
#[derive(Clone, Debug, Default)]
struct Known(Vec<u64>);

impl Known {
    fn insert(&mut self, item: usize) {
        let word = item / 64;
        if self.0.len() <= word {
            self.0.resize(word + 1, 0);
        }
        self.0[word] |= 1 << (item % 64);
    }

    fn contains(&self, item: usize) -> bool {
        self.0.get(item / 64).is_some_and(|w| w & (1 << (item % 64)) != 0)
    }

    fn union(&mut self, other: &Known) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn is_subset(&self, other: &Known) -> bool {
        self.0.iter().enumerate().all(|(i, w)| w & !other.0.get(i).copied().unwrap_or(0) == 0)
    }

    fn all(items: usize) -> Known {
        let mut k = Known::default();
        for i in 0..items {
            k.insert(i);
        }
        k
    }
}

/// One operation that happened.
#[derive(Debug)]
struct MOp {
    dot: Dot,
    hlc: Hlc,
    /// The deletes of its record that the writer knew of, directly or through the writes it knew.
    knew_deletes: Known,
}

/// One field written by an operation.
#[derive(Debug, Clone)]
struct MCell {
    field: String,
    policy: Policy,
    /// The value written; for counters, the writer's running total as the model computes it.
    value: Value,
    /// Per origin, the highest write of this field and policy that the writer had seen
    /// (transitively, and not seen deleted). Having seen an origin's n-th write means having
    /// seen its earlier ones: a device's writes are causally ordered by their sequence numbers.
    seen: BTreeMap<DeviceId, u64>,
}

/// A delete (`cell: None`) or one cell of an operation.
#[derive(Debug)]
struct MItem {
    op: usize,
    cell: Option<MCell>,
}

#[derive(Default)]
struct Model {
    ops: Vec<MOp>,
    items: Vec<MItem>,
    by_record: BTreeMap<Key, Vec<usize>>,
    cell_index: HashMap<(Dot, String), usize>,
    delete_index: HashMap<Dot, usize>,
}

/// A field as seen from some knowledge.
#[derive(Debug, Clone)]
struct FieldView {
    policy: Policy,
    value: Value,
    /// How many undominated versions the effective group holds.
    versions: usize,
    conflicts: usize,
}

/// A record as seen from some knowledge.
#[derive(Debug, Clone, Default)]
struct View {
    any: bool,
    tomb: Option<Stamp>,
    updated: Hlc,
    fields: BTreeMap<String, FieldView>,
    /// Per field, the sum of its counter-policy versions, whichever group is effective.
    counter_sums: BTreeMap<String, Value>,
}

impl View {
    fn deleted(&self) -> bool {
        self.tomb.is_some() && self.fields.keys().all(|f| f == SCOPE_FIELD)
    }

    fn exists(&self) -> bool {
        self.any && !self.deleted()
    }

    fn value(&self, field: &str) -> Option<Value> {
        self.fields.get(field).map(|f| f.value.clone())
    }

    fn policy(&self, field: &str) -> Option<Policy> {
        self.fields.get(field).map(|f| f.policy)
    }

    fn materialize(&self) -> Materialized {
        Materialized {
            fields: self
                .fields
                .iter()
                .filter(|(name, _)| !name.starts_with('_'))
                .map(|(name, f)| (name.clone(), f.value.clone()))
                .collect(),
            scope: match self.value(SCOPE_FIELD) {
                Some(Value::Str(s)) => Some(s),
                _ => None,
            },
            deleted: self.deleted(),
            updated: self.updated,
            conflicts: self.fields.values().map(|f| f.conflicts).sum(),
        }
    }

    /// The record as core itself shows it: used to predict `plan` where the model's view may
    /// legitimately differ from core's for a while (see `Model::closed`).
    fn of_core(state: &RecordState) -> View {
        let conflicts = state.conflicts();
        View {
            any: !state.is_empty(),
            tomb: state.tombstone().map(|t| (t.hlc, t.dot.origin, t.dot.seq)),
            updated: state.max_hlc(),
            fields: state
                .fields()
                .iter()
                .map(|(name, versions)| {
                    let policy = state.policy(name).expect("a held field has a policy");
                    let view = FieldView {
                        policy,
                        value: state.value(name).expect("a held field has a value"),
                        versions: versions.iter().filter(|v| v.policy == policy).count(),
                        conflicts: conflicts.iter().filter(|c| c.field == *name).count(),
                    };
                    (name.clone(), view)
                })
                .collect(),
            counter_sums: state
                .fields()
                .iter()
                .map(|(name, versions)| {
                    (name.clone(), num_sum(versions.iter().filter(|v| v.policy == Policy::Counter).map(|v| &v.value)))
                })
                .collect(),
        }
    }
}

impl Model {
    fn stamp(&self, item: usize) -> Stamp {
        let op = &self.ops[self.items[item].op];
        (op.hlc, op.dot.origin, op.dot.seq)
    }

    fn cell(&self, item: usize) -> &MCell {
        self.items[item].cell.as_ref().expect("a cell item")
    }

    fn dot(&self, item: usize) -> Dot {
        self.ops[self.items[item].op].dot
    }

    fn known_items<'a>(&'a self, key: &Key, known: &'a Known) -> impl Iterator<Item = usize> + 'a {
        self.by_record.get(key).into_iter().flatten().copied().filter(|&i| known.contains(i))
    }

    fn tomb(&self, key: &Key, known: &Known) -> Option<Stamp> {
        self.known_items(key, known).filter(|&i| self.items[i].cell.is_none()).map(|i| self.stamp(i)).max()
    }

    /// What a new write of `field` under `policy` has seen: every write of that field and policy
    /// the writer knows and has not seen deleted, and everything those had seen. A counter write
    /// sees nothing: an origin's later total replaces its earlier one by sequence number alone.
    fn seen_for(&self, key: &Key, known: &Known, field: &str, policy: Policy) -> BTreeMap<DeviceId, u64> {
        let mut seen = BTreeMap::new();
        if policy == Policy::Counter {
            return seen;
        }
        let tomb = self.tomb(key, known);
        for i in self.known_items(key, known) {
            let Some(cell) = &self.items[i].cell else { continue };
            if cell.field != field || cell.policy != policy || tomb.is_some_and(|t| self.stamp(i) <= t) {
                continue;
            }
            let dot = self.dot(i);
            for (origin, seq) in std::iter::once((&dot.origin, &dot.seq)).chain(cell.seen.iter()) {
                let entry = seen.entry(*origin).or_insert(0);
                *entry = (*entry).max(*seq);
            }
        }
        seen
    }

    fn knew_deletes_for(&self, key: &Key, known: &Known) -> Known {
        let mut out = Known::default();
        for i in self.known_items(key, known) {
            if self.items[i].cell.is_none() {
                out.insert(i);
            }
            out.union(&self.ops[self.items[i].op].knew_deletes);
        }
        out
    }

    /// Whether `known` holds every delete of the record that its writes' writers had seen.
    ///
    /// Only then must core show what the model shows. A write made after its writer saw a
    /// delete does not record what that delete dropped (core keeps no trace of dropped
    /// versions), so a replica that holds such a write and some of the dropped versions, but not
    /// the delete, can show a conflict between writes that were in fact ordered. The delete
    /// drops those versions once it arrives (every replica gets it: the store streams every
    /// referenced write), which the final checks cover.
    fn closed(&self, key: &Key, known: &Known) -> bool {
        self.knew_deletes_for(key, known).is_subset(known)
    }

    fn dominates(&self, v: usize, w: usize) -> bool {
        let (cv, dv, dw) = (self.cell(v), self.dot(v), self.dot(w));
        if cv.policy == Policy::Counter {
            dv.origin == dw.origin && dv.seq > dw.seq
        } else {
            cv.seen.get(&dw.origin).is_some_and(|s| *s >= dw.seq)
        }
    }

    fn undominated(&self, group: &[usize]) -> Vec<usize> {
        group.iter().copied().filter(|&w| !group.iter().any(|&v| v != w && self.dominates(v, w))).collect()
    }

    /// The record as seen from `known`.
    fn view(&self, key: &Key, known: &Known) -> View {
        let ids: Vec<usize> = self.known_items(key, known).collect();
        let tomb = self.tomb(key, known);
        let live: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| self.items[i].cell.is_some() && tomb.is_none_or(|t| self.stamp(i) > t))
            .collect();
        let mut view = View {
            any: !ids.is_empty(),
            tomb,
            updated: tomb
                .map(|t| t.0)
                .into_iter()
                .chain(live.iter().map(|&i| self.stamp(i).0))
                .max()
                .unwrap_or(Hlc::ZERO),
            ..View::default()
        };
        let mut by_field: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for &i in &live {
            by_field.entry(self.cell(i).field.as_str()).or_default().push(i);
        }
        for (field, cells) in by_field {
            let counters: Vec<usize> =
                cells.iter().copied().filter(|&i| self.cell(i).policy == Policy::Counter).collect();
            let latest = self.undominated(&counters);
            view.counter_sums.insert(field.to_string(), num_sum(latest.iter().map(|&i| &self.cell(i).value)));
            // The newest write is never dominated (whoever saw it wrote later), so it picks the group.
            let newest = *cells.iter().max_by_key(|&&i| self.stamp(i)).expect("not empty");
            let policy = self.cell(newest).policy;
            let group: Vec<usize> = cells.iter().copied().filter(|&i| self.cell(i).policy == policy).collect();
            let maximal = self.undominated(&group);
            let value_of = |i: usize| self.cell(i).value.clone();
            let winner = match policy {
                Policy::Lww => maximal.iter().copied().max_by_key(|&i| self.stamp(i)),
                Policy::Fww => maximal.iter().copied().min_by_key(|&i| self.stamp(i)),
                Policy::Max => maximal.iter().copied().max_by_key(|&i| value_of(i)),
                Policy::Min => maximal.iter().copied().min_by_key(|&i| value_of(i)),
                Policy::Counter => None,
            };
            let value = match winner {
                Some(w) => value_of(w),
                None => num_sum(maximal.iter().map(|&i| &self.cell(i).value)),
            };
            let conflicts = match (policy, winner) {
                (Policy::Lww | Policy::Fww, Some(w)) => {
                    maximal.iter().filter(|&&i| i != w && value_of(i) != value_of(w)).count()
                }
                _ => 0,
            };
            view.fields.insert(field.to_string(), FieldView { policy, value, versions: maximal.len(), conflicts });
        }
        view
    }
}

// ---------------------------------------------------------------------------------------------
// What `plan` must do, from a view of the writer's record.

/// Whether it deletes and its cells as (field, policy, value) sorted by field; or the error's
/// variant name.
type Outcome = Result<(bool, Vec<(String, Policy, Value)>), String>;

fn error_name(e: &WriteError) -> String {
    let text = format!("{e:?}");
    text.split([' ', '(', '{']).next().unwrap_or("").to_string()
}

fn outcome_of(plan: &Result<Plan, WriteError>) -> Outcome {
    match plan {
        Ok(plan) => {
            let mut cells: Vec<_> = plan.cells.iter().map(|c| (c.field.clone(), c.policy, c.value.clone())).collect();
            cells.sort_by(|a, b| a.0.cmp(&b.0));
            Ok((plan.delete, cells))
        }
        Err(e) => Err(error_name(e)),
    }
}

struct Writer<'a> {
    view: &'a View,
    schema: &'a Schema,
    /// The writer's own running total of a counter field, as the model computed it.
    own_total: &'a dyn Fn(&str) -> Value,
}

impl Writer<'_> {
    fn scope_cell(&self, scope: &Option<String>) -> Option<(String, Policy, Value)> {
        let value = scope.as_ref().map(|s| Value::from(s.as_str())).unwrap_or(Value::Null);
        let unchanged = !self.view.deleted()
            && self.view.fields.contains_key(SCOPE_FIELD)
            && self.view.value(SCOPE_FIELD).unwrap_or(Value::Null) == value;
        (!unchanged).then(|| (SCOPE_FIELD.to_string(), Policy::Lww, value))
    }

    fn expect(&self, op: &Op) -> Outcome {
        let view = self.view;
        let mut cells = Vec::new();
        let mut delete = false;
        match op {
            Op::Put { fields, scope } => {
                if fields.is_empty() && scope.is_none() {
                    return Err("NoFields".into());
                }
                if self.schema.append_only {
                    return self.expect(&Op::Append { fields: fields.clone(), scope: scope.clone().flatten() });
                }
                for (name, value) in fields {
                    let policy = self.schema.policy(name);
                    let current = (view.policy(name) == Some(policy)).then(|| view.value(name)).flatten();
                    match policy {
                        Policy::Counter => {
                            if !is_number(value) {
                                return Err("NotANumber".into());
                            }
                            // Setting a counter adds the difference to the counter's sum, so that
                            // concurrent increments still count and the writer reads back what
                            // it set; a field that does not show that sum yet is always written.
                            let sum = view.counter_sums.get(name.as_str()).cloned().unwrap_or(Value::Int(0));
                            if current.is_some() && sum == *value {
                                continue;
                            }
                            let total = num_add(&(self.own_total)(name), &num_sub(value, &sum));
                            cells.push((name.clone(), policy, total));
                        }
                        Policy::Fww => match current {
                            Some(existing) if existing == *value => {}
                            Some(_) => return Err("FieldAlreadySet".into()),
                            None => cells.push((name.clone(), policy, value.clone())),
                        },
                        Policy::Max => {
                            if current.is_none_or(|c| c < *value) {
                                cells.push((name.clone(), policy, value.clone()));
                            }
                        }
                        Policy::Min => {
                            if current.is_none_or(|c| c > *value) {
                                cells.push((name.clone(), policy, value.clone()));
                            }
                        }
                        Policy::Lww => cells.push((name.clone(), policy, value.clone())),
                    }
                }
                if let Some(scope) = scope {
                    cells.extend(self.scope_cell(scope));
                }
            }
            Op::Append { fields, scope } => {
                if fields.is_empty() {
                    return Err("NoFields".into());
                }
                if view.exists() {
                    // A retried append of the same event is fine; different content is not.
                    let m = view.materialize();
                    let same = m.fields.len() == fields.len()
                        && fields.iter().all(|(k, v)| m.fields.get(k) == Some(v))
                        && m.scope == *scope;
                    return if same { Ok((false, Vec::new())) } else { Err("AppendOnlyExists".into()) };
                }
                for (name, value) in fields {
                    let policy = self.schema.policy(name);
                    if policy == Policy::Counter && !is_number(value) {
                        return Err("NotANumber".into());
                    }
                    // Nothing of this record is left to build on: a counter starts at the value.
                    cells.push((name.clone(), policy, value.clone()));
                }
                if scope.is_some() {
                    cells.extend(self.scope_cell(scope));
                }
            }
            Op::Delete => {
                if self.schema.append_only {
                    return Err("AppendOnlyImmutable".into());
                }
                if !view.exists() {
                    return Err("NotFound".into());
                }
                delete = true;
            }
            Op::Incr { field, by } => {
                if self.schema.append_only {
                    return Err("AppendOnlyImmutable".into());
                }
                if self.schema.policy(field) != Policy::Counter {
                    return Err("NotACounter".into());
                }
                if !is_number(by) {
                    return Err("NotANumber".into());
                }
                cells.push((field.clone(), Policy::Counter, num_add(&(self.own_total)(field), by)));
            }
            Op::Resolve { field, value } => {
                let Some(f) = view.fields.get(field) else { return Err("NoConflict".into()) };
                if !matches!(f.policy, Policy::Lww | Policy::Fww) || f.versions < 2 {
                    return Err("NoConflict".into());
                }
                cells.push((field.clone(), f.policy, value.clone().unwrap_or_else(|| f.value.clone())));
            }
        }
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((delete, cells))
    }
}

// ---------------------------------------------------------------------------------------------
// Histories.

#[derive(Clone, Debug)]
enum OpSpec {
    Put {
        fields: Vec<(usize, Value)>,
        scope: Option<Option<usize>>,
    },
    Incr {
        field: usize,
        by: Value,
    },
    Delete,
    Append {
        fields: Vec<(usize, Value)>,
        scope: Option<usize>,
    },
    /// Resolves a conflicted field (the `field`-th, modulo) of the record, or of the other record
    /// of the collection if only that one has conflicts; else `FIELDS[field]`.
    Resolve {
        field: usize,
        value: Option<Value>,
    },
}

impl OpSpec {
    fn to_op(&self) -> Op {
        let fields = |fields: &[(usize, Value)]| {
            // One write names each field once (it comes from a JSON object).
            let mut seen = BTreeSet::new();
            fields.iter().filter(|(f, _)| seen.insert(*f)).map(|(f, v)| (FIELDS[*f].to_string(), v.clone())).collect()
        };
        let scope = |s: &Option<usize>| s.map(|i| SCOPES[i].to_string());
        match self {
            OpSpec::Put { fields: f, scope: s } => Op::Put { fields: fields(f), scope: s.as_ref().map(scope) },
            OpSpec::Incr { field, by } => Op::Incr { field: FIELDS[*field].to_string(), by: by.clone() },
            OpSpec::Delete => Op::Delete,
            OpSpec::Append { fields: f, scope: s } => Op::Append { fields: fields(f), scope: scope(s) },
            OpSpec::Resolve { field, value } => {
                Op::Resolve { field: FIELDS[field % FIELDS.len()].to_string(), value: value.clone() }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// A local operation at replica `r` on record `rec` of collection `coll`.
    Local { r: usize, coll: usize, rec: usize, op: OpSpec },
    /// `from` streams to `to` in batches of `batch` changes. The stream breaks after `deliver`
    /// batches if set, and is then retried at once if `retry`. `resend` changes the receiver
    /// already has ride along.
    Sync { from: usize, to: usize, batch: usize, deliver: Option<usize>, retry: bool, resend: usize },
    /// Replicas `a` and `b` put a value each in the same field of the same record without hearing
    /// of each other, then exchange both ways: the usual way conflicts arise.
    Race { a: usize, b: usize, rec: usize, field: usize, values: (Value, Value) },
    /// Replica `r`'s wall clock jumps by `delta_ms` (backwards when negative).
    Wall { r: usize, delta_ms: i64 },
    /// Replica `r` changes the policy of a field of `tasks` (`note`: the default policy).
    Schema { r: usize, field: usize, policy: Policy },
}

fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (-2i64..6).prop_map(Value::Int),
        2 => prop::sample::select(vec![-1.5f64, 0.5, 1.5, 2.0]).prop_map(Value::Float),
        2 => prop::sample::select(vec!["x", "y", "z"]).prop_map(Value::from),
        1 => Just(Value::Null),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        8 => (-3i64..6).prop_map(Value::Int),
        2 => prop::sample::select(vec![-1.5f64, 0.5, 2.5]).prop_map(Value::Float),
        1 => Just(Value::from("x")),
    ]
}

fn fields() -> impl Strategy<Value = Vec<(usize, Value)>> {
    prop::collection::vec((0..FIELDS.len(), any_value()), 1..4)
}

fn op_spec() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        5 => (fields(), prop::option::weighted(0.2, prop::option::of(0..SCOPES.len())))
            .prop_map(|(fields, scope)| OpSpec::Put { fields, scope }),
        1 => prop::option::of(0..SCOPES.len()).prop_map(|s| OpSpec::Put { fields: Vec::new(), scope: Some(s) }),
        4 => (prop_oneof![3 => Just(2usize), 1 => 0..FIELDS.len()], number())
            .prop_map(|(field, by)| OpSpec::Incr { field, by }),
        2 => Just(OpSpec::Delete),
        2 => (fields(), prop::option::of(0..SCOPES.len())).prop_map(|(fields, scope)| OpSpec::Append { fields, scope }),
        2 => (0..8usize, prop::option::weighted(0.5, any_value()))
            .prop_map(|(field, value)| OpSpec::Resolve { field, value }),
    ]
}

/// Operations on the append-only collection: mostly appends and puts, some that must be refused.
fn event_op_spec() -> impl Strategy<Value = OpSpec> {
    prop_oneof![
        4 => (fields(), prop::option::of(0..SCOPES.len())).prop_map(|(fields, scope)| OpSpec::Append { fields, scope }),
        2 => (fields(), prop::option::of(prop::option::of(0..SCOPES.len())))
            .prop_map(|(fields, scope)| OpSpec::Put { fields, scope }),
        1 => op_spec(),
    ]
}

/// A replica: mostly one of three busy ones, so that writes meet often enough to conflict.
fn replica() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..3usize, 1 => 0..7usize]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (replica(), 0..RECORDS.len(), op_spec()).prop_map(|(r, rec, op)| Step::Local { r, coll: 0, rec, op }),
        2 => (replica(), 0..RECORDS.len(), event_op_spec())
            .prop_map(|(r, rec, op)| Step::Local { r, coll: 1, rec, op }),
        6 => (
            replica(),
            replica(),
            1..5usize,
            prop::option::weighted(0.3, 0..3usize),
            any::<bool>(),
            prop_oneof![3 => Just(0usize), 1 => 1..3usize],
        )
            .prop_map(|(from, to, batch, deliver, retry, resend)| {
                Step::Sync { from, to, batch, deliver, retry, resend }
            }),
        1 => (replica(), replica(), 0..RECORDS.len(), 0..FIELDS.len(), (any_value(), any_value()))
            .prop_map(|(a, b, rec, field, values)| Step::Race { a, b, rec, field, values }),
        1 => (0..7usize, prop_oneof![-4_000i64..0, 0i64..4_000]).prop_map(|(r, delta_ms)| Step::Wall { r, delta_ms }),
        1 => (0..7usize, 0..FIELDS.len(), prop::sample::select(Policy::ALL.to_vec()))
            .prop_map(|(r, field, policy)| Step::Schema { r, field, policy }),
    ]
}

/// How far a replica's wall clock is off: mostly seconds, sometimes beyond the drift limit.
fn skew() -> impl Strategy<Value = i64> {
    prop_oneof![8 => -3_000i64..3_000, 1 => -80_000i64..80_000]
}

#[derive(Clone, Debug)]
struct History {
    /// Each replica's device id is 16 copies of its byte; their order decides lww ties and the
    /// stream order.
    devices: Vec<u8>,
    skews: Vec<i64>,
    /// Each step with the milliseconds that pass before it.
    steps: Vec<(u64, Step)>,
    /// After convergence: (replica, which conflict, chosen value) resolutions, each followed by
    /// a full exchange.
    resolves: Vec<(usize, usize, Option<Value>)>,
}

fn history(max_steps: usize) -> impl Strategy<Value = History> {
    (5..=7usize)
        .prop_flat_map(move |n| {
            (
                prop::sample::subsequence((1u8..=255).collect::<Vec<_>>(), n).prop_shuffle(),
                prop::collection::vec(skew(), n),
                prop::collection::vec((0..40u64, step()), 1..max_steps),
                prop::collection::vec((0..7usize, 0..8usize, prop::option::of(any_value())), 0..3),
            )
        })
        .prop_map(|(devices, skews, steps, resolves)| History { devices, skews, steps, resolves })
}

// ---------------------------------------------------------------------------------------------
// The simulation.

struct Replica {
    device: DeviceId,
    clock: Clock,
    seq: u64,
    skew: i64,
    records: BTreeMap<Key, RecordState>,
    vv: VersionVector,
    log: Vec<Change>,
    /// The model items it has made or received.
    known: Known,
    /// Index of the `tasks` schema version it uses.
    schema: usize,
    /// The model item of its latest counter write per (record, field).
    own_counter: HashMap<(Key, String), usize>,
}

struct Sim {
    replicas: Vec<Replica>,
    /// Versions of the `tasks` schema; replicas adopt the newest they hear of.
    schemas: Vec<Schema>,
    now: u64,
    model: Model,
    names: BTreeMap<DeviceId, String>,
    trace: Vec<String>,
    /// How often each interesting situation came up, for the coverage test.
    coverage: BTreeMap<String, usize>,
    /// Whether the history is over and only the final exchange and resolutions remain.
    finishing: bool,
}

fn key(coll: usize, rec: usize) -> Key {
    (COLLECTIONS[coll].to_string(), RECORDS[rec].to_string())
}

impl Sim {
    fn new(h: &History) -> Sim {
        let replicas: Vec<Replica> = h
            .devices
            .iter()
            .zip(&h.skews)
            .map(|(&b, &skew)| Replica {
                device: DeviceId([b; 16]),
                clock: Clock::new(CLOCK_DRIFT_MS_MAX_DEFAULT),
                seq: 0,
                skew,
                records: BTreeMap::new(),
                vv: VersionVector::new(),
                log: Vec::new(),
                known: Known::default(),
                schema: 0,
                own_counter: HashMap::new(),
            })
            .collect();
        let names = replicas.iter().enumerate().map(|(i, r)| (r.device, format!("r{i}"))).collect();
        Sim {
            replicas,
            schemas: vec![tasks_schema()],
            now: START_MS,
            model: Model::default(),
            names,
            trace: Vec::new(),
            coverage: BTreeMap::new(),
            finishing: false,
        }
    }

    fn count(&mut self, what: &str) {
        *self.coverage.entry(what.to_string()).or_default() += 1;
    }

    fn wall(&self, r: usize) -> u64 {
        (self.now as i64 + self.replicas[r].skew) as u64
    }

    fn dot_name(&self, dot: &Dot) -> String {
        format!("{}:{}", self.names[&dot.origin], dot.seq)
    }

    fn fail(&self, what: String) -> TestCaseError {
        let start = self.trace.len().saturating_sub(120);
        TestCaseError::fail(format!(
            "{what}\n--- trace (last {} of {} events; rN:S = write S of replica N) ---\n{}",
            self.trace.len() - start,
            self.trace.len(),
            self.trace[start..].join("\n")
        ))
    }

    fn schema(&self, r: usize, coll: usize) -> Schema {
        if coll == 0 {
            self.schemas[self.replicas[r].schema].clone()
        } else {
            events_schema()
        }
    }

    /// The replica's record must materialize as the model sees it from the replica's knowledge
    /// (when that knowledge is closed under deletes). Returns the view `plan` is predicted from.
    fn check_view(&mut self, r: usize, key: &Key, when: &str) -> Result<View, TestCaseError> {
        let known = &self.replicas[r].known;
        let state = self.replicas[r].records.get(key).cloned().unwrap_or_default();
        if !self.model.closed(key, known) {
            self.count("view not closed under deletes");
            return Ok(View::of_core(&state));
        }
        let view = self.model.view(key, known);
        if view.any == state.is_empty() || (view.any && view.materialize() != state.materialize()) {
            return Err(self.fail(format!(
                "{when}: r{r}'s record {key:?} differs from the model\n  core:  {:?}\n  model: {:?}\n  state: {state:?}",
                state.materialize(),
                view.materialize()
            )));
        }
        self.count("view checked");
        Ok(view)
    }

    fn run(&mut self, h: &History) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        for (dt, step) in &h.steps {
            self.now += dt;
            match step {
                Step::Local { r, coll, rec, op } => {
                    self.local(r % n, *coll, *rec, op)?;
                }
                Step::Sync { from, to, batch, deliver, retry, resend } => {
                    let complete = self.sync(from % n, to % n, *batch, *deliver, *resend)?;
                    if !complete && *retry {
                        self.now += 1;
                        self.sync(from % n, to % n, *batch, None, 0)?;
                    }
                }
                Step::Race { a, b, rec, field, values } => {
                    let (a, b) = (a % n, b % n);
                    self.local(a, 0, *rec, &OpSpec::Put { fields: vec![(*field, values.0.clone())], scope: None })?;
                    self.local(b, 0, *rec, &OpSpec::Put { fields: vec![(*field, values.1.clone())], scope: None })?;
                    self.sync(a, b, usize::MAX, None, 0)?;
                    self.sync(b, a, usize::MAX, None, 0)?;
                }
                Step::Wall { r, delta_ms } => {
                    let rep = &mut self.replicas[r % n];
                    rep.skew += delta_ms;
                    let skew = rep.skew;
                    self.trace.push(format!("r{}: wall clock {delta_ms:+} ms (skew now {skew:+} ms)", r % n));
                }
                Step::Schema { r, field, policy } => {
                    let r = r % n;
                    let mut schema = self.schemas[self.replicas[r].schema].clone();
                    if FIELDS[*field] == "note" {
                        schema.default = *policy;
                    } else {
                        schema.fields.insert(FIELDS[*field].to_string(), *policy);
                    }
                    self.schemas.push(schema);
                    self.replicas[r].schema = self.schemas.len() - 1;
                    self.count("schema change");
                    self.trace.push(format!(
                        "r{r}: tasks schema v{}: {} is now {policy}",
                        self.schemas.len() - 1,
                        FIELDS[*field]
                    ));
                }
            }
        }
        self.finish(&h.resolves)
    }

    /// Performs a local operation; returns it if it wrote something.
    fn local(&mut self, r: usize, coll: usize, rec: usize, spec: &OpSpec) -> Result<Option<Op>, TestCaseError> {
        let conflicted =
            |rec: usize| self.replicas[r].records.get(&key(coll, rec)).is_some_and(|s| s.conflict_count() > 0);
        let rec = match spec {
            OpSpec::Resolve { .. } if !conflicted(rec) => (0..RECORDS.len()).find(|&o| conflicted(o)).unwrap_or(rec),
            _ => rec,
        };
        let key = key(coll, rec);
        let schema = self.schema(r, coll);
        let view = self.check_view(r, &key, &format!("before r{r} {spec:?}"))?;
        let mut op = spec.to_op();
        if let (OpSpec::Resolve { field, .. }, Op::Resolve { field: name, .. }) = (spec, &mut op) {
            // Conflicts are what resolving is for: aim at one when the writer sees any.
            let conflicted: Vec<&String> =
                view.fields.iter().filter(|(_, f)| f.conflicts > 0).map(|(n, _)| n).collect();
            if !conflicted.is_empty() {
                *name = conflicted[field % conflicted.len()].clone();
            }
        }
        let rep = &self.replicas[r];
        let state = rep.records.get(&key).cloned().unwrap_or_default();
        let own_total = |field: &str| -> Value {
            match rep.own_counter.get(&(key.clone(), field.to_string())) {
                Some(&item) if view.tomb.is_none_or(|t| self.model.stamp(item) > t) => {
                    self.model.cell(item).value.clone()
                }
                _ => Value::Int(0),
            }
        };
        let expected = Writer { view: &view, schema: &schema, own_total: &own_total }.expect(&op);
        let plan = state.plan(&schema, rep.device, &op);
        let actual = outcome_of(&plan);
        if actual != expected {
            return Err(self.fail(format!(
                "r{r} {key:?} {op:?}: plan differs from the model\n  core:  {actual:?}\n  model: {expected:?}\n  view:  {:?}\n  state: {state:?}",
                view.materialize()
            )));
        }
        let plan = match plan {
            Ok(plan) if !plan.is_noop() => plan,
            other => {
                let what = match other {
                    Ok(_) => "no-op".to_string(),
                    Err(e) => format!("refused: {}", error_name(&e)),
                };
                self.count(&what);
                self.trace.push(format!("r{r} {}/{} {op:?}: {what}", key.0, key.1));
                return Ok(None);
            }
        };
        let wall = self.wall(r);
        let rep = &mut self.replicas[r];
        let hlc = rep.clock.tick(wall);
        rep.seq += 1;
        let dot = Dot { origin: rep.device, seq: rep.seq };
        let change = plan.into_change(&key.0, &key.1, hlc, dot);
        // The model records the cells it predicted (equal to the plan's, checked above), with
        // what the writer had seen derived from its knowledge, never from the change's contexts.
        let (_, cells) = expected.expect("equal to an Ok plan");
        let knew_deletes = self.model.knew_deletes_for(&key, &self.replicas[r].known);
        let op_index = self.model.ops.len();
        self.model.ops.push(MOp { dot, hlc, knew_deletes });
        let mut new_items = Vec::new();
        if change.delete {
            new_items.push(MItem { op: op_index, cell: None });
        }
        for (field, policy, value) in cells {
            let seen = self.model.seen_for(&key, &self.replicas[r].known, &field, policy);
            new_items.push(MItem { op: op_index, cell: Some(MCell { field, policy, value, seen }) });
        }
        let rep = &mut self.replicas[r];
        for item in new_items {
            let id = self.model.items.len();
            match &item.cell {
                None => {
                    self.model.delete_index.insert(dot, id);
                }
                Some(cell) => {
                    self.model.cell_index.insert((dot, cell.field.clone()), id);
                    if cell.policy == Policy::Counter {
                        rep.own_counter.insert((key.clone(), cell.field.clone()), id);
                    }
                }
            }
            self.model.by_record.entry(key.clone()).or_default().push(id);
            self.model.items.push(item);
            rep.known.insert(id);
        }
        if !rep.records.entry(key.clone()).or_default().apply(&change) {
            return Err(self.fail(format!("r{r}: applying its own new write {change:?} changed nothing")));
        }
        rep.vv.observe(dot);
        rep.log.push(change.clone());
        self.count(if change.delete { "delete" } else { "write" });
        if matches!(op, Op::Resolve { .. }) && !self.finishing {
            self.count("resolve while writes go on");
        }
        let cells: Vec<String> = change.cells.iter().map(|c| format!("{}={:?}", c.field, c.value)).collect();
        self.trace.push(format!(
            "r{r} {}/{} {op:?}: wrote {} at {hlc:?}{} [{}]",
            key.0,
            key.1,
            self.dot_name(&dot),
            if change.delete { " DELETE" } else { "" },
            cells.join(", ")
        ));
        Ok(Some(op))
    }

    /// Streams from `from` to `to` like the store: every referenced write above the receiver's
    /// vector, in (origin, seq) order, in atomic batches. Returns whether the stream completed.
    fn sync(
        &mut self,
        from: usize,
        to: usize,
        batch: usize,
        deliver: Option<usize>,
        resend: usize,
    ) -> Result<bool, TestCaseError> {
        if from == to {
            return Ok(true);
        }
        let (sender, receiver) = (&self.replicas[from], &self.replicas[to]);
        let mut stream = Vec::new();
        let mut already = Vec::new();
        for ((coll, rec), state) in &sender.records {
            for dot in state.dots() {
                let change = state.change_for(coll, rec, dot).expect("a referenced dot");
                if receiver.vv.covers(&dot) {
                    already.push(change);
                } else {
                    stream.push(change);
                }
            }
        }
        stream.sort_by_key(|c| (c.dot.origin, c.dot.seq));
        // Changes the receiver already holds ride along, as when another peer relays them.
        for (i, change) in already.into_iter().take(resend).enumerate() {
            let at = (i * 7) % (stream.len() + 1);
            stream.insert(at, change);
        }
        if stream.is_empty() {
            return Ok(true);
        }
        self.replicas[to].schema = self.replicas[to].schema.max(self.replicas[from].schema);
        let mut delivered = 0;
        let mut outcome = "complete".to_string();
        for (i, chunk) in stream.chunks(batch).enumerate() {
            if deliver.is_some_and(|d| i >= d) {
                outcome = "broken".to_string();
                break;
            }
            let now = self.wall(to);
            let rep = &mut self.replicas[to];
            // Like the store: the whole batch is refused if one timestamp is too far ahead.
            if let Some(c) = chunk.iter().find(|c| rep.clock.check(c.hlc, now).is_err()) {
                let ahead = c.hlc.wall_ms() as i64 - now as i64;
                outcome = format!("refused: {} is {ahead} ms ahead", self.names[&c.dot.origin]);
                break;
            }
            let mut advance = VersionVector::new();
            for change in chunk {
                rep.clock.observe(change.hlc, now).expect("checked");
                rep.records.entry((change.collection.clone(), change.record.clone())).or_default().apply(change);
                if change.delete {
                    rep.known.insert(self.model.delete_index[&change.dot]);
                }
                for cell in &change.cells {
                    rep.known.insert(self.model.cell_index[&(change.dot, cell.field.clone())]);
                }
                rep.log.push(change.clone());
                advance.observe(change.dot);
            }
            rep.vv.merge(&advance);
            delivered += chunk.len();
        }
        let complete = outcome == "complete";
        if !complete {
            self.count(if outcome == "broken" { "stream broken" } else { "stream refused for skew" });
        }
        let dots: Vec<String> = stream[..delivered].iter().map(|c| self.dot_name(&c.dot)).collect();
        self.trace.push(format!(
            "r{from} -> r{to}: {delivered}/{} delivered [{}], {outcome}",
            stream.len(),
            dots.join(" ")
        ));
        let keys: BTreeSet<Key> =
            stream[..delivered].iter().map(|c| (c.collection.clone(), c.record.clone())).collect();
        for key in keys {
            self.check_view(to, &key, &format!("after r{from} -> r{to}"))?;
        }
        Ok(complete)
    }

    fn finish(&mut self, resolves: &[(usize, usize, Option<Value>)]) -> Result<(), TestCaseError> {
        // Clocks are put right and time moves on, so that no write stays refused for skew and
        // the exchange can finish.
        self.finishing = true;
        self.now += 10 * 60 * 1000;
        for rep in &mut self.replicas {
            rep.skew = 0;
        }
        self.trace.push("--- final exchange ---".into());
        self.exchange_until_quiet()?;
        self.check_converged()?;
        // Resolving a conflict on a converged replica supersedes every version of the field, so
        // once the resolution has spread no replica may show a conflict there.
        for (r, pick, value) in resolves {
            let r = r % self.replicas.len();
            let conflicted: Vec<Key> = self.replicas[r]
                .records
                .iter()
                .filter(|(_, s)| s.conflict_count() > 0)
                .map(|(k, _)| k.clone())
                .collect();
            let Some(key) = conflicted.get(pick % conflicted.len().max(1)).cloned() else { break };
            let coll = COLLECTIONS.iter().position(|c| *c == key.0).expect("a known collection");
            let rec = RECORDS.iter().position(|c| *c == key.1).expect("a known record");
            self.now += 1;
            let op = self.local(r, coll, rec, &OpSpec::Resolve { field: *pick, value: value.clone() })?;
            let Some(Op::Resolve { field, .. }) = op else {
                return Err(self.fail(format!("r{r} could not resolve the conflict it shows on {key:?}")));
            };
            self.exchange_until_quiet()?;
            self.check_converged()?;
            for (i, rep) in self.replicas.iter().enumerate() {
                if let Some(c) = rep.records[&key].conflicts().into_iter().find(|c| c.field == field) {
                    return Err(self.fail(format!("r{r} resolved {key:?}.{field} but r{i} still shows {c:?}")));
                }
            }
            self.count("conflict resolved after convergence");
        }
        Ok(())
    }

    fn exchange_until_quiet(&mut self) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        for _round in 0..10 {
            let before: Vec<usize> = self.replicas.iter().map(|r| r.log.len()).collect();
            for from in 0..n {
                for to in 0..n {
                    self.sync(from, to, usize::MAX, None, 0)?;
                }
            }
            if self.replicas.iter().map(|r| r.log.len()).eq(before) {
                return Ok(());
            }
        }
        Err(self.fail("the exchange does not quiet down".into()))
    }

    fn canonical(&self, r: usize) -> BTreeMap<Key, Vec<u8>> {
        canonical(&self.replicas[r].records)
    }

    fn check_converged(&mut self) -> Result<(), TestCaseError> {
        let n = self.replicas.len();
        let reference = self.canonical(0);
        for r in 1..n {
            let other = self.canonical(r);
            if other != reference {
                let key = reference.keys().chain(other.keys()).find(|k| reference.get(*k) != other.get(*k)).unwrap();
                return Err(self.fail(format!(
                    "r0 and r{r} differ on {key:?} after the exchange\n  r0:  {:?}\n  r{r}:  {:?}",
                    self.replicas[0].records.get(key),
                    self.replicas[r].records.get(key)
                )));
            }
        }
        let model_keys: BTreeSet<&Key> = self.model.by_record.keys().collect();
        let core_keys: BTreeSet<&Key> = reference.keys().collect();
        if model_keys != core_keys {
            return Err(self.fail(format!("records: core has {core_keys:?}, the model has {model_keys:?}")));
        }
        let everything = Known::all(self.model.items.len());
        let mut seen = Vec::new();
        for key in self.model.by_record.keys() {
            let state = &self.replicas[0].records[key];
            let model = self.model.view(key, &everything).materialize();
            if state.materialize() != model {
                return Err(self.fail(format!(
                    "converged record {key:?} differs from the model\n  core:  {:?}\n  model: {model:?}\n  state: {state:?}",
                    state.materialize()
                )));
            }
            if RecordState::decode(&state.encode()).as_ref() != Ok(state) {
                return Err(self.fail(format!("{key:?} does not survive encode/decode: {state:?}")));
            }
            seen.push((model.conflicts > 0, model.deleted, state.tombstone().is_some() && !model.deleted));
        }
        for (conflicts, deleted, revived) in seen {
            if conflicts {
                self.count("converged with a conflict");
            }
            if deleted {
                self.count("converged deleted");
            }
            if revived {
                self.count("converged written after a delete");
            }
        }
        // A replica's state depends only on the set of changes it received.
        for r in 0..n {
            let mut refold: BTreeMap<Key, RecordState> = BTreeMap::new();
            for change in self.replicas[r].log.iter().rev() {
                refold.entry((change.collection.clone(), change.record.clone())).or_default().apply(change);
            }
            if canonical(&refold) != reference {
                return Err(self.fail(format!("r{r}'s log merged in reverse order gives a different state")));
            }
        }
        Ok(())
    }
}

fn canonical(records: &BTreeMap<Key, RecordState>) -> BTreeMap<Key, Vec<u8>> {
    records.iter().filter(|(_, s)| !s.is_empty()).map(|(k, s)| (k.clone(), s.encode())).collect()
}

fn run(h: &History) -> Result<Sim, TestCaseError> {
    let mut sim = Sim::new(h);
    sim.run(h)?;
    Ok(sim)
}

/// `cases` cases, or `PROPTEST_CASES` if set (for soak runs).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases),
        // Relative to the package root, where `cargo test` runs integration tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("proptest-regressions/convergence.txt"))),
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    /// Random histories of every operation converge, to what the model says.
    #[test]
    fn replicas_converge_to_the_model(h in history(40)) {
        run(&h)?;
    }
}

proptest! {
    #![proptest_config(config(150))]

    /// Fewer, longer histories: more writes per record, deeper causal chains.
    #[test]
    fn long_histories_converge_to_the_model(h in history(160)) {
        run(&h)?;
    }
}

/// The generator must keep reaching the situations the properties are about; otherwise they
/// pass without testing much. Runs a fixed sample so that the counts do not vary between runs.
#[test]
fn histories_reach_the_interesting_situations() {
    let mut runner = TestRunner::deterministic();
    let strategy = history(40);
    let mut coverage: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..400 {
        let h = strategy.new_tree(&mut runner).expect("a history").current();
        let sim = run(&h).unwrap_or_else(|e| panic!("{e}\n{h:#?}"));
        for (what, n) in sim.coverage {
            *coverage.entry(what).or_default() += n;
        }
    }
    for what in [
        "write",
        "delete",
        "resolve while writes go on",
        "conflict resolved after convergence",
        "no-op",
        "refused: FieldAlreadySet",
        "refused: AppendOnlyExists",
        "refused: AppendOnlyImmutable",
        "refused: NotACounter",
        "refused: NotANumber",
        "refused: NotFound",
        "refused: NoConflict",
        "stream broken",
        "stream refused for skew",
        "schema change",
        "converged with a conflict",
        "converged deleted",
        "converged written after a delete",
        "view checked",
    ] {
        assert!(
            coverage.get(what).copied().unwrap_or(0) >= 5,
            "only {:?} times {what:?} in 400 histories: {coverage:#?}",
            coverage.get(what)
        );
    }
    // The model must be the judge almost everywhere; the exception is for a narrow situation.
    let unclosed = coverage.get("view not closed under deletes").copied().unwrap_or(0);
    assert!(unclosed * 50 < coverage["view checked"], "{coverage:#?}");
}

/// A write made after its writer saw a delete does not record what the delete dropped. Here r1
/// writes title "a" over r0's "w", r2 deletes, r1 (having seen the delete) writes "b", a broken
/// stream gives r3 that write without the delete, and r3's "c" reaches r4, whose "d" reaches r0.
/// r0 then shows "w" and "d" as a conflict although "d" was written after "w": core cannot tell
/// until the delete arrives and drops "w". The properties skip the model comparison in such
/// states (`Model::closed`); this pins down that the situation arises, and that it converges to
/// the model all the same.
#[test]
fn a_write_after_an_unseen_delete_shows_a_passing_conflict_then_converges() {
    let put = |r: usize, v: &str| {
        (1, Step::Local { r, coll: 0, rec: 0, op: OpSpec::Put { fields: vec![(0, Value::from(v))], scope: None } })
    };
    let sync =
        |from: usize, to: usize| (1, Step::Sync { from, to, batch: 100, deliver: None, retry: false, resend: 0 });
    let h = History {
        // r1 sorts before r2, so r1's stream sends r1:2 before r2's delete.
        devices: vec![50, 10, 20, 30, 40],
        skews: vec![0; 5],
        steps: vec![
            put(0, "w"),
            sync(0, 1),
            put(1, "a"),
            sync(0, 4),
            sync(1, 4),
            sync(1, 2),
            (1, Step::Local { r: 2, coll: 0, rec: 0, op: OpSpec::Delete }),
            sync(2, 1),
            put(1, "b"),
            (1, Step::Sync { from: 1, to: 3, batch: 1, deliver: Some(1), retry: false, resend: 0 }),
            put(3, "c"),
            sync(3, 4),
            put(4, "d"),
            sync(4, 0),
        ],
        resolves: vec![],
    };
    let mut sim = Sim::new(&h);
    for (dt, step) in &h.steps {
        sim.now += dt;
        let n = sim.replicas.len();
        match step {
            Step::Local { r, coll, rec, op } => {
                sim.local(r % n, *coll, *rec, op).unwrap();
            }
            Step::Sync { from, to, batch, deliver, resend, .. } => {
                sim.sync(*from, *to, *batch, *deliver, *resend).unwrap();
            }
            _ => unreachable!(),
        }
    }
    let key = key(0, 0);
    let r0 = &sim.replicas[0].records[&key];
    let conflicts = r0.conflicts();
    assert_eq!(conflicts.len(), 1, "{r0:?}");
    assert_eq!((&conflicts[0].kept.value, &conflicts[0].lost.value), (&Value::from("d"), &Value::from("w")));
    assert!(!sim.model.closed(&key, &sim.replicas[0].known));
    sim.finish(&[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sim.replicas[0].records[&key].conflicts(), Vec::new());
}
