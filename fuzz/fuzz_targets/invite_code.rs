//! Fuzzes `meshsync_node::group::parse_invite`, which reads an invite code a person pasted or
//! scanned (`meshsync run --join CODE`): prefix, base32, postcard, limits. It must refuse any
//! text without panicking. Only the call is checked, not what a code decodes to, so the target
//! keeps working while the invite format evolves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meshsync_node::group::parse_invite;

fuzz_target!(|data: &[u8]| {
    let code = String::from_utf8_lossy(data);
    let _ = parse_invite(&code);
    // Most random text fails the prefix check: also try the body of a code, with the prefix.
    let _ = parse_invite(&format!("MSI2-{code}"));
});
