//! Pulling a machine's image ahead of its create, with progress: a byte bar
//! on a terminal, one plain line otherwise. A server without the pull
//! endpoint (it is a midge extension) pulls inside the create instead.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

use crate::output::stdout_is_terminal;
use midge_client::{ApiClient, ApiFailure, ClientError};

/// One line of the pull stream.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    Resolved {
        #[serde(default)]
        layers: usize,
        #[serde(default)]
        total_bytes: u64,
    },
    LayerBytes {
        digest: String,
        downloaded: u64,
    },
    LayerDone {
        digest: String,
    },
    LayerCached {
        digest: String,
    },
    Done,
    Error {
        error: String,
    },
    #[serde(other)]
    Other,
}

pub enum Pulled {
    /// The image is in the host's store now.
    Ready,
    /// The server has no pull endpoint; the create will pull.
    Unsupported,
}

/// Pulls `image` for `app` (with its org's registry credentials).
pub async fn pull_image(client: &ApiClient, app: &str, image: &str) -> Result<Pulled> {
    let response = match client.pull_image(image, Some(app)).await {
        Ok(response) => response,
        Err(err) if err.is_status(404) || err.is_status(405) => return Ok(Pulled::Unsupported),
        Err(err) => return Err(err.into()),
    };
    let request_id = response
        .headers()
        .get(midge_client::REQUEST_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string);
    let mut display = PullDisplay::start(image);
    let mut body = response.bytes_stream();
    let mut pending = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading the progress of pulling {image}"))?;
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(event) = serde_json::from_slice::<PullEvent>(&line) else {
                continue;
            };
            match event {
                PullEvent::Done => {
                    display.finish();
                    return Ok(Pulled::Ready);
                }
                PullEvent::Error { error } => {
                    display.finish();
                    return Err(ClientError::Api(Box::new(ApiFailure {
                        what: format!("pulling image {image}"),
                        status: 200,
                        message: error,
                        fly_status: None,
                        request_id,
                        app: None,
                    }))
                    .into());
                }
                event => display.show(&event),
            }
        }
    }
    display.finish();
    anyhow::bail!(
        "pulling image {image}: the server ended the progress stream before the pull finished"
    )
}

/// What the pull looks like on screen.
struct PullDisplay {
    image: String,
    bar: Option<ProgressBar>,
    downloaded: HashMap<String, u64>,
    layers: usize,
    layers_done: usize,
}

impl PullDisplay {
    fn start(image: &str) -> PullDisplay {
        let bar = if stdout_is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.set_message(format!("Pulling image {image}"));
            bar.enable_steady_tick(Duration::from_millis(100));
            Some(bar)
        } else {
            println!("Pulling image {image}...");
            None
        };
        PullDisplay {
            image: image.to_string(),
            bar,
            downloaded: HashMap::new(),
            layers: 0,
            layers_done: 0,
        }
    }

    fn show(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Resolved {
                layers,
                total_bytes,
            } => {
                self.layers = *layers;
                if let Some(bar) = &self.bar
                    && *total_bytes > 0
                {
                    bar.set_length(*total_bytes);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} ({elapsed})",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                }
            }
            PullEvent::LayerBytes { digest, downloaded } => {
                self.downloaded.insert(digest.clone(), *downloaded);
            }
            PullEvent::LayerDone { .. } | PullEvent::LayerCached { .. } => self.layers_done += 1,
            _ => {}
        }
        if let Some(bar) = &self.bar {
            bar.set_position(self.downloaded.values().sum());
            if self.layers > 0 {
                bar.set_message(format!(
                    "Pulling image {} (layer {}/{})",
                    self.image,
                    self.layers_done.min(self.layers),
                    self.layers
                ));
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for PullDisplay {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_events_parse() {
        let parse = |line: &str| serde_json::from_str::<PullEvent>(line).unwrap();
        assert_eq!(
            parse(r#"{"type":"resolved","digest":"sha256:a","layers":2,"total_bytes":10}"#),
            PullEvent::Resolved {
                layers: 2,
                total_bytes: 10
            }
        );
        assert_eq!(
            parse(r#"{"type":"layer_bytes","digest":"d","downloaded":5,"size":9}"#),
            PullEvent::LayerBytes {
                digest: "d".into(),
                downloaded: 5
            }
        );
        assert_eq!(
            parse(r#"{"type":"done","image_ref":{"digest":"x"}}"#),
            PullEvent::Done
        );
        assert_eq!(
            parse(r#"{"type":"error","error":"invalid_argument: failed to get image: x"}"#),
            PullEvent::Error {
                error: "invalid_argument: failed to get image: x".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"layer_started","digest":"d","size":9}"#),
            PullEvent::Other
        );
    }
}
