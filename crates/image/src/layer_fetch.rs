//! Getting one layer into the store, wherever it comes from (a registry,
//! another host's store): under a per-digest lock, so concurrent pulls of
//! the same layer wait for one download; fetched unless its blob or
//! unpacked dir is there already, checked against its declared size and
//! its digest, then unpacked once.

use std::future::Future;
use std::io;

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::store::LayerRecord;
use crate::{ImageError, ImageStore, PullProgress, digest};

/// Progress callbacks for a layer are sent at most this often (plus at the end).
const PROGRESS_STEP_BYTES: u64 = 1 << 20;

/// Where a layer comes from, for errors: `source` names it; `open` starts
/// the download.
pub(crate) async fn ensure_layer<Open, Opened, Chunks, Chunk>(
    store: &ImageStore,
    digest: &str,
    size: u64,
    source: &str,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
    open: Open,
) -> Result<LayerRecord, ImageError>
where
    Open: FnOnce() -> Opened,
    Opened: Future<Output = Result<Chunks, ImageError>>,
    Chunks: Stream<Item = io::Result<Chunk>> + Unpin,
    Chunk: AsRef<[u8]>,
{
    let inner = &store.inner;
    let _downloading = inner.downloads.lock(digest).await;
    let cached = inner.layers.contains(digest) || inner.blobs.contains(digest);
    if cached {
        progress(PullProgress::LayerCached {
            digest: digest.to_string(),
        });
    } else {
        download(store, digest, size, source, progress, open().await?).await?;
    }
    let unpacking = store.clone();
    let owned = digest.to_string();
    let record = tokio::task::spawn_blocking(move || unpacking.unpack_stored_layer(&owned))
        .await
        .map_err(|err| ImageError::BadLayer {
            layer: digest.to_string(),
            detail: format!("unpack task failed: {err}"),
        })??;
    if !cached {
        progress(PullProgress::LayerDone {
            digest: digest.to_string(),
        });
    }
    Ok(record)
}

async fn download<Chunks, Chunk>(
    store: &ImageStore,
    digest: &str,
    size: u64,
    source: &str,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
    mut chunks: Chunks,
) -> Result<(), ImageError>
where
    Chunks: Stream<Item = io::Result<Chunk>> + Unpin,
    Chunk: AsRef<[u8]>,
{
    progress(PullProgress::LayerStarted {
        digest: digest.to_string(),
        size,
    });
    let blobs = &store.inner.blobs;
    let pending = blobs.pending(digest::sha256_hex(digest)?);
    let mut file = tokio::fs::File::create(pending.path())
        .await
        .map_err(ImageError::io("create blob", pending.path()))?;
    let mut hasher = Sha256::new();
    let mut downloaded: u64 = 0;
    let mut reported: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|err| ImageError::Unreachable {
            registry: source.to_string(),
            detail: format!("downloading layer {digest}: {err}"),
        })?;
        let chunk = chunk.as_ref();
        downloaded += chunk.len() as u64;
        if downloaded > size {
            return Err(ImageError::BadLayer {
                layer: digest.to_string(),
                detail: format!("{source} sent more than the declared {size} bytes"),
            });
        }
        hasher.update(chunk);
        file.write_all(chunk)
            .await
            .map_err(ImageError::io("write blob", pending.path()))?;
        if downloaded - reported >= PROGRESS_STEP_BYTES || downloaded == size {
            reported = downloaded;
            progress(PullProgress::LayerBytes {
                digest: digest.to_string(),
                downloaded,
                size,
            });
        }
    }
    file.sync_all()
        .await
        .map_err(ImageError::io("write blob", pending.path()))?;
    drop(file);
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    digest::verify(&format!("layer {digest}"), digest, &actual)?;
    blobs.commit(pending, digest)?;
    Ok(())
}
