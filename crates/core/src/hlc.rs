//! Hybrid logical clock: tick and merge. Never reads the system clock; callers pass `now_ms`.
//!
//! An [`Hlc`] packs milliseconds since the Unix epoch (48 bits) and a logical counter (16 bits)
//! into one `u64`, so timestamps compare as plain integers and encode as one varint.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Default limit on how far ahead of our wall clock a remote timestamp may be.
pub const CLOCK_DRIFT_MS_MAX_DEFAULT: u64 = 60_000;

const LOGICAL_BITS: u32 = 16;
const LOGICAL_MAX: u64 = (1 << LOGICAL_BITS) - 1;
const WALL_MS_MAX: u64 = (1 << (64 - LOGICAL_BITS)) - 1;

/// A hybrid logical clock timestamp: wall-clock milliseconds and a logical counter.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hlc(u64);

impl Hlc {
    /// The zero timestamp, older than every real one.
    pub const ZERO: Hlc = Hlc(0);

    /// Builds a timestamp from its parts. `wall_ms` is clamped to 48 bits.
    pub fn new(wall_ms: u64, logical: u16) -> Hlc {
        Hlc((wall_ms.min(WALL_MS_MAX) << LOGICAL_BITS) | u64::from(logical))
    }

    /// Reinterprets a packed value, as stored on disk or on the wire.
    pub fn from_u64(raw: u64) -> Hlc {
        Hlc(raw)
    }

    /// The packed value.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Milliseconds since the Unix epoch.
    pub fn wall_ms(self) -> u64 {
        self.0 >> LOGICAL_BITS
    }

    /// The logical counter that orders events within one millisecond.
    pub fn logical(self) -> u16 {
        (self.0 & LOGICAL_MAX) as u16
    }

    /// Formats the wall-clock part as RFC 3339 with milliseconds, in UTC.
    pub fn to_rfc3339(self) -> String {
        rfc3339_from_ms(self.wall_ms())
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({}.{})", self.wall_ms(), self.logical())
    }
}

/// Formats milliseconds since the Unix epoch as RFC 3339 (`2026-11-22T20:58:57.123Z`).
pub fn rfc3339_from_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil-from-days, after Howard Hinnant's algorithm.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z")
}

/// Why a remote timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote timestamp is further ahead of our wall clock than the configured limit.
    #[error("remote clock is {ahead_ms} ms ahead of ours (limit {limit_ms} ms)")]
    ClockSkew {
        /// How far ahead the remote timestamp is.
        ahead_ms: u64,
        /// The configured limit.
        limit_ms: u64,
    },
}

/// The clock of one device. Monotonic even when the wall clock goes backwards.
#[derive(Debug, Clone)]
pub struct Clock {
    last: Hlc,
    drift_ms_max: u64,
}

impl Clock {
    /// A clock that has issued nothing yet and accepts remote timestamps up to `drift_ms_max` ahead.
    pub fn new(drift_ms_max: u64) -> Clock {
        Clock { last: Hlc::ZERO, drift_ms_max }
    }

    /// The highest timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// The configured drift limit.
    pub fn drift_ms_max(&self) -> u64 {
        self.drift_ms_max
    }

    /// Issues a timestamp for a local event: greater than every timestamp issued or observed.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let wall = now_ms.min(WALL_MS_MAX);
        let next = if wall > self.last.wall_ms() {
            Hlc::new(wall, 0)
        } else if self.last.logical() as u64 == LOGICAL_MAX {
            // 65,536 events in one millisecond: borrow the next millisecond rather than wrap.
            Hlc::new(self.last.wall_ms() + 1, 0)
        } else {
            Hlc(self.last.0 + 1)
        };
        debug_assert!(next > self.last);
        self.last = next;
        next
    }

    /// Checks a remote timestamp against the drift limit without changing the clock.
    pub fn check(&self, remote: Hlc, now_ms: u64) -> Result<(), ClockError> {
        let ahead_ms = remote.wall_ms().saturating_sub(now_ms);
        if ahead_ms > self.drift_ms_max {
            return Err(ClockError::ClockSkew { ahead_ms, limit_ms: self.drift_ms_max });
        }
        Ok(())
    }

    /// Observes a remote timestamp so that later local ticks are greater than it.
    pub fn observe(&mut self, remote: Hlc, now_ms: u64) -> Result<(), ClockError> {
        self.check(remote, now_ms)?;
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }

    /// Raises the clock to at least `floor` without a drift check: used on start-up with the
    /// highest timestamp found in local storage, which this device already accepted.
    pub fn restore(&mut self, floor: Hlc) {
        if floor > self.last {
            self.last = floor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_when_wall_clock_goes_backwards() {
        let mut clock = Clock::new(CLOCK_DRIFT_MS_MAX_DEFAULT);
        let a = clock.tick(10_000);
        let b = clock.tick(5_000);
        let c = clock.tick(5_000);
        assert!(a < b && b < c);
        assert_eq!(b.wall_ms(), 10_000);
        let d = clock.tick(20_000);
        assert_eq!(d, Hlc::new(20_000, 0));
    }

    #[test]
    fn logical_overflow_borrows_next_millisecond() {
        let mut clock = Clock::new(0);
        clock.restore(Hlc::new(7, u16::MAX));
        let next = clock.tick(7);
        assert_eq!(next, Hlc::new(8, 0));
    }

    #[test]
    fn remote_too_far_ahead_is_rejected_and_changes_nothing() {
        let mut clock = Clock::new(60_000);
        clock.tick(1_000_000);
        let before = clock.last();
        let err = clock.observe(Hlc::new(1_000_000 + 60_001, 0), 1_000_000).unwrap_err();
        assert_eq!(err, ClockError::ClockSkew { ahead_ms: 60_001, limit_ms: 60_000 });
        assert_eq!(clock.last(), before);
        clock.observe(Hlc::new(1_000_000 + 60_000, 3), 1_000_000).unwrap();
        assert!(clock.tick(1_000_000) > Hlc::new(1_060_000, 3));
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339_from_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_from_ms(1_795_381_137_123), "2026-11-22T20:58:57.123Z");
        assert_eq!(rfc3339_from_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
