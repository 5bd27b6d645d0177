//! `meshsync rendezvous`: run the phone book service in the foreground. Binds the address, loads
//! the snapshot from the data dir, prints where it listens, and on SIGINT or SIGTERM stops
//! accepting, finishes requests in flight, saves the snapshot and exits.

use crate::run::say;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use meshsync_rendezvous::{default_data_dir, ServerOptions};

/// Flags of `meshsync rendezvous`.
#[derive(clap::Args, Debug)]
pub struct RendezvousArgs {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "0.0.0.0:7790")]
    listen: SocketAddr,
    /// Where registrations are saved across restarts (default: the platform data dir, e.g.
    /// ~/.local/share/meshsync-rendezvous).
    #[arg(long, env = "MESHSYNC_RENDEZVOUS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Take the client address from X-Forwarded-For: only behind a reverse proxy that sets it.
    #[arg(long)]
    trust_forwarded_for: bool,
    /// Log level or filter: error, warn, info, debug, trace, or e.g. meshsync_rendezvous=debug.
    #[arg(long, default_value = "info")]
    log: String,
}

pub(crate) fn rendezvous(args: RendezvousArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| {
        format!("cannot create the data dir {}; choose another with --data-dir", data_dir.display())
    })?;
    crate::run::init_logging(&args.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("meshsync-rdv").build()?;
    runtime.block_on(serve(args, data_dir))
}

async fn serve(args: RendezvousArgs, data_dir: PathBuf) -> Result<()> {
    let listen = args.listen;
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!(
                "the rendezvous port {} is in use (address {listen}); is another rendezvous running? choose another with --listen 0.0.0.0:PORT",
                listen.port()
            )
        } else {
            anyhow!("cannot listen on {listen} for the rendezvous: {e}; choose another address with --listen")
        }
    })?;
    let bound = listener.local_addr()?;
    let host = if bound.ip().is_unspecified() { "127.0.0.1".to_string() } else { bound.ip().to_string() };
    let host = if bound.is_ipv6() && !bound.ip().is_unspecified() { format!("[{host}]") } else { host };
    say!("meshsync {} rendezvous", env!("CARGO_PKG_VERSION"));
    say!("  listening   {bound} (http; put a reverse proxy in front for https)");
    say!("  health      http://{host}:{}/health", bound.port());
    say!("  data dir    {}", data_dir.display());
    say!("  nodes use   meshsync run --rendezvous http://<this host>:{}", bound.port());
    say!("Press Ctrl-C to stop.");
    tracing::info!(listen = %bound, data_dir = %data_dir.display(), "rendezvous running");

    let options = ServerOptions {
        data_dir: Some(data_dir),
        trust_forwarded_for: args.trust_forwarded_for,
        ..ServerOptions::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(meshsync_rendezvous::serve(listener, options, async move {
        let _ = stop_rx.await;
    }));
    // The server may fail at start (an unreadable snapshot); report that rather than waiting
    // for a signal that never comes.
    let mut server = server;
    tokio::select! {
        signal = crate::run::shutdown_signal() => {
            tracing::info!(signal, "shutting down");
            let _ = stop_tx.send(());
            server.await.context("the rendezvous task failed")?.context("the rendezvous stopped with an error")?;
        }
        finished = &mut server => {
            finished.context("the rendezvous task failed")?.context("the rendezvous failed")?;
            return Err(anyhow!("the rendezvous stopped by itself"));
        }
    }
    say!("stopped cleanly");
    Ok(())
}
