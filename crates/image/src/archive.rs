//! Import of `docker save` archives and OCI image layout tarballs.
//!
//! The outer archive is extracted into a scratch dir, regular files only: symlinks and
//! hardlinks (which `docker save` uses between layer files) are remembered and resolved by
//! name, so nothing from the archive can point outside the scratch dir.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Component, Path, PathBuf};

use oci_client::manifest::{ImageIndexEntry, OciImageIndex, OciImageManifest};
use serde::Deserialize;

use crate::manifest::{self, LayerDescription};
use crate::store::LayerRecord;
use crate::{Image, ImageConfig, ImageError, ImageStore, digest, reference, unpack};

const MAX_LINK_HOPS: usize = 16;
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";
const OCI_REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

pub(crate) fn import(
    store: &ImageStore,
    archive_path: &Path,
    reference_text: Option<&str>,
) -> Result<Image, ImageError> {
    let scratch = store.scratch_dir("archive")?;
    let tree = ArchiveTree::extract(archive_path, &scratch.path)?;
    if tree.has("oci-layout") && tree.has("index.json") {
        import_oci_layout(store, &tree, reference_text)
    } else if tree.has("manifest.json") {
        import_docker_archive(store, &tree, reference_text)
    } else {
        Err(tree.bad("holds neither manifest.json nor an OCI layout (oci-layout, index.json)"))
    }
}

struct ArchiveTree {
    archive: PathBuf,
    dir: PathBuf,
    files: HashSet<PathBuf>,
    links: HashMap<PathBuf, PathBuf>,
}

/// Normalizes an archive member name; `None` when it climbs out of the archive.
fn normalize(name: &Path) -> Option<PathBuf> {
    let mut parts = PathBuf::new();
    for component in name.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::ParentDir => {
                if !parts.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(parts)
}

impl ArchiveTree {
    fn extract(archive: &Path, dir: &Path) -> Result<ArchiveTree, ImageError> {
        let mut tree = ArchiveTree {
            archive: archive.to_path_buf(),
            dir: dir.to_path_buf(),
            files: HashSet::new(),
            links: HashMap::new(),
        };
        let reader = unpack::open_decompressed(archive, &archive.display().to_string())
            .map_err(|err| tree.bad(&err.to_string()))?;
        let mut outer = tar::Archive::new(reader);
        let entries = outer.entries().map_err(|err| tree.bad(&err.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|err| tree.bad(&err.to_string()))?;
            let raw_name = entry
                .path()
                .map_err(|err| tree.bad(&err.to_string()))?
                .into_owned();
            let Some(name) = normalize(&raw_name) else {
                return Err(tree.bad(&format!("member {raw_name:?} escapes the archive")));
            };
            if name.as_os_str().is_empty() {
                continue;
            }
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let target = dir.join(&name);
                    if let Some(parent) = target.parent() {
                        fs::create_dir_all(parent).map_err(ImageError::io("create dir", parent))?;
                    }
                    let file = File::create(&target).map_err(ImageError::io("extract", &target))?;
                    io::copy(&mut entry, &mut BufWriter::new(file))
                        .map_err(ImageError::io("extract", &target))?;
                    tree.links.remove(&name);
                    tree.files.insert(name);
                }
                kind @ (tar::EntryType::Symlink | tar::EntryType::Link) => {
                    let link = entry
                        .link_name()
                        .map_err(|err| tree.bad(&err.to_string()))?
                        .ok_or_else(|| tree.bad(&format!("link {raw_name:?} without target")))?;
                    // Symlinks are relative to their own dir; hardlinks name archive members.
                    let base = match kind {
                        tar::EntryType::Symlink if !link.is_absolute() => {
                            name.parent().map(Path::to_path_buf).unwrap_or_default()
                        }
                        _ => PathBuf::new(),
                    };
                    let Some(target) = normalize(&base.join(&link)) else {
                        return Err(tree.bad(&format!("link {raw_name:?} escapes the archive")));
                    };
                    tree.files.remove(&name);
                    tree.links.insert(name, target);
                }
                _ => {}
            }
        }
        Ok(tree)
    }

    fn bad(&self, detail: &str) -> ImageError {
        ImageError::BadArchive {
            path: self.archive.clone(),
            detail: detail.to_string(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.resolve(name).is_ok()
    }

    /// The extracted file for archive member `name`, following recorded links.
    fn resolve(&self, name: &str) -> Result<PathBuf, ImageError> {
        let mut current = normalize(Path::new(name))
            .ok_or_else(|| self.bad(&format!("member {name:?} escapes the archive")))?;
        for _ in 0..MAX_LINK_HOPS {
            if self.files.contains(&current) {
                return Ok(self.dir.join(&current));
            }
            match self.links.get(&current) {
                Some(target) => current = target.clone(),
                None => break,
            }
        }
        Err(self.bad(&format!("member {name:?} is missing")))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let path = self.resolve(name)?;
        fs::read(&path).map_err(ImageError::io("read archive member", &path))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<T, ImageError> {
        serde_json::from_slice(&self.read(name)?).map_err(|err| self.bad(&format!("{name}: {err}")))
    }

    fn blob_name(digest_text: &str) -> Result<String, ImageError> {
        Ok(format!("blobs/sha256/{}", digest::sha256_hex(digest_text)?))
    }
}

/// Stores each layer file as a blob (verifying it when its digest is known) and unpacks it.
fn store_layers(
    store: &ImageStore,
    tree: &ArchiveTree,
    layers: &[(String, Option<String>)],
) -> Result<Vec<LayerRecord>, ImageError> {
    let mut records = Vec::with_capacity(layers.len());
    for (member, expected) in layers {
        let path = tree.resolve(member)?;
        let file = File::open(&path).map_err(ImageError::io("open layer", &path))?;
        let (layer_digest, _) = store.inner.blobs.put_reader(
            &format!("layer {member}"),
            io::BufReader::new(file),
            expected.as_deref(),
        )?;
        records.push(store.unpack_stored_layer(&layer_digest)?);
    }
    Ok(records)
}

fn name_of(
    tree: &ArchiveTree,
    given: Option<&str>,
    found: Option<String>,
) -> Result<oci_client::Reference, ImageError> {
    match given.map(str::to_string).or(found) {
        Some(name) => reference::parse(&name),
        None => Err(tree.bad("the archive names no image; pass a reference")),
    }
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

fn pick_platform(entries: &[ImageIndexEntry]) -> Option<&ImageIndexEntry> {
    entries
        .iter()
        .find(|entry| {
            entry.platform.as_ref().is_some_and(|platform| {
                platform.os.to_string() == "linux" && platform.architecture.to_string() == "amd64"
            })
        })
        .or_else(|| entries.iter().find(|entry| entry.platform.is_none()))
}

fn entry_name(entry: &ImageIndexEntry) -> Option<String> {
    let annotations = entry.annotations.as_ref()?;
    annotations
        .get(CONTAINERD_NAME_ANNOTATION)
        .or_else(|| {
            annotations
                .get(OCI_REF_NAME_ANNOTATION)
                .filter(|name| name.contains('/') || name.contains(':'))
        })
        .cloned()
}

fn import_oci_layout(
    store: &ImageStore,
    tree: &ArchiveTree,
    reference_text: Option<&str>,
) -> Result<Image, ImageError> {
    let index: OciImageIndex = tree.read_json("index.json")?;
    let wanted = reference_text
        .map(reference::parse)
        .transpose()?
        .map(|parsed| reference::normalized(&parsed));
    let chosen = index
        .manifests
        .iter()
        .find(|entry| {
            let name = entry_name(entry).and_then(|name| reference::parse(&name).ok());
            wanted.is_some() && name.map(|name| reference::normalized(&name)) == wanted
        })
        .or_else(|| index.manifests.first())
        .ok_or_else(|| tree.bad("index.json lists no manifests"))?;
    let found_name = entry_name(chosen).or_else(|| docker_repo_tag(tree));
    let mut manifest_entry = chosen.clone();
    if is_index(&manifest_entry.media_type) {
        let nested: OciImageIndex =
            serde_json::from_slice(&read_verified(tree, &manifest_entry.digest)?).map_err(
                |err| tree.bad(&format!("nested index {}: {err}", manifest_entry.digest)),
            )?;
        manifest_entry = pick_platform(&nested.manifests)
            .cloned()
            .ok_or_else(|| tree.bad("no linux/amd64 manifest in the image index"))?;
    }
    let parsed = name_of(tree, reference_text, found_name)?;
    let manifest_bytes = read_verified(tree, &manifest_entry.digest)?;
    let manifest: OciImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|err| tree.bad(&format!("manifest {}: {err}", manifest_entry.digest)))?;
    let config_bytes = read_verified(tree, &manifest.config.digest)?;
    let config = ImageConfig::from_oci_json(&config_bytes)?;
    let blobs = &store.inner.blobs;
    blobs.put_bytes("image config", &config_bytes, Some(&manifest.config.digest))?;
    blobs.put_bytes(
        "image manifest",
        &manifest_bytes,
        Some(&manifest_entry.digest),
    )?;
    let layer_members = manifest
        .layers
        .iter()
        .map(|layer| {
            Ok((
                ArchiveTree::blob_name(&layer.digest)?,
                Some(layer.digest.clone()),
            ))
        })
        .collect::<Result<Vec<_>, ImageError>>()?;
    let layers = store_layers(store, tree, &layer_members)?;
    store.record_image(
        &parsed,
        manifest_entry.digest.clone(),
        config,
        layers,
        crate::store::Origin::Imported,
    )
}

/// Reads an OCI layout blob and checks it against its digest.
fn read_verified(tree: &ArchiveTree, digest_text: &str) -> Result<Vec<u8>, ImageError> {
    let bytes = tree.read(&ArchiveTree::blob_name(digest_text)?)?;
    digest::verify(
        &format!("archive blob {digest_text}"),
        digest_text,
        &digest::sha256_digest(&bytes),
    )?;
    Ok(bytes)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn docker_repo_tag(tree: &ArchiveTree) -> Option<String> {
    let entries: Vec<DockerManifestEntry> = tree.read_json("manifest.json").ok()?;
    entries
        .into_iter()
        .find_map(|entry| entry.repo_tags?.into_iter().next())
}

fn import_docker_archive(
    store: &ImageStore,
    tree: &ArchiveTree,
    reference_text: Option<&str>,
) -> Result<Image, ImageError> {
    let entries: Vec<DockerManifestEntry> = tree.read_json("manifest.json")?;
    let wanted = reference_text
        .map(reference::parse)
        .transpose()?
        .map(|parsed| reference::normalized(&parsed));
    let names_wanted = |entry: &&DockerManifestEntry| {
        entry.repo_tags.iter().flatten().any(|tag| {
            reference::parse(tag)
                .ok()
                .map(|parsed| reference::normalized(&parsed))
                == wanted
        })
    };
    let entry = entries
        .iter()
        .find(names_wanted)
        .or_else(|| entries.first())
        .ok_or_else(|| tree.bad("manifest.json lists no images"))?;
    let found_name = entry.repo_tags.iter().flatten().next().cloned();
    let parsed = name_of(tree, reference_text, found_name)?;

    let config_bytes = tree.read(&entry.config)?;
    let config = ImageConfig::from_oci_json(&config_bytes)?;
    let blobs = &store.inner.blobs;
    let config_digest = blobs.put_bytes("image config", &config_bytes, None)?;
    let layer_members: Vec<(String, Option<String>)> = entry
        .layers
        .iter()
        .map(|member| (member.clone(), None))
        .collect();
    let layers = store_layers(store, tree, &layer_members)?;
    let descriptions: Vec<LayerDescription> = layers
        .iter()
        .map(|layer| LayerDescription {
            digest: layer.digest.clone(),
            size: layer.size,
            media_type: manifest::LAYER_TAR.to_string(),
        })
        .collect();
    let manifest_bytes =
        manifest::oci_manifest_json(&config_digest, config_bytes.len() as u64, &descriptions);
    let manifest_digest = blobs.put_bytes("image manifest", &manifest_bytes, None)?;
    store.record_image(
        &parsed,
        manifest_digest,
        config,
        layers,
        crate::store::Origin::Imported,
    )
}
