//! The identity file (persistence, permissions, damage), device id derivation and signatures.

use std::os::unix::fs::PermissionsExt;

use meshsync_net::{device_id_from_public_key, verify, DeviceId, Identity, NetError, IDENTITY_FILE};

/// RFC 8032, section 7.1, test 1.
const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

fn hex32(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn the_device_id_persists_across_loads_and_the_file_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let first = Identity::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = Identity::load_or_create(dir.path()).unwrap();
    assert_eq!(first.device_id(), second.device_id());
    assert_eq!(first.public_key(), second.public_key());
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from(IDENTITY_FILE)]);
    // The file is standard PKCS#8 PEM.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "{text}");
}

#[test]
fn two_identities_differ() {
    let a = Identity::generate().unwrap();
    let b = Identity::generate().unwrap();
    assert_ne!(a.device_id(), b.device_id());
}

#[test]
fn damaged_identity_files_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    let original = {
        Identity::load_or_create(dir.path()).unwrap();
        std::fs::read_to_string(&path).unwrap()
    };
    // Flip one character of the key body: the embedded public key no longer matches, or the
    // document no longer decodes; either way it must not load as some other device.
    let body_start = original.find('\n').unwrap() + 1;
    let mut damaged = original.clone().into_bytes();
    damaged[body_start + 30] = if damaged[body_start + 30] == b'A' { b'B' } else { b'A' };
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("text", b"hello\n".to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00, 0x80]),
        ("one flipped character", damaged),
        ("huge", vec![b'A'; 1 << 20]),
    ];
    for (what, contents) in garbage {
        std::fs::write(&path, &contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        match Identity::load_or_create(dir.path()) {
            Err(error @ NetError::IdentityFile { .. }) => {
                let message = error.to_string();
                assert!(message.contains(&*path.to_string_lossy()), "{what}: {message}");
                assert!(message.contains("new device id"), "{what}: {message}");
            }
            other => panic!("{what}: expected an identity file error, got {other:?}"),
        }
        // The damaged file is left for the user to inspect, never replaced.
        assert_eq!(std::fs::read(&path).unwrap(), contents, "{what}");
    }
}

#[test]
fn an_identity_file_open_to_other_users_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let created = Identity::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    match Identity::load_or_create(dir.path()) {
        Err(error @ NetError::IdentityFilePermissions { mode: 0o644, .. }) => {
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        other => panic!("expected a permissions error, got {other:?}"),
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Identity::load_or_create(dir.path()).unwrap().device_id(), created.device_id());
}

#[test]
fn a_missing_data_dir_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(Identity::load_or_create(&missing), Err(NetError::Io(_))));
}

#[test]
fn the_device_id_derivation_is_fixed() {
    // Pinned against an independent SHA-256 of "meshsync-device-v1" || RFC 8032's public key: a
    // change here would change every device's id.
    let identity = Identity::from_seed(&hex32(RFC8032_SEED)).unwrap();
    assert_eq!(identity.public_key(), hex32(RFC8032_PUBLIC));
    let expected = DeviceId([73, 10, 87, 109, 35, 5, 89, 128, 193, 239, 67, 163, 236, 137, 205, 139]);
    assert_eq!(identity.device_id(), expected);
    assert_eq!(device_id_from_public_key(&identity.public_key()), expected);
    // The text form round-trips, so people can compare ids read aloud.
    assert_eq!(expected.to_string().parse::<DeviceId>().unwrap(), expected);
}

#[test]
fn signatures_verify_only_for_their_message_and_key() {
    let alice = Identity::generate().unwrap();
    let bob = Identity::generate().unwrap();
    let signature = alice.sign(b"membership of group g");
    verify(&alice.public_key(), b"membership of group g", &signature).unwrap();
    assert!(matches!(verify(&alice.public_key(), b"membership of group h", &signature), Err(NetError::BadSignature)));
    assert!(matches!(verify(&bob.public_key(), b"membership of group g", &signature), Err(NetError::BadSignature)));
    let mut tampered = signature;
    tampered[10] ^= 1;
    assert!(verify(&alice.public_key(), b"membership of group g", &tampered).is_err());
    // RFC 8032 test 1: the empty message.
    let rfc = Identity::from_seed(&hex32(RFC8032_SEED)).unwrap();
    let expected = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";
    let text: String = rfc.sign(b"").iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(text, expected);
}

#[test]
fn the_certificate_names_the_device() {
    let identity = Identity::generate().unwrap();
    let der = identity.certificate().as_ref().to_vec();
    let id = identity.device_id().to_string();
    // The subject's common name is the device id text, in the DER as a UTF8String or
    // PrintableString.
    assert!(der.windows(id.len()).any(|w| w == id.as_bytes()), "the certificate does not contain {id}");
    let key = identity.public_key();
    assert!(der.windows(32).any(|w| w == key), "the certificate does not carry the public key");
}
