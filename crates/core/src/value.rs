//! JSON values as the core stores and merges them: a total order, canonical encoding, limits.
//! Conversion from `serde_json` validates; conversion back is infallible.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Deepest nesting of arrays and objects accepted in one value.
pub const VALUE_DEPTH_MAX: usize = 32;
/// Largest value accepted, measured as its JSON text.
pub const VALUE_BYTES_MAX: usize = 1 << 20;

/// A JSON value. Integers and floats are kept apart so that counters add exactly.
///
/// Deserializing (from any serde format) refuses nesting deeper than [`VALUE_DEPTH_MAX`], so a
/// hostile frame cannot exhaust the stack.
#[derive(Clone, Debug, Serialize)]
pub enum Value {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number without fraction or exponent that fits in 64 bits.
    Int(i64),
    /// Any other finite number.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Value>),
    /// An object; keys are unique and kept sorted.
    Object(BTreeMap<String, Value>),
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Nested deeper than [`VALUE_DEPTH_MAX`].
    #[error("value is nested deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Larger than [`VALUE_BYTES_MAX`] as JSON text.
    #[error("value is {bytes} bytes as JSON, the limit is {max}")]
    TooLarge {
        /// Size found.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A number that is not finite or does not fit.
    #[error("number {0} is not a finite 64-bit number")]
    BadNumber(String),
}

/// The derived shape of [`Value`], used by its depth-limited `Deserialize`. The variants must
/// match `Value`'s one for one, in order, so that both encode alike.
#[derive(Deserialize)]
#[serde(rename = "Value")]
enum ValueRepr {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    Object(BTreeMap<String, Value>),
}

thread_local! {
    static DESERIALIZE_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        let depth = DESERIALIZE_DEPTH.with(|d| d.get());
        if depth > VALUE_DEPTH_MAX {
            return Err(serde::de::Error::custom(format!("value nested deeper than {VALUE_DEPTH_MAX} levels")));
        }
        DESERIALIZE_DEPTH.with(|d| d.set(depth + 1));
        let result = ValueRepr::deserialize(deserializer);
        DESERIALIZE_DEPTH.with(|d| d.set(depth));
        Ok(match result? {
            ValueRepr::Null => Value::Null,
            ValueRepr::Bool(b) => Value::Bool(b),
            ValueRepr::Int(i) => Value::Int(i),
            ValueRepr::Float(f) => Value::Float(f),
            ValueRepr::Str(s) => Value::Str(s),
            ValueRepr::Array(items) => Value::Array(items),
            ValueRepr::Object(map) => Value::Object(map),
        })
    }
}

impl Value {
    /// Whether every number is finite: what decoding from a peer must check, since binary
    /// formats can carry NaN where JSON cannot.
    pub fn is_finite(&self) -> bool {
        match self {
            Value::Float(f) => f.is_finite(),
            Value::Array(items) => items.iter().all(Value::is_finite),
            Value::Object(map) => map.values().all(Value::is_finite),
            _ => true,
        }
    }

    fn rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// Converts a `serde_json` value, checking depth, size and numbers.
    pub fn from_json(json: &serde_json::Value) -> Result<Value, ValueError> {
        let value = Self::from_json_at(json, 0)?;
        Ok(value)
    }

    /// Converts a `serde_json` value and checks its size as JSON text.
    pub fn from_json_checked(json: &serde_json::Value) -> Result<Value, ValueError> {
        let value = Self::from_json(json)?;
        let bytes = value.json_len();
        if bytes > VALUE_BYTES_MAX {
            return Err(ValueError::TooLarge { bytes, max: VALUE_BYTES_MAX });
        }
        Ok(value)
    }

    fn from_json_at(json: &serde_json::Value, depth: usize) -> Result<Value, ValueError> {
        if depth > VALUE_DEPTH_MAX {
            return Err(ValueError::TooDeep { max: VALUE_DEPTH_MAX });
        }
        Ok(match json {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Value::Int(i)
                } else if n.is_u64() {
                    // Above i64::MAX: keep it, as a float, rather than fail.
                    Value::Float(n.as_f64().unwrap_or(f64::MAX))
                } else {
                    match n.as_f64() {
                        Some(f) if f.is_finite() => Value::Float(f),
                        _ => return Err(ValueError::BadNumber(n.to_string())),
                    }
                }
            }
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => {
                Value::Array(items.iter().map(|item| Self::from_json_at(item, depth + 1)).collect::<Result<_, _>>()?)
            }
            serde_json::Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Self::from_json_at(v, depth + 1)?)))
                    .collect::<Result<_, ValueError>>()?,
            ),
        })
    }

    /// Converts to a `serde_json` value.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map(serde_json::Value::Number).unwrap_or(serde_json::Value::Null)
            }
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => serde_json::Value::Array(items.iter().map(Value::to_json).collect()),
            Value::Object(map) => {
                serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }

    /// Approximate length of the value as compact JSON text, without building it.
    pub fn json_len(&self) -> usize {
        match self {
            Value::Null => 4,
            Value::Bool(_) => 5,
            Value::Int(_) | Value::Float(_) => 24,
            Value::Str(s) => s.len() + 2,
            Value::Array(items) => 2 + items.iter().map(|v| v.json_len() + 1).sum::<usize>(),
            Value::Object(map) => 2 + map.iter().map(|(k, v)| k.len() + 4 + v.json_len()).sum::<usize>(),
        }
    }
}

/// A total order: null < bools < numbers < strings < arrays < objects; numbers by value,
/// an integer before an equal float; floats by `total_cmp`.
impl Ord for Value {
    fn cmp(&self, other: &Value) -> Ordering {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => a.cmp(b),
            (Value::Int(a), Value::Int(b)) => a.cmp(b),
            (Value::Float(a), Value::Float(b)) => a.total_cmp(b),
            (Value::Int(a), Value::Float(b)) => (*a as f64).total_cmp(b).then(Ordering::Less),
            (Value::Float(a), Value::Int(b)) => a.total_cmp(&(*b as f64)).then(Ordering::Greater),
            (Value::Str(a), Value::Str(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => a.cmp(b),
            (Value::Object(a), Value::Object(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Value) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips() {
        let doc = json!({"name": "Tea", "stock": 7, "price": 2.5, "tags": ["a", null, true], "n": {"x": -1}});
        assert_eq!(Value::from_json(&doc).unwrap().to_json(), doc);
    }

    #[test]
    fn limits_are_enforced() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert_eq!(Value::from_json(&deep), Err(ValueError::TooDeep { max: VALUE_DEPTH_MAX }));
        let big = json!("x".repeat(VALUE_BYTES_MAX + 1));
        assert!(matches!(Value::from_json_checked(&big), Err(ValueError::TooLarge { .. })));
    }

    #[test]
    fn binary_decoding_refuses_deep_nesting_and_round_trips() {
        let mut deep = Value::Int(1);
        for _ in 0..(VALUE_DEPTH_MAX + 5) {
            deep = Value::Array(vec![deep]);
        }
        let bytes = postcard::to_stdvec(&deep).unwrap();
        assert!(postcard::from_bytes::<Value>(&bytes).is_err());
        // A hostile frame: a million nested arrays must fail cleanly, not overflow the stack.
        let hostile: Vec<u8> = std::iter::repeat_n([5u8, 1u8], 1_000_000).flatten().collect();
        assert!(postcard::from_bytes::<Value>(&hostile).is_err());
        let ok = Value::from_json(&json!({"a": [1, 2.5, "x", null, {"b": true}]})).unwrap();
        let bytes = postcard::to_stdvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<Value>(&bytes).unwrap(), ok);
        assert!(ok.is_finite());
        assert!(!Value::Array(vec![Value::Float(f64::NAN)]).is_finite());
    }

    #[test]
    fn order_is_total_across_types() {
        let values =
            [Value::Null, Value::Bool(false), Value::Int(1), Value::Float(1.0), Value::Float(1.5), Value::from("a")];
        for pair in values.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
        }
    }
}
