//! Fuzzes the core's JSON value decoders: `Value::from_json_checked` over what `serde_json`
//! parses (every record body of the HTTP API goes through it), and the depth-limited
//! `Deserialize` of `Value` through postcard (values inside a peer's changes) and through JSON.
//! Checked: what decodes survives a round trip through each encoding, and the total order is
//! reflexive and antisymmetric between values decoded from the same bytes.

#![no_main]

use std::cmp::Ordering;

use libfuzzer_sys::fuzz_target;
use meshsync_core::Value;

fn round_trips(value: &Value) {
    let bytes = postcard::to_stdvec(value).expect("encoding to a Vec cannot fail");
    assert_eq!(postcard::from_bytes::<Value>(&bytes).as_ref(), Ok(value), "postcard round trip");
    if value.is_finite() {
        // Non-finite numbers have no JSON form; peers' changes with them are refused by `wire`.
        assert_eq!(Value::from_json(&value.to_json()).as_ref(), Ok(value), "JSON round trip");
    }
    assert_eq!(value.cmp(value), Ordering::Equal);
}

fuzz_target!(|data: &[u8]| {
    let mut decoded = Vec::new();
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(value) = Value::from_json_checked(&json) {
            assert!(value.is_finite(), "from_json_checked let a non-finite number through");
            decoded.push(value);
        }
    }
    if let Ok(value) = postcard::from_bytes::<Value>(data) {
        decoded.push(value);
    }
    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        decoded.push(value);
    }
    for value in &decoded {
        round_trips(value);
    }
    for pair in decoded.windows(2) {
        assert_eq!(pair[0].cmp(&pair[1]), pair[1].cmp(&pair[0]).reverse(), "the order is not antisymmetric");
    }
});
