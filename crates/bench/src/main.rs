//! `meshsync-bench`: meshsync's store against raw SQLite, yrs and automerge on the same records,
//! in one run (issue #2). The parent runs every engine and size as a fresh child process (this
//! binary re-executed with `--child`), so each job's peak RSS is its own; it collects the
//! children's JSON lines and prints a markdown report with the ratios. Method: BENCHMARKS.md.
//!
//! ```text
//! meshsync-bench [--sizes 10000,100000,1000000] [--only meshsync,sqlite,yrs,automerge]
//!                [--repeat 1] [--time-limit-s 300] [--memory-limit-gib 12] [--json results.jsonl]
//! ```
//!
//! # Layout
//! - `data`: the seeded records.
//! - `meshsync`, `peers`: the jobs a child runs.
//! - `protocol`: the child-to-parent result lines.
//! - `limits`: peak RSS and the address-space cap.
//! - `report`: the markdown tables, ratios and targets.

mod data;
mod limits;
mod meshsync;
mod peers;
mod protocol;
mod report;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use protocol::{Emitter, Line};

type Error = Box<dyn std::error::Error>;

/// One kind of engine, as `--only` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Meshsync,
    Sqlite,
    Yrs,
    Automerge,
}

impl Engine {
    fn parse(name: &str) -> Result<Engine, String> {
        match name {
            "meshsync" => Ok(Engine::Meshsync),
            "sqlite" => Ok(Engine::Sqlite),
            "yrs" => Ok(Engine::Yrs),
            "automerge" => Ok(Engine::Automerge),
            other => Err(format!("unknown engine {other:?}: expected meshsync, sqlite, yrs or automerge")),
        }
    }
}

/// One child process's work. Jobs of one size run in this order and share a work dir: `Export`
/// reads the store `WriteBatch` leaves, the `Apply` jobs the file `Export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    Sqlite,
    SqliteStorePragmas,
    WriteSingle,
    WriteBatch,
    Export,
    Apply,
    ApplySession,
    ApplyLarge,
    Yrs,
    Automerge,
}

impl Job {
    const ALL: [Job; 10] = [
        Job::Sqlite,
        Job::SqliteStorePragmas,
        Job::WriteSingle,
        Job::WriteBatch,
        Job::Export,
        Job::Apply,
        Job::ApplySession,
        Job::ApplyLarge,
        Job::Yrs,
        Job::Automerge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::Sqlite => "sqlite",
            Job::SqliteStorePragmas => "sqlite-store-pragmas",
            Job::WriteSingle => "meshsync-write-single",
            Job::WriteBatch => "meshsync-write-batch",
            Job::Export => "meshsync-export",
            Job::Apply => "meshsync-apply",
            Job::ApplySession => "meshsync-apply-4096",
            Job::ApplyLarge => "meshsync-apply-100k",
            Job::Yrs => "yrs",
            Job::Automerge => "automerge",
        }
    }

    fn engine(self) -> Engine {
        match self {
            Job::Sqlite | Job::SqliteStorePragmas => Engine::Sqlite,
            Job::WriteSingle | Job::WriteBatch | Job::Export | Job::Apply | Job::ApplySession | Job::ApplyLarge => {
                Engine::Meshsync
            }
            Job::Yrs => Engine::Yrs,
            Job::Automerge => Engine::Automerge,
        }
    }

    fn parse(name: &str) -> Result<Job, String> {
        Job::ALL.into_iter().find(|j| j.name() == name).ok_or_else(|| format!("unknown job {name:?}"))
    }
}

/// How a child ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Finished,
    /// Stopped by the parent after the time limit.
    TimeLimit {
        secs: u64,
    },
    /// Aborted on a failed allocation under the address-space cap (or killed by the kernel).
    MemoryLimit {
        gib: u64,
    },
    /// Anything else: an error, a failed check, a crash.
    Failed(String),
}

/// What the parent learned from one child.
#[derive(Clone, Debug)]
pub struct JobResult {
    pub job: Job,
    pub n: u64,
    pub outcome: Outcome,
    pub lines: Vec<Line>,
    pub wall_secs: f64,
    /// From the child's own report, or the parent's last look at a child it stopped.
    pub peak_rss_kib: Option<u64>,
}

struct Options {
    sizes: Vec<u64>,
    engines: Vec<Engine>,
    time_limit: Duration,
    memory_limit_gib: u64,
    json: Option<PathBuf>,
    work: Option<PathBuf>,
    repeat: usize,
    report_from: Option<PathBuf>,
}

const USAGE: &str = "usage: meshsync-bench [--sizes 10000,100000,1000000] [--only meshsync,sqlite,yrs,automerge]
                      [--repeat 1] [--time-limit-s 300] [--memory-limit-gib 12] [--json FILE] [--work-dir DIR]
  --repeat R runs every job of sizes up to 100k R times and reports the median of each figure.
  --report-from FILE prints the report of a run saved with --json, without running anything.";

fn parse_options(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        sizes: vec![10_000, 100_000, 1_000_000],
        engines: vec![Engine::Meshsync, Engine::Sqlite, Engine::Yrs, Engine::Automerge],
        time_limit: Duration::from_secs(300),
        memory_limit_gib: 12,
        json: None,
        work: None,
        repeat: 1,
        report_from: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"));
        match flag.as_str() {
            "--sizes" => {
                options.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().replace('_', "").parse::<u64>().map_err(|e| format!("bad size {s:?}: {e}")))
                    .collect::<Result<_, _>>()?;
                if options.sizes.contains(&0) {
                    return Err("sizes must be positive".into());
                }
            }
            "--only" => {
                options.engines = value()?.split(',').map(|s| Engine::parse(s.trim())).collect::<Result<_, _>>()?
            }
            "--time-limit-s" => {
                options.time_limit = Duration::from_secs(value()?.parse().map_err(|e| format!("--time-limit-s: {e}"))?)
            }
            "--memory-limit-gib" => {
                options.memory_limit_gib = value()?.parse().map_err(|e| format!("--memory-limit-gib: {e}"))?
            }
            "--json" => options.json = Some(value()?.into()),
            "--work-dir" => options.work = Some(value()?.into()),
            "--report-from" => options.report_from = Some(value()?.into()),
            "--repeat" => {
                options.repeat = value()?.parse().map_err(|e| format!("--repeat: {e}"))?;
                if options.repeat == 0 {
                    return Err("--repeat must be at least 1".into());
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        return child(&args[1..]);
    }
    let options = match parse_options(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &options.report_from {
        let results = match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| report::read_json(&t))
        {
            Ok(rounds) => report::fold_rounds(rounds),
            Err(e) => {
                eprintln!("meshsync-bench: cannot read {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        let mut sizes: Vec<u64> = results.iter().map(|r| r.n).collect();
        sizes.sort_unstable();
        sizes.dedup();
        let machine = format!("re-rendered from {} on {}", path.display(), report::machine());
        print!("{}", report::markdown(&results, &sizes, &machine));
        return ExitCode::SUCCESS;
    }
    let load_before = report::load_average();
    match parent(&options) {
        Ok(results) => {
            let machine = format!(
                "{}; load average {load_before} before the run, {} after; sizes up to {REPEAT_SIZE_MAX}: median of {} round(s)",
                report::machine(),
                report::load_average(),
                options.repeat
            );
            print!("{}", report::markdown(&results, &options.sizes, &machine));
            if results.iter().any(|r| matches!(r.outcome, Outcome::Failed(_))) {
                eprintln!("meshsync-bench: at least one job failed (see above)");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("meshsync-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--child JOB N WORK_DIR MEMORY_LIMIT_GIB`: runs one job and reports on stdout.
fn child(args: &[String]) -> ExitCode {
    let run = || -> Result<(), Error> {
        let [job, n, work, memory_gib] = args else { return Err("--child JOB N WORK_DIR MEMORY_LIMIT_GIB".into()) };
        let job = Job::parse(job)?;
        let n: u64 = n.parse()?;
        let work = Path::new(work);
        let memory_gib: u64 = memory_gib.parse()?;
        limits::limit_address_space(memory_gib << 30)?;
        let out = Emitter;
        match job {
            Job::Sqlite => peers::sqlite(n, work, false, &out)?,
            Job::SqliteStorePragmas => peers::sqlite(n, work, true, &out)?,
            Job::WriteSingle => meshsync::write_single(n, work, &out)?,
            Job::WriteBatch => meshsync::write_batch(n, work, &out)?,
            Job::Export => meshsync::export(n, work, &out)?,
            Job::Apply => meshsync::apply(n, work, meshsync::APPLY_BATCH_CHANGES, &out)?,
            Job::ApplySession => meshsync::apply(n, work, meshsync::APPLY_BATCH_CHANGES_SESSION, &out)?,
            Job::ApplyLarge => meshsync::apply(n, work, meshsync::APPLY_BATCH_CHANGES_LARGE, &out)?,
            Job::Yrs => peers::yrs(n, &out)?,
            Job::Automerge => peers::automerge(n, &out)?,
        }
        out.size("written", limits::bytes_written().unwrap_or(0));
        out.peak_rss(limits::peak_rss_kib("self").unwrap_or(0));
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("    error: {e}");
            ExitCode::from(3)
        }
    }
}

/// Sizes up to this many records are run `--repeat` times; larger ones run long enough once.
const REPEAT_SIZE_MAX: u64 = 100_000;

fn parent(options: &Options) -> Result<Vec<JobResult>, Error> {
    let exe = std::env::current_exe()?;
    let mut json = match &options.json {
        Some(path) => Some(std::fs::File::create(path)?),
        None => None,
    };
    let jobs: Vec<Job> = Job::ALL.into_iter().filter(|j| options.engines.contains(&j.engine())).collect();
    let repeats = |n: u64| if n <= REPEAT_SIZE_MAX { options.repeat } else { 1 };
    let total: usize = options.sizes.iter().map(|&n| jobs.len() * repeats(n)).sum();
    let mut started = 0;
    let mut results = Vec::new();
    for &n in &options.sizes {
        let mut runs: Vec<Vec<JobResult>> = vec![Vec::new(); jobs.len()];
        for round in 0..repeats(n) {
            // A fresh work dir per round: the meshsync jobs hand a store and a file down the line.
            let work = match &options.work {
                Some(dir) => {
                    std::fs::create_dir_all(dir)?;
                    tempfile::tempdir_in(dir)?
                }
                None => tempfile::tempdir()?,
            };
            for (index, &job) in jobs.iter().enumerate() {
                started += 1;
                eprintln!("[{started}/{total}] {} n={n} round {}", job.name(), round + 1);
                let result = run_child(&exe, job, n, work.path(), options)?;
                match &result.outcome {
                    Outcome::Finished => eprintln!(
                        "    done in {:.1} s, peak RSS {}, load average {}",
                        result.wall_secs,
                        report::format_kib(result.peak_rss_kib),
                        report::load_average()
                    ),
                    other => eprintln!("    NOT FINISHED: {other:?}"),
                }
                if let Some(file) = json.as_mut() {
                    report::write_json(file, &result)?;
                }
                runs[index].push(result);
            }
        }
        results.extend(runs.into_iter().map(report::median));
    }
    Ok(results)
}

fn run_child(exe: &Path, job: Job, n: u64, work: &Path, options: &Options) -> Result<JobResult, Error> {
    let start = Instant::now();
    let mut child = Command::new(exe)
        .arg("--child")
        .arg(job.name())
        .arg(n.to_string())
        .arg(work)
        .arg(options.memory_limit_gib.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id().to_string();
    let stdout = child.stdout.take().ok_or("child has no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for text in BufReader::new(stdout).lines().map_while(Result::ok) {
            match serde_json::from_str::<Line>(&text) {
                Ok(line) => lines.push(line),
                Err(_) => eprintln!("    (child printed a non-result line: {text})"),
            }
        }
        lines
    });
    let mut sampled_rss_kib = None;
    let mut stopped = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        sampled_rss_kib = limits::peak_rss_kib(&pid).or(sampled_rss_kib);
        if start.elapsed() > options.time_limit {
            // Our own child, by its handle: nothing else is touched.
            child.kill()?;
            stopped = true;
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall_secs = start.elapsed().as_secs_f64();
    let lines = reader.join().map_err(|_| "the reader thread panicked")?;
    let reported_rss_kib = lines.iter().find_map(|l| match l {
        Line::PeakRss { kib } => Some(*kib),
        _ => None,
    });
    let outcome = if stopped {
        Outcome::TimeLimit { secs: options.time_limit.as_secs() }
    } else if status.success() {
        Outcome::Finished
    } else {
        use std::os::unix::process::ExitStatusExt;
        match status.signal() {
            Some(libc::SIGABRT) | Some(libc::SIGKILL) => Outcome::MemoryLimit { gib: options.memory_limit_gib },
            Some(signal) => Outcome::Failed(format!("killed by signal {signal}")),
            None => Outcome::Failed(format!("exited with {status}")),
        }
    };
    Ok(JobResult { job, n, outcome, lines, wall_secs, peak_rss_kib: reported_rss_kib.or(sampled_rss_kib) })
}
