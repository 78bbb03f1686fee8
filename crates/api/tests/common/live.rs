//! The API served over real TCP on loopback, and a client that calls it the
//! way Fly clients do.

use midge_api::ApiState;
use serde_json::Value;

/// A server for one test; stops when dropped.
pub struct LiveServer {
    pub url: String,
    client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

/// How a request authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    /// fly-go's scheme: `Authorization: FlyV1 <token>`.
    FlyV1(&'a str),
}

pub struct LiveReply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// `Null` when the body is empty or not JSON.
    pub body: Value,
    pub raw: String,
}

impl LiveReply {
    /// Fails unless the status is `status`, showing the body otherwise.
    pub fn expect(self, status: u16) -> LiveReply {
        assert_eq!(self.status, status, "unexpected reply: {}", self.raw);
        self
    }
}

impl LiveServer {
    pub async fn start(state: ApiState) -> LiveServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let task = tokio::spawn(async move {
            let _ = midge_api::serve(listener, state).await;
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("HTTP client");
        LiveServer { url, client, task }
    }

    /// `body` is sent verbatim (with `Content-Type: application/json`) when given.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> LiveReply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        request = match auth {
            Auth::None => request,
            Auth::Bearer(token) => request.header("authorization", format!("Bearer {token}")),
            Auth::FlyV1(token) => request.header("authorization", format!("FlyV1 {token}")),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let raw = response.text().await.expect("reading the body");
        let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
        LiveReply {
            status,
            headers,
            body,
            raw,
        }
    }
}

impl Drop for LiveServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
