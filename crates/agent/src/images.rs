//! Image pulls with progress, for clients that want to show it before they
//! create a machine (whose create would otherwise pull silently).

use std::sync::Arc;

use midge_image::PullProgress;
use midge_types::ImageRef;
use tokio::sync::mpsc;

use crate::agent::Agent;

#[derive(Debug, Clone)]
pub enum PullEvent {
    Progress(PullProgress),
    Done(ImageRef),
    Failed(String),
}

impl Agent {
    /// Pulls `reference` into the host's image store (a no-op when it is
    /// there), reporting progress as it goes; the last event is `Done` or `Failed`.
    pub fn pull_image(self: &Arc<Self>, reference: String) -> mpsc::Receiver<PullEvent> {
        let (sender, receiver) = mpsc::channel(256);
        let agent = self.clone();
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            // Progress is best effort: a slow reader misses byte counts, never the end.
            let report = move |progress: PullProgress| {
                let _ = progress_sender.try_send(PullEvent::Progress(progress));
            };
            let result = match agent.images.get(&reference) {
                Ok(Some(image)) => Ok(image),
                _ => {
                    agent
                        .images
                        .ensure(&reference, &agent.pull_options(), &report)
                        .await
                }
            };
            let last = match result {
                Ok(image) => PullEvent::Done(image.image_ref),
                Err(err) => PullEvent::Failed(err.to_string()),
            };
            let _ = sender.send(last).await;
        });
        receiver
    }
}
