//! Generated ids: events appended without an id, and ephemeral messages.
//! (The device's identity, its Ed25519 key, lives in `meshsync-net`.)

use meshsync_core::DeviceId;
use rand::RngCore;

/// A fresh, sortable event id: milliseconds, the device's short id and randomness.
pub(crate) fn event_id(device: DeviceId) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut random = [0u8; 4];
    rand::rng().fill_bytes(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{ms:013}-{}-{random}", device.short().to_lowercase())
}

/// A random id for an ephemeral message, for de-duplication while it floods the mesh.
pub(crate) fn message_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    id
}
