//! The image store: blobs, layers and per-reference image records under one root dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::blobs::BlobStore;
use crate::inflight::KeyedLocks;
use crate::layers::LayerStore;
use crate::{
    Image, ImageConfig, ImageError, PullOptions, PullProgress, archive, digest, reference,
    registry, rootfs, tempname,
};

/// Local image store. Cheap to clone; clones share the same state.
#[derive(Clone, Debug)]
pub struct ImageStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) blobs: BlobStore,
    pub(crate) layers: LayerStore,
    pub(crate) images_dir: PathBuf,
    pub(crate) downloads: KeyedLocks,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub(crate) reference: String,
    registry: String,
    repository: String,
    tag: String,
    pub(crate) manifest_digest: String,
    config: ImageConfig,
    pub(crate) layers: Vec<LayerRecord>,
    /// Came from a registry (or a peer that did), so it can be fetched
    /// again: only such images are ever pruned. Records written before
    /// this field count as imported.
    #[serde(default)]
    pub(crate) pulled: bool,
    /// The pull sent credentials (or the image came from a peer that may
    /// have): whoever uses it must show they may pull it themselves.
    #[serde(default)]
    pub(crate) pulled_with_credentials: bool,
}

/// Where an image came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Pulled { with_credentials: bool },
    Imported,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub(crate) struct LayerRecord {
    pub(crate) digest: String,
    pub(crate) size: u64,
}

impl ImageStore {
    /// Opens (creating if needed) a store rooted at `root`, removing work a crashed process
    /// left half done.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let images_dir = root.join("images");
        fs::create_dir_all(&images_dir).map_err(ImageError::io("create image dir", &images_dir))?;
        tempname::remove_abandoned(&images_dir);
        let tmp_dir = root.join("tmp");
        fs::create_dir_all(&tmp_dir).map_err(ImageError::io("create temp dir", &tmp_dir))?;
        tempname::remove_abandoned(&tmp_dir);
        Ok(ImageStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                blobs: BlobStore::open(root)?,
                layers: LayerStore::open(root)?,
                images_dir,
                downloads: KeyedLocks::default(),
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Looks up an image already pulled or imported. Returns `None` when it is unknown or one
    /// of its layers is missing from the layer store.
    pub fn get(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        let parsed = reference::parse(reference)?;
        let path = self.record_path(&reference::normalized(&parsed));
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(ImageError::io("read image record", &path)(err)),
        };
        let record: ImageRecord =
            serde_json::from_slice(&bytes).map_err(|err| ImageError::BadImage {
                what: format!("record {}", path.display()),
                detail: err.to_string(),
            })?;
        self.image_from_record(record)
    }

    /// Returns the local image, pulling it first when it is not present.
    pub async fn ensure(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        if let Some(image) = self.get(reference)? {
            return Ok(image);
        }
        self.pull(reference, opts, progress).await
    }

    /// Pulls `reference` from its registry; layers already present are not downloaded again.
    pub async fn pull(
        &self,
        reference: &str,
        opts: &PullOptions,
        progress: &(dyn Fn(PullProgress) + Send + Sync),
    ) -> Result<Image, ImageError> {
        registry::pull(self, reference, opts, progress).await
    }

    /// Asks `reference`'s registry whether these options may pull it (a
    /// manifest HEAD; anonymous access counts), without fetching anything.
    pub async fn check_access(
        &self,
        reference: &str,
        opts: &PullOptions,
    ) -> Result<(), ImageError> {
        registry::check_access(reference, opts).await
    }

    /// Imports a `docker save` archive or an OCI image layout tarball.
    pub fn import_archive(
        &self,
        path: &Path,
        reference: Option<&str>,
    ) -> Result<Image, ImageError> {
        archive::import(self, path, reference)
    }

    /// Stores the tree under `dir` as a single-layer image named `reference`.
    pub fn import_rootfs_dir(
        &self,
        dir: &Path,
        reference: &str,
        config: ImageConfig,
    ) -> Result<Image, ImageError> {
        rootfs::import(self, dir, reference, config)
    }

    /// Every complete image in the store, sorted by reference.
    pub fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut images = Vec::new();
        for (_, record) in self.records()? {
            if let Some(image) = self.image_from_record(record)? {
                images.push(image);
            }
        }
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    /// Every readable image record, complete or not, with its file.
    pub(crate) fn records(&self) -> Result<Vec<(PathBuf, ImageRecord)>, ImageError> {
        let dir = &self.inner.images_dir;
        let entries = fs::read_dir(dir).map_err(ImageError::io("list images", dir))?;
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(ImageError::io("list images", dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if tempname::is_temp(&name) || !name.ends_with(".json") {
                continue;
            }
            let path = entry.path();
            let record = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<ImageRecord>(&bytes).ok());
            match record {
                Some(record) => records.push((path, record)),
                None => tracing::warn!(path = %path.display(), "skipping unreadable image record"),
            }
        }
        Ok(records)
    }

    fn record_path(&self, normalized: &str) -> PathBuf {
        let key = digest::sha256_digest(normalized.as_bytes());
        let hex = key.trim_start_matches("sha256:");
        self.inner.images_dir.join(format!("{hex}.json"))
    }

    fn image_from_record(&self, record: ImageRecord) -> Result<Option<Image>, ImageError> {
        let mut layers = Vec::with_capacity(record.layers.len());
        for layer in &record.layers {
            if !self.inner.layers.contains(&layer.digest) {
                return Ok(None);
            }
            layers.push(self.inner.layers.path(&layer.digest)?);
        }
        Ok(Some(Image {
            image_ref: midge_types::ImageRef {
                registry: record.registry,
                repository: record.repository,
                tag: record.tag,
                digest: record.manifest_digest,
                labels: record.config.labels.clone(),
            },
            reference: record.reference,
            config: record.config,
            layers,
            size_bytes: record.layers.iter().map(|layer| layer.size).sum(),
            pulled_with_credentials: record.pulled_with_credentials,
        }))
    }

    /// Persists an image whose layers are all unpacked, and returns it.
    pub(crate) fn record_image(
        &self,
        reference: &Reference,
        manifest_digest: String,
        config: ImageConfig,
        layers: Vec<LayerRecord>,
        origin: Origin,
    ) -> Result<Image, ImageError> {
        let normalized = reference::normalized(reference);
        let record = ImageRecord {
            reference: normalized.clone(),
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            tag: reference.tag().unwrap_or_default().to_string(),
            manifest_digest,
            config,
            layers,
            pulled: matches!(origin, Origin::Pulled { .. }),
            pulled_with_credentials: matches!(
                origin,
                Origin::Pulled {
                    with_credentials: true
                }
            ),
        };
        let bytes = serde_json::to_vec_pretty(&record).map_err(|err| ImageError::BadImage {
            what: "record".to_string(),
            detail: err.to_string(),
        })?;
        let target = self.record_path(&normalized);
        let temp = self.inner.images_dir.join(tempname::unique("record"));
        fs::write(&temp, &bytes).map_err(ImageError::io("write image record", &temp))?;
        if let Err(err) = fs::rename(&temp, &target) {
            let _ = fs::remove_file(&temp);
            return Err(ImageError::io("write image record", &target)(err));
        }
        self.image_from_record(record)?
            .ok_or_else(|| ImageError::BadImage {
                what: normalized,
                detail: "a layer vanished while the image was being recorded".to_string(),
            })
    }

    /// Unpacks a stored blob as a layer (once) and describes it for the image record.
    pub(crate) fn unpack_stored_layer(&self, digest: &str) -> Result<LayerRecord, ImageError> {
        let blob = self.inner.blobs.path(digest)?;
        if let Err(err) = self.inner.layers.unpack(digest, &blob) {
            // A layer that cannot be unpacked is useless; do not keep its blob either.
            let _ = fs::remove_file(&blob);
            return Err(err);
        }
        Ok(LayerRecord {
            digest: digest.to_string(),
            size: self.inner.blobs.size(digest)?,
        })
    }

    /// A fresh scratch dir under the store root, removed when the guard drops.
    pub(crate) fn scratch_dir(&self, label: &str) -> Result<ScratchDir, ImageError> {
        let path = self.inner.root.join("tmp").join(tempname::unique(label));
        fs::create_dir(&path).map_err(ImageError::io("create scratch dir", &path))?;
        Ok(ScratchDir { path })
    }
}

pub(crate) struct ScratchDir {
    pub(crate) path: PathBuf,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
