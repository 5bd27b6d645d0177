//! Fuzzes `meshsync_node::discovery::beacon::decode`, which reads every UDP packet that arrives
//! on the beacon port from anyone on the network. A packet that decodes must survive a round
//! trip through `encode`, and what we encode must fit in a packet we accept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshsync_node::discovery::beacon::{decode, encode, BEACON_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let Ok(beacon) = decode(data) else { return };
    let encoded = encode(&beacon);
    assert!(encoded.len() <= BEACON_BYTES_MAX, "an encoded beacon of {} bytes", encoded.len());
    assert_eq!(decode(&encoded), Ok(beacon), "a decoded beacon does not survive a round trip");
});
