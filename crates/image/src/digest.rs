//! sha256 digests: validation (digests become file names) and hashing while copying.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

use crate::ImageError;

/// Returns the hex part of a `sha256:<64 hex>` digest, refusing anything else so a digest from
/// a manifest can never name a path outside the store.
pub(crate) fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    let hex = digest.strip_prefix("sha256:").filter(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    hex.ok_or_else(|| ImageError::BadImage {
        what: "digest".to_string(),
        detail: format!("{digest:?} is not a sha256 digest"),
    })
}

pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub(crate) fn verify(what: &str, expected: &str, actual: &str) -> Result<(), ImageError> {
    if expected == actual {
        Ok(())
    } else {
        Err(ImageError::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Hashes everything written through it.
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// Returns the inner writer, the `sha256:` digest and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let count = self.inner.write(buf)?;
        self.hasher.update(&buf[..count]);
        self.written += count as u64;
        Ok(count)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_sha256_digests_are_accepted() {
        let good = sha256_digest(b"x");
        assert_eq!(sha256_hex(&good).unwrap().len(), 64);
        for bad in [
            "sha256:../../etc",
            "sha512:00",
            "sha256:ABCDEF",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(sha256_hex(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hashing_writer_matches_direct_digest() {
        let mut writer = HashingWriter::new(Vec::new());
        writer.write_all(b"hello").unwrap();
        let (bytes, digest, count) = writer.finish();
        assert_eq!(bytes, b"hello");
        assert_eq!(count, 5);
        assert_eq!(digest, sha256_digest(b"hello"));
    }
}
