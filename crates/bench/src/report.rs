//! The parent's report: throughput, peak RSS and size tables per N, the ratios the issue asks
//! for, and which targets the run met. Pure formatting over the collected results.

use std::fmt::Write as _;
use std::io::Write as _;

use crate::protocol::{rate, Line};
use crate::{Job, JobResult, Outcome};

/// Issue #2's targets.
const APPLY_SHARE_OF_SQLITE_MIN: f64 = 0.5;
const APPLY_1M_SECS_MAX: f64 = 8.0;
const PEAK_RSS_1M_BYTES_MAX: u64 = 300_000_000;

/// A table row's figure for each N.
type PerSize<'a, T> = Box<dyn Fn(u64) -> T + 'a>;

/// A timed measurement, or why there is none.
#[derive(Clone, Debug, PartialEq)]
enum Cell {
    Timed { count: u64, secs: f64 },
    NotFinished(String),
    Missing,
}

impl Cell {
    fn secs(&self) -> Option<f64> {
        match self {
            Cell::Timed { secs, .. } => Some(*secs),
            _ => None,
        }
    }

    fn rate(&self) -> Option<f64> {
        match self {
            Cell::Timed { count, secs } => Some(rate(*count, *secs)),
            _ => None,
        }
    }

    /// The sum of timings over the same records (stages of one pipeline).
    fn plus(&self, other: &Cell) -> Cell {
        match (self, other) {
            (Cell::Timed { count, secs }, Cell::Timed { secs: more, .. }) => {
                Cell::Timed { count: *count, secs: secs + more }
            }
            (Cell::NotFinished(why), _) | (_, Cell::NotFinished(why)) => Cell::NotFinished(why.clone()),
            _ => Cell::Missing,
        }
    }

    fn show(&self) -> String {
        match self {
            Cell::Timed { count, secs } => format!("{} · {}/s", format_secs(*secs), format_count(rate(*count, *secs))),
            Cell::NotFinished(why) => why.clone(),
            Cell::Missing => "—".into(),
        }
    }
}

fn not_finished(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Finished => None,
        Outcome::TimeLimit { secs } => Some(format!("did not finish ({secs} s limit)")),
        Outcome::MemoryLimit { gib } => Some(format!("did not finish ({gib} GiB limit)")),
        Outcome::Failed(why) => Some(format!("failed: {why}")),
    }
}

fn find(results: &[JobResult], job: Job, n: u64) -> Option<&JobResult> {
    results.iter().find(|r| r.job == job && r.n == n)
}

fn timing(results: &[JobResult], job: Job, n: u64, metric: &str) -> Cell {
    let Some(result) = find(results, job, n) else { return Cell::Missing };
    let found = result.lines.iter().find_map(|line| match line {
        Line::Timing { metric: m, count, secs } if m == metric => Some(Cell::Timed { count: *count, secs: *secs }),
        _ => None,
    });
    match (found, not_finished(&result.outcome)) {
        (Some(cell), _) => cell,
        (None, Some(why)) => Cell::NotFinished(why),
        (None, None) => Cell::Missing,
    }
}

fn size(results: &[JobResult], job: Job, n: u64, metric: &str) -> Option<u64> {
    find(results, job, n)?.lines.iter().find_map(|line| match line {
        Line::Size { metric: m, bytes } if m == metric => Some(*bytes),
        _ => None,
    })
}

/// meshsync's whole initial sync as the same job yrs and automerge do: scan and encode the
/// source, decode, apply.
fn meshsync_sync(results: &[JobResult], n: u64) -> Cell {
    timing(results, Job::Export, n, "export").plus(&timing(results, Job::Apply, n, "decode")).plus(&timing(
        results,
        Job::Apply,
        n,
        "apply",
    ))
}

pub fn format_secs(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.1} ms", secs * 1e3)
    } else {
        format!("{secs:.2} s")
    }
}

fn format_count(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn format_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

pub fn format_kib(kib: Option<u64>) -> String {
    kib.map(|k| format_bytes(k * 1024)).unwrap_or_else(|| "—".into())
}

fn format_size(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn header(out: &mut String, first: &str, sizes: &[u64], extra: &[&str]) {
    let _ = write!(out, "| {first} |");
    for n in sizes {
        let _ = write!(out, " {} |", format_size(*n));
    }
    for column in extra {
        let _ = write!(out, " {column} |");
    }
    out.push('\n');
    out.push_str(&"|---".repeat(1 + sizes.len() + extra.len()));
    out.push_str("|\n");
}

/// The 1-, 5- and 15-minute load averages: other work on the machine shows here.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// The machine, as the report's first lines show it.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cores} cores, {model}, {} RAM; {date}", format_bytes(memory_kib * 1024))
}

/// The whole markdown report.
pub fn markdown(results: &[JobResult], sizes: &[u64], machine: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {machine}\n");

    let _ = writeln!(out, "### Throughput (time · records per second)\n");
    header(&mut out, "measurement", sizes, &[]);
    let rows: [(&str, PerSize<'_, Cell>); 17] = [
        (
            "raw SQLite upsert, one transaction (issue's settings)",
            Box::new(|n| timing(results, Job::Sqlite, n, "insert")),
        ),
        (
            "raw SQLite upsert, one transaction, 16 MiB page cache",
            Box::new(|n| timing(results, Job::SqliteStorePragmas, n, "insert")),
        ),
        (
            "**meshsync apply_remote, 10k-change batches (initial-sync apply)**",
            Box::new(|n| timing(results, Job::Apply, n, "apply")),
        ),
        (
            "meshsync apply_remote, 4,096-change batches (small wire batches)",
            Box::new(|n| timing(results, Job::ApplySession, n, "apply")),
        ),
        (
            "meshsync apply_remote, 100k-change batches (the store's limit)",
            Box::new(|n| timing(results, Job::ApplyLarge, n, "apply")),
        ),
        ("meshsync decode of those batches (postcard)", Box::new(|n| timing(results, Job::Apply, n, "decode"))),
        ("meshsync changes_since scan, empty vector", Box::new(|n| timing(results, Job::Export, n, "scan"))),
        (
            "meshsync export: scan + postcard encode + file write",
            Box::new(|n| timing(results, Job::Export, n, "export")),
        ),
        ("meshsync initial sync: export + decode + apply", Box::new(|n| meshsync_sync(results, n))),
        (
            "meshsync write_batch, 1,000 records per call",
            Box::new(|n| timing(results, Job::WriteBatch, n, "write_batch")),
        ),
        (
            "meshsync write, one transaction each (N capped at 100k)",
            Box::new(|n| timing(results, Job::WriteSingle, n, "write_single")),
        ),
        ("yrs insert, one transaction", Box::new(|n| timing(results, Job::Yrs, n, "insert"))),
        ("yrs encode full state (update v1)", Box::new(|n| timing(results, Job::Yrs, n, "encode"))),
        ("yrs apply to an empty doc", Box::new(|n| timing(results, Job::Yrs, n, "apply"))),
        ("yrs encode + apply", Box::new(|n| timing(results, Job::Yrs, n, "encode_apply"))),
        ("automerge insert, commit per 1,000 records", Box::new(|n| timing(results, Job::Automerge, n, "insert"))),
        ("automerge sync protocol to an empty doc", Box::new(|n| timing(results, Job::Automerge, n, "sync"))),
    ];
    // Rows of engines left out with --only stay out of the table.
    for (label, cell) in rows.iter().filter(|(_, cell)| sizes.iter().any(|&n| cell(n) != Cell::Missing)) {
        let _ = write!(out, "| {label} |");
        for &n in sizes {
            let _ = write!(out, " {} |", cell(n).show());
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\n### Peak RSS of each job's process (VmHWM)\n");
    header(&mut out, "job", sizes, &[]);
    for job in Job::ALL {
        if !results.iter().any(|r| r.job == job) {
            continue;
        }
        let _ = write!(out, "| {} |", job.name());
        for &n in sizes {
            let _ = write!(out, " {} |", format_kib(find(results, job, n).and_then(|r| r.peak_rss_kib)));
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\n### Bytes each job's process wrote (`wchar`: WAL appends and checkpoints included)\n");
    header(&mut out, "job", sizes, &[]);
    for job in Job::ALL {
        if !matches!(
            job,
            Job::Sqlite
                | Job::SqliteStorePragmas
                | Job::WriteSingle
                | Job::WriteBatch
                | Job::Apply
                | Job::ApplySession
                | Job::ApplyLarge
        ) || !results.iter().any(|r| r.job == job)
        {
            continue;
        }
        let _ = write!(out, "| {} |", job.name());
        for &n in sizes {
            let shown = size(results, job, n, "written")
                .map(|bytes| {
                    let records = if job == Job::WriteSingle { n.min(crate::meshsync::SINGLE_WRITES_MAX) } else { n };
                    format!("{} ({:.0} B/record)", format_bytes(bytes), bytes as f64 / records as f64)
                })
                .unwrap_or_else(|| "—".into());
            let _ = write!(out, " {shown} |");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\n### Bytes on the wire for the full state\n");
    header(&mut out, "encoding", sizes, &[]);
    for (label, job, metric) in [
        ("meshsync changes, postcard", Job::Export, "export_bytes"),
        ("yrs update v1", Job::Yrs, "update_bytes"),
        ("automerge sync messages", Job::Automerge, "sync_bytes"),
    ] {
        if !results.iter().any(|r| r.job == job) {
            continue;
        }
        let _ = write!(out, "| {label} |");
        for &n in sizes {
            let shown = size(results, job, n, metric).map(format_bytes).unwrap_or_else(|| "—".into());
            let _ = write!(out, " {shown} |");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "\n### Ratios\n");
    header(&mut out, "ratio", sizes, &["target"]);
    let ratio_rows: [(&str, PerSize<'_, Option<f64>>, &str); 7] = [
        (
            "meshsync apply rate / raw SQLite rate (issue's settings)",
            Box::new(|n| {
                Some(
                    timing(results, Job::Apply, n, "apply").rate()?
                        / timing(results, Job::Sqlite, n, "insert").rate()?,
                )
            }),
            "≥ 0.50",
        ),
        (
            "meshsync apply rate, 100k batches / raw SQLite rate (issue's settings)",
            Box::new(|n| {
                Some(
                    timing(results, Job::ApplyLarge, n, "apply").rate()?
                        / timing(results, Job::Sqlite, n, "insert").rate()?,
                )
            }),
            "—",
        ),
        (
            "meshsync apply rate / raw SQLite rate (16 MiB page cache)",
            Box::new(|n| {
                Some(
                    timing(results, Job::Apply, n, "apply").rate()?
                        / timing(results, Job::SqliteStorePragmas, n, "insert").rate()?,
                )
            }),
            "—",
        ),
        (
            "yrs encode+apply time / meshsync initial sync time",
            Box::new(|n| {
                Some(timing(results, Job::Yrs, n, "encode_apply").secs()? / meshsync_sync(results, n).secs()?)
            }),
            "> 1",
        ),
        (
            "yrs encode+apply time / meshsync apply time",
            Box::new(|n| {
                Some(
                    timing(results, Job::Yrs, n, "encode_apply").secs()?
                        / timing(results, Job::Apply, n, "apply").secs()?,
                )
            }),
            "> 1",
        ),
        (
            "automerge sync time / meshsync initial sync time",
            Box::new(|n| Some(timing(results, Job::Automerge, n, "sync").secs()? / meshsync_sync(results, n).secs()?)),
            "> 1",
        ),
        (
            "automerge sync time / meshsync apply time",
            Box::new(|n| {
                Some(
                    timing(results, Job::Automerge, n, "sync").secs()?
                        / timing(results, Job::Apply, n, "apply").secs()?,
                )
            }),
            "> 1",
        ),
    ];
    for (label, ratio, target) in ratio_rows.iter().filter(|(_, ratio, _)| sizes.iter().any(|&n| ratio(n).is_some())) {
        let _ = write!(out, "| {label} |");
        for &n in sizes {
            let shown = ratio(n).map(|r| format!("{r:.2}")).unwrap_or_else(|| "—".into());
            let _ = write!(out, " {shown} |");
        }
        let _ = writeln!(out, " {target} |");
    }

    let _ = writeln!(out, "\n### Targets\n");
    for line in targets(results, sizes) {
        let _ = writeln!(out, "- {line}");
    }
    out
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

/// One line per target of issue #2.
fn targets(results: &[JobResult], sizes: &[u64]) -> Vec<String> {
    let mut lines = Vec::new();

    let shares: Vec<(u64, f64)> = sizes
        .iter()
        .filter_map(|&n| {
            Some((
                n,
                timing(results, Job::Apply, n, "apply").rate()? / timing(results, Job::Sqlite, n, "insert").rate()?,
            ))
        })
        .collect();
    let met = (!shares.is_empty()).then(|| shares.iter().all(|(_, s)| *s >= APPLY_SHARE_OF_SQLITE_MIN));
    let detail: Vec<String> = shares.iter().map(|(n, s)| format!("{} {:.0}%", format_size(*n), s * 100.0)).collect();
    lines.push(format!(
        "apply throughput ≥ {:.0}% of raw SQLite in the same run: {} ({})",
        APPLY_SHARE_OF_SQLITE_MIN * 100.0,
        verdict(met),
        detail.join(", ")
    ));

    let apply_1m = timing(results, Job::Apply, 1_000_000, "apply").secs();
    lines.push(format!(
        "1M records applied in under {APPLY_1M_SECS_MAX} s: {}{}",
        verdict(apply_1m.map(|s| s < APPLY_1M_SECS_MAX)),
        apply_1m.map(|s| format!(" ({})", format_secs(s))).unwrap_or_default()
    ));

    for (peer, job, metric) in [("yrs", Job::Yrs, "encode_apply"), ("automerge", Job::Automerge, "sync")] {
        let mut all = Vec::new();
        let mut detail = Vec::new();
        for &n in sizes {
            let ours = meshsync_sync(results, n).secs();
            let theirs = timing(results, job, n, metric);
            match (ours, theirs.secs(), &theirs) {
                (Some(ours), Some(theirs), _) => {
                    all.push(ours < theirs);
                    detail.push(format!("{} {:.2}x", format_size(n), theirs / ours));
                }
                (Some(_), None, Cell::NotFinished(why)) => {
                    all.push(true);
                    detail.push(format!("{} {peer} {why}", format_size(n)));
                }
                _ => {}
            }
        }
        let met = (!all.is_empty()).then(|| all.iter().all(|b| *b));
        lines.push(format!(
            "whole initial sync faster than {peer} at every N: {} ({})",
            verdict(met),
            detail.join(", ")
        ));
    }

    // The variant apply jobs hold ten times more changes in flight at 100k: reported, not judged.
    let judged = [Job::WriteSingle, Job::WriteBatch, Job::Export, Job::Apply];
    let peak = |jobs: &[Job]| {
        jobs.iter()
            .filter_map(|&job| Some((job, find(results, job, 1_000_000)?.peak_rss_kib?)))
            .max_by_key(|(_, kib)| *kib)
    };
    let worst = peak(&judged);
    lines.push(format!(
        "peak RSS under 300 MB at 1M (write, export and headline apply jobs): {}{}",
        verdict(worst.map(|(_, kib)| kib * 1024 < PEAK_RSS_1M_BYTES_MAX)),
        worst.map(|(job, kib)| format!(" (highest: {} {})", job.name(), format_kib(Some(kib)))).unwrap_or_default()
    ));
    if let Some((job, kib)) = peak(&[Job::ApplySession, Job::ApplyLarge]) {
        lines.push(format!(
            "not judged: the batch-size variants peak at {} ({}){}",
            format_kib(Some(kib)),
            job.name(),
            if kib * 1024 < PEAK_RSS_1M_BYTES_MAX { "" } else { ", over 300 MB" }
        ));
    }
    lines
}

/// Reads back the JSON lines `--json` wrote (every round of every job), for `--report-from`.
pub fn read_json(text: &str) -> Result<Vec<JobResult>, String> {
    let mut results = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| format!("line {}: {why}", number + 1);
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let job = crate::Job::parse(value["job"].as_str().ok_or_else(|| bad("no job"))?)?;
        let outcome = match value["outcome"].as_str().unwrap_or_default() {
            "finished" => Outcome::Finished,
            other => Outcome::Failed(other.to_string()),
        };
        results.push(JobResult {
            job,
            n: value["n"].as_u64().ok_or_else(|| bad("no n"))?,
            outcome,
            lines: serde_json::from_value(value["lines"].clone()).map_err(|e| bad(&e.to_string()))?,
            wall_secs: value["wall_secs"].as_f64().unwrap_or_default(),
            peak_rss_kib: value["peak_rss_kib"].as_u64(),
        });
    }
    Ok(results)
}

/// Groups every round by job and size, in first-seen order, and folds each group to its median.
pub fn fold_rounds(rounds: Vec<JobResult>) -> Vec<JobResult> {
    let mut groups: Vec<Vec<JobResult>> = Vec::new();
    for result in rounds {
        match groups.iter_mut().find(|g| g[0].job == result.job && g[0].n == result.n) {
            Some(group) => group.push(result),
            None => groups.push(vec![result]),
        }
    }
    groups.into_iter().map(median).collect()
}

/// One job's rounds folded into one result: the median of each timing and size (the upper
/// median for an even count), the highest peak RSS, and the first outcome that was not a finish.
pub fn median(mut rounds: Vec<JobResult>) -> JobResult {
    assert!(!rounds.is_empty(), "every job runs at least once");
    if rounds.len() == 1 {
        return rounds.pop().expect("one round");
    }
    let middle = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let first = &rounds[0];
    let lines = first
        .lines
        .iter()
        .map(|line| match line {
            Line::Timing { metric, count, .. } => Line::Timing {
                metric: metric.clone(),
                count: *count,
                secs: middle(
                    rounds
                        .iter()
                        .flat_map(|r| &r.lines)
                        .filter_map(|l| match l {
                            Line::Timing { metric: m, secs, .. } if m == metric => Some(*secs),
                            _ => None,
                        })
                        .collect(),
                ),
            },
            Line::Size { metric, .. } => Line::Size {
                metric: metric.clone(),
                bytes: middle(
                    rounds
                        .iter()
                        .flat_map(|r| &r.lines)
                        .filter_map(|l| match l {
                            Line::Size { metric: m, bytes } if m == metric => Some(*bytes as f64),
                            _ => None,
                        })
                        .collect(),
                ) as u64,
            },
            Line::PeakRss { .. } => line.clone(),
        })
        .collect();
    JobResult {
        job: first.job,
        n: first.n,
        outcome: rounds
            .iter()
            .map(|r| r.outcome.clone())
            .find(|o| *o != Outcome::Finished)
            .unwrap_or(Outcome::Finished),
        lines,
        wall_secs: middle(rounds.iter().map(|r| r.wall_secs).collect()),
        peak_rss_kib: rounds.iter().filter_map(|r| r.peak_rss_kib).max(),
    }
}

/// Appends one result as a JSON line (for re-reading a run later).
pub fn write_json(file: &mut std::fs::File, result: &JobResult) -> std::io::Result<()> {
    let outcome = match &result.outcome {
        Outcome::Finished => "finished".to_string(),
        other => not_finished(other).unwrap_or_default(),
    };
    let value = serde_json::json!({
        "job": result.job.name(),
        "n": result.n,
        "outcome": outcome,
        "wall_secs": result.wall_secs,
        "peak_rss_kib": result.peak_rss_kib,
        "lines": result.lines,
    });
    writeln!(file, "{value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(job: Job, n: u64, lines: Vec<Line>) -> JobResult {
        JobResult { job, n, outcome: Outcome::Finished, lines, wall_secs: 1.0, peak_rss_kib: Some(1024) }
    }

    fn timed(metric: &str, count: u64, secs: f64) -> Line {
        Line::Timing { metric: metric.into(), count, secs }
    }

    #[test]
    fn repeated_rounds_report_the_median() {
        let rounds = [3.0, 1.0, 2.0].map(|secs| result(Job::Apply, 10_000, vec![timed("apply", 10_000, secs)]));
        let folded = median(rounds.to_vec());
        assert_eq!(folded.lines, vec![timed("apply", 10_000, 2.0)]);
    }

    #[test]
    fn ratios_and_targets_come_from_the_same_run() {
        let results = vec![
            result(Job::Sqlite, 1_000_000, vec![timed("insert", 1_000_000, 6.0)]),
            result(Job::Apply, 1_000_000, vec![timed("decode", 1_000_000, 0.5), timed("apply", 1_000_000, 10.0)]),
            result(Job::Export, 1_000_000, vec![timed("export", 1_000_000, 1.5)]),
            result(Job::Yrs, 1_000_000, vec![timed("encode_apply", 1_000_000, 16.0)]),
            JobResult {
                outcome: Outcome::TimeLimit { secs: 300 },
                ..result(Job::Automerge, 1_000_000, vec![timed("insert", 1_000_000, 70.0)])
            },
        ];
        let text = markdown(&results, &[1_000_000], "test machine");
        assert!(
            text.contains("| meshsync apply rate / raw SQLite rate (issue's settings) | 0.60 | ≥ 0.50 |"),
            "{text}"
        );
        assert!(text.contains("1M records applied in under 8 s: **missed** (10.00 s)"), "{text}");
        assert!(text.contains("faster than yrs at every N: **met** (1M 1.33x)"), "{text}");
        assert!(text.contains("automerge sync protocol to an empty doc | did not finish (300 s limit) |"), "{text}");
    }
}
