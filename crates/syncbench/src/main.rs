//! `meshsync-syncbench`: the node-to-node sync benchmarks of issue #4 (item 7), in one run.
//!
//! ```text
//! cargo build --release -p meshsync-cli -p meshsync-syncbench
//! target/release/meshsync-syncbench [--sizes 10000,100000,1000000] [--only initial,sqlite,hop,line,catchup,idle,yrs,automerge]
//!     [--writes 1000] [--catchup-n 100000] [--idle-secs 30] [--limit-s 300] [--limit-gib 12] [--meshsync PATH]
//! ```
//!
//! Every scenario runs in fresh child processes (this binary re-executed with an internal
//! `__role`) and fresh temp dirs. Results are printed as JSON lines on stdout as they come, then
//! as markdown tables; progress goes to stderr.
//!
//! 1. `initial`: N records synced from process A to process B over loopback mutual TLS
//!    ([`initial`]); `sqlite`: the raw-SQLite bound measured beside it.
//! 2. `hop` and `line`: live propagation of single writes, one hop and along a forced 5-node
//!    line ([`live`]).
//! 3. `catchup`: 100,000 changes after a pause ([`live`]).
//! 4. `idle`: two real `meshsync run` processes, connected and idle ([`idle`]).
//! 5. `yrs`, `automerge`: the same initial sync over a loopback socket ([`reference`]).

mod child;
mod data;
mod idle;
mod initial;
mod live;
mod procfs;
mod reference;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use child::{emit, Child, Failure};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The value after `key` in `args`.
pub fn arg(args: &[String], key: &str) -> Result<String, Error> {
    args.iter()
        .position(|a| a == key)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("missing {key}").into())
}

/// The value after `key`, or `default`.
pub fn arg_or(args: &[String], key: &str, default: &str) -> String {
    arg(args, key).unwrap_or_else(|_| default.to_string())
}

/// The runtime every role uses: tokio's default multi-threaded one, as `meshsync run` has.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = args.first().cloned().unwrap_or_default();
    let rest = args.get(1..).unwrap_or_default();
    let result = match role.as_str() {
        "__source" => initial::source(rest),
        "__sink" => initial::sink(rest),
        "__sqlite" => initial::sqlite(rest),
        "__latency" => live::latency(rest),
        "__catchup" => live::catchup(rest),
        "__yrs-send" => reference::yrs_send(rest),
        "__yrs-recv" => reference::yrs_recv(rest),
        "__am-send" => reference::am_send(rest),
        "__am-recv" => reference::am_recv(rest),
        "--help" | "-h" => {
            println!("usage: meshsync-syncbench [--sizes 10000,100000,1000000] [--only initial,sqlite,hop,line,catchup,idle,yrs,automerge] [--writes 1000] [--catchup-n 100000] [--idle-secs 30] [--limit-s 300] [--limit-gib 12] [--meshsync PATH]");
            Ok(())
        }
        _ => orchestrate(&args),
    };
    if let Err(error) = result {
        if role.starts_with("__") {
            emit(json!({ "error": error.to_string() }));
        }
        eprintln!("error ({role}): {error}");
        std::process::exit(1);
    }
}

struct Plan {
    exe: String,
    meshsync: String,
    sizes: Vec<u64>,
    only: Vec<String>,
    writes: String,
    catchup_n: String,
    idle_secs: u64,
    limit: Duration,
    memory_mib: u64,
}

impl Plan {
    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }

    fn spawn(&self, args: Vec<String>, limit: Duration) -> Result<Child, Failure> {
        Child::spawn(&self.exe, &args, limit, Some(self.memory_mib))
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The 1-minute load average: other work sharing the machine shows here.
fn load1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

fn record(results: &mut Vec<Value>, mut value: Value) {
    value["load1_after"] = json!(load1());
    emit(value.clone());
    results.push(value);
}

fn failure(scenario: &str, engine: &str, n: u64, f: &Failure) -> Value {
    eprintln!("   {engine} {scenario} n={n}: {f}");
    json!({"scenario": scenario, "engine": engine, "n": n, "failed": f.to_string()})
}

fn orchestrate(args: &[String]) -> Result<(), Error> {
    let exe = std::env::current_exe()?;
    let default_meshsync = exe.with_file_name("meshsync");
    let plan = Plan {
        exe: exe.display().to_string(),
        meshsync: arg(args, "--meshsync").unwrap_or_else(|_| default_meshsync.display().to_string()),
        sizes: arg_or(args, "--sizes", "10000,100000,1000000")
            .split(',')
            .map(|s| s.trim().parse())
            .collect::<Result<_, _>>()?,
        only: arg(args, "--only").map(|s| s.split(',').map(String::from).collect()).unwrap_or_default(),
        writes: arg_or(args, "--writes", "1000"),
        catchup_n: arg_or(args, "--catchup-n", "100000"),
        idle_secs: arg_or(args, "--idle-secs", "30").parse()?,
        limit: Duration::from_secs(arg_or(args, "--limit-s", "300").parse()?),
        memory_mib: arg_or(args, "--limit-gib", "12").parse::<u64>()? * 1024,
    };
    let base = tempfile::Builder::new().prefix("syncbench-").tempdir()?;
    let mut results = Vec::new();
    let machine = report::machine();
    record(&mut results, json!({"scenario": "machine", "machine": machine}));

    for &n in &plan.sizes {
        if plan.wants("sqlite") {
            eprintln!("== raw SQLite bound, n={n}");
            let dir = base.path().join(format!("sqlite-{n}"));
            let outcome = plan
                .spawn(strings(&["__sqlite", "--n", &n.to_string(), "--dir", &dir.display().to_string()]), plan.limit)
                .and_then(|mut c| c.next());
            let value = match outcome {
                Ok(v) => json!({"scenario": "initial", "engine": "sqlite", "n": n, "sync_s": v["sqlite_s"]}),
                Err(f) => failure("initial", "sqlite", n, &f),
            };
            record(&mut results, value);
            let _ = std::fs::remove_dir_all(&dir);
        }
        if plan.wants("initial") {
            eprintln!("== meshsync initial sync, two processes over loopback TLS, n={n}");
            let value =
                meshsync_initial(&plan, base.path(), n).unwrap_or_else(|f| failure("initial", "meshsync", n, &f));
            record(&mut results, value);
        }
        for engine in ["yrs", "automerge"] {
            if plan.wants(engine) {
                eprintln!("== {engine} initial sync over a loopback socket, n={n}");
                let value = reference_initial(&plan, engine, n).unwrap_or_else(|f| failure("initial", engine, n, &f));
                record(&mut results, value);
            }
        }
    }
    for mode in ["hop", "line"] {
        if plan.wants(mode) {
            eprintln!("== live propagation: {mode}");
            let outcome = plan
                .spawn(strings(&["__latency", "--mode", mode, "--writes", &plan.writes]), plan.limit)
                .and_then(|mut c| c.next());
            let value = match outcome {
                Ok(v) => json!({"scenario": "latency", "mode": mode, "result": v}),
                Err(f) => json!({"scenario": "latency", "mode": mode, "failed": f.to_string()}),
            };
            record(&mut results, value);
        }
    }
    if plan.wants("catchup") {
        eprintln!("== catch-up after a pause, {} changes", plan.catchup_n);
        let outcome =
            plan.spawn(strings(&["__catchup", "--n", &plan.catchup_n]), plan.limit).and_then(|mut c| c.next());
        let value = match outcome {
            Ok(v) => json!({"scenario": "catchup", "result": v}),
            Err(f) => json!({"scenario": "catchup", "failed": f.to_string()}),
        };
        record(&mut results, value);
    }
    if plan.wants("idle") {
        eprintln!("== idle `meshsync run` with one connected peer, {} s", plan.idle_secs);
        let value = match idle::idle(&plan.meshsync, plan.idle_secs) {
            Ok(v) => json!({"scenario": "idle", "result": v}),
            Err(e) => json!({"scenario": "idle", "failed": e.to_string()}),
        };
        record(&mut results, value);
    }
    println!();
    println!("{}", report::markdown(&results));
    Ok(())
}

fn meshsync_initial(plan: &Plan, base: &std::path::Path, n: u64) -> Result<Value, Failure> {
    let dir = base.join(format!("initial-{n}"));
    let dir_a: PathBuf = dir.join("a");
    let dir_b: PathBuf = dir.join("b");
    let ns = n.to_string();
    let mut a =
        plan.spawn(strings(&["__source", "--n", &ns, "--dir", &dir_a.display().to_string()]), plan.limit * 4)?;
    let ready = a.next()?;
    let code = ready["code"].as_str().ok_or_else(|| Failure::Error("no invite code".into()))?.to_string();
    eprintln!("      source loaded {n} records in {:.2} s", ready["load_s"].as_f64().unwrap_or(f64::NAN));
    let a_cpu0 = procfs::cpu_s(a.pid).unwrap_or(f64::NAN);
    let mut b = plan
        .spawn(strings(&["__sink", "--n", &ns, "--dir", &dir_b.display().to_string(), "--code", &code]), plan.limit)?;
    let done = b.next();
    let a_cpu = procfs::cpu_s(a.pid).unwrap_or(f64::NAN) - a_cpu0;
    let a_hwm = procfs::hwm_kib(a.pid);
    let du = |p: &std::path::Path| -> u64 {
        std::fs::read_dir(p).map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum()).unwrap_or(0)
    };
    let (a_bytes, b_bytes) = (du(&dir_a), du(&dir_b));
    b.finish();
    a.finish();
    let _ = std::fs::remove_dir_all(&dir);
    let done = done?;
    eprintln!("      synced in {:.3} s", done["sync_s"].as_f64().unwrap_or(f64::NAN));
    Ok(json!({
        "scenario": "initial", "engine": "meshsync", "n": n, "sync_s": done["sync_s"], "counted_s": done["counted_s"],
        "connect_s": done["connect_s"], "first_batch_s": done["first_batch_s"], "caught_up_s": done["caught_up_s"],
        "progress_events": done["progress_events"], "b_hwm_kib": done["hwm_kib"], "b_cpu_s": done["cpu_s"],
        "a_hwm_kib": a_hwm, "a_load_hwm_kib": ready["load_hwm_kib"], "a_hwm_reset": ready["hwm_reset"],
        "a_cpu_s": a_cpu, "a_load_s": ready["load_s"], "a_dir_bytes": a_bytes, "b_dir_bytes": b_bytes,
    }))
}

fn reference_initial(plan: &Plan, engine: &str, n: u64) -> Result<Value, Failure> {
    let (send, recv) = if engine == "yrs" { ("__yrs-send", "__yrs-recv") } else { ("__am-send", "__am-recv") };
    let ns = n.to_string();
    let mut a = plan.spawn(strings(&[send, "--n", &ns]), plan.limit * 2)?;
    let ready = a.next()?;
    eprintln!("      {engine} source built {n} records in {:.2} s", ready["load_s"].as_f64().unwrap_or(f64::NAN));
    let addr = ready["addr"].as_str().unwrap_or_default().to_string();
    let a_cpu0 = procfs::cpu_s(a.pid).unwrap_or(f64::NAN);
    let mut b = plan.spawn(strings(&[recv, "--n", &ns, "--addr", &addr]), plan.limit)?;
    let done = b.next();
    let a_cpu = procfs::cpu_s(a.pid).unwrap_or(f64::NAN) - a_cpu0;
    let a_hwm = procfs::hwm_kib(a.pid);
    let b_seen = b.peak_rss_seen();
    b.finish();
    a.finish();
    let done = match done {
        Ok(done) => done,
        Err(f) => {
            let mut v = failure("initial", engine, n, &f);
            v["b_rss_seen_kib"] = json!(b_seen);
            v["a_hwm_kib"] = json!(a_hwm);
            v["a_load_s"] = ready["load_s"].clone();
            return Ok(v);
        }
    };
    eprintln!("      synced in {:.3} s", done["sync_s"].as_f64().unwrap_or(f64::NAN));
    Ok(json!({
        "scenario": "initial", "engine": engine, "n": n, "sync_s": done["sync_s"], "bytes": done["bytes"],
        "rounds": done["rounds"], "b_hwm_kib": done["hwm_kib"], "b_cpu_s": done["cpu_s"], "a_hwm_kib": a_hwm,
        "a_load_hwm_kib": ready["load_hwm_kib"], "a_cpu_s": a_cpu, "a_load_s": ready["load_s"],
    }))
}
