//! TLS for the `tls` handler: the certificate an app uploaded for the name
//! the client asks for (SNI; exact, then one wildcard label), else a
//! self-signed one for `<app>.<domain>` made once per app. ALPN offers h2
//! and HTTP/1.1 when `http` follows `tls`, else the port's `tls_options.alpn`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// A certificate an app uploaded, as PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomCertificate {
    pub app: String,
    pub hostname: String,
    pub fullchain: String,
    pub private_key: String,
}

/// Why an uploaded certificate cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("fullchain holds no PEM certificate")]
    NoCertificate,
    #[error("private_key is not a PEM private key: {0}")]
    BadKey(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
}

/// Parses a PEM chain and key into what rustls serves, checking they match.
pub fn parse_certificate(
    fullchain: &str,
    private_key: &str,
) -> Result<CertifiedKey, CertificateError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(fullchain.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(private_key.as_bytes())
        .map_err(|e| CertificateError::BadKey(e.to_string()))?;
    let signer = any_supported_type(&key).map_err(|e| CertificateError::BadKey(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signer);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(_)) => Err(CertificateError::KeyMismatch),
        // The key's public half is unknown to this provider: cannot check.
        Err(_) => Ok(certified),
    }
}

/// Every app's certificates, uploaded and self-signed.
#[derive(Debug)]
pub struct Certificates {
    domain: String,
    custom: RwLock<HashMap<(String, String), Arc<CertifiedKey>>>,
    self_signed: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Certificates {
    pub fn new(domain: &str) -> Certificates {
        Certificates {
            domain: domain.to_string(),
            custom: RwLock::default(),
            self_signed: Mutex::default(),
        }
    }

    /// Replaces the uploaded certificates; unusable ones are left out.
    pub fn set_custom(&self, certificates: &[CustomCertificate]) {
        let mut parsed = HashMap::new();
        for c in certificates {
            match parse_certificate(&c.fullchain, &c.private_key) {
                Ok(key) => {
                    parsed.insert(
                        (c.app.clone(), c.hostname.to_ascii_lowercase()),
                        Arc::new(key),
                    );
                }
                Err(err) => {
                    tracing::warn!(app = %c.app, hostname = %c.hostname, "certificate left out: {err}");
                }
            }
        }
        *self.custom.write().unwrap_or_else(|p| p.into_inner()) = parsed;
    }

    fn resolve(&self, app: &str, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name.map(str::to_ascii_lowercase) {
            let custom = self.custom.read().unwrap_or_else(|p| p.into_inner());
            let wildcard = name.split_once('.').map(|(_, rest)| format!("*.{rest}"));
            for candidate in std::iter::once(name).chain(wildcard) {
                if let Some(key) = custom.get(&(app.to_string(), candidate)) {
                    return Some(key.clone());
                }
            }
        }
        self.self_signed_for(app)
    }

    fn self_signed_for(&self, app: &str) -> Option<Arc<CertifiedKey>> {
        let mut made = self.self_signed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = made.get(app) {
            return Some(key.clone());
        }
        let name = format!("{app}.{}", self.domain);
        let generated = rcgen::generate_simple_self_signed(vec![name])
            .map_err(|e| tracing::warn!(%app, "making a self-signed certificate: {e}"))
            .ok()?;
        let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der()).ok()?;
        let signer = any_supported_type(&key).ok()?;
        let certified = Arc::new(CertifiedKey::new(
            vec![generated.cert.der().clone()],
            signer,
        ));
        made.insert(app.to_string(), certified.clone());
        Some(certified)
    }

    /// A TLS acceptor for one app's listener.
    pub fn acceptor(
        self: &Arc<Self>,
        app: &str,
        alpn: Vec<Vec<u8>>,
    ) -> Result<TlsAcceptor, rustls::Error> {
        let resolver = AppResolver {
            certificates: self.clone(),
            app: app.to_string(),
        };
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

#[derive(Debug)]
struct AppResolver {
    certificates: Arc<Certificates>,
    app: String,
}

impl ResolvesServerCert for AppResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certificates.resolve(&self.app, hello.server_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    #[test]
    fn uploaded_certificates_are_checked_and_found_by_name_or_wildcard() {
        let (chain, key) = pem_pair("shop.example.com");
        let (_, other_key) = pem_pair("x");
        assert!(parse_certificate(&chain, &key).is_ok());
        assert_eq!(
            parse_certificate("junk", &key).err(),
            Some(CertificateError::NoCertificate)
        );
        assert!(matches!(
            parse_certificate(&chain, "junk"),
            Err(CertificateError::BadKey(_))
        ));
        assert_eq!(
            parse_certificate(&chain, &other_key).err(),
            Some(CertificateError::KeyMismatch)
        );

        let certificates = Certificates::new("localhost");
        let (wild_chain, wild_key) = pem_pair("*.example.org");
        certificates.set_custom(&[
            CustomCertificate {
                app: "web".into(),
                hostname: "shop.example.com".into(),
                fullchain: chain.clone(),
                private_key: key,
            },
            CustomCertificate {
                app: "web".into(),
                hostname: "*.example.org".into(),
                fullchain: wild_chain,
                private_key: wild_key,
            },
        ]);
        let uploaded = certificates
            .resolve("web", Some("SHOP.example.com"))
            .unwrap();
        assert_eq!(
            uploaded.cert[0].as_ref(),
            CertificateDer::from_pem_slice(chain.as_bytes())
                .unwrap()
                .as_ref()
        );
        assert!(certificates.resolve("web", Some("a.example.org")).is_some());
        // Another app, or no uploaded name: the app's self-signed one, made once.
        let own = certificates
            .resolve("api", Some("shop.example.com"))
            .unwrap();
        assert_ne!(own.cert[0].as_ref(), uploaded.cert[0].as_ref());
        let again = certificates.resolve("api", None).unwrap();
        assert!(Arc::ptr_eq(&own, &again));
    }
}
