//! Device ids: 16 bytes, shown as 26 base32 characters plus a Luhn mod 32 check character,
//! in three hyphenated groups of nine (`MFRGG2LTM-NZXXE3DFO-RSXA5LTMA`), like Syncthing's ids.
//! Derivation from a public key lives with the identity code; here is only the value type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Bytes in a device id.
pub const DEVICE_ID_BYTES: usize = 16;
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const BODY_CHARS: usize = 26;
const GROUP_CHARS: usize = 9;

/// The identity of one device: the first 16 bytes of a hash of its public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; DEVICE_ID_BYTES]);

/// Why a device id string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceIdError {
    /// Wrong number of characters once hyphens and spaces are removed.
    #[error("a device id has 27 characters (without hyphens), this one has {len}")]
    Length {
        /// Characters found.
        len: usize,
    },
    /// A character outside the base32 alphabet.
    #[error("a device id uses only A-Z and 2-7, found {found:?}")]
    Character {
        /// The offending character.
        found: char,
    },
    /// The check character does not match: most likely a typo.
    #[error("the device id's check character does not match; check for a typo")]
    Check,
}

impl DeviceId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; DEVICE_ID_BYTES] {
        &self.0
    }

    /// A short form for logs: the first group.
    pub fn short(&self) -> String {
        self.to_string()[..GROUP_CHARS].to_string()
    }
}

fn base32_body(bytes: &[u8; DEVICE_ID_BYTES]) -> [u8; BODY_CHARS] {
    let mut out = [0u8; BODY_CHARS];
    let mut buffer: u32 = 0;
    let mut bits = 0;
    let mut index = 0;
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out[index] = ALPHABET[((buffer >> bits) & 31) as usize];
            index += 1;
        }
    }
    if bits > 0 {
        out[index] = ALPHABET[((buffer << (5 - bits)) & 31) as usize];
        index += 1;
    }
    debug_assert_eq!(index, BODY_CHARS);
    out
}

fn digit(c: u8) -> Option<u32> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u32)
}

/// Luhn mod 32 check character over base32 characters.
fn luhn32(chars: &[u8]) -> u8 {
    let mut factor = 1;
    let mut sum = 0;
    for &c in chars {
        let code = digit(c).expect("caller passes base32 characters") * factor;
        factor = if factor == 2 { 1 } else { 2 };
        sum += code / 32 + code % 32;
    }
    ALPHABET[((32 - sum % 32) % 32) as usize]
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = base32_body(&self.0);
        let mut all = [0u8; BODY_CHARS + 1];
        all[..BODY_CHARS].copy_from_slice(&body);
        all[BODY_CHARS] = luhn32(&body);
        for (i, group) in all.chunks(GROUP_CHARS).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(group).expect("base32 is ASCII"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.short())
    }
}

impl FromStr for DeviceId {
    type Err = DeviceIdError;

    fn from_str(s: &str) -> Result<DeviceId, DeviceIdError> {
        let chars: Vec<u8> = s.bytes().filter(|b| *b != b'-' && *b != b' ').map(|b| b.to_ascii_uppercase()).collect();
        if chars.len() != BODY_CHARS + 1 {
            return Err(DeviceIdError::Length { len: chars.len() });
        }
        if let Some(&bad) = chars.iter().find(|c| digit(**c).is_none()) {
            return Err(DeviceIdError::Character { found: bad as char });
        }
        let (body, check) = chars.split_at(BODY_CHARS);
        if luhn32(body) != check[0] {
            return Err(DeviceIdError::Check);
        }
        let mut bytes = [0u8; DEVICE_ID_BYTES];
        let mut buffer: u32 = 0;
        let mut bits = 0;
        let mut index = 0;
        for &c in body {
            buffer = (buffer << 5) | digit(c).expect("checked above");
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[index] = (buffer >> bits) as u8;
                index += 1;
            }
        }
        // The last character carries 2 bits beyond the 16 bytes; they must be zero, so that
        // every id has exactly one spelling.
        if buffer & ((1 << bits) - 1) != 0 {
            return Err(DeviceIdError::Check);
        }
        Ok(DeviceId(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn display_parses_back(bytes in any::<[u8; 16]>()) {
            let id = DeviceId(bytes);
            let text = id.to_string();
            prop_assert_eq!(text.len(), 29);
            prop_assert_eq!(text.parse::<DeviceId>().unwrap(), id);
            prop_assert_eq!(text.to_lowercase().replace('-', "").parse::<DeviceId>().unwrap(), id);
        }

        #[test]
        fn a_single_typo_is_caught(bytes in any::<[u8; 16]>(), position in 0usize..26, shift in 1u8..32) {
            let text: Vec<u8> = DeviceId(bytes).to_string().replace('-', "").into_bytes();
            let mut typo = text.clone();
            let d = digit(typo[position]).unwrap() as u8;
            typo[position] = ALPHABET[((d + shift) % 32) as usize];
            let parsed = String::from_utf8(typo).unwrap().parse::<DeviceId>();
            prop_assert!(parsed.is_err());
        }
    }

    #[test]
    fn bad_strings_say_what_is_wrong() {
        assert_eq!("ABC".parse::<DeviceId>(), Err(DeviceIdError::Length { len: 3 }));
        let bad = "AAAAAAAAA-AAAAAAAAA-AAAAAAAA1";
        assert_eq!(bad.parse::<DeviceId>(), Err(DeviceIdError::Character { found: '1' }));
    }
}
