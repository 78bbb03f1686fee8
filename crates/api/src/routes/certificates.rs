//! `/v1/apps/{app}/certificates`: TLS certificates an app uploads for its
//! host names (`custom`), served by the proxy on the app's `tls` ports by
//! SNI. Without one, the proxy serves a self-signed certificate. ACME is
//! not offered.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use midge_store::{AppRecord, Certificate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::extract::{AppPath, CertificatePath, JsonBody};
use crate::schema::ErrorResponse;

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CustomCertificateBody {
    pub hostname: Option<String>,
    /// PEM: the certificate, then its chain.
    pub fullchain: Option<String>,
    /// PEM.
    pub private_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateEntryBody {
    pub source: String,
    pub status: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateDetailBody {
    pub hostname: String,
    pub configured: bool,
    pub status: String,
    pub acme_requested: bool,
    pub certificates: Vec<CertificateEntryBody>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateSummaryBody {
    pub hostname: String,
    pub configured: bool,
    pub status: String,
    pub acme_requested: bool,
    pub has_custom_certificate: bool,
    pub has_fly_certificate: bool,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListCertificatesBody {
    pub certificates: Vec<CertificateSummaryBody>,
    pub total_count: usize,
}

fn time(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn detail(c: &Certificate) -> CertificateDetailBody {
    CertificateDetailBody {
        hostname: c.hostname.clone(),
        configured: true,
        status: "active".into(),
        acme_requested: false,
        certificates: vec![CertificateEntryBody {
            source: "custom".into(),
            status: "active".into(),
            created_at: time(c.updated_at),
        }],
    }
}

/// A host name as certificates name it: letters, digits, `-`, dots, and
/// one leading `*.` label.
fn valid_hostname(name: &str) -> Result<String> {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let rest = name.strip_prefix("*.").unwrap_or(&name);
    let ok = !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(name)
    } else {
        Err(Error::invalid(format!("{name:?} is not a host name")))
    }
}

async fn find(state: &ApiState, app: &AppRecord, hostname: &str) -> Result<Certificate> {
    let hostname = hostname.to_ascii_lowercase();
    state
        .catalog
        .list_certificates(Some(&app.name))
        .await?
        .into_iter()
        .find(|c| c.hostname == hostname)
        .ok_or_else(|| {
            Error::not_found(format!(
                "app {} has no certificate for {hostname}",
                app.name
            ))
        })
}

/// Removes the app's certificate for the path's host name; the removed one.
async fn remove(state: &ApiState, caller: &Caller, path: &CertificatePath) -> Result<Certificate> {
    let app = state.app(caller, &path.app).await?;
    let found = find(state, &app, &path.hostname).await?;
    state
        .catalog
        .delete_certificate(&app.name, &found.hostname)
        .await?;
    changed(state).await;
    Ok(found)
}

async fn changed(state: &ApiState) {
    if let Some(plan) = &state.addresses {
        (plan.changed)().await;
    }
}

#[utoipa::path(
    post, path = "/v1/apps/{app_name}/certificates/custom", tag = "TLS Certificates",
    params(("app_name" = String, Path)),
    request_body = CustomCertificateBody,
    responses(
        (status = 201, body = CertificateDetailBody),
        (status = 400, body = ErrorResponse, description = "A bad host name, certificate or key, or a key that does not match"),
        (status = 422, body = ErrorResponse, description = "Another app has this host name"),
    )
)]
pub async fn upload_certificate(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
    JsonBody(body): JsonBody<CustomCertificateBody>,
) -> Result<(StatusCode, Json<CertificateDetailBody>)> {
    let app = state.app(&caller, &path.app).await?;
    let hostname = valid_hostname(body.hostname.as_deref().unwrap_or_default())?;
    let fullchain = body.fullchain.unwrap_or_default();
    let private_key = body.private_key.unwrap_or_default();
    midge_proxy::parse_certificate(&fullchain, &private_key)
        .map_err(|err| Error::invalid(format!("certificate for {hostname}: {err}")))?;
    let now = chrono::Utc::now().timestamp_millis();
    let certificate = Certificate {
        hostname,
        app: app.name.clone(),
        fullchain,
        private_key,
        created_at: now,
        updated_at: now,
    };
    state.catalog.put_certificate(&certificate).await?;
    changed(&state).await;
    Ok((StatusCode::CREATED, Json(detail(&certificate))))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/certificates", tag = "TLS Certificates",
    params(("app_name" = String, Path)),
    responses((status = 200, body = ListCertificatesBody), (status = 404, body = ErrorResponse))
)]
pub async fn list_certificates(
    State(state): State<ApiState>,
    caller: Caller,
    path: AppPath,
) -> Result<Json<ListCertificatesBody>> {
    let app = state.app(&caller, &path.app).await?;
    let certificates: Vec<CertificateSummaryBody> = state
        .catalog
        .list_certificates(Some(&app.name))
        .await?
        .iter()
        .map(|c| CertificateSummaryBody {
            hostname: c.hostname.clone(),
            configured: true,
            status: "active".into(),
            acme_requested: false,
            has_custom_certificate: true,
            has_fly_certificate: false,
            created_at: time(c.created_at),
            updated_at: time(c.updated_at),
        })
        .collect();
    Ok(Json(ListCertificatesBody {
        total_count: certificates.len(),
        certificates,
    }))
}

#[utoipa::path(
    get, path = "/v1/apps/{app_name}/certificates/{hostname}", tag = "TLS Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 200, body = CertificateDetailBody), (status = 404, body = ErrorResponse))
)]
pub async fn get_certificate(
    State(state): State<ApiState>,
    caller: Caller,
    path: CertificatePath,
) -> Result<Json<CertificateDetailBody>> {
    let app = state.app(&caller, &path.app).await?;
    Ok(Json(detail(&find(&state, &app, &path.hostname).await?)))
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/certificates/{hostname}", tag = "TLS Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorResponse))
)]
pub async fn delete_certificate(
    State(state): State<ApiState>,
    caller: Caller,
    path: CertificatePath,
) -> Result<StatusCode> {
    remove(&state, &caller, &path).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete, path = "/v1/apps/{app_name}/certificates/{hostname}/custom", tag = "TLS Certificates",
    params(("app_name" = String, Path), ("hostname" = String, Path)),
    responses((status = 200, body = CertificateDetailBody), (status = 404, body = ErrorResponse))
)]
pub async fn delete_custom_certificate(
    State(state): State<ApiState>,
    caller: Caller,
    path: CertificatePath,
) -> Result<Json<CertificateDetailBody>> {
    let found = remove(&state, &caller, &path).await?;
    Ok(Json(CertificateDetailBody {
        hostname: found.hostname,
        configured: false,
        status: "pending_ownership".into(),
        acme_requested: false,
        certificates: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_checked() {
        assert_eq!(
            valid_hostname("Shop.Example.com.").unwrap(),
            "shop.example.com"
        );
        assert_eq!(valid_hostname("*.example.com").unwrap(), "*.example.com");
        for bad in ["", "a..b", "a b.com", "*.", "x.*.com"] {
            assert!(valid_hostname(bad).is_err(), "{bad}");
        }
    }
}
