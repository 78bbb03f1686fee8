//! Volume and snapshot ids become file names, so only a safe alphabet passes.

use crate::error::VolumeError;

pub(crate) const MAX_LEN: usize = 64;

pub(crate) fn is_valid(id: &str) -> bool {
    (1..=MAX_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `Ok` for 1 to 64 of `[a-zA-Z0-9_]`, else `InvalidId`.
pub(crate) fn validate(id: &str) -> Result<(), VolumeError> {
    if is_valid(id) {
        Ok(())
    } else {
        Err(VolumeError::InvalidId { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_and_length() {
        assert!(is_valid("vol_0123456789abcdefABCDEF"));
        assert!(is_valid(&"a".repeat(64)));
        for bad in [
            "",
            "a.b",
            "../x",
            "a/b",
            "a-b",
            "a b",
            "é",
            ".tmp",
            &"a".repeat(65),
        ] {
            assert!(!is_valid(bad), "{bad:?} passed");
        }
    }
}
