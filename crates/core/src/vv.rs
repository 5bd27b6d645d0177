//! Dots and version vectors: who wrote what, and how much of each device's history a replica
//! (or a writer, for one field) has seen.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::device::DeviceId;

/// One write event: the device that made it and its sequence number there (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The device that made the write.
    pub origin: DeviceId,
    /// The write's number at that device.
    pub seq: u64,
}

/// Maps each origin to the highest sequence number seen from it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// An empty vector.
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// Highest sequence number seen from `origin` (0 if none).
    pub fn get(&self, origin: &DeviceId) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Whether the dot is at or below this vector.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.get(&dot.origin) >= dot.seq
    }

    /// Raises the entry for `dot.origin` to at least `dot.seq`.
    pub fn observe(&mut self, dot: Dot) {
        let entry = self.0.entry(dot.origin).or_insert(0);
        if dot.seq > *entry {
            *entry = dot.seq;
        }
    }

    /// Pointwise maximum with another vector.
    pub fn merge(&mut self, other: &VersionVector) {
        for (origin, seq) in &other.0 {
            self.observe(Dot { origin: *origin, seq: *seq });
        }
    }

    /// Entries in origin order.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &u64)> {
        self.0.iter()
    }

    /// Number of origins.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin is known.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sum over origins of how far `other` is ahead of this vector: how many of the other's
    /// writes (upper bound) this replica still lacks.
    pub fn lag_behind(&self, other: &VersionVector) -> u64 {
        other.0.iter().map(|(o, s)| s.saturating_sub(self.get(o))).sum()
    }
}

impl FromIterator<(DeviceId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (DeviceId, u64)>>(iter: I) -> VersionVector {
        let mut vv = VersionVector::new();
        for (origin, seq) in iter {
            vv.observe(Dot { origin, seq });
        }
        vv
    }
}

/// The causal context of one field version: for each origin, the highest sequence number of a
/// write to this field that the writer had seen. Kept sorted by origin; usually one or two entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ctx(Vec<Dot>);

impl Ctx {
    /// An empty context: the writer had seen nothing of this field.
    pub fn new() -> Ctx {
        Ctx(Vec::new())
    }

    /// Builds a context from dots in any order; keeps the highest per origin.
    pub fn from_dots(dots: impl IntoIterator<Item = Dot>) -> Ctx {
        let mut ctx = Ctx::new();
        for dot in dots {
            ctx.add(dot);
        }
        ctx
    }

    /// Whether the writer had seen `dot`.
    pub fn covers(&self, dot: &Dot) -> bool {
        match self.0.binary_search_by(|d| d.origin.cmp(&dot.origin)) {
            Ok(i) => self.0[i].seq >= dot.seq,
            Err(_) => false,
        }
    }

    /// Adds a dot, keeping the highest sequence number per origin.
    pub fn add(&mut self, dot: Dot) {
        match self.0.binary_search_by(|d| d.origin.cmp(&dot.origin)) {
            Ok(i) => self.0[i].seq = self.0[i].seq.max(dot.seq),
            Err(i) => self.0.insert(i, dot),
        }
    }

    /// Adds every dot of another context.
    pub fn absorb(&mut self, other: &Ctx) {
        for dot in &other.0 {
            self.add(*dot);
        }
    }

    /// The dots, sorted by origin.
    pub fn dots(&self) -> &[Dot] {
        &self.0
    }

    /// Whether the context is well-formed: sorted by origin, one dot per origin, seq above zero.
    pub fn is_canonical(&self) -> bool {
        self.0.windows(2).all(|w| w[0].origin < w[1].origin) && self.0.iter().all(|d| d.seq > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    #[test]
    fn vector_observe_and_merge() {
        let mut a = VersionVector::new();
        a.observe(Dot { origin: dev(1), seq: 3 });
        a.observe(Dot { origin: dev(1), seq: 2 });
        assert_eq!(a.get(&dev(1)), 3);
        let b: VersionVector = [(dev(2), 5), (dev(1), 1)].into_iter().collect();
        assert_eq!(a.lag_behind(&b), 5);
        a.merge(&b);
        assert!(a.covers(&Dot { origin: dev(2), seq: 5 }));
        assert!(!a.covers(&Dot { origin: dev(2), seq: 6 }));
        assert_eq!(a.lag_behind(&b), 0);
    }

    #[test]
    fn ctx_keeps_highest_per_origin_sorted() {
        let ctx = Ctx::from_dots([
            Dot { origin: dev(2), seq: 1 },
            Dot { origin: dev(1), seq: 4 },
            Dot { origin: dev(2), seq: 7 },
        ]);
        assert!(ctx.is_canonical());
        assert_eq!(ctx.dots().len(), 2);
        assert!(ctx.covers(&Dot { origin: dev(2), seq: 7 }));
        assert!(!ctx.covers(&Dot { origin: dev(3), seq: 1 }));
    }
}
