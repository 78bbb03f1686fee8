//! The image store's errors, one variant per way a pull, import or unpack
//! can fail, so callers can tell the image's fault from the host's.

use std::path::PathBuf;

/// Everything that can go wrong while resolving, fetching, verifying or unpacking an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },

    #[error("image {reference} not found: {detail}")]
    NotFound { reference: String, detail: String },

    #[error("registry {registry} refused the credentials for {reference}: {detail}")]
    Auth {
        registry: String,
        reference: String,
        detail: String,
    },

    #[error("registry {registry} unreachable: {detail}")]
    Unreachable { registry: String, detail: String },

    #[error("registry error while pulling {reference}: {detail}")]
    Registry { reference: String, detail: String },

    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("unsafe layer {layer}: entry {path:?} rejected: {reason}")]
    UnsafeLayer {
        layer: String,
        path: String,
        reason: String,
    },

    #[error("malformed layer {layer}: {detail}")]
    BadLayer { layer: String, detail: String },

    #[error("invalid image {what}: {detail}")]
    BadImage { what: String, detail: String },

    #[error("invalid archive {path}: {detail}")]
    BadArchive { path: PathBuf, detail: String },

    #[error("invalid registry credentials file {path}: {detail}")]
    BadCredentials { path: PathBuf, detail: String },

    #[error("{action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io {
            action,
            path,
            source,
        }
    }
}
