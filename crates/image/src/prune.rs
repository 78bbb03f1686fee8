//! Garbage collection: the records of pulled images nothing uses, then every
//! blob and unpacked layer that no remaining image or image in use needs.
//!
//! What is needed is followed through the stored manifests themselves
//! (`config`, `layers`, `manifests` digests), starting from the records kept
//! and the manifest digests the caller says are in use. So a machine still
//! running an image whose tag has since been pulled anew keeps its layers.
//! Blobs and layers younger than the grace period are left alone: a pull in
//! progress stores them before it writes its record.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::{ImageError, ImageStore, digest, tempname};

/// What a prune removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    pub bytes_freed: u64,
}

impl ImageStore {
    /// Removes pulled images whose manifest digest is not in `in_use`, then
    /// what nothing kept refers to. Imported images are always kept: there
    /// is nowhere to fetch them from again.
    pub fn prune(
        &self,
        in_use: &HashSet<String>,
        grace: Duration,
    ) -> Result<PruneReport, ImageError> {
        let mut report = PruneReport::default();
        let mut roots: BTreeSet<String> = in_use.iter().cloned().collect();
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for (path, record) in self.records()? {
            // A record just written may be an update's or a create's that has
            // not reached the machine's record yet.
            let settled = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < cutoff);
            if record.pulled && settled && !in_use.contains(&record.manifest_digest) {
                fs::remove_file(&path).map_err(ImageError::io("remove image record", &path))?;
                report.images.push(record.reference);
            } else {
                roots.insert(record.manifest_digest.clone());
                roots.extend(record.layers.iter().map(|layer| layer.digest.clone()));
            }
        }
        let needed = self.referenced_from(roots);
        let blob_dir = self.inner.root.join("blobs").join("sha256");
        for (name, path) in unreferenced(&blob_dir, &needed, cutoff)? {
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(ImageError::io("remove blob", &path))?;
            tracing::debug!(blob = %name, "pruned");
            report.blobs += 1;
            report.bytes_freed += size;
        }
        let layer_dir = self.inner.root.join("layers");
        for (_, path) in unreferenced(&layer_dir, &needed, cutoff)? {
            report.bytes_freed += dir_size(&path);
            fs::remove_dir_all(&path).map_err(ImageError::io("remove layer", &path))?;
            report.layers += 1;
        }
        Ok(report)
    }

    /// The hex digests reachable from `roots` through stored manifests.
    fn referenced_from(&self, roots: BTreeSet<String>) -> HashSet<String> {
        let mut needed = HashSet::new();
        let mut queue: Vec<String> = roots.into_iter().collect();
        while let Some(next) = queue.pop() {
            let Ok(hex) = digest::sha256_hex(&next) else {
                continue;
            };
            if !needed.insert(hex.to_owned()) {
                continue;
            }
            // Layer blobs are large and never JSON; read only what may be a manifest.
            let Ok(path) = self.inner.blobs.path(&next) else {
                continue;
            };
            let small = fs::metadata(&path).is_ok_and(|m| m.len() < 4 * 1024 * 1024);
            if !small {
                continue;
            }
            if let Some(document) = fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            {
                queue.extend(digests_named_in(&document));
            }
        }
        needed
    }
}

impl ImageStore {
    /// The share of the store's filesystem that is free, 0.0 to 1.0.
    pub fn free_space_fraction(&self) -> Result<f64, ImageError> {
        let root = &self.inner.root;
        let path = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).map_err(|_| {
            ImageError::io("statvfs", root)(std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?;
        let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a valid C string and `stats` is written by the call.
        let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
        if result != 0 {
            return Err(ImageError::io("statvfs", root)(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: statvfs succeeded, so it filled `stats`.
        let stats = unsafe { stats.assume_init() };
        if stats.f_blocks == 0 {
            return Ok(1.0);
        }
        #[allow(clippy::cast_precision_loss)]
        Ok(stats.f_bavail as f64 / stats.f_blocks as f64)
    }
}

/// The `config`, `layers` and `manifests` digests of a manifest or index.
pub(crate) fn digests_named_in(document: &Value) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(config) = document["config"]["digest"].as_str() {
        found.push(config.to_owned());
    }
    for list in ["layers", "manifests"] {
        for entry in document[list].as_array().into_iter().flatten() {
            if let Some(digest) = entry["digest"].as_str() {
                found.push(digest.to_owned());
            }
        }
    }
    found
}

/// Entries of `dir` named by a hex digest not in `needed` and last changed
/// before `cutoff`.
fn unreferenced(
    dir: &Path,
    needed: &HashSet<String>,
    cutoff: SystemTime,
) -> Result<Vec<(String, std::path::PathBuf)>, ImageError> {
    let entries = fs::read_dir(dir).map_err(ImageError::io("list", dir))?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if tempname::is_temp(&name) || needed.contains(&name) {
            continue;
        }
        let old_enough = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified < cutoff);
        if old_enough {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.metadata() {
                Ok(meta) if meta.is_dir() => stack.push(entry.path()),
                Ok(meta) => total += meta.len(),
                Err(_) => {}
            }
        }
    }
    total
}
