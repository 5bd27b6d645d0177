//! What a child job tells the parent: one JSON object per line on stdout. Progress and errors go
//! to stderr, so stdout carries nothing else.

use std::io::Write;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One result line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// `count` operations of kind `metric` took `secs` seconds.
    Timing {
        /// What was timed, such as "apply".
        metric: String,
        /// How many records (or writes, or changes) it covered.
        count: u64,
        /// Elapsed seconds.
        secs: f64,
    },
    /// A size, such as the encoded full state.
    Size {
        /// What was measured.
        metric: String,
        /// Bytes.
        bytes: u64,
    },
    /// The child's peak resident set size at its end.
    PeakRss {
        /// KiB.
        kib: u64,
    },
}

/// Writes result lines to stdout as they happen, so a job that is later stopped by a limit has
/// still reported what it finished.
pub struct Emitter;

impl Emitter {
    /// Reports a timing.
    pub fn timing(&self, metric: &str, count: u64, elapsed: Duration) {
        self.line(&Line::Timing { metric: metric.into(), count, secs: elapsed.as_secs_f64() });
        eprintln!(
            "    {metric}: {count} in {:.3} s ({:.0}/s)",
            elapsed.as_secs_f64(),
            rate(count, elapsed.as_secs_f64())
        );
    }

    /// Reports a size.
    pub fn size(&self, metric: &str, bytes: u64) {
        self.line(&Line::Size { metric: metric.into(), bytes });
    }

    /// Reports the peak RSS.
    pub fn peak_rss(&self, kib: u64) {
        self.line(&Line::PeakRss { kib });
    }

    fn line(&self, line: &Line) {
        let text = serde_json::to_string(line).expect("a line always serializes");
        let mut out = std::io::stdout().lock();
        // The parent reads until end of file; a failed write means it is gone, and so is the point.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

/// Operations per second, 0 when nothing was timed.
pub fn rate(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_through_json() {
        let line = Line::Timing { metric: "apply".into(), count: 10, secs: 0.5 };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), line);
    }
}
