//! Helpers shared by the fuzz targets in `fuzz_targets/`: generators that turn fuzzer bytes
//! into well-formed protocol values (through `arbitrary`), so that a target reaches the states
//! behind a decoder and not only its first checks, and the in-process HTTP call both HTTP
//! targets use. Nothing here decodes outside input itself: the targets hand bytes to the real
//! decoders. See `docs/fuzzing.md`.

use arbitrary::Arbitrary;
use meshsync_core::{CellWrite, Change, Ctx, DeviceId, Dot, Hlc, Policy, Value};

pub mod http;

/// Names that pass the name rules, so generated changes often get past them.
const NAMES: [&str; 6] = ["products", "notes", "_schemas", "tea", "name", "_scope"];

/// A device id from a small set (so that dots of generated changes meet), or any bytes.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DeviceSeed {
    /// `DeviceId([n % 4; 16])`.
    Known(u8),
    /// Any id.
    Any([u8; 16]),
}

impl DeviceSeed {
    /// The device id.
    pub fn id(self) -> DeviceId {
        match self {
            DeviceSeed::Known(n) => DeviceId([n % 4; 16]),
            DeviceSeed::Any(bytes) => DeviceId(bytes),
        }
    }
}

/// A name: one of [`NAMES`], or any text.
#[derive(Arbitrary, Debug, Clone)]
pub enum NameSeed {
    /// A name from [`NAMES`].
    Known(u8),
    /// Any text.
    Text(String),
}

impl NameSeed {
    /// The name.
    pub fn text(&self) -> String {
        match self {
            NameSeed::Known(n) => NAMES[usize::from(*n) % NAMES.len()].to_string(),
            NameSeed::Text(text) => text.clone(),
        }
    }
}

/// A value of one kind, wrapped in `depth` arrays (so nesting limits are reached without a
/// recursive generator).
#[derive(Arbitrary, Debug, Clone)]
pub struct ValueSeed {
    kind: ValueKind,
    depth: u8,
}

#[derive(Arbitrary, Debug, Clone)]
enum ValueKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Object(Vec<(String, i64)>),
}

impl ValueSeed {
    /// The value; nesting stops a little past the core's depth limit.
    pub fn value(&self) -> Value {
        let mut value = match &self.kind {
            ValueKind::Null => Value::Null,
            ValueKind::Bool(b) => Value::Bool(*b),
            ValueKind::Int(i) => Value::Int(*i),
            ValueKind::Float(f) => Value::Float(*f),
            ValueKind::Str(s) => Value::Str(s.clone()),
            ValueKind::Object(entries) => {
                Value::Object(entries.iter().map(|(k, v)| (k.clone(), Value::Int(*v))).collect())
            }
        };
        for _ in 0..(self.depth % 40) {
            value = Value::Array(vec![value]);
        }
        value
    }
}

/// One field of a generated change.
#[derive(Arbitrary, Debug, Clone)]
pub struct CellSeed {
    field: NameSeed,
    policy: u8,
    value: ValueSeed,
    ctx: Vec<(DeviceSeed, u64)>,
    /// Keep the dots as given (possibly unsorted or with seq 0) instead of normalising them.
    raw_ctx: bool,
}

/// A change: mostly well-formed, sometimes not, never larger than the input that made it.
#[derive(Arbitrary, Debug, Clone)]
pub struct ChangeSeed {
    collection: NameSeed,
    record: NameSeed,
    hlc: u64,
    origin: DeviceSeed,
    seq: u64,
    delete: bool,
    cells: Vec<CellSeed>,
}

impl ChangeSeed {
    /// The change.
    pub fn change(&self) -> Change {
        let cells = self
            .cells
            .iter()
            .map(|cell| {
                let dots = cell.ctx.iter().map(|(origin, seq)| Dot { origin: origin.id(), seq: *seq });
                let ctx = if cell.raw_ctx {
                    // Ctx has no constructor for a non-canonical list; its encoding is a list of dots.
                    let dots: Vec<Dot> = dots.collect();
                    postcard::from_bytes(&postcard::to_stdvec(&dots).expect("encoding to a Vec cannot fail"))
                        .expect("a list of dots decodes as a context")
                } else {
                    Ctx::from_dots(dots.filter(|d| d.seq > 0))
                };
                CellWrite {
                    field: cell.field.text(),
                    policy: Policy::ALL[usize::from(cell.policy) % Policy::ALL.len()],
                    value: cell.value.value(),
                    ctx,
                }
            })
            .collect();
        Change {
            collection: self.collection.text(),
            record: self.record.text(),
            hlc: Hlc::from_u64(self.hlc),
            dot: Dot { origin: self.origin.id(), seq: self.seq },
            delete: self.delete,
            cells,
        }
    }
}

/// Reads the LEB128 length prefix postcard puts before a sequence, if the bytes start with one.
pub fn postcard_length_prefix(bytes: &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
