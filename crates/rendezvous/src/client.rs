//! The client nodes use: [`register`] a signed entry, [`lookup`] a room's entries (decoded by
//! [`peers_from_answer`]). The service is not trusted: `lookup` checks every entry's signature
//! against the room it asked for and drops those that fail, so a dishonest or compromised
//! rendezvous can hide devices or replay old entries, but cannot invent a device or change its
//! addresses.
//!
//! Plain `http://` only (HTTP/1.1 over one fresh connection per call, hyper): for TLS, reach the
//! service through a local proxy. Every call has a [`REQUEST_TIMEOUT`] and answers are capped at
//! [`RESPONSE_BYTES_MAX`].

use std::net::IpAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;

use crate::registration::check_room;
use crate::{Peer, Registration, RendezvousError, PROTOCOL_VERSION};

/// The whole of one call (connect, send, receive) must fit in this time.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer accepted: a full room of the largest entries the service admits fits.
pub const RESPONSE_BYTES_MAX: usize = 2 * 1024 * 1024;

/// Registers (or renews) `registration` with the rendezvous at `base_url` (`http://host:port`,
/// optionally with a path prefix). Returns when the service will stop handing it out, in
/// milliseconds since the Unix epoch.
pub async fn register(base_url: &str, registration: &Registration) -> Result<u64, RendezvousError> {
    let target = Target::parse(base_url)?;
    let body = serde_json::to_vec(registration).expect("a registration always serializes");
    let answer = target.call(Method::POST, "/discovery/register", Some(body)).await?;
    #[derive(Deserialize)]
    struct Registered {
        v: u32,
        expires_at_ms: u64,
    }
    let registered: Registered = parse(&answer)?;
    check_answer_version(registered.v)?;
    Ok(registered.expires_at_ms)
}

/// The devices registered in `room` at the rendezvous at `base_url`, each checked here: its
/// signature over this room, its device id against its key, its addresses. Entries that fail are
/// dropped (and logged); of two entries for one device the later-issued one is kept.
pub async fn lookup(base_url: &str, room: &str) -> Result<Vec<Peer>, RendezvousError> {
    check_room(room)?;
    let target = Target::parse(base_url)?;
    let answer = target.call(Method::GET, &format!("/discovery/peers?room={room}"), None).await?;
    peers_from_answer(room, &answer)
}

/// Decodes the body of a `GET /discovery/peers` answer for `room` and keeps the entries that
/// verify, as [`lookup`] does with what the service sends: the service is not trusted, so these
/// bytes are outside input (and fuzzed). Errors: a body that is not a version-1 answer.
pub fn peers_from_answer(room: &str, answer: &[u8]) -> Result<Vec<Peer>, RendezvousError> {
    #[derive(Deserialize)]
    struct Peers {
        v: u32,
        peers: Vec<Value>,
    }
    let listed: Peers = parse(answer)?;
    check_answer_version(listed.v)?;
    Ok(verified_peers(room, listed.peers))
}

/// One listed entry, as the service sends it.
#[derive(Deserialize)]
struct ListedPeer {
    device_id: String,
    public_key: String,
    addrs: Vec<String>,
    #[serde(default)]
    ttl_s: u64,
    issued_at_ms: u64,
    signature: String,
    expires_at_ms: u64,
    #[serde(default)]
    observed: Option<String>,
}

/// Keeps the entries that verify for `room`, one per device.
fn verified_peers(room: &str, listed: Vec<Value>) -> Vec<Peer> {
    let mut peers: Vec<(u64, Peer)> = Vec::new();
    for value in listed {
        let entry: ListedPeer = match serde_json::from_value(value) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "dropped a rendezvous entry of an unknown shape");
                continue;
            }
        };
        let registration = Registration {
            room: room.to_string(),
            device_id: entry.device_id,
            public_key: entry.public_key,
            addrs: entry.addrs,
            ttl_s: entry.ttl_s,
            issued_at_ms: entry.issued_at_ms,
            signature: entry.signature,
        };
        let device_id = match registration.verify() {
            Ok(device_id) => device_id,
            Err(e) => {
                tracing::warn!(device = %crate::registration::shorten(&registration.device_id), error = %e, "dropped a rendezvous entry that does not verify");
                continue;
            }
        };
        // A device that asked for a lifetime signed it: the service may not stretch it.
        let expires_at_ms = match registration.ttl_s {
            0 => entry.expires_at_ms,
            ttl_s => entry.expires_at_ms.min(registration.issued_at_ms.saturating_add(ttl_s.saturating_mul(1000))),
        };
        let observed = entry.observed.filter(|ip| ip.parse::<IpAddr>().is_ok());
        let peer = Peer { device_id, addrs: registration.addrs, observed, expires_at_ms };
        match peers.iter_mut().find(|(_, held)| held.device_id == device_id) {
            Some(held) if held.0 >= registration.issued_at_ms => {}
            Some(held) => *held = (registration.issued_at_ms, peer),
            None => peers.push((registration.issued_at_ms, peer)),
        }
    }
    peers.into_iter().map(|(_, peer)| peer).collect()
}

fn check_answer_version(v: u32) -> Result<(), RendezvousError> {
    if v == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(RendezvousError::BadResponse(format!("protocol version {v}, this client speaks {PROTOCOL_VERSION}")))
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RendezvousError> {
    serde_json::from_slice(bytes).map_err(|e| RendezvousError::BadResponse(e.to_string()))
}

/// Where a base URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    url: String,
    /// Host as it is connected to (IPv6 without brackets).
    host: String,
    port: u16,
    /// The `Host` header: the authority as written.
    authority: String,
    /// Path prefix without a trailing slash (`""` or `/rendezvous`).
    prefix: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, RendezvousError> {
        let bad = |reason: &str| RendezvousError::BadUrl { url: url.to_string(), reason: reason.to_string() };
        let lower = url.to_ascii_lowercase();
        let rest = if lower.starts_with("http://") {
            &url["http://".len()..]
        } else if lower.starts_with("https://") {
            return Err(bad("https is not supported by this client; use http://, or a local proxy that adds TLS"));
        } else {
            return Err(bad("use an http:// URL, e.g. http://rendezvous.example:7790"));
        };
        if rest.contains(['?', '#']) {
            return Err(bad("a base URL has no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || authority.chars().any(|c| c.is_whitespace()) {
            return Err(bad("the URL needs a host (and no user name or spaces)"));
        }
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the path has spaces or control characters"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("an IPv6 host needs its closing ]"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("the part in [] is not an IPv6 address"));
            }
            let port = match after {
                "" => None,
                port => Some(port.strip_prefix(':').ok_or_else(|| bad("expected :PORT after the ]"))?),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            None => 80,
            Some(port) => port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port is not 1-65535"))?,
        };
        if host.is_empty() {
            return Err(bad("the URL needs a host"));
        }
        Ok(Target {
            url: url.to_string(),
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// One request on a fresh connection; a 2xx answer's body, or the service's refusal.
    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>, RendezvousError> {
        let timeout_s = REQUEST_TIMEOUT.as_secs();
        tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body))
            .await
            .map_err(|_| RendezvousError::Timeout { url: self.url.clone(), timeout_s })?
    }

    async fn exchange(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Vec<u8>, RendezvousError> {
        let unreachable = |reason: String| RendezvousError::Unreachable { url: self.url.clone(), reason };
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        // The connection task ends with the exchange: the request asks to close it.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::CONNECTION, "close")
            .header(hyper::header::USER_AGENT, concat!("meshsync-rendezvous/", env!("CARGO_PKG_VERSION")))
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| RendezvousError::BadUrl { url: self.url.clone(), reason: e.to_string() })?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let retry_after_s = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable(e.to_string()))?;
            if let Ok(chunk) = frame.into_data() {
                if bytes.len() + chunk.len() > RESPONSE_BYTES_MAX {
                    return Err(RendezvousError::ResponseTooLarge { limit: RESPONSE_BYTES_MAX });
                }
                bytes.extend_from_slice(&chunk);
            }
        }
        if status.is_success() {
            Ok(bytes)
        } else {
            Err(refusal(status, &bytes, retry_after_s))
        }
    }
}

/// The service's error body, or what can be said without one.
fn refusal(status: StatusCode, body: &[u8], retry_after_s: Option<u64>) -> RendezvousError {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: ErrorDetail,
    }
    #[derive(Deserialize)]
    struct ErrorDetail {
        code: String,
        message: String,
    }
    let (code, message) = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => (body.error.code, body.error.message),
        Err(_) => (
            format!("http_{}", status.as_u16()),
            format!("{} (not a rendezvous error body; is this URL a meshsync rendezvous?)", status),
        ),
    };
    RendezvousError::Refused {
        status: status.as_u16(),
        code: crate::registration::shorten(&code),
        message: crate::registration::shorten(&message),
        retry_after_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let target = Target::parse("http://rdv.example:7790").unwrap();
        assert_eq!((target.host.as_str(), target.port, target.prefix.as_str()), ("rdv.example", 7790, ""));
        let target = Target::parse("HTTP://[::1]:7790/phone-book/").unwrap();
        assert_eq!((target.host.as_str(), target.port, target.prefix.as_str()), ("::1", 7790, "/phone-book"));
        assert_eq!(target.authority, "[::1]:7790");
        assert_eq!(Target::parse("http://10.0.0.1").unwrap().port, 80);
        for (url, needle) in [
            ("https://rdv.example", "https is not supported"),
            ("rdv.example:7790", "http://"),
            ("http://", "host"),
            ("http://user@rdv.example", "user name"),
            ("http://rdv.example:99999", "port"),
            ("http://rdv.example:0", "port"),
            ("http://[::1", "closing"),
            ("http://rdv.example/?x=1", "query"),
        ] {
            let error = Target::parse(url).unwrap_err().to_string();
            assert!(error.contains(needle), "{url}: {error}");
        }
    }

    #[test]
    fn a_refusal_keeps_the_service_code_and_message() {
        let body = br#"{"v":1,"error":{"code":"replay","message":"older"}}"#;
        let error = refusal(StatusCode::CONFLICT, body, None);
        assert_eq!(
            error,
            RendezvousError::Refused {
                status: 409,
                code: "replay".into(),
                message: "older".into(),
                retry_after_s: None
            }
        );
        let error = refusal(StatusCode::BAD_GATEWAY, b"<html>", Some(3)).to_string();
        assert!(error.contains("http_502") && error.contains("is this URL"), "{error}");
    }
}
