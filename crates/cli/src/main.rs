//! The `meshsync` binary: `run` a node, talk to a running node (`status`, `put`, `get`, `list`,
//! `incr`, `delete`, `watch`, `conflicts`, `audit`, ...), `demo`, three nodes syncing on loopback, and
//! `rendezvous`, the phone book service. `anyhow` lives here and nowhere else.
//!
//! # Layout
//! - `main.rs`: the command line (clap) and dispatch.
//! - `run.rs`: the daemon: config, node, API server, signals, clean shutdown.
//! - `client.rs`: client commands over the local HTTP API, human or `--json` output.
//! - `demo.rs`: `meshsync demo`.
//! - `rendezvous.rs`: `meshsync rendezvous`: the phone book service, signals, clean shutdown.

mod client;
mod demo;
mod qr;
mod rendezvous;
mod run;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// meshsync: local-first peer-to-peer sync for the devices of one site.
#[derive(Parser, Debug)]
#[command(name = "meshsync", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where client commands find the running node.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// URL of the node's API.
    #[arg(long, env = "MESHSYNC_API", default_value = "http://127.0.0.1:7711")]
    api: String,
    /// API token; read from <data-dir>/api-token when absent.
    #[arg(long, env = "MESHSYNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The node's data dir, to read the token from.
    #[arg(long, env = "MESHSYNC_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print the API's JSON instead of human output.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node in the foreground.
    Run(run::RunArgs),
    /// Start three nodes on this machine and watch shop data sync between them.
    Demo {
        /// Keep the demo's data dir when it stops.
        #[arg(long)]
        keep: bool,
    },
    /// Run the rendezvous, the phone book where nodes on routed networks find each other.
    Rendezvous(rendezvous::RendezvousArgs),
    /// Show this node's status.
    Status {
        #[command(flatten)]
        target: Target,
    },
    /// Set fields of a record: `meshsync put products tea name=Tea price=2.5`.
    Put {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// FIELD=VALUE pairs; VALUE is JSON if it parses as JSON, else a string. `_scope=..` sets the scope.
        #[arg(required = true)]
        fields: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Append an event to a collection: `meshsync append sales product=tea qty=2`.
    Append {
        /// Collection.
        collection: String,
        /// FIELD=VALUE pairs (`_id=..` names the event).
        #[arg(required = true)]
        fields: Vec<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Read a record.
    Get {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// List records: `meshsync list products --where kind=tea --limit 20`.
    List {
        /// Collection.
        collection: String,
        /// FIELD=VALUE equality filters.
        #[arg(long = "where")]
        filters: Vec<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Add to a counter field: `meshsync incr products tea stock -- -2`.
    Incr {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        /// Counter field.
        field: String,
        /// Amount (default 1; may be negative or a float).
        #[arg(allow_negative_numbers = true, default_value = "1")]
        by: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a record.
    Delete {
        /// Collection.
        collection: String,
        /// Record id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Declare or show a collection's schema: `meshsync schema products stock=counter`.
    Schema {
        /// Collection.
        collection: String,
        /// FIELD=POLICY pairs (lww, fww, counter, max, min); none shows the schema.
        fields: Vec<String>,
        /// Policy of undeclared fields.
        #[arg(long)]
        default: Option<String>,
        /// Records are immutable events.
        #[arg(long)]
        append_only: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Stream changes and events as they happen.
    Watch {
        /// Resume after this cursor.
        #[arg(long)]
        cursor: Option<u64>,
        /// Only this collection.
        #[arg(long)]
        collection: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List conflicts, or resolve one: `meshsync conflicts resolve ID [VALUE]`.
    Conflicts {
        #[command(subcommand)]
        action: Option<ConflictAction>,
        #[command(flatten)]
        target: Target,
    },
    /// List peers.
    Peers {
        #[command(flatten)]
        target: Target,
    },
    /// List the group's members.
    Members {
        #[command(flatten)]
        target: Target,
    },
    /// Create an invite code for another device.
    Invite {
        /// Role of the new device: admin, writer or reader.
        #[arg(long, default_value = "writer")]
        role: String,
        /// Scopes the new device may see (repeatable); none means all.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// How many devices may use it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Leave this node's addresses out: a shorter code; the new device finds the group by
        /// discovery (mDNS, beacon, rendezvous).
        #[arg(long)]
        no_addrs: bool,
        /// Also write the QR code as a PNG image to this file.
        #[arg(long, value_name = "FILE")]
        png: Option<std::path::PathBuf>,
        /// Also write the QR code as an SVG image to this file.
        #[arg(long, value_name = "FILE")]
        svg: Option<std::path::PathBuf>,
        /// Do not draw the QR code in the terminal.
        #[arg(long)]
        no_qr: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Show the audit log, newest first: joins, invites, refused connections and writes, sync
    /// sessions. `--verify` also checks its hash chain (and fails if it is broken).
    Audit {
        /// How many entries (1-1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries whose kind starts with this, e.g. `connection.` or `member.revoked`.
        #[arg(long)]
        kind: Option<String>,
        /// Only entries older than this seq (the hint under a page gives it).
        #[arg(long)]
        before: Option<u64>,
        /// Check the hash chain from the oldest entry to the newest; exit 1 if it is broken.
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a member device.
    Revoke {
        /// The device id.
        device: String,
        #[command(flatten)]
        target: Target,
    },
    /// Send an ephemeral message to the group or one device.
    Send {
        /// Message type.
        kind: String,
        /// JSON data.
        #[arg(default_value = "null")]
        data: String,
        /// Addressee device id (default: everyone).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum ConflictAction {
    /// Resolve a conflict, keeping VALUE (JSON) or, without it, the current winner.
    Resolve {
        /// Conflict id.
        id: String,
        /// The value to keep.
        value: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Demo { keep } => demo::demo(keep),
        Command::Rendezvous(args) => rendezvous::rendezvous(args),
        other => client::dispatch(other),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
