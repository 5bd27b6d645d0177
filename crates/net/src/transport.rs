//! Links between devices: TCP, then mutual TLS 1.3 ([`crate::tls`]), then WebSocket carrying
//! binary frames. Dialing, listening, and the two halves of an established link. What the frames
//! mean is the sync protocol's business, not this module's.
//!
//! Every input from a peer has a limit: the whole handshake has a deadline, the number of
//! handshakes in flight is capped, and frames larger than the configured maximum close the link.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use meshsync_core::DeviceId;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::error::from_tls_io;
use crate::identity::PUBLIC_KEY_BYTES;
use crate::tls::{self, ALPN_PROTOCOL, CHANNEL_BINDING_LABEL};
use crate::{Identity, NetError};

/// The default limit on one frame, in either direction.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 << 20;
/// The default deadline for an incoming connection's TLS and WebSocket handshakes.
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// The default cap on incoming handshakes in flight at once.
pub const HANDSHAKES_PENDING_MAX_DEFAULT: usize = 64;
/// Most handshakes under way from one IP address: one host cannot take every slot.
pub const HANDSHAKES_PENDING_PER_IP_MAX: usize = 8;
/// Bytes of [`Peer::channel_binding`].
pub const CHANNEL_BINDING_BYTES: usize = 32;

/// How long closing a link waits for the close frame to go out before giving up on the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// The WebSocket path, versioned like the ALPN protocol.
const WEBSOCKET_PATH: &str = "/meshsync/1";
/// A name may resolve to many addresses; trying a few is enough, and bounds a dial's work.
const DIAL_ADDRESSES_MAX: usize = 8;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Limits and deadlines of an [`Endpoint`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Deadline for an incoming connection to finish TLS and the WebSocket upgrade. A peer that
    /// stalls longer is dropped. Dials take their own deadline.
    pub handshake_timeout: Duration,
    /// The largest frame sent or accepted. A larger incoming frame closes the link with
    /// [`NetError::FrameTooLarge`]; both sides should use the same value.
    pub frame_bytes_max: usize,
    /// How many incoming handshakes may run at once; more connections wait in the kernel's
    /// backlog, so a flood of stalled clients cannot exhaust memory or tasks.
    pub handshakes_pending_max: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            handshakes_pending_max: HANDSHAKES_PENDING_MAX_DEFAULT,
        }
    }
}

/// This device on the network: its identity and limits, able to listen and to dial. Cheap to
/// clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<EndpointInner>,
}

struct EndpointInner {
    identity: Identity,
    config: EndpointConfig,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("device_id", &self.inner.identity.device_id())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint with the default limits.
    pub fn new(identity: Identity) -> Result<Endpoint, NetError> {
        Endpoint::with_config(identity, EndpointConfig::default())
    }

    /// An endpoint with the given limits.
    pub fn with_config(identity: Identity, config: EndpointConfig) -> Result<Endpoint, NetError> {
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&identity)?));
        Ok(Endpoint { inner: Arc::new(EndpointInner { identity, config, acceptor }) })
    }

    /// This device's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.inner.identity.device_id()
    }

    /// The limits in force.
    pub fn config(&self) -> &EndpointConfig {
        &self.inner.config
    }

    /// Listens on `address` (for example `0.0.0.0:7400`, or `127.0.0.1:0` for any free port).
    pub async fn bind(&self, address: impl ToSocketAddrs) -> Result<Listener, NetError> {
        let tcp = TcpListener::bind(address).await?;
        Ok(Listener { tcp, endpoint: self.clone(), pending: JoinSet::new(), pending_per_ip: HashMap::new() })
    }

    /// Connects to the device at `address` (`ip:port`, `host:port`, or a `SocketAddr`).
    ///
    /// With `expected`, the TLS handshake fails with [`NetError::PinMismatch`] unless the server's
    /// key hashes to that device id; the check happens before we send our certificate, so a wrong
    /// peer learns nothing. Without it, any meshsync device is accepted (read its id from the
    /// connection), which is only right when the device id is not known yet, as when joining by
    /// an invite whose inviter the protocol verifies by other means.
    ///
    /// `timeout` bounds the whole dial: resolution, TCP connect, TLS and WebSocket handshakes.
    pub async fn dial<A>(
        &self,
        address: A,
        expected: Option<DeviceId>,
        timeout: Duration,
    ) -> Result<Connection, NetError>
    where
        A: ToSocketAddrs + fmt::Display,
    {
        let text = address.to_string();
        match tokio::time::timeout(timeout, self.dial_inner(address, &text, expected)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::HandshakeTimeout { after: timeout }),
        }
    }

    async fn dial_inner(
        &self,
        address: impl ToSocketAddrs,
        text: &str,
        expected: Option<DeviceId>,
    ) -> Result<Connection, NetError> {
        let address_error = |reason: String| NetError::Address { address: text.to_string(), reason };
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host(address)
            .await
            .map_err(|e| address_error(e.to_string()))?
            .take(DIAL_ADDRESSES_MAX)
            .collect();
        if addresses.is_empty() {
            return Err(address_error("the name has no addresses".into()));
        }
        let tcp = TcpStream::connect(&addresses[..])
            .await
            .map_err(|source| NetError::Unreachable { address: text.to_string(), source })?;
        configure(&tcp)?;
        let peer_addr = tcp.peer_addr()?;
        let local_addr = tcp.local_addr().ok();
        let config = tls::client_config(&self.inner.identity, expected)?;
        let server_name = ServerName::IpAddress(peer_addr.ip().into());
        let stream = TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await.map_err(from_tls_io)?;
        let peer = Peer::of(&stream, peer_addr, local_addr)?;
        // The verifier already enforced the pin; this restates it where the reader looks.
        debug_assert!(expected.is_none_or(|id| id == peer.device_id));
        let request = format!("ws://{peer_addr}{WEBSOCKET_PATH}");
        let (ws, _response) = tokio_tungstenite::client_async_with_config(
            request,
            TlsStream::Client(stream),
            Some(self.websocket_config()),
        )
        .await
        .map_err(websocket_error)?;
        Ok(Connection::new(ws, peer, self.inner.config.frame_bytes_max))
    }

    /// Runs the server side of the handshake on an accepted TCP stream, within the deadline.
    async fn handshake_incoming(self, tcp: TcpStream, peer_addr: SocketAddr) -> Result<Connection, NetError> {
        let deadline = self.inner.config.handshake_timeout;
        let handshake = async {
            configure(&tcp)?;
            let local_addr = tcp.local_addr().ok();
            let stream = self.inner.acceptor.accept(tcp).await.map_err(from_tls_io)?;
            let peer = Peer::of(&stream, peer_addr, local_addr)?;
            let ws = tokio_tungstenite::accept_hdr_async_with_config(
                TlsStream::Server(stream),
                check_path,
                Some(self.websocket_config()),
            )
            .await
            .map_err(websocket_error)?;
            Ok(Connection::new(ws, peer, self.inner.config.frame_bytes_max))
        };
        let result = match tokio::time::timeout(deadline, handshake).await {
            Ok(result) => result,
            Err(_) => Err(NetError::HandshakeTimeout { after: deadline }),
        };
        result.map_err(|e| NetError::Incoming { peer_addr, source: Box::new(e) })
    }

    fn websocket_config(&self) -> WebSocketConfig {
        let max = self.inner.config.frame_bytes_max;
        // A message is one frame here; both limits apply so a peer cannot pile up fragments.
        WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max))
    }
}

/// Refuses upgrades to any other path: a future transport version gets its own path, and an
/// old peer a clear 404 rather than frames it cannot read.
#[allow(clippy::result_large_err, reason = "the signature is tungstenite's handshake callback")]
fn check_path(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() == WEBSOCKET_PATH {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some(format!("this meshsync node serves {WEBSOCKET_PATH}")));
    *refusal.status_mut() = StatusCode::NOT_FOUND;
    Err(refusal)
}

/// Sockets carry small live changes whose latency matters more than packet count.
fn configure(tcp: &TcpStream) -> Result<(), NetError> {
    tcp.set_nodelay(true)?;
    Ok(())
}

/// Accepts incoming links. Handshakes run in their own tasks, at most
/// [`EndpointConfig::handshakes_pending_max`] at once, so one slow or hostile client never
/// holds up the others. Dropping the listener stops the handshakes in flight.
pub struct Listener {
    tcp: TcpListener,
    endpoint: Endpoint,
    pending: JoinSet<(IpAddr, Result<Connection, NetError>)>,
    pending_per_ip: HashMap<IpAddr, usize>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener").field("local_addr", &self.tcp.local_addr().ok()).finish_non_exhaustive()
    }
}

impl Listener {
    /// The address listened on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        Ok(self.tcp.local_addr()?)
    }

    /// The next link that completed its handshake.
    ///
    /// An `Err` is one refused connection, [`NetError::Incoming`] with the peer's address and
    /// the reason (log or audit it), or an error of the listening socket itself (such as too many
    /// open files: wait a moment before calling again). Either way the listener remains usable.
    /// Handshakes progress in the background between calls; this is cancel-safe.
    pub async fn accept(&mut self) -> Result<Connection, NetError> {
        let pending_max = self.endpoint.inner.config.handshakes_pending_max.max(1);
        loop {
            tokio::select! {
                // Finished handshakes first: they hold resources and a peer is waiting.
                biased;
                Some(joined) = self.pending.join_next(), if !self.pending.is_empty() => match joined {
                    Ok((ip, result)) => {
                        if let Some(count) = self.pending_per_ip.get_mut(&ip) {
                            *count -= 1;
                            if *count == 0 {
                                self.pending_per_ip.remove(&ip);
                            }
                        }
                        return result;
                    }
                    // Only a panic or an abort ends a handshake task otherwise; neither is a
                    // peer's doing, so report it and keep serving.
                    Err(e) => tracing::error!(error = %e, "an incoming handshake task failed"),
                },
                accepted = self.tcp.accept(), if self.pending.len() < pending_max => {
                    let (tcp, peer_addr) = accepted?;
                    let ip = peer_addr.ip();
                    let count = self.pending_per_ip.entry(ip).or_default();
                    if *count >= HANDSHAKES_PENDING_PER_IP_MAX {
                        drop(tcp);
                        return Err(NetError::Incoming {
                            peer_addr,
                            source: Box::new(NetError::Protocol(format!(
                                "more than {HANDSHAKES_PENDING_PER_IP_MAX} handshakes at once from {ip}"
                            ))),
                        });
                    }
                    *count += 1;
                    let endpoint = self.endpoint.clone();
                    self.pending.spawn(async move { (ip, endpoint.handshake_incoming(tcp, peer_addr).await) });
                }
            }
        }
    }
}

/// Who is at the other end of a link, as proven by its handshake.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// The device id of the peer's key.
    pub device_id: DeviceId,
    /// The peer's Ed25519 public key, for checking what it signs.
    pub public_key: [u8; PUBLIC_KEY_BYTES],
    /// The peer's socket address.
    pub addr: SocketAddr,
    /// Our end of the connection (the local address the link uses), so the owner can drop links
    /// whose address went away when the machine is readdressed.
    pub local_addr: Option<SocketAddr>,
    /// Keying material exported from this TLS session ([`CHANNEL_BINDING_LABEL`], no context):
    /// the same on both ends, different for every session, and unknown to anyone else. Signing it
    /// binds a proof (such as group membership) to this link, so a recorded proof cannot be
    /// replayed on another.
    pub channel_binding: [u8; CHANNEL_BINDING_BYTES],
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The channel binding is left out: logs need not carry session secrets' derivatives.
        f.debug_struct("Peer").field("device_id", &self.device_id).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Peer {
    fn of<S>(stream: &S, addr: SocketAddr, local_addr: Option<SocketAddr>) -> Result<Peer, NetError>
    where
        S: TlsSession,
    {
        let state = stream.session();
        if state.alpn_protocol() != Some(ALPN_PROTOCOL) {
            return Err(NetError::Protocol(format!(
                "the peer does not speak {} (it offered {:?})",
                String::from_utf8_lossy(ALPN_PROTOCOL),
                state.alpn_protocol().map(String::from_utf8_lossy)
            )));
        }
        let (public_key, device_id) = tls::peer_identity(state.peer_certificates())?;
        let channel_binding = stream.export(CHANNEL_BINDING_LABEL).map_err(NetError::Tls)?;
        Ok(Peer { device_id, public_key, addr, local_addr, channel_binding })
    }
}

/// The TLS state both stream kinds share, for [`Peer::of`].
trait TlsSession {
    fn session(&self) -> &rustls::CommonState;
    fn export(&self, label: &[u8]) -> Result<[u8; CHANNEL_BINDING_BYTES], rustls::Error>;
}

impl TlsSession for tokio_rustls::client::TlsStream<TcpStream> {
    fn session(&self) -> &rustls::CommonState {
        self.get_ref().1
    }
    fn export(&self, label: &[u8]) -> Result<[u8; CHANNEL_BINDING_BYTES], rustls::Error> {
        self.get_ref().1.export_keying_material([0u8; CHANNEL_BINDING_BYTES], label, None)
    }
}

impl TlsSession for tokio_rustls::server::TlsStream<TcpStream> {
    fn session(&self) -> &rustls::CommonState {
        self.get_ref().1
    }
    fn export(&self, label: &[u8]) -> Result<[u8; CHANNEL_BINDING_BYTES], rustls::Error> {
        self.get_ref().1.export_keying_material([0u8; CHANNEL_BINDING_BYTES], label, None)
    }
}

/// An authenticated link to one peer. Use it whole, or [`Connection::split`] it so one task
/// sends while another receives.
#[derive(Debug)]
pub struct Connection {
    sender: FrameSender,
    receiver: FrameReceiver,
}

impl Connection {
    fn new(ws: Ws, peer: Peer, frame_bytes_max: usize) -> Connection {
        let (sink, stream) = ws.split();
        let sink = Arc::new(Mutex::new(sink));
        Connection {
            sender: FrameSender { sink: sink.clone(), peer, frame_bytes_max },
            receiver: FrameReceiver { stream, sink, peer, finished: false },
        }
    }

    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.sender.peer
    }

    /// The peer's device id, proven by the TLS handshake.
    pub fn peer_device_id(&self) -> DeviceId {
        self.sender.peer.device_id
    }

    /// The peer's Ed25519 public key.
    pub fn peer_public_key(&self) -> [u8; PUBLIC_KEY_BYTES] {
        self.sender.peer.public_key
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.sender.peer.addr
    }

    /// See [`Peer::channel_binding`].
    pub fn channel_binding(&self) -> [u8; CHANNEL_BINDING_BYTES] {
        self.sender.peer.channel_binding
    }

    /// Sends one frame and flushes it. See [`FrameSender::send`].
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), NetError> {
        self.sender.send(frame).await
    }

    /// Receives the next frame. See [`FrameReceiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        self.receiver.recv().await
    }

    /// Closes the link cleanly. See [`FrameSender::close`].
    pub async fn close(mut self) -> Result<(), NetError> {
        self.sender.close().await
    }

    /// The two halves, to send and receive from different tasks.
    pub fn split(self) -> (FrameSender, FrameReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a link.
pub struct FrameSender {
    /// Shared with the receiver only so it can send a close frame when the peer breaks the rules.
    sink: Arc<Mutex<SplitSink<Ws, Message>>>,
    peer: Peer,
    frame_bytes_max: usize,
}

impl fmt::Debug for FrameSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameSender").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl FrameSender {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Sends one binary frame and flushes it to the socket. Waits while the peer is not reading
    /// (backpressure). A frame over the limit is refused with [`NetError::FrameTooLarge`] and
    /// not sent; the link stays usable.
    pub async fn send(&mut self, frame: Vec<u8>) -> Result<(), NetError> {
        self.check(&frame)?;
        self.sink.lock().await.send(Message::Binary(frame.into())).await.map_err(websocket_error)
    }

    /// Queues one frame without flushing: several frames then leave in fewer TLS records and
    /// system calls. Call [`FrameSender::flush`] when the burst is done; the queue is also
    /// written out whenever it passes 128 KiB.
    pub async fn feed(&mut self, frame: Vec<u8>) -> Result<(), NetError> {
        self.check(&frame)?;
        self.sink.lock().await.feed(Message::Binary(frame.into())).await.map_err(websocket_error)
    }

    /// Writes out frames queued by [`FrameSender::feed`].
    pub async fn flush(&mut self) -> Result<(), NetError> {
        self.sink.lock().await.flush().await.map_err(websocket_error)
    }

    /// Sends a close frame and flushes, waiting at most a second for a peer that is not reading.
    /// The peer's receiver then ends with `Ok(None)`.
    pub async fn close(&mut self) -> Result<(), NetError> {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let mut sink = self.sink.lock().await;
        match tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await {
            Ok(Ok(())) | Ok(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => Ok(()),
            Ok(Err(e)) => Err(websocket_error(e)),
            Err(_) => Err(NetError::Closed),
        }
    }

    fn check(&self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() > self.frame_bytes_max {
            return Err(NetError::FrameTooLarge { len: frame.len(), max: self.frame_bytes_max });
        }
        Ok(())
    }
}

/// The receiving half of a link.
pub struct FrameReceiver {
    stream: SplitStream<Ws>,
    sink: Arc<Mutex<SplitSink<Ws, Message>>>,
    peer: Peer,
    /// Set once the link ended, cleanly or not; later calls report `Closed`.
    finished: bool,
}

impl fmt::Debug for FrameReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReceiver").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl FrameReceiver {
    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The next binary frame; `Ok(None)` once the peer closed the link cleanly.
    ///
    /// A frame over the limit ([`NetError::FrameTooLarge`]), a text frame or any other breach
    /// of the WebSocket rules ([`NetError::Protocol`]) ends the link: we send the peer a close
    /// frame saying why, and every later call returns [`NetError::Closed`]. Pings are answered
    /// without surfacing here.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        if self.finished {
            return Err(NetError::Closed);
        }
        loop {
            let message = match self.stream.next().await {
                None => Err(NetError::Closed),
                Some(Ok(message)) => Ok(message),
                Some(Err(e)) => Err(websocket_error(e)),
            };
            let outcome = match message {
                Ok(Message::Binary(bytes)) => return Ok(Some(Vec::from(bytes))),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Ok(Message::Close(frame)) => match frame {
                    None => Ok(None),
                    Some(frame) if matches!(frame.code, CloseCode::Normal | CloseCode::Away) => Ok(None),
                    Some(frame) => {
                        Err(NetError::ClosedByPeer { code: u16::from(frame.code), reason: frame.reason.to_string() })
                    }
                },
                Ok(Message::Text(_)) => {
                    Err(NetError::Protocol("the peer sent a text frame; meshsync frames are binary".into()))
                }
                Err(e) => Err(e),
            };
            self.finished = true;
            if let Err(e) = &outcome {
                self.close_for(e).await;
            }
            return outcome;
        }
    }

    /// Tells the peer why we are ending the link, if the sending half is free to do so.
    async fn close_for(&mut self, error: &NetError) {
        let code = match error {
            NetError::FrameTooLarge { .. } => CloseCode::Size,
            NetError::Protocol(_) => CloseCode::Protocol,
            _ => return,
        };
        // A sender blocked on a peer that does not read holds the lock; then the peer gets no
        // reason, only the end of the link once both halves are dropped.
        let Ok(mut sink) = self.sink.try_lock() else { return };
        let frame = CloseFrame { code, reason: error.to_string().chars().take(100).collect::<String>().into() };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// Maps a WebSocket error to ours, keeping the cases a caller acts on distinct.
fn websocket_error(error: WsError) -> NetError {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => NetError::Closed,
        WsError::Io(e) => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => NetError::Closed,
            _ => from_tls_io(e),
        },
        WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            NetError::FrameTooLarge { len: size, max: max_size }
        }
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => NetError::Closed,
        other => NetError::Protocol(other.to_string()),
    }
}
