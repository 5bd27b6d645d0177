//! The benchmark's records, identical to those of `crates/bench` (same seed, same formula): a
//! 16-hex-character id and five fields (two short strings, an integer, a float, a bool), computed
//! from the record's index so every process sees the same rows without holding all N in memory.

use std::ops::Range;

use meshsync_core::{Op, Value};
use meshsync_store::LocalWrite;

/// Seed of every generated value ("meshsync" in ASCII).
pub const SEED: u64 = 0x6d65_7368_7379_6e63;
/// Collection (meshsync), table (SQLite) and top-level map (yrs) the records live in.
pub const COLLECTION: &str = "items";
/// The five field names.
pub const FIELDS: [&str; 5] = ["name", "category", "qty", "price", "active"];

const ADJECTIVES: [&str; 16] = [
    "red", "blue", "tiny", "large", "quiet", "rapid", "plain", "bright", "solid", "soft", "dark", "light", "warm",
    "cold", "old", "new",
];
const NOUNS: [&str; 16] = [
    "lamp", "chair", "table", "cable", "shelf", "mug", "clock", "brush", "phone", "plate", "knife", "spoon", "box",
    "pen", "desk", "bag",
];
const CATEGORIES: [&str; 8] = ["home", "office", "kitchen", "garden", "tools", "toys", "books", "sports"];

/// One record.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub category: &'static str,
    pub qty: i64,
    pub price: f64,
    pub active: bool,
}

impl Row {
    /// The fields as meshsync values.
    pub fn values(&self) -> Vec<(String, Value)> {
        vec![
            (FIELDS[0].to_string(), Value::Str(self.name.clone())),
            (FIELDS[1].to_string(), Value::Str(self.category.to_string())),
            (FIELDS[2].to_string(), Value::Int(self.qty)),
            (FIELDS[3].to_string(), Value::Float(self.price)),
            (FIELDS[4].to_string(), Value::Bool(self.active)),
        ]
    }

    /// The fields as the JSON object `Node::put` takes.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "category": self.category, "qty": self.qty, "price": self.price, "active": self.active,
        })
    }

    /// A local write that puts this record.
    pub fn write(&self) -> LocalWrite {
        LocalWrite {
            collection: COLLECTION.into(),
            id: self.id.clone(),
            op: Op::Put { fields: self.values(), scope: None },
        }
    }
}

/// SplitMix64's finalizer: a bijection on u64 that scatters consecutive inputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Record number `index`; ids never repeat and arrive in random key order.
pub fn row(index: u64) -> Row {
    let key = mix(SEED ^ index);
    let bits = mix(key ^ SEED.rotate_left(17));
    Row {
        id: format!("{key:016x}"),
        name: format!("{} {}", ADJECTIVES[(bits & 15) as usize], NOUNS[((bits >> 4) & 15) as usize]),
        category: CATEGORIES[((bits >> 8) & 7) as usize],
        qty: ((bits >> 16) % 1000) as i64,
        price: ((bits >> 32) % 100_000) as f64 / 100.0,
        active: bits >> 63 == 1,
    }
}

/// Records `range.start` to `range.end - 1`.
pub fn rows(range: Range<u64>) -> Vec<Row> {
    range.map(row).collect()
}

/// `0..n` cut into consecutive ranges of at most `chunk` indices.
pub fn chunks(n: u64, chunk: u64) -> impl Iterator<Item = Range<u64>> {
    let chunk = chunk.max(1);
    (0..n.div_ceil(chunk)).map(move |i| i * chunk..((i + 1) * chunk).min(n))
}
