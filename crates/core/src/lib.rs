//! The pure core of meshsync: no I/O, no threads, no clock reads. Everything here is a function
//! of its inputs, so it can be property-tested and simulated at full speed.
//!
//! # Layout
//! - [`hlc`]: hybrid logical clock; time comes in as an argument.
//! - [`device`]: device ids and their human-checkable text form.
//! - [`value`]: JSON values with a total order and limits.
//! - [`name`]: what collection names, field names and record ids may be.
//! - [`policy`]: merge policies and collection schemas.
//! - [`vv`]: dots, version vectors and per-field causal contexts.
//! - [`record`]: a record's versions, merging changes, planning local operations, conflicts,
//!   materialization and the canonical encoding.

pub mod device;
pub mod hlc;
pub mod name;
pub mod policy;
pub mod record;
pub mod value;
pub mod vv;

pub use device::{DeviceId, DeviceIdError};
pub use hlc::{Clock, ClockError, Hlc, CLOCK_DRIFT_MS_MAX_DEFAULT};
pub use name::NameError;
pub use policy::{Policy, Schema, SchemaError};
pub use record::{
    conflict_id, CellWrite, Change, DecodeError, FieldConflict, FieldVersions, Materialized, Op, Plan, RecordState,
    Tombstone, Version, WriteError,
};
pub use value::{Value, ValueError};
pub use vv::{Ctx, Dot, VersionVector};
