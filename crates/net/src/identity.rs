//! This device's Ed25519 identity: the key file in the data dir, the device id derived from the
//! public key, signatures, and the self-signed certificate that TLS presents. No sockets here.
//!
//! The key is the identity; the certificate is only the envelope TLS needs to carry it. Peers pin
//! keys (through device ids), never certificate authorities, names or dates, so the certificate is
//! rebuilt from the key at every start and never stored.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use meshsync_core::device::DEVICE_ID_BYTES;
use meshsync_core::DeviceId;
use rand::TryRngCore;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::NetError;

/// The key file's name inside the data dir.
pub const IDENTITY_FILE: &str = "identity.key";
/// Bytes in an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes in an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// A PEM-encoded PKCS#8 Ed25519 key is about 170 bytes; anything much larger is not ours.
const IDENTITY_FILE_BYTES_MAX: u64 = 4096;
/// Domain separation, so that a device id can never collide with another use of the same hash of
/// the same key; the version lets a future derivation coexist.
const DEVICE_ID_DOMAIN: &[u8] = b"meshsync-device-v1";

/// The device id of the holder of an Ed25519 public key: the first 16 bytes of
/// SHA-256("meshsync-device-v1" || public key).
pub fn device_id_from_public_key(public_key: &[u8; PUBLIC_KEY_BYTES]) -> DeviceId {
    let digest = Sha256::new().chain_update(DEVICE_ID_DOMAIN).chain_update(public_key).finalize();
    let mut bytes = [0u8; DEVICE_ID_BYTES];
    bytes.copy_from_slice(&digest[..DEVICE_ID_BYTES]);
    DeviceId(bytes)
}

/// Checks an Ed25519 signature made by the holder of `public_key`. Strict verification: rejects
/// weak keys and malleable signatures, so one message has one valid signature per key.
pub fn verify(
    public_key: &[u8; PUBLIC_KEY_BYTES],
    message: &[u8],
    signature: &[u8; SIGNATURE_BYTES],
) -> Result<(), NetError> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| NetError::BadPublicKey)?;
    key.verify_strict(message, &Signature::from_bytes(signature)).map_err(|_| NetError::BadSignature)
}

/// An Ed25519 key pair with its device id and the certificate TLS presents for it.
#[derive(Clone)]
pub struct Identity {
    signing_key: SigningKey,
    device_id: DeviceId,
    /// The certificate and rustls's signing handle for the same key, shared by every TLS config.
    certified: Arc<CertifiedKey>,
}

impl Identity {
    /// Loads this device's identity from `<dir>/identity.key`, or creates one there if the file
    /// does not exist. The file is a PKCS#8 PEM key (readable by `openssl pkey`), created
    /// atomically with mode 0600. A file that other users can access, or that is not a valid key,
    /// is refused with an error that says what to do: the device id must never change silently.
    pub fn load_or_create(dir: &Path) -> Result<Identity, NetError> {
        let path = dir.join(IDENTITY_FILE);
        match std::fs::File::open(&path) {
            Ok(file) => load(&path, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path),
            Err(e) => Err(NetError::Io(with_path(e, &path))),
        }
    }

    /// A fresh identity that lives only in memory (tests, tools).
    pub fn generate() -> Result<Identity, NetError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.try_fill_bytes(seed.as_mut()).map_err(|e| NetError::Randomness(e.to_string()))?;
        Identity::from_seed(&seed)
    }

    /// The identity of a 32-byte Ed25519 secret seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Identity, NetError> {
        Identity::from_signing_key(SigningKey::from_bytes(seed))
    }

    fn from_signing_key(signing_key: SigningKey) -> Result<Identity, NetError> {
        let public_key = signing_key.verifying_key().to_bytes();
        let device_id = device_id_from_public_key(&public_key);
        let pkcs8 = signing_key.to_pkcs8_der().map_err(|e| NetError::Certificate(e.to_string()))?;
        let pkcs8 = PrivatePkcs8KeyDer::from(pkcs8.as_bytes());
        let certificate = self_signed_certificate(&pkcs8, device_id)?;
        let key =
            rustls::crypto::ring::sign::any_eddsa_type(&pkcs8).map_err(|e| NetError::Certificate(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(vec![certificate], key));
        Ok(Identity { signing_key, device_id, certified })
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The Ed25519 public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_BYTES] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// Signs `message` (Ed25519, deterministic).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_BYTES] {
        self.signing_key.sign(message).to_bytes()
    }

    /// The self-signed X.509 certificate (DER) that carries the public key in TLS.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl fmt::Debug for Identity {
    /// Shows the device id only: the secret key must never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("device_id", &self.device_id).finish_non_exhaustive()
    }
}

/// A certificate whose subject names the device, valid from 2000 to 9999: peers check neither
/// names nor dates (they pin the key), so a long validity keeps clock errors from breaking links.
fn self_signed_certificate(
    pkcs8: &PrivatePkcs8KeyDer<'_>,
    device_id: DeviceId,
) -> Result<CertificateDer<'static>, NetError> {
    let error = |e: rcgen::Error| NetError::Certificate(e.to_string());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(pkcs8, &rcgen::PKCS_ED25519).map_err(error)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(error)?;
    let mut name = rcgen::DistinguishedName::new();
    name.push(rcgen::DnType::CommonName, device_id.to_string());
    params.distinguished_name = name;
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
    // A fixed serial keeps the certificate a pure function of the key.
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&device_id.as_bytes()[..8]));
    Ok(params.self_signed(&key_pair).map_err(error)?.der().clone())
}

fn load(path: &Path, mut file: std::fs::File) -> Result<Identity, NetError> {
    let invalid = |reason: &str| NetError::IdentityFile { path: path.to_path_buf(), reason: reason.to_string() };
    let metadata = file.metadata().map_err(|e| NetError::Io(with_path(e, path)))?;
    if !metadata.is_file() {
        return Err(invalid("not a regular file"));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(NetError::IdentityFilePermissions { path: path.to_path_buf(), mode });
        }
    }
    if metadata.len() > IDENTITY_FILE_BYTES_MAX {
        return Err(invalid("too large to be a key"));
    }
    let mut text = Zeroizing::new(String::new());
    // The limit holds even if the file grows between the check and the read.
    Read::by_ref(&mut file).take(IDENTITY_FILE_BYTES_MAX).read_to_string(&mut text).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            invalid("not text")
        } else {
            NetError::Io(with_path(e, path))
        }
    })?;
    // The PKCS#8 document also holds the public key, and decoding checks that it matches the
    // secret: a damaged key is refused rather than silently becoming another device.
    let signing_key =
        SigningKey::from_pkcs8_pem(text.trim()).map_err(|e| invalid(&format!("not a PKCS#8 Ed25519 key: {e}")))?;
    Identity::from_signing_key(signing_key)
}

fn create(dir: &Path, path: &Path) -> Result<Identity, NetError> {
    let identity = Identity::generate()?;
    let pem = identity.signing_key.to_pkcs8_pem(LineEnding::LF).map_err(|e| NetError::Certificate(e.to_string()))?;
    let nonce: u64 = rand::random();
    let temporary = dir.join(format!(".{IDENTITY_FILE}.{}.{nonce:016x}.tmp", std::process::id()));
    let written = write_private(&temporary, pem.as_bytes()).and_then(|()| {
        // A hard link publishes the complete file atomically and, unlike rename, never replaces a
        // key another process created meanwhile: two processes starting on one data dir end up
        // with the same identity.
        match std::fs::hard_link(&temporary, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            // Some file systems have no hard links; rename is still atomic there.
            Err(_) => std::fs::rename(&temporary, path).map(|()| true),
        }
    });
    let _ = std::fs::remove_file(&temporary);
    let created = written.map_err(|e| NetError::Io(with_path(e, path)))?;
    if !created {
        let file = std::fs::File::open(path).map_err(|e| NetError::Io(with_path(e, path)))?;
        return load(path, file);
    }
    sync_dir(dir);
    tracing::info!(device_id = %identity.device_id, path = %path.display(), "created a new device identity");
    Ok(identity)
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Makes the new directory entry durable, so a crash cannot lose a key that was already used.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not sync the data dir after creating the identity");
    }
}

fn with_path(error: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", PathBuf::from(path).display()))
}
