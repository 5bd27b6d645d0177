//! `meshsync run`: load the config (file, then flags), open the node, serve the local API and
//! dashboard, print how to reach it, and shut down cleanly on SIGINT or SIGTERM: the API stops
//! accepting, in-flight requests finish, queued writes commit, then the process exits.

/// `println!` that ignores a closed stdout: a node must not die because whoever started it
/// stopped reading its output.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use say;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use meshsync_node::config::{check_peer_addr, default_data_dir, Config, DurabilitySetting, CONFIG_FILE};
use meshsync_node::discovery::DiscoveryOptions;
use meshsync_node::mesh::MeshOptions;
use meshsync_node::{Node, NodeOptions};

/// Flags of `meshsync run`. Each overrides the config file.
#[derive(clap::Args, Debug, Default)]
pub struct RunArgs {
    /// Data dir (default: the platform data dir, e.g. ~/.local/share/meshsync).
    #[arg(long, env = "MESHSYNC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address peers connect to (default 0.0.0.0:7710).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the local API and dashboard (default 127.0.0.1:7711).
    #[arg(long)]
    api: Option<SocketAddr>,
    /// This device's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// A static peer to dial, host:port (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Join a group with an invite code.
    #[arg(long)]
    join: Option<String>,
    /// Do not advertise or browse with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Do not send or listen to the UDP broadcast beacon.
    #[arg(long)]
    no_beacon: bool,
    /// UDP port of the broadcast beacon (default 7712).
    #[arg(long)]
    beacon_port: Option<u16>,
    /// A rendezvous (phone book) URL (repeatable).
    #[arg(long = "rendezvous")]
    rendezvous: Vec<String>,
    /// Config file (default: <data-dir>/meshsync.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log level or filter: error, warn, info, debug, trace, or e.g. meshsync_store=debug.
    #[arg(long)]
    log: Option<String>,
    /// What an acknowledged write survives: process (a crash of the process) or power (power loss).
    #[arg(long, value_parser = parse_durability)]
    durability: Option<DurabilitySetting>,
}

fn parse_durability(s: &str) -> Result<DurabilitySetting, String> {
    match s {
        "process" => Ok(DurabilitySetting::Process),
        "power" => Ok(DurabilitySetting::Power),
        other => Err(format!("use process or power, not {other:?}")),
    }
}

/// Builds the effective config: defaults, then the file, then the flags.
fn effective_config(args: &RunArgs, data_dir: &std::path::Path) -> Result<(Config, PathBuf)> {
    let path = args.config.clone().unwrap_or_else(|| data_dir.join(CONFIG_FILE));
    if args.config.is_some() && !path.exists() {
        bail!("config file {} does not exist", path.display());
    }
    let mut config = Config::load(&path).map_err(|e| anyhow!("{e}"))?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(api) = args.api {
        config.api = api;
    }
    if let Some(name) = &args.name {
        config.name = name.clone();
    }
    for peer in &args.peers {
        check_peer_addr(peer).map_err(|e| anyhow!("--peer: {e}"))?;
        if !config.peers.contains(peer) {
            config.peers.push(peer.clone());
        }
    }
    if args.no_beacon {
        config.beacon = false;
    }
    if let Some(port) = args.beacon_port {
        config.beacon_port = port;
    }
    if args.no_mdns {
        config.mdns = false;
    }
    for url in &args.rendezvous {
        if !config.rendezvous.contains(url) {
            config.rendezvous.push(url.clone());
        }
    }
    if let Some(log) = &args.log {
        config.log = log.clone();
    }
    if let Some(durability) = args.durability {
        config.durability = durability;
    }
    config.validate().map_err(|e| anyhow!("{e}"))?;
    Ok((config, path))
}

pub(crate) fn init_logging(filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| anyhow!("--log {filter:?}: {e}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
    Ok(())
}

pub(crate) fn run(args: RunArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let (config, config_path) = effective_config(&args, &data_dir)?;
    init_logging(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("meshsync").build()?;
    runtime.block_on(serve(config, config_path, data_dir, args.join))
}

async fn serve(config: Config, config_path: PathBuf, data_dir: PathBuf, join: Option<String>) -> Result<()> {
    let api_addr = config.api;
    // Bind first: a port in use should fail before anything is created.
    let listener = tokio::net::TcpListener::bind(api_addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!("the API port {} is in use (address {api_addr}); is another node running? choose another with --api 127.0.0.1:PORT", api_addr.port())
        } else {
            anyhow!("cannot listen on {api_addr} for the API: {e}; choose another address with --api")
        }
    })?;
    let bound = listener.local_addr()?;
    let node = Node::open_with(
        &data_dir,
        NodeOptions {
            durability: config.durability.into(),
            clock_drift_ms_max: config.clock_drift_ms_max,
            name: config.name.clone(),
        },
    )
    .map_err(|e| anyhow!("{e}"))?;
    if let Some(code) = &join {
        let invite = node.join(code).map_err(|e| anyhow!("--join: {e}"))?;
        if invite.addrs.is_empty() {
            say!("joining the group of {} (finding it by mDNS, beacon or rendezvous)", invite.inviter);
        } else {
            say!("joining the group of {} at {}", invite.inviter, invite.addrs.join(", "));
        }
    }
    let mesh = node
        .start_mesh(MeshOptions {
            listen: config.listen,
            peers: config.peers.clone(),
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            discovery: DiscoveryOptions {
                mdns: config.mdns,
                beacon_port: config.beacon.then_some(config.beacon_port),
                rendezvous: config.rendezvous.clone(),
            },
        })
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let token = meshsync_api::load_or_create_token(&data_dir)
        .with_context(|| format!("cannot create the API token in {}", data_dir.display()))?;
    let state = meshsync_api::ApiState::new(node.clone(), config.clone(), Some(config_path), token.clone());

    let host = if bound.ip().is_unspecified() { "127.0.0.1".to_string() } else { bound.ip().to_string() };
    let host = if bound.is_ipv6() && !bound.ip().is_unspecified() { format!("[{host}]") } else { host };
    let api_url = format!("http://{host}:{}", bound.port());
    say!("meshsync {} node \"{}\"", env!("CARGO_PKG_VERSION"), config.name);
    say!("  device id   {}", node.device_id());
    say!("  data dir    {}", data_dir.display());
    say!("  group       {}", mesh.group().id_text());
    say!("  peers on    {} (mutual TLS)", mesh.listen_addr());
    say!("  API         {api_url}/v1   (token in {})", data_dir.join("api-token").display());
    say!("  dashboard   {api_url}/?token={token}");
    say!("  try         meshsync put products tea name=Tea price=2.5 --data-dir {}", data_dir.display());
    say!(
        "  invite      meshsync invite --data-dir {}   (then: meshsync run --join CODE on the other device)",
        data_dir.display()
    );
    say!("Press Ctrl-C to stop.");
    tracing::info!(api = %bound, device = %node.device_id(), "node running");

    tokio::spawn(report_sync(node.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meshsync_api::serve(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let signal = shutdown_signal().await;
    tracing::info!(signal, "shutting down");
    let _ = stop_tx.send(());
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "API server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "API server task failed"),
    }
    // Every acknowledged write is already committed; this waits for queued ones and folds the WAL.
    let closing = node.clone();
    tokio::task::spawn_blocking(move || closing.close()).await?;
    say!("stopped cleanly");
    Ok(())
}

/// Prints peers coming and going, and the progress of catch-ups, so a device joining a busy group
/// shows how far along it is.
async fn report_sync(node: Node) {
    use meshsync_node::mesh::PeerEvent;
    use meshsync_node::Event;
    let mut events = node.subscribe();
    let mut last_print = std::time::Instant::now() - std::time::Duration::from_secs(1);
    let mut started: std::collections::HashMap<meshsync_node::DeviceId, std::time::Instant> = Default::default();
    loop {
        match events.recv().await {
            Ok(Event::Peer(PeerEvent::Connected { device, name, addr })) => {
                say!("peer connected: {name} ({}) at {addr}", device.short());
            }
            Ok(Event::Peer(PeerEvent::Disconnected { device, reason })) => {
                say!("peer disconnected: {} ({reason})", device.short());
                started.remove(&device);
            }
            Ok(Event::Peer(PeerEvent::Progress { device, received, remaining, caught_up })) => {
                let since = *started.entry(device).or_insert_with(std::time::Instant::now);
                if caught_up {
                    if received > 0 {
                        say!(
                            "caught up with {}: {received} changes in {:.1} s",
                            device.short(),
                            since.elapsed().as_secs_f64()
                        );
                    }
                } else if last_print.elapsed() >= std::time::Duration::from_millis(500) {
                    last_print = std::time::Instant::now();
                    say!("syncing from {}: {received} changes received, about {remaining} to go", device.short());
                }
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
    }
}

/// Waits for SIGINT or SIGTERM (Ctrl-C elsewhere) and names it.
pub(crate) async fn shutdown_signal() -> &'static str {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = ctrl_c.await;
                return "SIGINT";
            }
        };
        tokio::select! {
            _ = ctrl_c => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
        "Ctrl-C"
    }
}
