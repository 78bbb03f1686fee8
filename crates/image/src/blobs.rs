//! Content-addressed blob store: `<root>/blobs/sha256/<hex>`, each blob verified before it
//! becomes visible under its digest.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{self, HashingWriter};
use crate::{ImageError, tempname};

#[derive(Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
}

/// A file being written that is deleted unless it is committed.
pub(crate) struct PendingBlob {
    path: PathBuf,
    committed: bool,
}

impl PendingBlob {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    pub(crate) fn open(root: &Path) -> Result<BlobStore, ImageError> {
        let dir = root.join("blobs").join("sha256");
        fs::create_dir_all(&dir).map_err(ImageError::io("create blob dir", &dir))?;
        tempname::remove_abandoned(&dir);
        Ok(BlobStore { dir })
    }

    pub(crate) fn path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self.dir.join(digest::sha256_hex(digest)?))
    }

    pub(crate) fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|path| path.is_file())
    }

    #[cfg(test)]
    pub(crate) fn read(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.path(digest)?;
        fs::read(&path).map_err(ImageError::io("read blob", &path))
    }

    pub(crate) fn size(&self, digest: &str) -> Result<u64, ImageError> {
        let path = self.path(digest)?;
        let meta = fs::metadata(&path).map_err(ImageError::io("stat blob", &path))?;
        Ok(meta.len())
    }

    /// A new temp file in the blob dir (same filesystem, so committing is a rename).
    pub(crate) fn pending(&self, label: &str) -> PendingBlob {
        PendingBlob {
            path: self.dir.join(tempname::unique(label)),
            committed: false,
        }
    }

    /// Moves a fully written and verified pending blob under its digest.
    pub(crate) fn commit(
        &self,
        mut pending: PendingBlob,
        digest: &str,
    ) -> Result<PathBuf, ImageError> {
        let target = self.path(digest)?;
        fs::rename(&pending.path, &target).map_err(ImageError::io("store blob", &target))?;
        pending.committed = true;
        Ok(target)
    }

    /// Stores `bytes`, checking them against `expected` when given. Returns the digest.
    pub(crate) fn put_bytes(
        &self,
        what: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, ImageError> {
        let (digest, _) = self.put_reader(what, bytes, expected)?;
        Ok(digest)
    }

    /// Streams `reader` into the store, checking against `expected` when given.
    /// Returns the digest and size.
    pub(crate) fn put_reader(
        &self,
        what: &str,
        mut reader: impl Read,
        expected: Option<&str>,
    ) -> Result<(String, u64), ImageError> {
        if let Some(expected) = expected {
            digest::sha256_hex(expected)?;
        }
        let pending = self.pending("blob");
        let file =
            File::create(pending.path()).map_err(ImageError::io("create blob", pending.path()))?;
        let mut writer = HashingWriter::new(io::BufWriter::new(file));
        io::copy(&mut reader, &mut writer).map_err(ImageError::io("write blob", pending.path()))?;
        writer
            .flush()
            .map_err(ImageError::io("write blob", pending.path()))?;
        let (_, actual, size) = writer.finish();
        if let Some(expected) = expected {
            digest::verify(what, expected, &actual)?;
        }
        if self.contains(&actual) {
            return Ok((actual, size));
        }
        self.commit(pending, &actual)?;
        Ok((actual, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_verified_and_stored_by_digest() {
        let root = tempfile::tempdir().unwrap();
        let store = BlobStore::open(root.path()).unwrap();
        let digest = store.put_bytes("test blob", b"content", None).unwrap();
        assert_eq!(digest, digest::sha256_digest(b"content"));
        assert_eq!(store.read(&digest).unwrap(), b"content");

        let wrong = digest::sha256_digest(b"other");
        let err = store
            .put_bytes("test blob", b"content2", Some(&wrong))
            .unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
        assert!(!store.contains(&wrong));
        let leftovers: Vec<_> = fs::read_dir(root.path().join("blobs/sha256"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 1, "temp file left behind");
    }
}
