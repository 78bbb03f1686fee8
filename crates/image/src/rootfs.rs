//! Single-layer images built from a directory tree on the host.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::digest::HashingWriter;
use crate::manifest::{self, LayerDescription};
use crate::{Image, ImageConfig, ImageError, ImageStore, reference};

pub(crate) fn import(
    store: &ImageStore,
    dir: &Path,
    reference_text: &str,
    config: ImageConfig,
) -> Result<Image, ImageError> {
    let parsed = reference::parse(reference_text)?;
    let meta = std::fs::metadata(dir).map_err(ImageError::io("read rootfs dir", dir))?;
    if !meta.is_dir() {
        return Err(ImageError::Io {
            action: "read rootfs dir",
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let blobs = &store.inner.blobs;
    let pending = blobs.pending("rootfs");
    let file =
        File::create(pending.path()).map_err(ImageError::io("create blob", pending.path()))?;
    let mut builder = tar::Builder::new(HashingWriter::new(BufWriter::new(file)));
    builder.follow_symlinks(false);
    builder
        .append_dir_all("", dir)
        .map_err(ImageError::io("archive rootfs dir", dir))?;
    let writer = builder
        .into_inner()
        .map_err(ImageError::io("write blob", pending.path()))?;
    let (mut buffered, layer_digest, layer_size) = writer.finish();
    buffered
        .flush()
        .map_err(ImageError::io("write blob", pending.path()))?;
    drop(buffered);
    if !blobs.contains(&layer_digest) {
        blobs.commit(pending, &layer_digest)?;
    }
    let layer = store.unpack_stored_layer(&layer_digest)?;

    let config_bytes = config.to_oci_json(std::slice::from_ref(&layer_digest));
    let config_digest = blobs.put_bytes("image config", &config_bytes, None)?;
    let manifest_bytes = manifest::oci_manifest_json(
        &config_digest,
        config_bytes.len() as u64,
        &[LayerDescription {
            digest: layer_digest,
            size: layer_size,
            media_type: manifest::LAYER_TAR.to_string(),
        }],
    );
    let manifest_digest = blobs.put_bytes("image manifest", &manifest_bytes, None)?;
    store.record_image(
        &parsed,
        manifest_digest,
        config,
        vec![layer],
        crate::store::Origin::Imported,
    )
}
