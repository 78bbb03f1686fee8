//! Image blobs by digest between hosts: `GET /agent/v1/blobs/<digest>`
//! serves a blob of the host's image store (and `…/images/<digest>/access`
//! whether its pull needed credentials), and [`PeerBlobs`] reads them
//! from another host, so an image only one host holds (imported from an
//! archive) can follow a machine cloned elsewhere.

use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;
use midge_image::{BlobSource, BlobStream, ImageError, ImageStore};

use crate::server::{authorized, bad_request, unauthorized};

/// Where blobs are served, below the agent API.
const BLOBS_PATH: &str = "/agent/v1/blobs/";
/// A copy of a layer that stops moving for this long is given up.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct Served {
    images: ImageStore,
    token: std::sync::Arc<str>,
}

/// The blobs of `images`; every request must carry `Bearer <token>`.
pub fn router(images: ImageStore, token: &str) -> Router {
    Router::new()
        .route("/agent/v1/blobs/{digest}", get(blob))
        .route("/agent/v1/images/{digest}/access", get(image_access))
        .with_state(Served {
            images,
            token: std::sync::Arc::from(token),
        })
}

async fn blob(
    State(served): State<Served>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &served.token) {
        return unauthorized();
    }
    let path = match served.images.blob_file(&digest) {
        Ok(Some(path)) => path,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such blob").into_response(),
        Err(error) => return bad_request(error.to_string()),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return (StatusCode::NOT_FOUND, "no such blob").into_response();
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), "serving a blob: {error}");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the blob could not be read",
            )
                .into_response();
        }
    };
    let length = file.metadata().await.map(|meta| meta.len()).ok();
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}

/// Whether the host's image with this manifest was pulled with credentials
/// (true when the host has no such image: a copy must then be checked).
async fn image_access(
    State(served): State<Served>,
    Path(digest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers, &served.token) {
        return unauthorized();
    }
    match served.images.manifest_pulled_with_credentials(&digest) {
        Ok(flag) => axum::Json(serde_json::json!({
            "pulled_with_credentials": flag.unwrap_or(true)
        }))
        .into_response(),
        Err(error) => bad_request(error.to_string()),
    }
}

/// The blobs of the host whose agent is at `base_url`.
#[derive(Debug, Clone)]
pub struct PeerBlobs {
    http: reqwest::Client,
    base_url: String,
    token: String,
}

impl PeerBlobs {
    pub fn new(base_url: &str, token: &str) -> Result<PeerBlobs, ImageError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .read_timeout(STALL_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|error| ImageError::Unreachable {
                registry: base_url.to_string(),
                detail: format!("building a client: {error}"),
            })?;
        Ok(PeerBlobs {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> ImageError {
        ImageError::Unreachable {
            registry: self.base_url.clone(),
            detail: detail.to_string(),
        }
    }
}

#[async_trait]
impl BlobSource for PeerBlobs {
    fn name(&self) -> String {
        format!("host agent {}", self.base_url)
    }

    async fn open(&self, digest: &str) -> Result<Option<BlobStream>, ImageError> {
        let response = self
            .http
            .get(format!("{}{BLOBS_PATH}{digest}", self.base_url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| self.unreachable(crate::client::error_chain(&error)))?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            status => return Err(self.unreachable(format!("answered {status} for {digest}"))),
        }
        let chunks = response.bytes_stream().map(|chunk| {
            chunk
                .map(|bytes| bytes.to_vec())
                .map_err(std::io::Error::other)
        });
        Ok(Some(Box::pin(chunks)))
    }

    async fn pulled_with_credentials(&self, manifest_digest: &str) -> Result<bool, ImageError> {
        #[derive(serde::Deserialize)]
        struct Access {
            pulled_with_credentials: bool,
        }
        let response = self
            .http
            .get(format!(
                "{}/agent/v1/images/{manifest_digest}/access",
                self.base_url
            ))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|error| self.unreachable(crate::client::error_chain(&error)))?;
        if !response.status().is_success() {
            // An agent that cannot say: the copy is checked like a private one.
            return Ok(true);
        }
        let access: Access = response
            .json()
            .await
            .map_err(|error| self.unreachable(crate::client::error_chain(&error)))?;
        Ok(access.pulled_with_credentials)
    }
}
