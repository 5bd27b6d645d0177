//! Validation of collection names, field names and record ids: what they may contain and how
//! long they may be. Names starting with `_` are reserved for meshsync's own use.

/// Longest collection name, in bytes.
pub const COLLECTION_NAME_BYTES_MAX: usize = 64;
/// Longest field name, in bytes.
pub const FIELD_NAME_BYTES_MAX: usize = 128;
/// Longest record id, in bytes.
pub const RECORD_ID_BYTES_MAX: usize = 256;
/// Most fields one write may set.
pub const WRITE_FIELDS_MAX: usize = 256;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Collection names: 1-64 of `A-Z a-z 0-9 _ - .`, starting with a letter or digit.
    #[error(
        "collection name {0:?} is invalid: use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
    )]
    Collection(String),
    /// Field names: 1-128 bytes, no control characters, not starting with `_`.
    #[error("field name {0:?} is invalid: use 1-128 characters without control characters, not starting with '_'")]
    Field(String),
    /// Record ids: 1-256 bytes, no control characters.
    #[error("record id {0:?} is invalid: use 1-256 bytes without control characters")]
    RecordId(String),
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Checks a collection name chosen by an application.
pub fn check_collection(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= COLLECTION_NAME_BYTES_MAX
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Collection(clip(name)))
    }
}

/// Checks a collection name that may also be one of meshsync's own (`_schemas`).
pub fn check_collection_or_system(name: &str) -> Result<(), NameError> {
    match name.strip_prefix('_') {
        Some(rest) => check_collection(rest).map_err(|_| NameError::Collection(clip(name))),
        None => check_collection(name),
    }
}

/// Checks a field name chosen by an application.
pub fn check_field(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= FIELD_NAME_BYTES_MAX
        && !name.starts_with('_')
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(NameError::Field(clip(name)))
    }
}

/// Checks a record id.
pub fn check_record_id(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty() && id.len() <= RECORD_ID_BYTES_MAX && !id.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(NameError::RecordId(clip(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_collection("products").is_ok());
        assert!(check_collection("v1.sales-2026_x").is_ok());
        for bad in ["", "_x", "a b", "a/b", &"x".repeat(65), "é"] {
            assert!(check_collection(bad).is_err(), "{bad:?}");
        }
        assert!(check_collection_or_system("_schemas").is_ok());
        assert!(check_field("stock").is_ok());
        assert!(check_field("prix unitaire €").is_ok());
        for bad in ["", "_id", "a\nb", &"x".repeat(129)] {
            assert!(check_field(bad).is_err(), "{bad:?}");
        }
        assert!(check_record_id("tea").is_ok());
        assert!(check_record_id("a/b c").is_ok());
        assert!(check_record_id("").is_err());
        assert!(check_record_id("a\0").is_err());
    }
}
