//! OCI images: pull from registries, import archives, content store and shared layer store.
//!
//! Layout under the store root:
//! - `blobs/sha256/<hex>`: every blob (manifests, configs, layer tarballs), verified by digest.
//! - `layers/<hex>/`: each layer unpacked once, keyed by its blob digest, whiteouts in
//!   overlayfs form, ready to be used as a `lowerdir`.
//! - `images/<hash of reference>.json`: reference → manifest digest, config and layers.

mod archive;
mod blobs;
mod config;
mod credentials_file;
mod digest;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod inflight;
mod layer_fetch;
mod layers;
mod manifest;
mod model;
mod peer;
mod prune;
mod reference;
mod registry;
mod rootfs;
mod store;
mod tempname;
#[cfg(test)]
mod testutil;
mod unpack;

pub use config::ImageConfig;
pub use credentials_file::{
    default_credentials_path, normalize_registry, parse_credentials, read_credentials_file,
    remove_login, write_login,
};
pub use error::ImageError;
pub use model::{Image, PullOptions, PullProgress, RegistryCredential, RegistrySecret};
pub use peer::{BlobSource, BlobStream};
pub use prune::PruneReport;
pub use registry::install_tls_provider;
pub use store::ImageStore;
