//! Public data types of the image store.

use std::path::PathBuf;

use crate::ImageConfig;

/// How to reach registries during a pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `host:port` of registries that may be spoken to over plain http.
    pub insecure_registries: Vec<String>,
    /// Credentials per registry; registries without one are accessed anonymously.
    pub credentials: Vec<RegistryCredential>,
}

#[derive(Clone)]
pub struct RegistryCredential {
    /// `host[:port]` as it appears in image references, e.g. "ghcr.io" or "127.0.0.1:5000".
    pub registry: String,
    pub secret: RegistrySecret,
}

#[derive(Clone)]
pub enum RegistrySecret {
    Basic { username: String, password: String },
    Bearer { token: String },
}

/// Never prints the secret itself.
impl std::fmt::Debug for RegistrySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistrySecret::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .finish_non_exhaustive(),
            RegistrySecret::Bearer { .. } => f.debug_struct("Bearer").finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.secret {
            RegistrySecret::Basic { .. } => "basic",
            RegistrySecret::Bearer { .. } => "bearer",
        };
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("secret", &kind)
            .finish()
    }
}

/// Progress of a pull, reported as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    Resolved {
        digest: String,
        layers: usize,
        total_bytes: u64,
    },
    LayerStarted {
        digest: String,
        size: u64,
    },
    LayerBytes {
        digest: String,
        downloaded: u64,
        size: u64,
    },
    LayerDone {
        digest: String,
    },
    /// The layer was already unpacked (or its blob already stored); nothing was downloaded.
    LayerCached {
        digest: String,
    },
    Done,
}

/// An image whose layers are unpacked and ready to mount.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Normalized reference, e.g. "docker.io/library/busybox:latest".
    pub reference: String,
    pub image_ref: midge_types::ImageRef,
    pub config: ImageConfig,
    /// Unpacked layer dirs, bottom first: overlayfs wants them reversed in `lowerdir=`.
    pub layers: Vec<PathBuf>,
    /// Sum of the layer blob sizes.
    pub size_bytes: u64,
    /// Pulled with credentials: the store's copy is no proof that another
    /// caller may pull it (see [`crate::ImageStore::check_access`]).
    pub pulled_with_credentials: bool,
}
