//! The sync session between two nodes, sans-IO in the manner of quinn-proto: it performs no
//! I/O and never reads the clock. Frames and time go in (`handle_frame(now, bytes)`,
//! `handle_timeout(now)`); frames to send, work for the store and events come out by polling
//! (`poll_transmit`, `poll_want`, `poll_event`). The driver (real sockets in `node`, a simulated
//! network in tests) moves bytes and calls the store.
//!
//! # The protocol in one paragraph
//! Both sides send `Hello` (device, group, membership proof bound to the TLS session, version
//! vector). Each then streams to the other every change above the other's vector, in batches of
//! bounded size, at most `window` unacknowledged at a time (backpressure). The receiver applies a
//! batch durably, raises its vector to the batch's `advance` dots and acks; a link cut half way
//! resumes from the receiver's vector at the next `Hello`. After the first batch marked
//! `caught_up`, new local and relayed changes stream the same way. Changes received from the peer
//! are never sent back to it. Pings every `heartbeat_interval_ms`; a peer silent for
//! `dead_after_ms` is dropped.

mod session;

pub use session::{Admission, Page, PeerInfo, Session, SessionConfig, SessionError, SessionEvent, Want};
