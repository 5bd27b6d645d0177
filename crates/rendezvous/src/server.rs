//! Running the service: [`ServerOptions`] and [`Limits`], the [`Clock`], [`serve`] (load the
//! snapshot, accept connections up to the caps, shut down on a signal, save), the debounced
//! snapshot writer, and the listener that caps connections in total and per address and closes
//! idle ones. Routes and their errors are in `routes`; the rules of the book are in `book`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

use crate::book::{Book, BookLimits};
use crate::rate::RateLimiter;
use crate::{routes, snapshot};

/// Default lifetime of a registration that does not ask for one: 8 hours.
pub const TTL_DEFAULT_S: u64 = 8 * 3600;
/// Longest lifetime a registration may ask for: 24 hours.
pub const TTL_MAX_S: u64 = 24 * 3600;
/// Rooms held at most.
pub const ROOMS_MAX: usize = 10_000;
/// Devices one room holds at most.
pub const REGISTRATIONS_PER_ROOM_MAX: usize = 256;
/// Registrations held at most, over all rooms. With every entry at its largest (a 4 KiB body)
/// this bounds the book to about 500 MiB; real entries (a few addresses) take under 1 KiB.
pub const REGISTRATIONS_MAX: usize = 100_000;
/// Requests a second one client address may make, on average.
pub const REQUESTS_PER_S: u32 = 10;
/// Requests one client address may make in a burst.
pub const REQUEST_BURST: u32 = 30;
/// Client addresses whose rate the service tracks at once.
pub const RATE_CLIENTS_MAX: usize = 65_536;
/// Connections open at once; further clients wait in the kernel's accept queue.
pub const CONNECTIONS_MAX: usize = 1024;
/// Connections one client address may hold open at once; more are closed at once.
pub const CONNECTIONS_PER_IP_MAX: usize = 16;
/// A connection that neither sends nor receives for this long is closed.
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Changes within this time are saved in one snapshot write.
pub const SNAPSHOT_DEBOUNCE: Duration = Duration::from_millis(500);

/// Where the service's time comes from. Every expiry, clock-skew check and rate bucket reads
/// this, so tests can move time without sleeping.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A clock that stands still unless its holder stores a new time (milliseconds since the
    /// Unix epoch) in it.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock showing `now_ms`, and the handle that moves it.
    pub fn manual(now_ms: u64) -> (Clock, Arc<AtomicU64>) {
        let handle = Arc::new(AtomicU64::new(now_ms));
        (Clock::Manual(handle.clone()), handle)
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Clock::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}

/// Capacity limits; the defaults are the documented constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rooms held at most ([`ROOMS_MAX`]).
    pub rooms_max: usize,
    /// Devices per room ([`REGISTRATIONS_PER_ROOM_MAX`]).
    pub registrations_per_room_max: usize,
    /// Registrations in total ([`REGISTRATIONS_MAX`]).
    pub registrations_max: usize,
    /// Average requests a second per client address ([`REQUESTS_PER_S`]); 0 turns the limit off.
    pub requests_per_s: u32,
    /// Burst of requests per client address ([`REQUEST_BURST`]).
    pub request_burst: u32,
    /// Client addresses tracked by the rate limit ([`RATE_CLIENTS_MAX`]).
    pub rate_clients_max: usize,
    /// Open connections ([`CONNECTIONS_MAX`]).
    pub connections_max: usize,
    /// Open connections per client address ([`CONNECTIONS_PER_IP_MAX`]; not applied when
    /// [`ServerOptions::trust_forwarded_for`] is set, since every connection is the proxy's).
    pub connections_per_ip_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rooms_max: ROOMS_MAX,
            registrations_per_room_max: REGISTRATIONS_PER_ROOM_MAX,
            registrations_max: REGISTRATIONS_MAX,
            requests_per_s: REQUESTS_PER_S,
            request_burst: REQUEST_BURST,
            rate_clients_max: RATE_CLIENTS_MAX,
            connections_max: CONNECTIONS_MAX,
            connections_per_ip_max: CONNECTIONS_PER_IP_MAX,
        }
    }
}

/// How to run the service.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where the snapshot lives; `None` keeps registrations in memory only.
    pub data_dir: Option<PathBuf>,
    /// Lifetime of a registration with `ttl_s` 0 or absent ([`TTL_DEFAULT_S`]).
    pub ttl_default_s: u64,
    /// Longest lifetime a registration may ask for ([`TTL_MAX_S`]).
    pub ttl_max_s: u64,
    /// Capacity limits.
    pub limits: Limits,
    /// Take the client address from the last `X-Forwarded-For` entry: set this only behind a
    /// reverse proxy that appends it, or clients can pick their own address.
    pub trust_forwarded_for: bool,
    /// The time source.
    pub clock: Clock,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            data_dir: None,
            ttl_default_s: TTL_DEFAULT_S,
            ttl_max_s: TTL_MAX_S,
            limits: Limits::default(),
            trust_forwarded_for: false,
            clock: Clock::System,
        }
    }
}

impl ServerOptions {
    fn validate(&self) -> std::io::Result<()> {
        let invalid = |message: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, message));
        if self.ttl_default_s == 0 || self.ttl_default_s > self.ttl_max_s {
            return invalid(format!(
                "ttl_default_s ({}) must be at least 1 and at most ttl_max_s ({})",
                self.ttl_default_s, self.ttl_max_s
            ));
        }
        // Expiries are computed in milliseconds; a year is far beyond any use.
        if self.ttl_max_s > 365 * 24 * 3600 {
            return invalid(format!("ttl_max_s ({}) must be at most a year", self.ttl_max_s));
        }
        let limits = &self.limits;
        if limits.connections_max == 0 || limits.connections_per_ip_max == 0 || limits.rate_clients_max == 0 {
            return invalid("connection and client limits must be at least 1".into());
        }
        Ok(())
    }
}

/// The platform's data dir for the service: `$XDG_DATA_HOME/meshsync-rendezvous`, else
/// `~/.local/share/meshsync-rendezvous`, else `./meshsync-rendezvous-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("meshsync-rendezvous");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/meshsync-rendezvous"),
        None => PathBuf::from("meshsync-rendezvous-data"),
    }
}

/// What every request handler shares.
pub(crate) struct Shared {
    pub options: ServerOptions,
    pub book: Mutex<Book>,
    pub limiter: Mutex<RateLimiter>,
    /// Set by a change, cleared when a snapshot holding it is taken.
    dirty: AtomicBool,
    changed: Notify,
}

impl Shared {
    fn new(options: ServerOptions, book: Book) -> Arc<Shared> {
        let limits = options.limits;
        Arc::new(Shared {
            limiter: Mutex::new(RateLimiter::new(limits.requests_per_s, limits.request_burst, limits.rate_clients_max)),
            book: Mutex::new(book),
            dirty: AtomicBool::new(false),
            changed: Notify::new(),
            options,
        })
    }

    /// Records that the book changed, so the snapshot writer saves it.
    pub fn changed(&self) {
        self.dirty.store(true, Ordering::Release);
        self.changed.notify_one();
    }
}

fn empty_book(options: &ServerOptions) -> Book {
    Book::new(BookLimits {
        ttl_default_s: options.ttl_default_s,
        ttl_max_s: options.ttl_max_s,
        rooms_max: options.limits.rooms_max,
        registrations_per_room_max: options.limits.registrations_per_room_max,
        registrations_max: options.limits.registrations_max,
    })
}

/// The service's HTTP application over an empty in-memory book, to drive without a socket
/// (fuzzing, tests): the routes, guard, body limits and book rules of [`serve`], but no
/// snapshot is loaded or saved (`data_dir` is ignored) and no listener caps connections. With no
/// connection to take an address from, every request counts as one client for the rate limit
/// (`limits.requests_per_s = 0` turns it off). Errors: invalid options.
pub fn router(options: ServerOptions) -> std::io::Result<axum::Router> {
    options.validate()?;
    let book = empty_book(&options);
    Ok(routes::router(Shared::new(options, book)))
}

/// Serves the rendezvous on `listener` until `shutdown` completes, then waits for requests in
/// flight and writes the last snapshot. With a data dir, the registrations saved there are
/// loaded first (dropping those that expired or do not verify). Errors: invalid options, a data
/// dir that cannot be created or read, or the listener failing.
pub async fn serve(
    listener: TcpListener,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    options.validate()?;
    let limits = options.limits;
    let mut book = empty_book(&options);
    let snapshot = match &options.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot create the data dir {}: {e}", dir.display()))
            })?;
            let path = snapshot::path(dir);
            let loaded = snapshot::load(&path, &mut book, options.clock.now_ms(), limits.registrations_max)?;
            tracing::info!(
                path = %path.display(),
                kept = loaded.kept,
                expired = loaded.expired,
                refused = loaded.refused,
                "loaded the snapshot"
            );
            Some((path, loaded.expired + loaded.refused > 0))
        }
        None => None,
    };
    let shared = Shared::new(options, book);
    let (stop, stopped) = watch::channel(false);
    let writer = snapshot.map(|(path, dropped)| {
        if dropped {
            // Rewrite the file without what was dropped, so it does not linger on disk.
            shared.changed();
        }
        tokio::spawn(write_snapshots(shared.clone(), path, stopped))
    });

    let per_ip_max =
        if shared.options.trust_forwarded_for { usize::MAX } else { shared.options.limits.connections_per_ip_max };
    let listener = CappedListener {
        inner: listener,
        permits: Arc::new(Semaphore::new(shared.options.limits.connections_max)),
        per_ip: Arc::new(Mutex::new(HashMap::new())),
        per_ip_max,
    };
    let app = routes::router(shared.clone()).into_make_service_with_connect_info::<Remote>();
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    stop.send_replace(true);
    if let Some(writer) = writer {
        if let Err(e) = writer.await {
            tracing::error!(error = %e, "the snapshot writer failed");
        }
    }
    served
}

/// Saves the book after each change, at most once per [`SNAPSHOT_DEBOUNCE`], and once more at
/// the end if anything changed since the last save.
async fn write_snapshots(shared: Arc<Shared>, path: PathBuf, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(SNAPSHOT_DEBOUNCE) => {}
            _ = stop.wait_for(|stop| *stop) => break,
        }
        save(&shared, &path).await;
    }
    if shared.dirty.load(Ordering::Acquire) {
        save(&shared, &path).await;
    }
}

async fn save(shared: &Arc<Shared>, path: &Path) {
    let entries = {
        let book = shared.book.lock().expect("lock poisoned");
        shared.dirty.store(false, Ordering::Release);
        book.entries()
    };
    let count = entries.len();
    let path = path.to_path_buf();
    let written = tokio::task::spawn_blocking(move || snapshot::write(&path, &snapshot::encode(entries))).await;
    match written {
        Ok(Ok(())) => tracing::debug!(registrations = count, "saved the snapshot"),
        Ok(Err(e)) => {
            // Try again with the next change (or at shutdown); the service keeps serving.
            shared.dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "could not save the snapshot");
        }
        Err(e) => {
            shared.dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "the snapshot task failed");
        }
    }
}

/// The remote address of a connection, as the request guard reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Remote(pub SocketAddr);

impl Connected<IncomingStream<'_, CappedListener>> for Remote {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Remote {
        Remote(*stream.remote_addr())
    }
}

/// A listener that holds a permit per open connection and counts connections per address.
pub(crate) struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    per_ip_max: usize,
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CappedStream, SocketAddr) {
        loop {
            // Wait for a free slot before accepting, so excess clients queue in the kernel.
            let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
            let (stream, addr) = axum::serve::Listener::accept(&mut self.inner).await;
            let ip = addr.ip();
            {
                let mut per_ip = self.per_ip.lock().expect("lock poisoned");
                let count = per_ip.entry(ip).or_insert(0);
                if *count >= self.per_ip_max {
                    tracing::debug!(%ip, "too many connections from one address; closing the newest");
                    continue;
                }
                *count += 1;
            }
            let _ = stream.set_nodelay(true);
            let guard = IpSlot { per_ip: self.per_ip.clone(), ip };
            let idle = Box::pin(tokio::time::sleep(CONNECTION_IDLE_TIMEOUT));
            return (CappedStream { stream, idle, _permit: permit, _slot: guard }, addr);
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// One connection's place in the per-address count, given back when the connection closes.
struct IpSlot {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// A connection with its permits that fails with `TimedOut` once it has made no progress for
/// [`CONNECTION_IDLE_TIMEOUT`], so slow or silent clients cannot hold a slot for long.
pub(crate) struct CappedStream {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    _slot: IpSlot,
}

impl CappedStream {
    /// Turns a pending operation into an error once the connection has been idle too long, and
    /// pushes the deadline back after progress.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.idle.as_mut().reset(tokio::time::Instant::now() + CONNECTION_IDLE_TIMEOUT);
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the connection was idle")))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.watch(cx, poll)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
