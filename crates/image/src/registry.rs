//! Pulling images over the OCI distribution API.

use std::sync::Once;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, linux_amd64_resolver};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::store::LayerRecord;
use crate::{
    ImageConfig, ImageError, ImageStore, PullOptions, PullProgress, RegistrySecret, digest,
    layer_fetch, reference,
};

/// Installs the process-wide TLS crypto provider the registry client needs (idempotent).
pub fn install_tls_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Fails only when a provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A client for pulling `reference`: plain HTTP for the insecure registries
/// given, and (as Docker does) for any registry on a loopback address.
fn client_for(opts: &PullOptions, reference: &Reference) -> Client {
    install_tls_provider();
    let mut plain_http = opts.insecure_registries.clone();
    if is_loopback_registry(reference.registry()) {
        plain_http.push(reference.registry().to_string());
    }
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(plain_http),
        platform_resolver: Some(Box::new(linux_amd64_resolver)),
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        ..ClientConfig::default()
    })
}

/// Whether `host[:port]` names this machine: 127.0.0.0/8, ::1 or localhost.
fn is_loopback_registry(registry: &str) -> bool {
    let host = match registry.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => registry.rsplit_once(':').map_or(registry, |(host, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                host
            } else {
                registry
            }
        }),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn auth_for(reference: &Reference, opts: &PullOptions) -> RegistryAuth {
    let wanted = [reference.registry(), reference.resolve_registry()];
    let credential = opts
        .credentials
        .iter()
        .find(|credential| wanted.contains(&credential.registry.as_str()));
    match credential.map(|credential| &credential.secret) {
        Some(RegistrySecret::Basic { username, password }) => {
            RegistryAuth::Basic(username.clone(), password.clone())
        }
        Some(RegistrySecret::Bearer { token }) => RegistryAuth::Bearer(token.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// Everything one pull needs to talk to the registry and report errors.
struct PullContext<'a> {
    store: &'a ImageStore,
    client: Client,
    reference: Reference,
    shown: String,
    progress: &'a (dyn Fn(PullProgress) + Send + Sync),
}

pub(crate) async fn pull(
    store: &ImageStore,
    reference_text: &str,
    opts: &PullOptions,
    progress: &(dyn Fn(PullProgress) + Send + Sync),
) -> Result<crate::Image, ImageError> {
    let parsed = reference::parse(reference_text)?;
    let context = PullContext {
        store,
        client: client_for(opts, &parsed),
        shown: reference::normalized(&parsed),
        reference: parsed,
        progress,
    };
    let auth = auth_for(&context.reference, opts);
    let (manifest, manifest_digest, config_text) = context
        .client
        .pull_manifest_and_config(&context.reference, &auth)
        .await
        .map_err(|err| context.error(err))?;
    store.inner.blobs.put_bytes(
        &format!("config of {}", context.shown),
        config_text.as_bytes(),
        Some(&manifest.config.digest),
    )?;
    let config = ImageConfig::from_oci_json(config_text.as_bytes())?;
    for layer in &manifest.layers {
        check_layer_descriptor(layer)?;
    }
    let total_bytes = manifest
        .layers
        .iter()
        .map(|layer| u64::try_from(layer.size).unwrap_or(0))
        .sum();
    progress(PullProgress::Resolved {
        digest: manifest_digest.clone(),
        layers: manifest.layers.len(),
        total_bytes,
    });
    // join_all, not try_join_all: every layer task runs to its end, so when an error is
    // returned no download or unpack of this pull is still writing into the store.
    let outcomes = futures::future::join_all(
        manifest
            .layers
            .iter()
            .map(|layer| context.ensure_layer(layer)),
    )
    .await;
    let layers = outcomes.into_iter().collect::<Result<Vec<_>, _>>()?;
    let image = store.record_image(
        &context.reference,
        manifest_digest,
        config,
        layers,
        crate::store::Origin::Pulled {
            with_credentials: !matches!(auth, RegistryAuth::Anonymous),
        },
    )?;
    progress(PullProgress::Done);
    Ok(image)
}

pub(crate) async fn check_access(
    reference_text: &str,
    opts: &PullOptions,
) -> Result<(), ImageError> {
    let parsed = reference::parse(reference_text)?;
    let client = client_for(opts, &parsed);
    let auth = auth_for(&parsed, opts);
    client
        .fetch_manifest_digest(&parsed, &auth)
        .await
        .map(|_| ())
        .map_err(|err| map_error(err, &reference::normalized(&parsed), parsed.registry()))
}

fn check_layer_descriptor(layer: &OciDescriptor) -> Result<(), ImageError> {
    digest::sha256_hex(&layer.digest)?;
    let media_type = layer.media_type.as_str();
    let is_tar =
        media_type.contains(".tar") || media_type.contains("rootfs.diff") || media_type.is_empty();
    if !is_tar {
        return Err(ImageError::BadLayer {
            layer: layer.digest.clone(),
            detail: format!("unsupported layer media type {media_type}"),
        });
    }
    if layer.size < 0 {
        return Err(ImageError::BadLayer {
            layer: layer.digest.clone(),
            detail: format!("negative layer size {}", layer.size),
        });
    }
    Ok(())
}

impl PullContext<'_> {
    fn error(&self, err: OciDistributionError) -> ImageError {
        map_error(err, &self.shown, self.reference.registry())
    }

    /// Makes one layer available (see [`layer_fetch::ensure_layer`]).
    async fn ensure_layer(&self, layer: &OciDescriptor) -> Result<LayerRecord, ImageError> {
        let size = u64::try_from(layer.size).unwrap_or(0);
        layer_fetch::ensure_layer(
            self.store,
            &layer.digest,
            size,
            self.reference.registry(),
            self.progress,
            || async {
                self.client
                    .pull_blob_stream(&self.reference, layer)
                    .await
                    .map_err(|err| self.error(err))
            },
        )
        .await
    }
}

fn map_error(err: OciDistributionError, reference: &str, registry: &str) -> ImageError {
    let registry = registry.to_string();
    let reference = reference.to_string();
    match err {
        // What oci-client says when an index offers no linux/amd64 image.
        OciDistributionError::ImageManifestNotFoundError(detail)
            if detail.contains("default platform") =>
        {
            ImageError::NotFound {
                reference,
                detail: "its image index has no linux/amd64 image, the platform machines run"
                    .into(),
            }
        }
        OciDistributionError::ImageManifestNotFoundError(detail) => {
            ImageError::NotFound { reference, detail }
        }
        OciDistributionError::AuthenticationFailure(detail) => ImageError::Auth {
            registry,
            reference,
            detail,
        },
        OciDistributionError::UnauthorizedError { url } => ImageError::Auth {
            registry,
            reference,
            detail: format!("unauthorized: {url}"),
        },
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            let detail = format!("{envelope} ({url})");
            if codes.iter().any(|code| {
                matches!(
                    code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFound { reference, detail }
            } else if codes
                .iter()
                .any(|code| matches!(code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Auth {
                    registry,
                    reference,
                    detail,
                }
            } else {
                ImageError::Registry { reference, detail }
            }
        }
        OciDistributionError::ServerError {
            code: 404,
            url,
            message,
        } => ImageError::NotFound {
            reference,
            detail: format!("{url}: {message}"),
        },
        OciDistributionError::ServerError {
            code: 401 | 403,
            url,
            message,
        } => ImageError::Auth {
            registry,
            reference,
            detail: format!("{url}: {message}"),
        },
        OciDistributionError::RequestError(err) if err.is_connect() || err.is_timeout() => {
            ImageError::Unreachable {
                registry,
                detail: describe_chain(&err),
            }
        }
        OciDistributionError::DigestError(err) => ImageError::DigestMismatch {
            what: reference,
            expected: String::new(),
            actual: err.to_string(),
        },
        other => ImageError::Registry {
            reference,
            detail: describe_chain(&other),
        },
    }
}

/// An error and its causes on one line; reqwest hides the useful part in the sources.
fn describe_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_port_is_reported_unreachable() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        // Bind and drop to find a loopback port with nothing listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let opts = PullOptions {
            insecure_registries: vec![addr.clone()],
            credentials: Vec::new(),
        };
        let err = store
            .pull(&format!("{addr}/nothing/here:latest"), &opts, &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn loopback_registries_are_recognised() {
        for loopback in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost:5000",
            "[::1]:5000",
            "LOCALHOST",
        ] {
            assert!(is_loopback_registry(loopback), "{loopback}");
        }
        for remote in [
            "docker.io",
            "10.0.0.1:5000",
            "registry.local:5000",
            "[fd00::1]:5000",
            "ghcr.io",
        ] {
            assert!(!is_loopback_registry(remote), "{remote}");
        }
    }

    #[tokio::test]
    async fn loopback_registry_is_spoken_to_over_plain_http_without_a_flag() {
        // A plain-HTTP listener that answers 404 to everything: reaching it at
        // all (rather than failing the TLS handshake) shows the protocol.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    )
                    .await;
            }
        });
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        let err = store
            .pull(
                &format!("{addr}/nothing/here:latest"),
                &PullOptions::default(),
                &|_| {},
            )
            .await
            .unwrap_err();
        assert!(!matches!(err, ImageError::Unreachable { .. }), "{err}");
    }

    #[test]
    fn pull_future_can_be_spawned() {
        fn assert_send<T: Send>(_: &T) {}
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        let opts = PullOptions::default();
        let progress = |_| {};
        let future = store.pull("busybox", &opts, &progress);
        assert_send(&future);
        let future = store.ensure("busybox", &opts, &progress);
        assert_send(&future);
    }

    #[tokio::test]
    async fn bad_reference_is_rejected_before_any_network() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::open(root.path()).unwrap();
        let err = store
            .pull("Not A Reference", &PullOptions::default(), &|_| {})
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::BadReference { .. }), "{err}");
    }
}
