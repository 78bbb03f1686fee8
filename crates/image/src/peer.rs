//! Images copied from another host's store by digest: for images that came
//! from an archive (no registry holds them) and for hosts that cannot reach
//! the image's registry. Every blob is checked against the digest that
//! names it, so a source is trusted for nothing but availability.

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use oci_client::manifest::OciImageManifest;

use crate::store::LayerRecord;
use crate::{
    Image, ImageConfig, ImageError, ImageStore, PullProgress, digest, layer_fetch, reference,
};

/// The bytes of one blob, in chunks as they arrive.
pub type BlobStream = BoxStream<'static, std::io::Result<Vec<u8>>>;

/// Manifests and configs are small; a source that sends more is refused.
const MAX_DOCUMENT_BYTES: usize = 4 << 20;

/// Another image store that serves blobs by digest.
#[async_trait]
pub trait BlobSource: Send + Sync {
    /// Names the source in errors (a host id, a URL).
    fn name(&self) -> String;
    /// The blob named `digest`; `None` when the source does not hold it.
    async fn open(&self, digest: &str) -> Result<Option<BlobStream>, ImageError>;
    /// Whether the source's image with this manifest came from a pull with
    /// credentials (so a copy is no proof that its user may pull it); true
    /// when the source cannot tell.
    async fn pulled_with_credentials(&self, manifest_digest: &str) -> Result<bool, ImageError>;
}

impl ImageStore {
    /// The stored blob named `digest`, for serving it to other hosts.
    pub fn blob_file(&self, digest: &str) -> Result<Option<std::path::PathBuf>, ImageError> {
        let path = self.inner.blobs.path(digest)?;
        Ok(path.is_file().then_some(path))
    }

    /// Whether an image with this manifest was pulled with credentials;
    /// `None` when the store has none.
    pub fn manifest_pulled_with_credentials(
        &self,
        manifest_digest: &str,
    ) -> Result<Option<bool>, ImageError> {
        let mut found = None;
        for (_, record) in self.records()? {
            if record.manifest_digest == manifest_digest {
                let flag = record.pulled_with_credentials;
                found = Some(found.unwrap_or(false) || flag);
            }
        }
        Ok(found)
    }

    /// Copies the image `reference` pins (`name:tag@sha256:…`) from `source`
    /// and records it under that reference. `NotFound` when the source does
    /// not hold its manifest.
    pub async fn fetch_from(
        &self,
        reference_text: &str,
        source: &dyn BlobSource,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        let parsed = reference::parse(reference_text)?;
        let manifest_digest = parsed
            .digest()
            .ok_or_else(|| ImageError::BadReference {
                reference: reference_text.to_string(),
                reason: "copying from another host needs a digest (name@sha256:…)".into(),
            })?
            .to_string();
        let fetch = Fetch {
            store: self,
            source,
            reference: reference_text,
            progress,
        };
        let manifest_bytes = fetch.document("manifest", &manifest_digest).await?;
        let manifest: OciImageManifest =
            serde_json::from_slice(&manifest_bytes).map_err(|err| ImageError::BadImage {
                what: format!("manifest {manifest_digest} from {}", source.name()),
                detail: err.to_string(),
            })?;
        let config_bytes = fetch.document("config", &manifest.config.digest).await?;
        let config = ImageConfig::from_oci_json(&config_bytes)?;
        let blobs = &self.inner.blobs;
        blobs.put_bytes("image config", &config_bytes, Some(&manifest.config.digest))?;
        blobs.put_bytes("image manifest", &manifest_bytes, Some(&manifest_digest))?;
        let sizes: Vec<u64> = manifest
            .layers
            .iter()
            .map(|layer| u64::try_from(layer.size).unwrap_or(0))
            .collect();
        progress(PullProgress::Resolved {
            digest: manifest_digest.clone(),
            layers: manifest.layers.len(),
            total_bytes: sizes.iter().sum(),
        });
        let mut layers = Vec::with_capacity(manifest.layers.len());
        for (layer, size) in manifest.layers.iter().zip(sizes) {
            layers.push(fetch.layer(&layer.digest, size).await?);
        }
        let with_credentials = source.pulled_with_credentials(&manifest_digest).await?;
        let image = self.record_image(
            &parsed,
            manifest_digest,
            config,
            layers,
            crate::store::Origin::Pulled { with_credentials },
        )?;
        progress(PullProgress::Done);
        Ok(image)
    }
}

struct Fetch<'a> {
    store: &'a ImageStore,
    source: &'a dyn BlobSource,
    reference: &'a str,
    progress: &'a (dyn Fn(PullProgress) + Send + Sync),
}

impl Fetch<'_> {
    async fn open(&self, digest: &str) -> Result<BlobStream, ImageError> {
        digest::sha256_hex(digest)?;
        self.source
            .open(digest)
            .await?
            .ok_or_else(|| ImageError::NotFound {
                reference: self.reference.to_string(),
                detail: format!("{} does not hold blob {digest}", self.source.name()),
            })
    }

    fn broken(&self, digest: &str, error: impl std::fmt::Display) -> ImageError {
        ImageError::Unreachable {
            registry: self.source.name(),
            detail: format!("reading blob {digest}: {error}"),
        }
    }

    /// A small blob, whole and verified.
    async fn document(&self, what: &str, digest: &str) -> Result<Vec<u8>, ImageError> {
        let mut stream = self.open(digest).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.map_err(|err| self.broken(digest, err))?);
            if bytes.len() > MAX_DOCUMENT_BYTES {
                return Err(ImageError::BadImage {
                    what: format!("{what} {digest}"),
                    detail: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
                });
            }
        }
        digest::verify(
            &format!("{what} from {}", self.source.name()),
            digest,
            &digest::sha256_digest(&bytes),
        )?;
        Ok(bytes)
    }

    /// A layer in the store and unpacked, copied unless it is there already.
    async fn layer(&self, digest: &str, size: u64) -> Result<LayerRecord, ImageError> {
        layer_fetch::ensure_layer(
            self.store,
            digest,
            size,
            &self.source.name(),
            self.progress,
            || self.open(digest),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Another store's blobs, optionally with one of them altered.
    struct StoreSource {
        store: ImageStore,
        altered: Mutex<Option<String>>,
    }

    #[async_trait]
    impl BlobSource for StoreSource {
        fn name(&self) -> String {
            "the test source".into()
        }

        async fn open(&self, digest: &str) -> Result<Option<BlobStream>, ImageError> {
            let Some(path) = self.store.blob_file(digest)? else {
                return Ok(None);
            };
            let mut bytes = std::fs::read(path).unwrap();
            if self.altered.lock().unwrap().as_deref() == Some(digest) {
                bytes[0] ^= 1;
            }
            // Two chunks, as a network would deliver them.
            let tail = bytes.split_off(bytes.len() / 2);
            Ok(Some(Box::pin(futures::stream::iter([Ok(bytes), Ok(tail)]))))
        }

        async fn pulled_with_credentials(&self, digest: &str) -> Result<bool, ImageError> {
            Ok(self
                .store
                .manifest_pulled_with_credentials(digest)?
                .unwrap_or(true))
        }
    }

    fn imported_source() -> (tempfile::TempDir, StoreSource, Image) {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(&root.path().join("images")).unwrap();
        let tree = root.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/greeting"), "hello from the source").unwrap();
        let image = store
            .import_rootfs_dir(&tree, "local/peer:1", ImageConfig::default())
            .unwrap();
        let source = StoreSource {
            store,
            altered: Mutex::new(None),
        };
        (root, source, image)
    }

    fn pinned(image: &Image) -> String {
        format!("local/peer:1@{}", image.image_ref.digest)
    }

    #[tokio::test]
    async fn an_image_is_copied_by_digest_and_recorded_under_its_pinned_reference() {
        let (_root, source, original) = imported_source();
        let target_root = tempfile::tempdir().unwrap();
        let target = ImageStore::open(target_root.path()).unwrap();
        let events = Mutex::new(Vec::new());
        let copied = target
            .fetch_from(&pinned(&original), &source, &|event| {
                events.lock().unwrap().push(event);
            })
            .await
            .unwrap();
        assert_eq!(copied.image_ref.digest, original.image_ref.digest);
        assert_eq!(copied.size_bytes, original.size_bytes);
        let greeting = std::fs::read_to_string(copied.layers[0].join("etc/greeting")).unwrap();
        assert_eq!(greeting, "hello from the source");
        let found = target.get(&pinned(&original)).unwrap().expect("recorded");
        assert_eq!(found.image_ref.digest, original.image_ref.digest);
        // Imported at the source: no registry to ask about it.
        assert!(!copied.pulled_with_credentials);
        let events = events.into_inner().unwrap();
        assert!(matches!(
            events.first(),
            Some(PullProgress::Resolved { layers: 1, .. })
        ));
        assert_eq!(events.last(), Some(&PullProgress::Done));

        // The target can now serve what it copied.
        let manifest = target.blob_file(&original.image_ref.digest).unwrap();
        assert!(manifest.is_some());
    }

    #[tokio::test]
    async fn altered_or_missing_blobs_are_refused_and_nothing_is_recorded() {
        let (_root, source, original) = imported_source();
        let target_root = tempfile::tempdir().unwrap();
        let target = ImageStore::open(target_root.path()).unwrap();
        let manifest: OciImageManifest = serde_json::from_slice(
            &std::fs::read(
                source
                    .store
                    .blob_file(&original.image_ref.digest)
                    .unwrap()
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        *source.altered.lock().unwrap() = Some(manifest.layers[0].digest.clone());
        let error = target
            .fetch_from(&pinned(&original), &source, &|_| {})
            .await
            .unwrap_err();
        assert!(
            matches!(error, ImageError::DigestMismatch { .. }),
            "{error}"
        );
        assert!(target.get(&pinned(&original)).unwrap().is_none());
        assert!(
            target
                .blob_file(&manifest.layers[0].digest)
                .unwrap()
                .is_none()
        );

        let unknown = format!(
            "local/peer:1@{}",
            digest::sha256_digest(b"no such manifest")
        );
        let error = target
            .fetch_from(&unknown, &source, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, ImageError::NotFound { .. }), "{error}");

        let error = target
            .fetch_from("local/peer:1", &source, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(error, ImageError::BadReference { .. }), "{error}");
    }
}
