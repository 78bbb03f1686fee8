//! Leases around state-changing commands, as flyctl takes them: a 120 s lease,
//! its nonce on every call, released afterwards (also on Ctrl-C).

use std::time::Duration;

use anyhow::Result;
use midge_types::LeaseData;

use crate::output::seconds_time;
use midge_client::{ApiClient, ClientError};

pub const LEASE_TTL: Duration = Duration::from_secs(120);

/// Runs `action` under a fresh lease on the machine; the action passes
/// `lease.nonce` on its calls.
pub async fn with_lease<T>(
    client: &ApiClient,
    app: &str,
    id: &str,
    action: impl AsyncFnOnce(&LeaseData) -> Result<T>,
) -> Result<T> {
    let lease = acquire(client, app, id).await?;
    let result = tokio::select! {
        result = action(&lease) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    release(client, app, id, &lease.nonce).await;
    result
}

pub async fn acquire(client: &ApiClient, app: &str, id: &str) -> Result<LeaseData> {
    match client.acquire_lease(app, id, LEASE_TTL).await {
        Ok(lease) => Ok(lease),
        Err(err) if err.is_status(409) => {
            let holder = client.get_lease(app, id).await.ok().flatten();
            Err(anyhow::anyhow!(lease_held_message(
                id,
                holder.as_ref(),
                &err
            )))
        }
        Err(err) => Err(err.into()),
    }
}

/// Releases quietly: a lease that is already gone (expired, cleared, or its
/// machine destroyed) is what we wanted anyway.
pub async fn release(client: &ApiClient, app: &str, id: &str, nonce: &str) {
    match client.release_lease(app, id, nonce).await {
        Ok(()) => {}
        Err(err) if err.is_status(404) || err.message().contains("lease not found") => {}
        Err(err) => eprintln!("warning: could not release the lease on machine {id}: {err}"),
    }
}

pub fn lease_held_message(id: &str, holder: Option<&LeaseData>, err: &ClientError) -> String {
    let who = match holder {
        Some(lease) => {
            let owner = if lease.owner.is_empty() {
                "someone else"
            } else {
                lease.owner.as_str()
            };
            let description = if lease.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", lease.description)
            };
            format!(
                "held by {owner}{description} until {}",
                seconds_time(lease.expires_at)
            )
        }
        None => format!("held by someone else ({})", err.message()),
    };
    format!(
        "machine {id} is leased: {who}\nhint: wait for the lease to expire, or clear it with \
         `midge machine leases clear {id}`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_lease_names_owner_and_expiry() {
        let lease = LeaseData {
            nonce: "n".into(),
            expires_at: 120,
            owner: "ops@example.com".into(),
            description: "deploy".into(),
            version: "v".into(),
        };
        let err = ClientError::Transport {
            what: "x".into(),
            detail: "y".into(),
        };
        let text = lease_held_message("m1", Some(&lease), &err);
        assert!(
            text.contains("ops@example.com (deploy) until 1970-01-01T00:02:00Z"),
            "{text}"
        );
        assert!(text.contains("midge machine leases clear m1"), "{text}");
    }
}
