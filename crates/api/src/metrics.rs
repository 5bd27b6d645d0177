//! Prometheus metrics of the API and the node: requests by route, method and status, request
//! latency by route, requests refused by the guard, open event streams, and gauges read from the
//! node when scraped (records, conflicts, uptime, and peers while the mesh runs). Route labels are
//! route templates, never raw paths, so the number of series stays bounded whatever clients send.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::ApiState;

/// Upper bounds of the latency buckets, in seconds: 50 µs to 5 s.
const LATENCY_BUCKETS_S: [f64; 14] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_S)
}

/// The registry and the metrics the API updates.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    rejected: Family<ReasonLabels, Counter>,
    event_streams: Gauge,
    records: Gauge,
    conflicts: Gauge,
    uptime_s: Gauge<f64, AtomicU64>,
    peers: Arc<Mutex<Option<PeerCounts>>>,
}

/// Peers of the mesh as last read, for the scrape in progress.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerCounts {
    pub connected: u64,
    pub known: u64,
}

/// `peers_connected` and `peers_known`, present only while the node runs a mesh: a node without
/// one has no peers to count, and a gauge stuck at 0 would look like a mesh that lost them all.
#[derive(Debug)]
struct PeerGauges(Arc<Mutex<Option<PeerCounts>>>);

impl Collector for PeerGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(counts) = *self.0.lock().expect("lock poisoned") else { return Ok(()) };
        for (name, help, value) in [
            ("peers_connected", "Peers with an open sync session", counts.connected),
            ("peers_known", "Peers the mesh knows (connected or not)", counts.known),
        ] {
            let gauge = ConstGauge::new(value as i64);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("meshsync");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let rejected = Family::<ReasonLabels, Counter>::default();
        let event_streams = Gauge::default();
        let records = Gauge::default();
        let conflicts = Gauge::default();
        let uptime_s = Gauge::<f64, AtomicU64>::default();
        registry.register("http_requests", "HTTP requests answered, by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer an HTTP request, by route", latency.clone());
        registry.register(
            "http_rejected",
            "Requests refused before routing, by reason (host, origin, token)",
            rejected.clone(),
        );
        registry.register("event_subscribers", "Open event streams (WebSocket and SSE)", event_streams.clone());
        registry.register("records", "Live application records", records.clone());
        registry.register("conflicts", "Unresolved conflicts", conflicts.clone());
        registry.register("uptime_seconds", "Time since the node opened", uptime_s.clone());
        let peers = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(PeerGauges(peers.clone())));
        Metrics { registry, requests, latency, rejected, event_streams, records, conflicts, uptime_s, peers }
    }

    pub(crate) fn rejected(&self, reason: &'static str) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Counts an open event stream until the returned guard drops.
    pub(crate) fn stream_opened(&self) -> StreamGauge {
        self.event_streams.inc();
        StreamGauge(self.event_streams.clone())
    }

    /// The exposition text, after setting the gauges read from the node (`peers`: `None`
    /// without a mesh).
    pub(crate) fn render(&self, records: u64, conflicts: u64, uptime_s: f64, peers: Option<PeerCounts>) -> String {
        *self.peers.lock().expect("lock poisoned") = peers;
        self.records.set(records as i64);
        self.conflicts.set(conflicts as i64);
        self.uptime_s.set(uptime_s);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        text
    }
}

/// Decrements the open-streams gauge when a stream ends.
pub(crate) struct StreamGauge(Gauge);

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        // Clients can invent methods; one label for all keeps the series bounded.
        _ => "OTHER",
    }
}

/// Route middleware: counts the request and times it.
pub(crate) async fn track(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let metrics = &state.shared.metrics;
    metrics.latency.get_or_create(&RouteLabels { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    metrics.requests.get_or_create(&RequestLabels { route, method, status: response.status().as_u16() }).inc();
    response
}
