//! OCI image manifests the store writes for images it builds or imports without one.

use serde_json::json;

pub(crate) const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub(crate) struct LayerDescription {
    pub(crate) digest: String,
    pub(crate) size: u64,
    pub(crate) media_type: String,
}

pub(crate) fn oci_manifest_json(
    config_digest: &str,
    config_size: u64,
    layers: &[LayerDescription],
) -> Vec<u8> {
    let layers: Vec<_> = layers
        .iter()
        .map(|layer| {
            json!({ "mediaType": layer.media_type, "digest": layer.digest, "size": layer.size })
        })
        .collect();
    let document = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": CONFIG, "digest": config_digest, "size": config_size },
        "layers": layers,
    });
    serde_json::to_vec(&document).unwrap_or_default()
}
