//! Merge policies and collection schemas: which rule decides each field.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::name::{check_field, NameError};

/// How concurrent writes to one field merge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Policy {
    /// Last writer wins by HLC, ties broken by device id. Concurrent losers become conflicts.
    #[default]
    Lww,
    /// First writer wins (lowest HLC). A set field cannot be overwritten locally; concurrent
    /// later attempts become conflicts.
    Fww,
    /// A PN-counter: each device owns its increments; the value is their sum.
    Counter,
    /// Monotonic register keeping the greatest value.
    Max,
    /// Monotonic register keeping the least value.
    Min,
}

impl Policy {
    /// All policies, in declaration order.
    pub const ALL: [Policy; 5] = [Policy::Lww, Policy::Fww, Policy::Counter, Policy::Max, Policy::Min];

    /// The name used in schemas and documents.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::Fww => "fww",
            Policy::Counter => "counter",
            Policy::Max => "max",
            Policy::Min => "min",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// An unknown policy name.
    #[error("unknown merge policy {0:?}: use lww, fww, counter, max or min")]
    UnknownPolicy(String),
    /// A bad field name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Too many fields declared.
    #[error("a schema declares at most {max} fields")]
    TooManyFields {
        /// The limit.
        max: usize,
    },
}

/// Most fields one schema may declare.
pub const SCHEMA_FIELDS_MAX: usize = 1024;

impl FromStr for Policy {
    type Err = SchemaError;

    fn from_str(s: &str) -> Result<Policy, SchemaError> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| SchemaError::UnknownPolicy(s.chars().take(40).collect()))
    }
}

/// The declared shape of a collection: a policy per field and a default for the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Policies of named fields.
    pub fields: BTreeMap<String, Policy>,
    /// Policy of fields not named in `fields`.
    pub default: Policy,
    /// Records are immutable events: written once, never changed or deleted.
    pub append_only: bool,
}

impl Schema {
    /// The policy that governs `field`.
    pub fn policy(&self, field: &str) -> Policy {
        if self.append_only {
            return Policy::Fww;
        }
        self.fields.get(field).copied().unwrap_or(self.default)
    }

    /// Checks field names and sizes.
    pub fn validate(&self) -> Result<(), SchemaError> {
        if self.fields.len() > SCHEMA_FIELDS_MAX {
            return Err(SchemaError::TooManyFields { max: SCHEMA_FIELDS_MAX });
        }
        for name in self.fields.keys() {
            check_field(name)?;
        }
        Ok(())
    }
}
