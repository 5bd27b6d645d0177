//! This device's identity in its data dir, and generated event ids.
//! The device id is random for now; it becomes a hash of the device's public key when nodes
//! authenticate each other.

use std::io::Write;
use std::path::Path;

use meshsync_core::DeviceId;
use rand::RngCore;

use crate::NodeError;

const DEVICE_FILE: &str = "device-id";

/// Reads the device id from the data dir, or creates one (written atomically, mode 0600).
pub(crate) fn load_or_create(dir: &Path) -> Result<DeviceId, NodeError> {
    let path = dir.join(DEVICE_FILE);
    let err = |reason: String| NodeError::DataDir { path: path.clone(), reason };
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|e| err(format!("unreadable device id: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 16];
            rand::rng().fill_bytes(&mut bytes);
            let id = DeviceId(bytes);
            let tmp = dir.join(format!("{DEVICE_FILE}.tmp"));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp).map_err(|e| err(e.to_string()))?;
            writeln!(file, "{id}").and_then(|_| file.sync_all()).map_err(|e| err(e.to_string()))?;
            std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
            Ok(id)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// A fresh, sortable event id: milliseconds, the device's short id and randomness.
pub(crate) fn event_id(device: DeviceId) -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let mut random = [0u8; 4];
    rand::rng().fill_bytes(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{ms:013}-{}-{random}", device.short().to_lowercase())
}
