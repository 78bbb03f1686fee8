//! Entry points for the fuzz targets in `fuzz/`: the internal parsers and the layer
//! unpacker, reachable without a store or a registry. Not part of the crate's API.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

use crate::ImageError;

pub use oci_client::manifest::{OciImageIndex, OciImageManifest};

/// Unpacks an uncompressed layer tarball into the existing, empty directory `root`.
pub fn unpack_layer(reader: impl Read, root: &Path) -> Result<(), ImageError> {
    crate::unpack::unpack_layer(reader, root, "fuzz")
}

/// Parses an image reference and returns the normalized form the store keys images by.
pub fn normalized_reference(text: &str) -> Result<String, ImageError> {
    crate::reference::parse(text).map(|parsed| crate::reference::normalized(&parsed))
}

/// The digests a stored manifest or index names, as pruning follows them.
pub fn digests_named_in(document: &Value) -> Vec<String> {
    crate::prune::digests_named_in(document)
}

/// The hex part of a `sha256:` digest, or why it is not one.
pub fn sha256_hex(digest: &str) -> Result<&str, ImageError> {
    crate::digest::sha256_hex(digest)
}

/// Reads an image record as the store does and writes it back as the store would.
pub fn reencode_image_record(bytes: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let record: crate::store::ImageRecord = serde_json::from_slice(bytes)?;
    serde_json::to_vec(&record)
}
