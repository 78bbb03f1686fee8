//! Waiting for a machine to reach a state: repeated long polls of `/wait`
//! (each at most 60 s, answered 408 when they run out) up to a client deadline.

use std::time::{Duration, Instant};

use anyhow::Result;
use midge_types::WaitResponse;

use crate::progress::Progress;
use midge_client::ApiClient;

pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

pub struct WaitFor<'a> {
    pub app: &'a str,
    pub id: &'a str,
    /// `started`, `stopped`, `suspended`, `destroyed`, `failed` or `settled`.
    pub state: &'a str,
    pub version: Option<&'a str>,
    pub timeout: Duration,
}

pub async fn wait_for_state(client: &ApiClient, wait: &WaitFor<'_>) -> Result<WaitResponse> {
    let progress = Progress::start(format!(
        "Waiting for machine {} to reach state {}",
        wait.id, wait.state
    ));
    let result = poll(client, wait, &progress).await;
    progress.finish();
    result
}

async fn poll(client: &ApiClient, wait: &WaitFor<'_>, progress: &Progress) -> Result<WaitResponse> {
    let deadline = Instant::now() + wait.timeout;
    let mut backoff = Duration::from_millis(500);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            anyhow::bail!(
                "timeout reached waiting for machine {} to reach state {} (waited {})",
                wait.id,
                wait.state,
                humanize(wait.timeout)
            );
        }
        let poll_for = remaining
            .min(Duration::from_secs(60))
            .max(Duration::from_secs(1));
        match client
            .wait_machine(wait.app, wait.id, wait.state, wait.version, poll_for)
            .await
        {
            Ok(response) => return Ok(response),
            Err(err) if err.is_status(408) => {
                progress.set_message(format!(
                    "Waiting for machine {} to reach state {} ({})",
                    wait.id,
                    wait.state,
                    err.message()
                ));
                // A quick 408 (rather than a full long poll) must not spin.
                tokio::time::sleep(backoff.min(remaining)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

pub fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 60 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// A duration flag: Go syntax (`5m`, `90s`) or bare seconds.
pub fn parse_duration_flag(text: &str) -> Result<Duration, String> {
    midge_types::GoDuration::parse_lenient(text).map(|d| d.0)
}
