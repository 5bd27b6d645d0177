//! Links over loopback: frames both ways, proven device ids and channel bindings, pinning, and
//! hostile or broken clients that must be refused without disturbing the listener.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use meshsync_net::{tls, DeviceId, Endpoint, EndpointConfig, Identity, Listener, NetError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds every wait in these tests, so a bug shows as a failure rather than a hang.
const TEST_TIMEOUT: Duration = Duration::from_secs(10);

fn endpoint() -> Endpoint {
    Endpoint::new(Identity::generate().unwrap()).unwrap()
}

fn endpoint_with(edit: impl FnOnce(&mut EndpointConfig)) -> Endpoint {
    let mut config = EndpointConfig::default();
    edit(&mut config);
    Endpoint::with_config(Identity::generate().unwrap(), config).unwrap()
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, future).await.expect("the test timed out")
}

async fn listen(endpoint: &Endpoint) -> (Listener, String) {
    let listener = endpoint.bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    (listener, address)
}

/// Checks that the listener still serves a well-behaved device after whatever came before.
async fn assert_listener_still_serves(server: &Endpoint, listener: &mut Listener, address: &str) {
    let client = endpoint();
    let dial = client.dial(address, Some(server.device_id()), DIAL_TIMEOUT);
    let (dialed, accepted) = within(async { tokio::join!(dial, listener.accept()) }).await;
    let (mut dialed, mut accepted) = (dialed.unwrap(), accepted.unwrap());
    assert_eq!(accepted.peer_device_id(), client.device_id());
    dialed.send(b"still here".to_vec()).await.unwrap();
    assert_eq!(within(accepted.recv()).await.unwrap().unwrap(), b"still here");
}

#[tokio::test]
async fn frames_flow_both_ways_between_proven_devices() {
    let server = endpoint();
    let client = endpoint();
    let (mut listener, address) = listen(&server).await;
    let (dialed, accepted) = within(async {
        tokio::join!(client.dial(&*address, Some(server.device_id()), DIAL_TIMEOUT), listener.accept())
    })
    .await;
    let (dialed, accepted) = (dialed.unwrap(), accepted.unwrap());

    assert_eq!(dialed.peer_device_id(), server.device_id());
    assert_eq!(accepted.peer_device_id(), client.device_id());
    assert_eq!(dialed.peer_public_key(), server.identity().public_key());
    assert_eq!(accepted.peer_public_key(), client.identity().public_key());
    assert_eq!(dialed.peer_addr(), listener.local_addr().unwrap());
    assert_eq!(dialed.channel_binding(), accepted.channel_binding());
    assert_ne!(dialed.channel_binding(), [0u8; 32]);

    // Split halves: each side sends from one task while receiving in another.
    let (mut client_tx, mut client_rx) = dialed.split();
    let (mut server_tx, mut server_rx) = accepted.split();
    let frames: Vec<Vec<u8>> = (0..100u32).map(|i| vec![(i % 251) as u8; (i as usize) * 997]).collect();
    let to_send = frames.clone();
    let client_sends = tokio::spawn(async move {
        for frame in to_send {
            client_tx.send(frame).await.unwrap();
        }
        client_tx
    });
    let to_send = frames.clone();
    let server_sends = tokio::spawn(async move {
        for frame in to_send {
            server_tx.feed(frame).await.unwrap();
        }
        server_tx.flush().await.unwrap();
        server_tx
    });
    for expected in &frames {
        assert_eq!(&within(server_rx.recv()).await.unwrap().unwrap(), expected);
        assert_eq!(&within(client_rx.recv()).await.unwrap().unwrap(), expected);
    }
    let mut client_tx = client_sends.await.unwrap();
    server_sends.await.unwrap();

    // A clean close ends the peer's stream with None.
    client_tx.close().await.unwrap();
    assert_eq!(within(server_rx.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn every_session_has_its_own_channel_binding() {
    let server = endpoint();
    let client = endpoint();
    let (mut listener, address) = listen(&server).await;
    let mut bindings = Vec::new();
    for _ in 0..2 {
        let (dialed, accepted) =
            within(async { tokio::join!(client.dial(&*address, None, DIAL_TIMEOUT), listener.accept()) }).await;
        let (dialed, accepted) = (dialed.unwrap(), accepted.unwrap());
        assert_eq!(dialed.channel_binding(), accepted.channel_binding());
        bindings.push(dialed.channel_binding());
    }
    assert_ne!(bindings[0], bindings[1]);
}

#[tokio::test]
async fn dialing_the_wrong_device_fails_and_the_server_gets_nothing() {
    let server = endpoint();
    let client = endpoint();
    let (mut listener, address) = listen(&server).await;
    let wrong = DeviceId([7; 16]);
    let (dialed, accepted) =
        within(async { tokio::join!(client.dial(&*address, Some(wrong), DIAL_TIMEOUT), listener.accept()) }).await;
    match dialed {
        Err(NetError::PinMismatch { expected, found }) => {
            assert_eq!(expected, wrong);
            assert_eq!(found, server.device_id());
        }
        other => panic!("expected a pin mismatch, got {other:?}"),
    }
    // The server saw the client abort the handshake and never got a link.
    match accepted {
        Err(NetError::Incoming { source, .. }) => assert!(matches!(*source, NetError::Tls(_)), "{source:?}"),
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert_listener_still_serves(&server, &mut listener, &address).await;
}

#[tokio::test]
async fn a_plain_tcp_client_sending_garbage_is_refused() {
    let server = endpoint();
    let (mut listener, address) = listen(&server).await;
    let mut garbage = TcpStream::connect(&address).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").await.unwrap();
    let refused = within(listener.accept()).await;
    match refused {
        Err(error @ NetError::Incoming { .. }) => assert!(matches!(error.root(), NetError::Tls(_)), "{error:?}"),
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert_listener_still_serves(&server, &mut listener, &address).await;
}

/// A TLS client that trusts any server, for playing a peer that breaks the rules.
#[derive(Debug)]
struct TrustAnything;

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

#[tokio::test]
async fn a_tls_client_without_a_certificate_is_refused() {
    let server = endpoint();
    let (mut listener, address) = listen(&server).await;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(TrustAnything))
        .with_no_client_auth();
    config.alpn_protocols = vec![meshsync_net::ALPN_PROTOCOL.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stranger = async {
        let tcp = TcpStream::connect(&address).await.unwrap();
        // TLS 1.3 clients finish their side before the server checks their certificate, so the
        // refusal may surface here or on the first read; either way no link forms.
        if let Ok(mut stream) = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await {
            let mut buffer = [0u8; 16];
            let read = tokio::io::AsyncReadExt::read(&mut stream, &mut buffer).await;
            assert!(!matches!(read, Ok(n) if n > 0), "the server sent data to a client without a certificate");
        }
    };
    let (_, refused) = within(async { tokio::join!(stranger, listener.accept()) }).await;
    match refused {
        Err(error @ NetError::Incoming { .. }) => {
            assert!(matches!(error.root(), NetError::Tls(rustls::Error::NoCertificatesPresented)), "{error:?}")
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert_listener_still_serves(&server, &mut listener, &address).await;
}

#[tokio::test]
async fn a_device_that_does_not_offer_the_meshsync_protocol_is_refused() {
    let server = endpoint();
    let (mut listener, address) = listen(&server).await;
    let stranger = Identity::generate().unwrap();
    let mut config = tls::client_config(&stranger, None).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(&address).await.unwrap();
    let (dialed, refused) = within(async {
        tokio::join!(connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp), listener.accept())
    })
    .await;
    assert!(dialed.is_err(), "the handshake should fail without a common protocol");
    assert!(matches!(refused, Err(NetError::Incoming { .. })), "{refused:?}");
    assert_listener_still_serves(&server, &mut listener, &address).await;
}

#[tokio::test]
async fn a_stalled_handshake_times_out_without_holding_up_others() {
    let deadline = Duration::from_secs(1);
    let server = endpoint_with(|c| c.handshake_timeout = deadline);
    let (mut listener, address) = listen(&server).await;
    // Connects and never says a word.
    let _silent = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    // A good client arriving after it is served at once, not after the stalled one's deadline.
    assert_listener_still_serves(&server, &mut listener, &address).await;
    assert!(started.elapsed() < deadline, "the good client waited {:?}", started.elapsed());
    match within(listener.accept()).await {
        Err(error @ NetError::Incoming { .. }) => {
            assert!(matches!(error.root(), NetError::HandshakeTimeout { after } if *after == deadline), "{error:?}")
        }
        other => panic!("expected a timed-out handshake, got {other:?}"),
    }
    assert!(started.elapsed() >= deadline);
    assert_listener_still_serves(&server, &mut listener, &address).await;
}

#[tokio::test]
async fn one_address_cannot_hold_every_handshake_slot() {
    let server = endpoint_with(|c| c.handshake_timeout = Duration::from_secs(30));
    let (mut listener, address) = listen(&server).await;
    let silent: Vec<TcpStream> = futures_util::future::join_all(
        (0..meshsync_net::HANDSHAKES_PENDING_PER_IP_MAX + 1).map(|_| TcpStream::connect(&address)),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    // The one over the limit is refused at once, long before any handshake deadline.
    match within(listener.accept()).await {
        Err(error @ NetError::Incoming { .. }) => assert!(
            error.to_string().contains("handshakes at once") || format!("{error:?}").contains("handshakes at once"),
            "{error:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(silent);
}

#[tokio::test]
async fn dialing_a_silent_server_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        // Hold the connection open without answering.
        tokio::time::sleep(TEST_TIMEOUT).await;
        drop(stream);
    });
    let started = Instant::now();
    let result = endpoint().dial(address, None, Duration::from_millis(300)).await;
    assert!(matches!(result, Err(NetError::HandshakeTimeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    accepting.abort();
}

#[tokio::test]
async fn a_bad_address_says_so() {
    // A port nothing listens on: bind one, note it, and close it again.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let result = endpoint().dial(closed, None, DIAL_TIMEOUT).await;
    assert!(matches!(result, Err(NetError::Unreachable { .. })), "{result:?}");
    let result = endpoint().dial("no-such-host.invalid:7400", None, DIAL_TIMEOUT).await;
    assert!(matches!(result, Err(NetError::Address { .. })), "{result:?}");
    let result = endpoint().dial("not an address", None, DIAL_TIMEOUT).await;
    assert!(matches!(result, Err(NetError::Address { .. })), "{result:?}");
}

#[tokio::test]
async fn an_oversized_frame_closes_the_link_with_a_typed_error() {
    let limit = 64 * 1024;
    let server = endpoint_with(|c| c.frame_bytes_max = limit);
    let client = endpoint_with(|c| c.frame_bytes_max = 4 * limit);
    let (mut listener, address) = listen(&server).await;
    let (dialed, accepted) = within(async {
        tokio::join!(client.dial(&*address, Some(server.device_id()), DIAL_TIMEOUT), listener.accept())
    })
    .await;
    let (mut dialed, mut accepted) = (dialed.unwrap(), accepted.unwrap());

    // Our own limit is checked before sending, and the link stays usable.
    match accepted.send(vec![0; limit + 1]).await {
        Err(NetError::FrameTooLarge { len, max }) => assert_eq!((len, max), (limit + 1, limit)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    accepted.send(vec![1; limit]).await.unwrap();
    assert_eq!(within(dialed.recv()).await.unwrap().unwrap().len(), limit);

    // A frame at the limit passes; one byte more ends the link.
    dialed.send(vec![2; limit]).await.unwrap();
    assert_eq!(within(accepted.recv()).await.unwrap().unwrap().len(), limit);
    dialed.send(vec![3; 2 * limit]).await.unwrap();
    match within(accepted.recv()).await {
        Err(NetError::FrameTooLarge { len, max }) => assert_eq!((len, max), (2 * limit, limit)),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(matches!(accepted.recv().await, Err(NetError::Closed)));
    // The sender learns why.
    match within(dialed.recv()).await {
        Err(NetError::ClosedByPeer { code: 1009, reason }) => assert!(reason.contains("exceeds"), "{reason}"),
        other => panic!("expected the peer's close with code 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn a_text_frame_is_a_protocol_error() {
    let server = endpoint();
    let (mut listener, address) = listen(&server).await;
    let rogue = Identity::generate().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(&rogue, None).unwrap()));
    let rogue_side = async {
        let tcp = TcpStream::connect(&address).await.unwrap();
        let stream = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{address}/meshsync/1"), stream).await.unwrap();
        ws.send(Message::text("hello")).await.unwrap();
        ws
    };
    let (_ws, accepted) = within(async { tokio::join!(rogue_side, listener.accept()) }).await;
    let mut accepted = accepted.unwrap();
    assert_eq!(accepted.peer_device_id(), rogue.device_id());
    assert!(matches!(within(accepted.recv()).await, Err(NetError::Protocol(_))));
    assert!(matches!(accepted.recv().await, Err(NetError::Closed)));
}

#[tokio::test]
async fn a_peer_vanishing_ends_the_stream() {
    let server = endpoint();
    let client = endpoint();
    let (mut listener, address) = listen(&server).await;
    let (dialed, accepted) =
        within(async { tokio::join!(client.dial(&*address, None, DIAL_TIMEOUT), listener.accept()) }).await;
    let mut accepted = accepted.unwrap();
    drop(dialed.unwrap());
    // Dropped without a close frame: the link is reported closed, not a clean end.
    assert!(matches!(within(accepted.recv()).await, Err(NetError::Closed)));
    assert!(accepted.send(vec![1]).await.is_err() || accepted.send(vec![1]).await.is_err());
}

#[tokio::test]
async fn an_upgrade_to_another_path_is_refused() {
    let server = endpoint();
    let (mut listener, address) = listen(&server).await;
    let stranger = Identity::generate().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls::client_config(&stranger, None).unwrap()));
    let stranger_side = async {
        let tcp = TcpStream::connect(&address).await.unwrap();
        let stream = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://{address}/meshsync/2"), stream).await.map(|_| ())
    };
    let (dialed, refused) = within(async { tokio::join!(stranger_side, listener.accept()) }).await;
    assert!(dialed.is_err());
    match refused {
        Err(error @ NetError::Incoming { .. }) => assert!(matches!(error.root(), NetError::Protocol(_)), "{error:?}"),
        other => panic!("expected a refused connection, got {other:?}"),
    }
    assert_listener_still_serves(&server, &mut listener, &address).await;
}
