//! rustls configurations for mutual TLS 1.3 between meshsync devices, authenticated by pinned
//! Ed25519 keys. No sockets here (that is [`crate::transport`]).
//!
//! A peer's certificate is only an envelope for its key: we accept exactly one self-signed
//! Ed25519 certificate, check that the peer signed the handshake with that key, and take its
//! device id from the key. Certificate authorities, names, dates and the certificate's own
//! signature are not checked, because nothing depends on them: the handshake signature already
//! proves the peer holds the key, and the key is the identity. Whether that identity is welcome
//! (a group member, the device we dialed) is decided by pinning here and by the sync protocol.

use std::fmt;
use std::sync::Arc;

use meshsync_core::DeviceId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error, OtherError, PeerMisbehaved,
    ServerConfig, SignatureScheme,
};

use crate::identity::{device_id_from_public_key, PUBLIC_KEY_BYTES};
use crate::{Identity, NetError};

/// The ALPN protocol both sides must agree on; its version moves with the transport's framing.
pub const ALPN_PROTOCOL: &[u8] = b"meshsync/1";
/// The TLS exporter label of [`crate::Connection::channel_binding`].
pub const CHANNEL_BINDING_LABEL: &[u8] = b"EXPORTER-meshsync-v1";

/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) up to the key: SEQUENCE (42 bytes) {
/// SEQUENCE { OID 1.3.101.112 }, BIT STRING (33 bytes, no unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The only signature scheme we offer or accept: our keys are Ed25519.
const SCHEMES: &[SignatureScheme] = &[SignatureScheme::ED25519];

/// The provider for every config: ring (aws-lc-rs is too heavy to build where we build).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: requires a client certificate, accepts any valid device key. An
/// [`crate::Endpoint`] builds one; it is public for tools and tests that drive TLS themselves.
pub fn server_config(identity: &Identity) -> Result<ServerConfig, NetError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Certificate(e.to_string()))?
        .with_client_cert_verifier(Arc::new(PeerVerifier { expected: None, algorithms }))
        .with_cert_resolver(Arc::new(OwnCertificate(identity.certified_key())));
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    // No resumption: a resumed session would skip certificate verification, and with it the
    // pinning check. Links are long-lived, so a full handshake per link costs nothing noticeable.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The client side, for one dial: presents our certificate and, if `expected` is given,
/// refuses any server whose key does not hash to it before sending anything of ours. Public for
/// tools and tests that drive TLS themselves.
pub fn client_config(identity: &Identity, expected: Option<DeviceId>) -> Result<ClientConfig, NetError> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Certificate(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier { expected, algorithms }))
        .with_client_cert_resolver(Arc::new(OwnCertificate(identity.certified_key())));
    config.alpn_protocols = vec![ALPN_PROTOCOL.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    // Server names mean nothing here (we pin keys); we dial by IP address, and sending no SNI
    // keeps the handshake from naming anything.
    config.enable_sni = false;
    Ok(config)
}

/// The Ed25519 public key in a peer's certificate, if it is a well-formed certificate for an
/// Ed25519 key.
pub(crate) fn public_key_of(certificate: &CertificateDer<'_>) -> Result<[u8; PUBLIC_KEY_BYTES], Error> {
    let parsed = ParsedCertificate::try_from(certificate)?;
    let spki = parsed.subject_public_key_info();
    let spki: &[u8] = spki.as_ref();
    match spki.strip_prefix(&ED25519_SPKI_PREFIX[..]).map(<[u8; PUBLIC_KEY_BYTES]>::try_from) {
        Some(Ok(key)) => Ok(key),
        _ => Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NotEd25519))))),
    }
}

/// The device id proven by a completed handshake's peer certificates.
pub(crate) fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Result<([u8; 32], DeviceId), NetError> {
    // The verifiers already accepted exactly one Ed25519 certificate; this only reads it again.
    match certificates {
        Some([certificate]) => {
            let key = public_key_of(certificate).map_err(NetError::Tls)?;
            Ok((key, device_id_from_public_key(&key)))
        }
        _ => Err(NetError::Tls(Error::NoCertificatesPresented)),
    }
}

/// The certificate is not for an Ed25519 key.
#[derive(Debug)]
struct NotEd25519;

impl fmt::Display for NotEd25519 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the certificate is not for an Ed25519 key, so the peer is not a meshsync device")
    }
}

impl std::error::Error for NotEd25519 {}

/// The server's key is not the one we dialed; carried out of rustls inside its error.
#[derive(Debug)]
pub(crate) struct PinMismatch {
    pub(crate) expected: DeviceId,
    pub(crate) found: DeviceId,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "expected device {} but the peer is {}", self.expected, self.found)
    }
}

impl std::error::Error for PinMismatch {}

/// Finds our pin mismatch inside a rustls error.
pub(crate) fn pin_mismatch_in(error: &Error) -> Option<&PinMismatch> {
    match error {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner.downcast_ref::<PinMismatch>(),
        _ => None,
    }
}

/// Verifies the peer's certificate on either side: exactly one, for an Ed25519 key, and (when
/// dialing with a pin) for the expected device.
struct PeerVerifier {
    expected: Option<DeviceId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier").field("expected", &self.expected).finish_non_exhaustive()
    }
}

impl PeerVerifier {
    fn verify_certificate(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        if !intermediates.is_empty() {
            // A meshsync device presents its self-signed certificate alone.
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        }
        let key = public_key_of(end_entity)?;
        let found = device_id_from_public_key(&key);
        match self.expected {
            Some(expected) if expected != found => {
                Err(Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PinMismatch {
                    expected,
                    found,
                })))))
            }
            _ => Ok(()),
        }
    }

    fn verify_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if signature.scheme != SignatureScheme::ED25519 {
            return Err(Error::PeerMisbehaved(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
        }
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.verify_certificate(end_entity, intermediates).map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // Unreachable in practice: the configs enable TLS 1.3 only.
        Err(Error::General("meshsync links use TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No CA hints: the client sends the one certificate it has.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.verify_certificate(end_entity, intermediates).map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("meshsync links use TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

/// Presents our one certificate, on both sides.
#[derive(Debug)]
struct OwnCertificate(Arc<CertifiedKey>);

impl ResolvesClientCert for OwnCertificate {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        // Offering a certificate the server cannot verify would only fail later, less clearly.
        schemes.contains(&SignatureScheme::ED25519).then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for OwnCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}
