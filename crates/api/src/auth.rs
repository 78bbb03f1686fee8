//! Who is calling: the token in `Authorization`, and what it may see.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use midge_store::{AppRecord, Catalog, Identity, Org, PERSONAL_ORG, Principal};

use crate::ApiState;
use crate::error::Error;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| Error::unauthenticated("missing Authorization header"))?;
        let token = bearer_token(header.to_str().unwrap_or_default()).ok_or_else(|| {
            Error::unauthenticated(
                "Authorization header must be \"Bearer <token>\" or \"FlyV1 <token>\"",
            )
        })?;
        let identity = state
            .catalog
            .authenticate(token)
            .await?
            .ok_or_else(|| Error::unauthenticated("token validation error"))?;
        Ok(Caller { identity })
    }
}

/// The token of `Bearer <token>` or `FlyV1 <token>` (scheme case-insensitive).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("flyv1");
    (known && !token.is_empty()).then_some(token)
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.identity.principal == Principal::Admin
    }

    pub fn require_admin(&self) -> Result<(), Error> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(Error::forbidden("this operation needs an admin token"))
        }
    }

    /// Who holds a lease this caller takes: `<token name>@<org or admin>`.
    pub fn lease_owner(&self) -> String {
        match &self.identity.principal {
            Principal::Admin => format!("{}@admin", self.identity.token_name),
            Principal::Org(slug) => format!("{}@{slug}", self.identity.token_name),
        }
    }

    /// The org a request names (`personal` or none meaning the caller's own),
    /// provided the caller may act in it.
    pub async fn org(&self, catalog: &dyn Catalog, requested: Option<&str>) -> Result<Org, Error> {
        let requested = requested.map(str::trim).filter(|slug| !slug.is_empty());
        let slug = match (&self.identity.principal, requested) {
            (Principal::Admin, None) => PERSONAL_ORG,
            (Principal::Admin, Some(slug)) => slug,
            (Principal::Org(own), None | Some(PERSONAL_ORG)) => own.as_str(),
            (Principal::Org(own), Some(slug)) if slug == own => own.as_str(),
            (Principal::Org(_), Some(slug)) => {
                return Err(Error::forbidden(format!(
                    "token has no access to org {slug:?}"
                )));
            }
        };
        catalog
            .get_org(slug)
            .await?
            .ok_or_else(|| Error::not_found(format!("org {slug:?} not found")))
    }

    /// Refuses an app of another org (403: it exists, but not for this caller).
    pub fn check_app(&self, app: &AppRecord) -> Result<(), Error> {
        match &self.identity.principal {
            Principal::Admin => Ok(()),
            Principal::Org(slug) if *slug == app.org_slug => Ok(()),
            Principal::Org(_) => Err(Error::forbidden(format!(
                "token has no access to app {:?}",
                app.name
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer   abc "), Some("abc"));
        assert_eq!(bearer_token("FlyV1 fm2_x"), Some("fm2_x"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("abc"), None);
    }
}
