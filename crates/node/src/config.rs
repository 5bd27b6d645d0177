//! The node's settings: defaults for everything, a documented TOML file, validation with
//! messages that say what to fix. Flags from the command line override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Durability, NodeError};

/// Default peer (sync) listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7710";
/// Default local API address.
pub const DEFAULT_API: &str = "127.0.0.1:7711";
/// Default UDP port of the discovery beacon.
pub const DEFAULT_BEACON_PORT: u16 = 7712;
/// Name of the config file inside the data dir, used when `--config` is not given.
pub const CONFIG_FILE: &str = "meshsync.toml";
/// Longest device name, in bytes.
pub const NAME_BYTES_MAX: usize = 64;

/// Every setting of a node. Each field has a default; see `docs/config.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Human name of this device, shown to peers and in the dashboard.
    pub name: String,
    /// Address peers connect to.
    pub listen: SocketAddr,
    /// Address of the local HTTP API and dashboard (loopback unless you mean it).
    pub api: SocketAddr,
    /// Static peers to dial (`host:port`).
    pub peers: Vec<String>,
    /// Advertise and browse with mDNS.
    pub mdns: bool,
    /// Send and listen to the UDP broadcast beacon (for networks that drop multicast).
    pub beacon: bool,
    /// UDP port of the broadcast beacon.
    pub beacon_port: u16,
    /// Rendezvous (phone book) URLs.
    pub rendezvous: Vec<String>,
    /// `process` (survive a crash of the process) or `power` (survive power loss).
    pub durability: DurabilitySetting,
    /// Log level or filter (`info`, `debug`, `meshsync=trace`...).
    pub log: String,
    /// Interval between heartbeats on a peer link, in ms.
    pub heartbeat_interval_ms: u64,
    /// Largest accepted skew of a remote clock ahead of ours, in ms.
    pub clock_drift_ms_max: u64,
    /// Largest accepted HTTP request body, in bytes.
    pub api_body_bytes_max: usize,
    /// Extra `Host` names the API accepts (besides loopback names and its own address).
    pub api_allowed_hosts: Vec<String>,
    /// Extra `Origin`s the API accepts (besides its own).
    pub api_allowed_origins: Vec<String>,
}

/// The durability setting as written in the config file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// WAL with `synchronous=NORMAL`.
    #[default]
    Process,
    /// `synchronous=FULL`.
    Power,
}

impl From<DurabilitySetting> for Durability {
    fn from(d: DurabilitySetting) -> Durability {
        match d {
            DurabilitySetting::Process => Durability::Process,
            DurabilitySetting::Power => Durability::Power,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            name: default_name(),
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            api: DEFAULT_API.parse().expect("valid default"),
            peers: Vec::new(),
            mdns: true,
            beacon: true,
            beacon_port: DEFAULT_BEACON_PORT,
            rendezvous: Vec::new(),
            durability: DurabilitySetting::Process,
            log: "info".into(),
            heartbeat_interval_ms: 2_000,
            clock_drift_ms_max: meshsync_core::CLOCK_DRIFT_MS_MAX_DEFAULT,
            api_body_bytes_max: 2 << 20,
            api_allowed_hosts: Vec::new(),
            api_allowed_origins: Vec::new(),
        }
    }
}

/// The machine's host name, or "meshsync".
pub fn default_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= NAME_BYTES_MAX)
        .unwrap_or_else(|| "meshsync".into())
}

impl Config {
    /// Parses TOML text and validates it.
    pub fn from_toml(text: &str) -> Result<Config, NodeError> {
        let config: Config =
            toml::from_str(text).map_err(|e| NodeError::Invalid(format!("config: {}", e.to_string().trim())))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a config file; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<Config, NodeError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml(&text).map_err(|e| NodeError::Invalid(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(NodeError::Invalid(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// The TOML text of this config.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config always serializes")
    }

    /// Writes the config file atomically.
    pub fn save(&self, path: &Path) -> Result<(), NodeError> {
        let tmp = path.with_extension("toml.tmp");
        let io = |e: std::io::Error| NodeError::DataDir { path: path.to_path_buf(), reason: e.to_string() };
        std::fs::write(&tmp, self.to_toml()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Checks every setting; the error names the setting and what is allowed.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |what: String| Err(NodeError::Invalid(what));
        if self.name.trim().is_empty() || self.name.len() > NAME_BYTES_MAX || self.name.chars().any(char::is_control) {
            return bad(format!("name: use 1-{NAME_BYTES_MAX} bytes without control characters"));
        }
        if self.peers.len() > 256 {
            return bad("peers: at most 256 static peers".into());
        }
        for peer in &self.peers {
            check_peer_addr(peer)?;
        }
        if self.rendezvous.len() > 16 {
            return bad("rendezvous: at most 16 URLs".into());
        }
        for url in &self.rendezvous {
            if url.starts_with("https://") {
                return bad(format!(
                    "rendezvous: {url:?}: the client speaks http:// only (registrations are signed and \
                     lookups verified, so plain http shows addresses but cannot forge them; docs/rendezvous.md)"
                ));
            }
            if !url.starts_with("http://") || url.len() > 512 {
                return bad(format!("rendezvous: {url:?} is not an http:// URL"));
            }
        }
        if self.beacon_port == 0 {
            return bad("beacon_port: use a port from 1 to 65535".into());
        }
        if !(100..=600_000).contains(&self.heartbeat_interval_ms) {
            return bad("heartbeat_interval_ms: use 100 to 600000".into());
        }
        if self.clock_drift_ms_max < 1_000 {
            return bad("clock_drift_ms_max: use at least 1000".into());
        }
        if !(1024..=(256 << 20)).contains(&self.api_body_bytes_max) {
            return bad("api_body_bytes_max: use 1024 to 268435456".into());
        }
        if self.log.is_empty() || self.log.len() > 256 {
            return bad("log: a level (error, warn, info, debug, trace) or a filter".into());
        }
        for host in self.api_allowed_hosts.iter().chain(&self.api_allowed_origins) {
            if host.is_empty() || host.len() > 256 || host.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return bad(format!("api_allowed_hosts/api_allowed_origins: {host:?} is not a host name or origin"));
            }
        }
        Ok(())
    }
}

/// Checks a static peer address (`host:port`).
pub fn check_peer_addr(peer: &str) -> Result<(), NodeError> {
    let ok = peer.len() <= 261
        && peer.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && !host.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/')
        });
    if ok {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!("peer {peer:?}: use host:port, for example 192.168.1.20:7710")))
    }
}

/// The platform data dir for meshsync (`$XDG_DATA_HOME/meshsync` or `~/.local/share/meshsync`).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("meshsync");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/meshsync"),
        None => PathBuf::from("meshsync-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(Config::from_toml(&config.to_toml()).unwrap(), config);
        assert_eq!(Config::from_toml("").unwrap(), config);
    }

    #[test]
    fn bad_files_say_what_to_fix() {
        for (text, needle) in [
            ("name = \"\"", "name"),
            ("peers = [\"nohost\"]", "peer"),
            ("listen = \"x\"", "listen"),
            ("colour = 1", "unknown field"),
            ("durability = \"sometimes\"", "durability"),
            ("heartbeat_interval_ms = 1", "heartbeat"),
            ("rendezvous = [\"ftp://x\"]", "rendezvous"),
            ("peers = [\"ho\\u0001st:7710\"]", "peer"),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
