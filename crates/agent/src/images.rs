//! Images for machines: found in the host's store, pulled when missing, and
//! pulls with progress for clients that show it before they create.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use midge_agent_api::AgentError;
use midge_image::{
    Image, ImageError, PullOptions, PullProgress, RegistryCredential, RegistrySecret,
};
use midge_types::MachineState;
use midge_types::agent::{ImagesPruned, PullEvent, RegistryLogin};
use tokio::sync::mpsc;

use crate::agent::AgentCore;

/// Whose fault an image failure is: the image's (4xx, with the registry's
/// answer) or the host's (its disk).
pub(crate) fn image_error(reference: &str, error: ImageError) -> AgentError {
    match error {
        ImageError::Io { .. } => AgentError::host(format!("storing image {reference}"), error),
        _ => AgentError::ImageUnavailable {
            reference: reference.to_string(),
            source: Box::new(error),
        },
    }
}

/// What an automatic prune leaves alone, younger than this: a pull, create
/// or update in flight may be about to use it.
const PRUNE_GRACE_AUTOMATIC: Duration = Duration::from_secs(10 * 60);

impl AgentCore {
    /// Removes the pulled images none of this host's machines uses.
    pub(crate) async fn prune_images(
        self: &Arc<Self>,
        grace: Duration,
    ) -> Result<ImagesPruned, AgentError> {
        let in_use: HashSet<String> = self
            .entries()
            .iter()
            .map(|entry| entry.snapshot())
            .filter(|record| record.state != MachineState::Destroyed)
            .map(|record| record.image_ref.digest)
            .collect();
        let images = self.images.clone();
        let report = tokio::task::spawn_blocking(move || images.prune(&in_use, grace))
            .await
            .map_err(|e| AgentError::host("pruning images", e))?
            .map_err(|e| AgentError::host("pruning images", e))?;
        Ok(ImagesPruned {
            images: report.images,
            blobs: report.blobs,
            layers: report.layers,
            bytes_freed: report.bytes_freed,
        })
    }

    /// Prunes when the image store's filesystem is fuller than the host allows.
    pub(crate) async fn prune_images_if_full(self: &Arc<Self>) {
        let free = match self.images.free_space_fraction() {
            Ok(free) => free,
            Err(error) => {
                tracing::warn!("checking the image store's free space: {error}");
                return;
            }
        };
        if free * 100.0 >= f64::from(self.config.image_gc_free_percent) {
            return;
        }
        match self.prune_images(PRUNE_GRACE_AUTOMATIC).await {
            Ok(report) => tracing::info!(
                images = report.images.len(),
                bytes = report.bytes_freed,
                "the image store's disk was {:.0}% free: pruned unused images",
                free * 100.0
            ),
            Err(error) => tracing::warn!("pruning images: {}", error.chain()),
        }
    }

    /// How to pull for a caller: its org's credentials first, then the host's.
    pub(crate) fn pull_options(&self, logins: &[RegistryLogin]) -> PullOptions {
        let mut credentials: Vec<RegistryCredential> = logins
            .iter()
            .map(|login| RegistryCredential {
                registry: midge_image::normalize_registry(&login.registry),
                secret: match &login.username {
                    Some(username) => RegistrySecret::Basic {
                        username: username.clone(),
                        password: login.secret.clone(),
                    },
                    None => RegistrySecret::Bearer {
                        token: login.secret.clone(),
                    },
                },
            })
            .collect();
        if let Some(path) = &self.config.registry_credentials {
            match midge_image::read_credentials_file(path) {
                Ok(host) => credentials.extend(host),
                // The host's file is the operator's: a broken one is logged,
                // and pulls go on as if it were absent.
                Err(error) => tracing::warn!("ignoring the host's registry credentials: {error}"),
            }
        }
        PullOptions {
            insecure_registries: self.config.insecure_registries.clone(),
            credentials,
        }
    }

    /// The image of a run of an existing machine: its create or update
    /// checked the owner's access; a copy gone missing is pulled again with
    /// the host's credentials.
    pub(crate) async fn image_for_run(&self, reference: &str) -> Result<Image, AgentError> {
        let fail = |error| image_error(reference, error);
        if let Some(image) = self.local_image(reference).map_err(fail)? {
            return Ok(image);
        }
        self.images
            .ensure(reference, &self.pull_options(&[]), &|_| {})
            .await
            .map_err(fail)
    }

    /// The image for a caller, from the store or pulled.
    pub(crate) async fn image_for(
        &self,
        reference: &str,
        logins: &[RegistryLogin],
    ) -> Result<Image, AgentError> {
        self.image_from(reference, &[], logins).await
    }

    /// The image for a caller with these credentials: from the store
    /// (provided they may pull it, see [`Self::checked_access`]), else
    /// copied from the first of `sources` (other hosts' agents) that holds
    /// it when the reference is pinned, else pulled from its registry.
    pub(crate) async fn image_from(
        &self,
        reference: &str,
        sources: &[String],
        logins: &[RegistryLogin],
    ) -> Result<Image, AgentError> {
        let fail = |error| image_error(reference, error);
        let opts = self.pull_options(logins);
        if let Some(image) = self.local_image(reference).map_err(fail)? {
            return self.checked_access(reference, image, &opts).await;
        }
        if reference.contains('@')
            && let Some(peers) = &self.image_peers
        {
            for url in sources {
                let copied = match peers.source(url) {
                    Ok(source) => self.images.fetch_from(reference, &*source, &|_| {}).await,
                    Err(error) => Err(error),
                };
                match copied {
                    Ok(image) => {
                        tracing::info!(%reference, from = %url, "copied the image from another host");
                        return self.checked_access(reference, image, &opts).await;
                    }
                    Err(error) => {
                        tracing::info!(%reference, from = %url, "not copied: {error}");
                    }
                }
            }
        }
        self.images
            .pull(reference, &opts, &|_| {})
            .await
            .map_err(fail)
    }

    /// A stored image that a pull with credentials brought is handed to a
    /// caller only once its registry says the caller's credentials (or the
    /// host's, or none) may pull `reference`: the store is shared by every
    /// org on the host, and having the copy proves nothing about them.
    async fn checked_access(
        &self,
        reference: &str,
        image: Image,
        opts: &PullOptions,
    ) -> Result<Image, AgentError> {
        if image.pulled_with_credentials {
            self.images
                .check_access(reference, opts)
                .await
                .map_err(|error| image_error(reference, error))?;
        }
        Ok(image)
    }

    fn local_image(&self, reference: &str) -> Result<Option<Image>, ImageError> {
        if let Some(image) = self.images.get(reference)? {
            return Ok(Some(image));
        }
        // A pinned reference (`repo:tag@sha256:…`, as clone writes) matches any
        // local image with that manifest digest, imported ones included.
        let Some((_, digest)) = reference.rsplit_once('@') else {
            return Ok(None);
        };
        Ok(self
            .images
            .list()?
            .into_iter()
            .find(|image| image.image_ref.digest == digest))
    }

    /// Pulls `reference` into the store (nothing to do when it is there),
    /// reporting progress; the last event is `Done` or `Failed`.
    pub(crate) fn pull_image(
        self: &Arc<Self>,
        reference: String,
        logins: Vec<RegistryLogin>,
    ) -> BoxStream<'static, PullEvent> {
        let (sender, receiver) = mpsc::channel(256);
        let core = self.clone();
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            // Progress is best effort: a slow reader misses byte counts, never the end.
            let report = move |progress: PullProgress| {
                let _ = progress_sender.try_send(progress_event(progress));
            };
            let opts = core.pull_options(&logins);
            let result = match core.images.get(&reference) {
                Ok(Some(image)) => core.checked_access(&reference, image, &opts).await,
                _ => core
                    .images
                    .pull(&reference, &opts, &report)
                    .await
                    .map_err(|error| image_error(&reference, error)),
            };
            let last = match result {
                Ok(image) => PullEvent::Done {
                    image_ref: image.image_ref,
                },
                Err(error) => PullEvent::Failed {
                    error: error.chain(),
                },
            };
            let _ = sender.send(last).await;
        });
        Box::pin(futures::stream::unfold(receiver, |mut receiver| async {
            receiver.recv().await.map(|event| (event, receiver))
        }))
    }
}

fn progress_event(progress: PullProgress) -> PullEvent {
    match progress {
        PullProgress::Resolved {
            digest,
            layers,
            total_bytes,
        } => PullEvent::Resolved {
            digest,
            layers,
            total_bytes,
        },
        PullProgress::LayerStarted { digest, size } => PullEvent::LayerStarted { digest, size },
        PullProgress::LayerBytes {
            digest,
            downloaded,
            size,
        } => PullEvent::LayerBytes {
            digest,
            downloaded,
            size,
        },
        PullProgress::LayerDone { digest } => PullEvent::LayerDone { digest },
        PullProgress::LayerCached { digest } => PullEvent::LayerCached { digest },
        PullProgress::Done => PullEvent::Pulled,
    }
}
