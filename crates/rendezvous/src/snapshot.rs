//! The snapshot file: the registrations, written atomically (temporary file, fsync, rename,
//! fsync of the directory) and read back at start, where the [`Book`] drops what expired and what
//! no longer verifies. It holds exactly the signed registration fields and the observed address
//! of each entry; nothing else the service sees (headers, other clients, counters) is written.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::book::{Book, Entry, Verified};
use crate::{Registration, PROTOCOL_VERSION};

/// The snapshot's file name inside the data dir.
pub const SNAPSHOT_FILE: &str = "registrations.json";
/// Bytes one stored entry may take at most: a registration fits in the 4 KiB body limit, and its
/// observed address is short. Bounds what a start reads.
const ENTRY_BYTES_MAX: u64 = 5 * 1024;

#[derive(Serialize, Deserialize)]
struct Snapshot {
    v: u32,
    registrations: Vec<StoredEntry>,
}

/// One entry as written: the registration as signed, and where it came from.
#[derive(Serialize, Deserialize)]
struct StoredEntry {
    room: String,
    device_id: String,
    public_key: String,
    addrs: Vec<String>,
    ttl_s: u64,
    issued_at_ms: u64,
    signature: String,
    #[serde(default)]
    observed: Option<String>,
}

/// What a start found in the snapshot.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub kept: usize,
    pub expired: usize,
    pub refused: usize,
}

/// Where the snapshot lives in `data_dir`.
pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_FILE)
}

/// Reads the snapshot at `path` into `book`. A missing file is an empty book; a file that is not
/// a snapshot is logged and ignored (the registrations in it would expire within hours anyway,
/// and nodes register again); a file that cannot be read is an error the operator must see.
pub(crate) fn load(path: &Path, book: &mut Book, now_ms: u64, registrations_max: usize) -> std::io::Result<Loaded> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
        Err(e) => return Err(with_path(e, path)),
    };
    let limit = ENTRY_BYTES_MAX.saturating_mul(registrations_max as u64).saturating_add(1024);
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| with_path(e, path))?;
    if bytes.len() as u64 > limit {
        tracing::warn!(path = %path.display(), limit, "the snapshot is larger than the limits allow; starting empty");
        return Ok(Loaded::default());
    }
    let snapshot: Snapshot = match serde_json::from_slice(&bytes) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "the snapshot cannot be read; starting empty");
            return Ok(Loaded::default());
        }
    };
    if snapshot.v != PROTOCOL_VERSION {
        tracing::warn!(path = %path.display(), v = snapshot.v, "the snapshot is of another version; starting empty");
        return Ok(Loaded::default());
    }
    let mut loaded = Loaded::default();
    for stored in snapshot.registrations {
        let observed = stored.observed.filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
        let registration = Registration {
            room: stored.room,
            device_id: stored.device_id,
            public_key: stored.public_key,
            addrs: stored.addrs,
            ttl_s: stored.ttl_s,
            issued_at_ms: stored.issued_at_ms,
            signature: stored.signature,
        };
        let verified = match Verified::new(registration) {
            Ok(verified) => verified,
            Err(e) => {
                loaded.refused += 1;
                tracing::warn!(error = %e, "dropped an entry of the snapshot");
                continue;
            }
        };
        match book.restore(now_ms, verified, observed) {
            Ok(_) => loaded.kept += 1,
            Err(crate::book::BookError::Expired { .. }) => loaded.expired += 1,
            Err(e) => {
                loaded.refused += 1;
                tracing::warn!(error = %e, "dropped an entry of the snapshot");
            }
        }
    }
    Ok(loaded)
}

/// Serializes the entries (called with the book's lock released).
pub(crate) fn encode(entries: Vec<Entry>) -> Vec<u8> {
    let registrations = entries
        .into_iter()
        .map(|entry| {
            let r = entry.registration;
            StoredEntry {
                room: r.room,
                device_id: r.device_id,
                public_key: r.public_key,
                addrs: r.addrs,
                ttl_s: r.ttl_s,
                issued_at_ms: r.issued_at_ms,
                signature: r.signature,
                observed: entry.observed,
            }
        })
        .collect();
    serde_json::to_vec(&Snapshot { v: PROTOCOL_VERSION, registrations }).expect("a snapshot always serializes")
}

/// Replaces the file at `path` with `bytes` atomically: a crash leaves the old snapshot or the
/// new one, never a mix.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temporary = dir.join(format!(".{SNAPSHOT_FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(|e| with_path(e, path))?;
    #[cfg(unix)]
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not sync the data dir after writing the snapshot");
    }
    Ok(())
}

fn with_path(error: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}
