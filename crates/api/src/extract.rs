//! Extractors that turn every kind of bad input into a 400 JSON error, so
//! axum's plain-text rejections never reach a client.

use std::collections::HashMap;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::{Error, plain_status_error};

pub use midge_types::headers::LEASE_NONCE_HEADER;

/// A required JSON body.
pub struct JsonBody<T>(pub T);

/// A JSON body that may be absent or empty (then `T::default()`), as Fly
/// allows for stop, start, lease acquire and the like.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let bytes = body_bytes(request, state).await?;
        if is_blank(&bytes) {
            return Err(Error::invalid("request body is required").into_response());
        }
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(IntoResponse::into_response)
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let bytes = body_bytes(request, state).await?;
        if is_blank(&bytes) {
            return Ok(OptionalJson(T::default()));
        }
        parse_json(&bytes)
            .map(OptionalJson)
            .map_err(IntoResponse::into_response)
    }
}

async fn body_bytes<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, Response> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                plain_status_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_argument",
                    "request body is too large",
                )
            } else {
                Error::invalid(format!("reading request body: {}", rejection.body_text()))
                    .into_response()
            }
        })
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|error| Error::invalid(format!("invalid JSON body: {error}")))
}

/// The query string as ordered key/value pairs: several parameters repeat
/// (`state`, `metadata.KEY`), and each parse failure names its parameter.
#[derive(Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map(|Query(pairs)| Params(pairs))
            .map_err(|rejection| {
                Error::invalid(format!("invalid query string: {}", rejection.body_text()))
            })
    }
}

impl Params {
    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Pairs whose key starts with `prefix`, with the prefix removed.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0
            .iter()
            .filter_map(move |(k, v)| k.strip_prefix(prefix).map(|rest| (rest, v.as_str())))
    }

    /// `?flag`, `?flag=true|1|yes` are true; absent, `false|0|no` are false.
    pub fn flag(&self, key: &str) -> Result<bool, Error> {
        match self.get(key).map(|v| v.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if matches!(v.as_str(), "" | "true" | "1" | "yes" | "t") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "f") => Ok(false),
            Some(v) => Err(Error::invalid(format!(
                "query parameter {key}={v:?} is not a boolean"
            ))),
        }
    }

    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        self.get(key)
            .map(|v| {
                v.trim().parse().map_err(|error| {
                    Error::invalid(format!("invalid query parameter {key}={v:?}: {error}"))
                })
            })
            .transpose()
    }
}

/// Path parameters by name.
struct PathParams(HashMap<String, String>);

impl PathParams {
    async fn extract<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Path(map)| PathParams(map))
            .map_err(|rejection| Error::invalid(format!("invalid path: {}", rejection.body_text())))
    }

    fn take(&mut self, name: &str) -> Result<String, Error> {
        self.0
            .remove(name)
            .ok_or_else(|| Error::invalid(format!("missing path parameter {name}")))
    }
}

/// `/v1/apps/{app_name}`.
pub struct AppPath {
    pub app: String,
}

impl<S: Send + Sync> FromRequestParts<S> for AppPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(AppPath {
            app: params.take("app_name")?,
        })
    }
}

/// `/v1/platform/hosts/{host_id}/…`.
pub struct HostPath {
    pub host: String,
}

impl<S: Send + Sync> FromRequestParts<S> for HostPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(HostPath {
            host: params.take("host_id")?,
        })
    }
}

/// `/v1/orgs/{org_slug}/…`.
pub struct OrgPath {
    pub org: String,
}

impl<S: Send + Sync> FromRequestParts<S> for OrgPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(OrgPath {
            org: params.take("org_slug")?,
        })
    }
}

/// `/v1/apps/{app_name}/volumes/{volume_id}`.
pub struct VolumePath {
    pub app: String,
    pub volume: String,
}

impl<S: Send + Sync> FromRequestParts<S> for VolumePath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(VolumePath {
            app: params.take("app_name")?,
            volume: params.take("volume_id")?,
        })
    }
}

/// `/v1/apps/{app_name}/certificates/{hostname}`.
pub struct CertificatePath {
    pub app: String,
    pub hostname: String,
}

impl<S: Send + Sync> FromRequestParts<S> for CertificatePath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(CertificatePath {
            app: params.take("app_name")?,
            hostname: params.take("hostname")?,
        })
    }
}

/// `/v1/apps/{app_name}/ip_assignments/{ip}`.
pub struct IpPath {
    pub app: String,
    pub ip: String,
}

impl<S: Send + Sync> FromRequestParts<S> for IpPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(IpPath {
            app: params.take("app_name")?,
            ip: params.take("ip")?,
        })
    }
}

/// `/v1/apps/{app_name}/machines/{machine_id}`: the machine segment is an id
/// or a name.
pub struct MachinePath {
    pub app: String,
    pub machine: String,
    /// What the request does to the machine (method and route), as rate
    /// limits count it.
    pub action: MachineAction,
}

#[derive(Debug, Clone)]
pub struct MachineAction {
    pub method: Method,
    pub route: String,
}

impl MachineAction {
    fn of(parts: &Parts) -> MachineAction {
        MachineAction {
            method: parts.method.clone(),
            route: parts
                .extensions
                .get::<MatchedPath>()
                .map(|path| path.as_str().to_owned())
                .unwrap_or_else(|| parts.uri.path().to_owned()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MachinePath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(MachinePath {
            app: params.take("app_name")?,
            machine: params.take("machine_id")?,
            action: MachineAction::of(parts),
        })
    }
}

/// `/v1/apps/{app_name}/machines/{machine_id}/egress_ips/{ip}`.
pub struct MachineIpPath {
    pub machine: MachinePath,
    pub ip: String,
}

impl<S: Send + Sync> FromRequestParts<S> for MachineIpPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(MachineIpPath {
            machine: MachinePath {
                app: params.take("app_name")?,
                machine: params.take("machine_id")?,
                action: MachineAction::of(parts),
            },
            ip: params.take("ip")?,
        })
    }
}

/// `/v1/apps/{app_name}/machines/{machine_id}/metadata/{key}`.
pub struct MetadataKeyPath {
    pub machine: MachinePath,
    pub key: String,
}

impl<S: Send + Sync> FromRequestParts<S> for MetadataKeyPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(MetadataKeyPath {
            machine: MachinePath {
                app: params.take("app_name")?,
                machine: params.take("machine_id")?,
                action: MachineAction::of(parts),
            },
            key: params.take("key")?,
        })
    }
}

/// The `fly-machine-lease-nonce` header, passed to every mutation.
pub struct LeaseNonce(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LeaseNonce {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        match parts.headers.get(LEASE_NONCE_HEADER) {
            None => Ok(LeaseNonce(None)),
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| {
                        Error::invalid(format!("{LEASE_NONCE_HEADER} header is not valid text"))
                    })?
                    .trim();
                Ok(LeaseNonce((!text.is_empty()).then(|| text.to_string())))
            }
        }
    }
}

/// `/v1/orgs/{org_slug}/registry_credentials/{registry}`.
pub struct RegistryCredentialPath {
    pub org: String,
    pub registry: String,
}

impl<S: Send + Sync> FromRequestParts<S> for RegistryCredentialPath {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        let mut params = PathParams::extract(parts, state).await?;
        Ok(RegistryCredentialPath {
            org: params.take("org_slug")?,
            registry: params.take("registry")?,
        })
    }
}
