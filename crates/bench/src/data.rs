//! The benchmark's records: a 16-hex-character id and five fields (two short strings, an
//! integer, a float, a bool), computed from a fixed seed and the record's index. Every engine and
//! every child process sees the same rows without any of them holding all N in memory.

use std::ops::Range;

use meshsync_core::Value;

/// Seed of every generated value ("meshsync" in ASCII).
pub const SEED: u64 = 0x6d65_7368_7379_6e63;
/// Collection (meshsync), table (SQLite) and top-level map (yrs) the records live in.
pub const COLLECTION: &str = "items";
/// The five field names, in the order the engines write them.
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
    /// 16 lowercase hex characters, unique per index.
    pub id: String,
    /// A short string, such as "quiet lamp".
    pub name: String,
    /// One of eight short strings.
    pub category: &'static str,
    /// 0 to 999.
    pub qty: i64,
    /// 0.00 to 999.99.
    pub price: f64,
    /// Whether the record is active.
    pub active: bool,
}

impl Row {
    /// The fields as meshsync values, in [`FIELDS`] order.
    pub fn values(&self) -> Vec<(String, Value)> {
        vec![
            (FIELDS[0].to_string(), Value::Str(self.name.clone())),
            (FIELDS[1].to_string(), Value::Str(self.category.to_string())),
            (FIELDS[2].to_string(), Value::Int(self.qty)),
            (FIELDS[3].to_string(), Value::Float(self.price)),
            (FIELDS[4].to_string(), Value::Bool(self.active)),
        ]
    }
}

/// SplitMix64's finalizer: a bijection on u64 that scatters consecutive inputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Record number `index`. The id is a bijection of the index, so ids never repeat, and they
/// arrive in random key order as application ids would.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_hex_characters_and_unique() {
        let ids: std::collections::HashSet<String> = rows(0..10_000).into_iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }

    #[test]
    fn rows_are_reproducible() {
        assert_eq!(row(42), row(42));
        assert_ne!(row(42), row(43));
    }

    #[test]
    fn chunks_cover_the_range_once() {
        let ranges: Vec<_> = chunks(2_500, 1_000).collect();
        assert_eq!(ranges, vec![0..1_000, 1_000..2_000, 2_000..2_500]);
        assert_eq!(chunks(0, 1_000).count(), 0);
    }
}
