//! `meshsync-httpbench`: load generator for the local HTTP API of a running meshsync node
//! (issue #3, item 7). It starts `meshsync run` on loopback (or is pointed at a running node
//! with `--url`), reads the API token from the data dir, and for each client count runs:
//!
//! 1. a **write** phase: C clients, each on its own HTTP/1.1 keep-alive connection, send
//!    `PUT /v1/c/{collection}/{id}` with a small JSON body, every id distinct, back to back
//!    (closed loop: a client sends its next request when the previous answer is read);
//! 2. a **read** phase: the same clients send `GET /v1/c/{collection}/{id}` of ids written in
//!    the write phase, chosen at random.
//!
//! Each phase runs `--warmup` seconds unrecorded, then `--duration` seconds recorded. Every
//! latency (request sent to answer body read) goes into an HDR histogram. The result is a
//! markdown table and one JSON line per phase on stdout; progress goes to stderr. Any answer that
//! is not 2xx, or a transport error, counts as an error, and errors make the exit code 1.
//!
//! The load generator runs on the same machine as the node and takes CPU from it: the report
//! gives the CPU the node, the generator and the whole machine used during each measured window.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Highest latency the histograms hold, in microseconds (60 s); longer ones are clamped.
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Parser, Debug)]
#[command(
    name = "meshsync-httpbench",
    about = "Write and read throughput and latency of a meshsync node's HTTP API, with concurrent keep-alive clients"
)]
struct Args {
    /// Concurrent clients, one keep-alive connection each; a list sweeps: --clients 1,4,16,64.
    #[arg(long, default_value = "16", value_delimiter = ',')]
    clients: Vec<usize>,
    /// Recorded seconds of each phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded seconds before each phase's recording starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Phases to run for each client count, in order.
    #[arg(long, default_value = "write,read", value_delimiter = ',')]
    phases: Vec<Phase>,
    /// Records written (unrecorded) before a read phase that no write phase precedes.
    #[arg(long, default_value_t = 10_000)]
    fill: u64,
    /// Collection the records go to.
    #[arg(long, default_value = "bench")]
    collection: String,
    /// Body of every PUT.
    #[arg(long, default_value = r#"{"name":"x","qty":1}"#)]
    body: String,
    /// Worker threads of the load generator (1: a single-threaded runtime, the lightest).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// URL of a running node's API, e.g. http://127.0.0.1:7711. Without it a node is started.
    #[arg(long)]
    url: Option<String>,
    /// Data dir: of the running node (its token is read there), or of the node started
    /// (default: a temporary dir, removed at the end).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// API token (default: read from <data-dir>/api-token).
    #[arg(long, env = "MESHSYNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Process id of the node given with --url, to report its CPU use.
    #[arg(long)]
    node_pid: Option<u32>,
    /// The meshsync binary to start (default: `meshsync` beside this binary).
    #[arg(long)]
    node_bin: Option<PathBuf>,
    /// API port of the node started (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// CPUs the node started may use (a taskset list, e.g. 0 or 0-1).
    #[arg(long)]
    node_cpus: Option<String>,
    /// CPUs this load generator may use (e.g. 1).
    #[arg(long)]
    bench_cpus: Option<String>,
    /// Extra argument for `meshsync run` (repeatable): --node-arg=--durability --node-arg=power.
    #[arg(long, allow_hyphen_values = true)]
    node_arg: Vec<String>,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Target writes/s at --target-clients clients (the verdict line; 0 to skip it).
    #[arg(long, default_value_t = 20_000.0)]
    target_writes: f64,
    /// Target p99 of writes, in ms, at --target-clients clients.
    #[arg(long, default_value_t = 5.0)]
    target_p99_ms: f64,
    /// Client count the target applies to.
    #[arg(long, default_value_t = 16)]
    target_clients: usize,
    /// Before each phase, wait up to this many seconds for other processes on the machine to
    /// use less than --quiet-max-pct of one core for 3 s in a row (0: do not wait).
    #[arg(long, default_value_t = 0)]
    quiet_wait: u64,
    /// CPU of other processes (percent of one core) still counted as quiet.
    #[arg(long, default_value_t = 15.0)]
    quiet_max_pct: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    Write,
    Read,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Write => "write",
            Phase::Read => "read",
        }
    }
}

/// What every client shares.
struct Ctx {
    /// host:port to connect to.
    addr: String,
    host: HeaderValue,
    auth: HeaderValue,
    collection: String,
    body: Bytes,
    /// Prefix of this run's ids, so runs against the same node never overwrite each other.
    session: String,
}

/// One client's share of a phase.
struct ClientResult {
    hist: Histogram<u64>,
    /// Requests recorded (started in the recorded window) and answered 2xx.
    recorded: u64,
    errors: u64,
    first_error: Option<String>,
    /// Ids this client wrote: `{session}-{clients}-{index}-{0..written}` all exist.
    written: u64,
    /// When this client's last recorded request finished.
    last_done: Option<Instant>,
}

impl ClientResult {
    fn new() -> ClientResult {
        ClientResult { hist: new_histogram(), recorded: 0, errors: 0, first_error: None, written: 0, last_done: None }
    }

    fn error(&mut self, text: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(text);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// CPU time used so far: by the node (if known), by this process, and by the whole machine.
#[derive(Clone, Copy, Debug)]
struct CpuSample {
    node_s: Option<f64>,
    bench_s: f64,
    /// Busy and total jiffies of all CPUs, from /proc/stat.
    machine: Option<(u64, u64)>,
}

/// CPU use over a window, in percent of one core (200% = both cores of a 2-core machine), and
/// the machine's busy share in percent of all its cores.
#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    node_pct: Option<f64>,
    bench_pct: f64,
    machine_busy_pct: Option<f64>,
    /// CPU used by every other process (the machine's busy time less the node's and ours).
    others_pct: Option<f64>,
}

/// The result of one phase at one client count.
struct Row {
    phase: Phase,
    clients: usize,
    hist: Histogram<u64>,
    recorded: u64,
    secs: f64,
    errors: u64,
    first_error: Option<String>,
    cpu: CpuUse,
}

impl Row {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.recorded as f64 / self.secs
        } else {
            0.0
        }
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.hist.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1000.0
    }

    /// CPU time the node spent per recorded request, in µs: unlike the rate, this barely moves
    /// when other processes compete for the cores.
    fn node_us_per_request(&self) -> Option<f64> {
        let node_pct = self.cpu.node_pct?;
        (self.recorded > 0).then(|| node_pct / 100.0 * self.secs * 1e6 / self.recorded as f64)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshsync-httpbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<ExitCode> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients takes counts of at least 1, e.g. --clients 1,4,16,64");
    }
    if args.duration <= 0.0 || args.warmup < 0.0 {
        bail!("--duration must be positive and --warmup not negative");
    }
    serde_json::from_str::<serde_json::Value>(&args.body).context("--body is not JSON")?;
    if let Some(cpus) = &args.bench_cpus {
        pin_self(cpus)?;
    }
    let machine = Machine::read();

    let mut node = None;
    let (url, data_dir) = match &args.url {
        Some(url) => (url.trim_end_matches('/').trim_end_matches("/v1").to_string(), args.data_dir.clone()),
        None => {
            let started = start_node(&args)?;
            let pair = (started.url.clone(), Some(started.data_dir.clone()));
            node = Some(started);
            pair
        }
    };
    let node_pid = node.as_ref().map(|n| n.child.id()).or(args.node_pid);
    let token = match (&args.token, &data_dir) {
        (Some(token), _) => token.clone(),
        (None, Some(dir)) => std::fs::read_to_string(dir.join("api-token"))
            .with_context(|| format!("cannot read the token in {}", dir.join("api-token").display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("with --url, pass --data-dir (to read its api-token) or --token"),
    };
    let addr = url.strip_prefix("http://").ok_or_else(|| anyhow!("--url must start with http://"))?.to_string();
    let session = format!("{:x}", SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
    let ctx = Arc::new(Ctx {
        host: HeaderValue::from_str(&addr)?,
        addr,
        auth: HeaderValue::from_str(&format!("Bearer {token}"))?,
        collection: args.collection.clone(),
        body: Bytes::from(args.body.clone()),
        session,
    });

    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    eprintln!(
        "meshsync-httpbench: {} at {url}, clients {:?}, {} s warm-up + {} s per phase, {} generator thread(s)",
        if node.is_some() { "node started" } else { "node" },
        args.clients,
        args.warmup,
        args.duration,
        args.threads.max(1)
    );
    let (rows, records) = runtime.block_on(async {
        let mut rows = Vec::new();
        for &clients in &args.clients {
            let mut written: Option<Arc<Vec<u64>>> = None;
            for &phase in &args.phases {
                if phase == Phase::Read && written.is_none() {
                    eprintln!("filling {} records for the read phase", args.fill);
                    written = Some(Arc::new(fill(&ctx, clients, args.fill).await?));
                }
                let (row, w) = run_phase(&ctx, &args, phase, clients, written.clone(), node_pid).await;
                if phase == Phase::Write {
                    written = Some(Arc::new(w));
                }
                eprintln!(
                    "{:<5} c={:<3} {:>9.0} ops/s  p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  errors {}",
                    row.phase.name(),
                    clients,
                    row.rate(),
                    row.ms(0.5),
                    row.ms(0.99),
                    row.max_ms(),
                    row.errors
                );
                rows.push(row);
            }
        }
        let records = status_records(&ctx).await;
        anyhow::Ok((rows, records))
    })?;
    drop(runtime);

    let stopped = node.take().map(|n| n.stop());

    print_report(&args, &machine, &rows, node_pid.is_some(), &url)?;
    if let Some(records) = records {
        println!("\nThe node reports {records} live records after the run.");
    }
    if let Some(stopped) = stopped {
        match stopped {
            Ok(true) => println!("The node stopped cleanly on SIGTERM."),
            Ok(false) => println!("The node did NOT report a clean stop on SIGTERM."),
            Err(e) => println!("Stopping the node failed: {e:#}"),
        }
    }
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Runs one phase with `clients` clients: warm-up, then the recorded window.
async fn run_phase(
    ctx: &Arc<Ctx>,
    args: &Args,
    phase: Phase,
    clients: usize,
    written: Option<Arc<Vec<u64>>>,
    node_pid: Option<u32>,
) -> (Row, Vec<u64>) {
    if args.quiet_wait > 0 {
        wait_quiet(node_pid, Machine::nproc(), args.quiet_wait, args.quiet_max_pct).await;
    }
    let t0 = Instant::now();
    let warm_end = t0 + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let progress = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(async move {
        tokio::time::sleep_until(warm_end.into()).await;
        cpu_sample(node_pid)
    });
    let ticker = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for second in 1u64.. {
                tokio::time::sleep_until((t0 + Duration::from_secs(second)).into()).await;
                let now = Instant::now();
                let total = progress.load(Ordering::Relaxed);
                let stage = if now < warm_end { "warm-up" } else { "recording" };
                eprintln!(
                    "  {:<5} c={:<3} {:>3} s {:<9} {:>9} requests  {:>7} /s",
                    phase.name(),
                    clients,
                    second,
                    stage,
                    total,
                    total - last
                );
                last = total;
            }
        })
    };
    let handles: Vec<_> = (0..clients)
        .map(|index| {
            let ctx = ctx.clone();
            let written = written.clone();
            let progress = progress.clone();
            tokio::spawn(client(ctx, phase, clients, index, written, warm_end, end, progress))
        })
        .collect();
    let mut hist = new_histogram();
    let (mut recorded, mut errors, mut first_error, mut last_done) = (0, 0, None, None::<Instant>);
    let mut counts = Vec::with_capacity(clients);
    for handle in handles {
        let result = handle.await.expect("client task panicked");
        hist.add(&result.hist).expect("same histogram bounds");
        recorded += result.recorded;
        errors += result.errors;
        if first_error.is_none() {
            first_error = result.first_error;
        }
        last_done = match (last_done, result.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        counts.push(result.written);
    }
    let after = cpu_sample(node_pid);
    ticker.abort();
    let before = sampler.await.expect("sampler task");
    let secs = last_done.map(|t| t.saturating_duration_since(warm_end).as_secs_f64()).unwrap_or(0.0);
    let cpu = cpu_use(&before, &after, secs, Machine::nproc());
    (Row { phase, clients, hist, recorded, secs, errors, first_error, cpu }, counts)
}

/// One client: one keep-alive connection (opened again after a transport error), requests
/// back to back until `end`.
#[allow(clippy::too_many_arguments)]
async fn client(
    ctx: Arc<Ctx>,
    phase: Phase,
    clients: usize,
    index: usize,
    written: Option<Arc<Vec<u64>>>,
    warm_end: Instant,
    end: Instant,
    progress: Arc<AtomicU64>,
) -> ClientResult {
    let mut result = ClientResult::new();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9));
    let readable: Vec<(usize, u64)> = match &written {
        Some(w) => w.iter().copied().enumerate().filter(|(_, n)| *n > 0).collect(),
        None => Vec::new(),
    };
    let write_clients = written.as_ref().map(|w| w.len()).unwrap_or(clients);
    loop {
        if Instant::now() >= end {
            break;
        }
        let send = match &mut sender {
            Some(send) => send,
            None => match connect(&ctx.addr).await {
                Ok(send) => sender.insert(send),
                Err(e) => {
                    result.error(format!("connect: {e:#}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let request = match phase {
            Phase::Write => {
                let path = format!("/v1/c/{}/{}", ctx.collection, id(&ctx.session, clients, index, result.written));
                build(&ctx, Method::PUT, &path, ctx.body.clone())
            }
            Phase::Read => {
                if readable.is_empty() {
                    result.error("no record was written to read".into());
                    break;
                }
                let (writer, count) = readable[(rng.next() % readable.len() as u64) as usize];
                let n = rng.next() % count;
                let path = format!("/v1/c/{}/{}", ctx.collection, id(&ctx.session, write_clients, writer, n));
                build(&ctx, Method::GET, &path, Bytes::new())
            }
        };
        let started = Instant::now();
        let answer = exchange(send, request).await;
        let finished = Instant::now();
        progress.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok((status, _)) if status.is_success() => {
                if phase == Phase::Write {
                    result.written += 1;
                }
                if started >= warm_end {
                    let us = finished.duration_since(started).as_micros() as u64;
                    result.hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
                    result.recorded += 1;
                    result.last_done = Some(finished);
                }
            }
            // A failed PUT is retried with the same id, so ids 0..written all exist.
            Ok((status, body)) => {
                result.error(format!("{status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)])))
            }
            Err(e) => {
                result.error(format!("transport: {e}"));
                sender = None;
            }
        }
    }
    result
}

fn id(session: &str, clients: usize, index: usize, n: u64) -> String {
    format!("{session}-{clients}-{index}-{n}")
}

fn build(ctx: &Ctx, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(path)
        .header(HOST, ctx.host.clone())
        .header(AUTHORIZATION, ctx.auth.clone());
    if method == Method::PUT {
        request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    request.body(Full::new(body)).expect("a valid request")
}

async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends a request and reads the whole answer.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// Writes `total` records (unrecorded) with `clients` clients, for a read phase without a
/// write phase before it. Returns how many ids each client wrote.
async fn fill(ctx: &Arc<Ctx>, clients: usize, total: u64) -> Result<Vec<u64>> {
    let per_client = total.div_ceil(clients as u64).max(1);
    let handles: Vec<_> = (0..clients)
        .map(|index| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut send = connect(&ctx.addr).await?;
                for n in 0..per_client {
                    let path = format!("/v1/c/{}/{}", ctx.collection, id(&ctx.session, clients, index, n));
                    let (status, body) = exchange(&mut send, build(&ctx, Method::PUT, &path, ctx.body.clone())).await?;
                    if !status.is_success() {
                        bail!("fill: {status}: {}", String::from_utf8_lossy(&body));
                    }
                }
                anyhow::Ok(per_client)
            })
        })
        .collect();
    let mut counts = Vec::new();
    for handle in handles {
        counts.push(handle.await??);
    }
    Ok(counts)
}

/// `records` from `GET /v1/status`, if the node answers.
async fn status_records(ctx: &Arc<Ctx>) -> Option<u64> {
    let mut send = connect(&ctx.addr).await.ok()?;
    let (status, body) = exchange(&mut send, build(ctx, Method::GET, "/v1/status", Bytes::new())).await.ok()?;
    if !status.is_success() {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&body).ok()?.get("records")?.as_u64()
}

/// xorshift64*: good enough to pick ids, and free of dependencies.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

// ---- the node ----

/// A node started by the bench; SIGTERM (then SIGKILL) when dropped.
struct StartedNode {
    child: Child,
    url: String,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    lines: mpsc::Receiver<String>,
}

fn start_node(args: &Args) -> Result<StartedNode> {
    let bin = match &args.node_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("meshsync"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p meshsync-cli` (same CARGO_TARGET_DIR), or pass --node-bin, or --url for a running node",
            bin.display()
        );
    }
    let (temp, data_dir) = match &args.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temp = tempfile::Builder::new().prefix("meshsync-httpbench-").tempdir()?;
            let dir = temp.path().to_path_buf();
            (Some(temp), dir)
        }
    };
    let mut command = match &args.node_cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(&bin);
            command
        }
        None => Command::new(&bin),
    };
    command
        .arg("run")
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--api")
        .arg(format!("127.0.0.1:{}", args.port))
        .args(["--listen", "127.0.0.1:0", "--no-mdns", "--no-beacon", "--log", "warn"])
        .args(&args.node_arg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = command.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the node never blocks on its stdout.
                continue;
            }
        }
    });
    let mut node = StartedNode { child, url: String::new(), data_dir, _temp: temp, lines };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match node.lines.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("API") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    node.url = url.trim_end_matches("/v1").to_string();
                    break;
                }
            }
            Err(_) => {
                let status = node.child.try_wait()?;
                bail!("the node did not print its API address within 60 s (exit status: {status:?})");
            }
        }
    }
    if !node.url.starts_with("http://") {
        bail!("cannot read the node's API URL from {:?}", node.url);
    }
    Ok(node)
}

impl StartedNode {
    /// SIGTERM, then wait for the exit; true if it printed "stopped cleanly".
    fn stop(mut self) -> Result<bool> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                bail!("the node did not stop within 30 s of SIGTERM; killed");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut clean = false;
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            clean |= line.contains("stopped cleanly");
        }
        Ok(clean)
    }
}

impl Drop for StartedNode {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

// ---- CPU accounting ----

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a process, in seconds, from /proc/PID/stat.
fn process_cpu_s(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

/// Busy and total jiffies of all CPUs.
fn machine_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn cpu_sample(node_pid: Option<u32>) -> CpuSample {
    CpuSample {
        node_s: node_pid.and_then(|pid| process_cpu_s(&pid.to_string())),
        bench_s: process_cpu_s("self").unwrap_or(0.0),
        machine: machine_jiffies(),
    }
}

fn cpu_use(before: &CpuSample, after: &CpuSample, secs: f64, nproc: u64) -> CpuUse {
    if secs <= 0.0 {
        return CpuUse::default();
    }
    let node_pct = match (before.node_s, after.node_s) {
        (Some(a), Some(b)) => Some(100.0 * (b - a) / secs),
        _ => None,
    };
    let bench_pct = 100.0 * (after.bench_s - before.bench_s) / secs;
    let machine_busy_pct = match (before.machine, after.machine) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => Some(100.0 * (b1 - b0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let others_pct = match (machine_busy_pct, node_pct) {
        (Some(busy), Some(node)) => Some((busy * nproc as f64 - node - bench_pct).max(0.0)),
        _ => None,
    };
    CpuUse { node_pct, bench_pct, machine_busy_pct, others_pct }
}

/// Waits (up to `max_wait` s) until other processes use less than `max_pct` of one core for
/// 3 s in a row; returns the last second's figure.
async fn wait_quiet(node_pid: Option<u32>, nproc: u64, max_wait: u64, max_pct: f64) -> Option<f64> {
    let deadline = Instant::now() + Duration::from_secs(max_wait);
    let mut quiet_seconds = 0;
    let mut announced = false;
    loop {
        let before = cpu_sample(node_pid);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let others = cpu_use(&before, &cpu_sample(node_pid), 1.0, nproc).others_pct?;
        quiet_seconds = if others < max_pct { quiet_seconds + 1 } else { 0 };
        if quiet_seconds >= 3 {
            return Some(others);
        }
        if Instant::now() >= deadline {
            eprintln!("  the machine is still busy ({others:.0}% of a core used by other processes); going on");
            return Some(others);
        }
        if !announced && quiet_seconds == 0 {
            eprintln!("  waiting for other processes to calm down ({others:.0}% of a core)...");
            announced = true;
        }
    }
}

/// Restricts this process (and the threads it starts later) to a list of CPUs like "1" or "0-1,3".
fn pin_self(list: &str) -> Result<()> {
    let cpus = parse_cpu_list(list)?;
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!("--bench-cpus: CPU {cpu} is out of range");
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("--bench-cpus {list}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn parse_cpu_list(list: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse()?),
        }
    }
    if cpus.is_empty() {
        bail!("empty CPU list {list:?}");
    }
    Ok(cpus)
}

// ---- the report ----

struct Machine {
    nproc: u64,
    model: String,
    date: String,
}

impl Machine {
    fn nproc() -> u64 {
        // SAFETY: sysconf has no preconditions.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u64
    }

    fn read() -> Machine {
        let nproc = Machine::nproc();
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine { nproc, model, date: utc_now() }
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn pct(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.0}%")).unwrap_or_else(|| "-".into())
}

fn print_report(args: &Args, machine: &Machine, rows: &[Row], node_known: bool, url: &str) -> Result<()> {
    let mut out = String::new();
    out.push_str(&format!(
        "\n## meshsync HTTP API: {} clients, {} s recorded per phase\n\n",
        args.clients.iter().map(|c| c.to_string()).collect::<Vec<_>>().join("/"),
        args.duration
    ));
    out.push_str(&format!(
        "Machine: {} CPUs ({}), {}. Node at {url}; load generator on the same machine, {} thread(s){}{}. \
         Body `{}`. CPU columns: percent of one core over the recorded window \
         (node, this load generator, and every other process on the machine); node µs/req is the node's \
         CPU time per request.\n\n",
        machine.nproc,
        machine.model,
        machine.date,
        args.threads.max(1),
        args.node_cpus.as_deref().map(|c| format!(", node on CPU {c}")).unwrap_or_default(),
        args.bench_cpus.as_deref().map(|c| format!(", generator on CPU {c}")).unwrap_or_default(),
        args.body
    ));
    out.push_str("| op | clients | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | requests | errors | node CPU | node µs/req | bench CPU | others CPU |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {:.0}% | {} |\n",
            if row.phase == Phase::Write { "PUT" } else { "GET" },
            row.clients,
            row.rate(),
            row.ms(0.5),
            row.ms(0.9),
            row.ms(0.99),
            row.ms(0.999),
            row.max_ms(),
            row.recorded,
            row.errors,
            if node_known { pct(row.cpu.node_pct) } else { "-".into() },
            row.node_us_per_request().map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            row.cpu.bench_pct,
            pct(row.cpu.others_pct),
        ));
    }
    for row in rows.iter().filter(|r| r.errors > 0) {
        out.push_str(&format!(
            "\n{} errors in {} c={}; the first: {}\n",
            row.errors,
            row.phase.name(),
            row.clients,
            row.first_error.as_deref().unwrap_or("?")
        ));
    }
    if args.target_writes > 0.0 {
        if let Some(row) = rows.iter().find(|r| r.phase == Phase::Write && r.clients == args.target_clients) {
            let met = row.rate() >= args.target_writes && row.ms(0.99) < args.target_p99_ms && row.errors == 0;
            out.push_str(&format!(
                "\nTarget (>= {:.0} writes/s with {} clients, p99 < {} ms, no errors): {} ({:.0} writes/s, p99 {:.3} ms).\n",
                args.target_writes,
                args.target_clients,
                args.target_p99_ms,
                if met { "MET" } else { "MISSED" },
                row.rate(),
                row.ms(0.99)
            ));
        }
    }
    out.push('\n');
    let mut lines = String::new();
    for row in rows {
        let line = json!({
            "bench": "meshsync-httpbench",
            "op": row.phase.name(),
            "clients": row.clients,
            "ops_per_s": (row.rate() * 10.0).round() / 10.0,
            "p50_ms": row.ms(0.5),
            "p90_ms": row.ms(0.9),
            "p99_ms": row.ms(0.99),
            "p999_ms": row.ms(0.999),
            "max_ms": row.max_ms(),
            "mean_ms": (row.hist.mean() / 1000.0 * 1000.0).round() / 1000.0,
            "requests": row.recorded,
            "recorded_s": (row.secs * 1000.0).round() / 1000.0,
            "errors": row.errors,
            "node_cpu_pct": row.cpu.node_pct.map(|v| v.round()),
            "node_cpu_us_per_request": row.node_us_per_request().map(|v| v.round()),
            "bench_cpu_pct": row.cpu.bench_pct.round(),
            "machine_busy_pct": row.cpu.machine_busy_pct.map(|v| v.round()),
            "others_cpu_pct": row.cpu.others_pct.map(|v| v.round()),
            "bench_threads": args.threads.max(1),
            "body_bytes": args.body.len(),
            "nproc": machine.nproc,
            "cpu_model": machine.model,
            "date": machine.date,
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    out.push_str(&lines);
    print!("{out}");
    std::io::stdout().flush()?;
    if let Some(path) = &args.json_out {
        append(path, &lines)?;
    }
    Ok(())
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
