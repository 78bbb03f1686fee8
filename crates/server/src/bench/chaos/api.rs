//! The chaos run's HTTP client of `midge up`: every call answers whether
//! the server acknowledged it, refused it, or was cut off before it could
//! tell.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::Method;
use serde_json::Value;

/// How long one call may take before it counts as cut off.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) enum Answer {
    /// A 2xx reply: the server has done (or durably taken on) the call.
    Acked(Value),
    /// A non-2xx reply: nothing the run relies on happened.
    Refused(u16),
    /// No reply: the server died before (or while) it answered.
    Cut,
}

#[derive(Clone)]
pub(super) struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: String, token: String) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        Ok(Api { http, base, token })
    }

    pub async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let Ok(response) = request.send().await else {
            return Answer::Cut;
        };
        let status = response.status();
        let Ok(text) = response.text().await else {
            return Answer::Cut;
        };
        if status.is_success() {
            Answer::Acked(serde_json::from_str(&text).unwrap_or(Value::Null))
        } else {
            Answer::Refused(status.as_u16())
        }
    }

    /// A call the verification depends on: anything but 2xx is an error.
    pub async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        match self.send(method.clone(), path, body).await {
            Answer::Acked(value) => Ok(value),
            Answer::Refused(status) => bail!("{method} {path} answered {status}"),
            Answer::Cut => bail!("{method} {path} got no answer"),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.expect(Method::GET, path, None).await
    }
}
