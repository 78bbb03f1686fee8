//! Sealing orgs' registry secrets before they reach the catalog:
//! XChaCha20-Poly1305 under a key the servers share (a file, made on first
//! use), bound to the org and registry so a sealed secret moved to another
//! row does not open.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 24;

/// Seals and opens registry secrets.
pub struct CredentialSealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for CredentialSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSealer").finish_non_exhaustive()
    }
}

/// Why a sealed secret did not open.
#[derive(Debug, thiserror::Error)]
#[error("a sealed registry secret does not open with this server's key")]
pub struct UnsealError;

impl CredentialSealer {
    pub fn new(key: [u8; KEY_BYTES]) -> CredentialSealer {
        CredentialSealer {
            cipher: XChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// The key in `path` (32 raw bytes), made with mode 0600 when there is
    /// none yet. Every API server of a cluster must be given the same file.
    pub fn from_key_file(path: &Path) -> std::io::Result<CredentialSealer> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let key: [u8; KEY_BYTES] = bytes.try_into().map_err(|bytes: Vec<u8>| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} holds {} bytes, not a {KEY_BYTES}-byte key",
                            path.display(),
                            bytes.len()
                        ),
                    )
                })?;
                Ok(CredentialSealer::new(key))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = XChaCha20Poly1305::generate_key(&mut OsRng);
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                file.write_all(&key)?;
                file.sync_all()?;
                Ok(CredentialSealer::new(key.into()))
            }
            Err(err) => Err(err),
        }
    }

    fn context(org: &str, registry: &str) -> Vec<u8> {
        format!("midge registry credential\0{org}\0{registry}").into_bytes()
    }

    /// The nonce, then the ciphertext of `secret`.
    pub fn seal(&self, org: &str, registry: &str, secret: &str) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = Self::context(org, registry);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, org: &str, registry: &str, sealed: &[u8]) -> Result<String, UnsealError> {
        if sealed.len() < NONCE_BYTES {
            return Err(UnsealError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let aad = Self::context(org, registry);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| UnsealError)?;
        String::from_utf8(plain).map_err(|_| UnsealError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_for_its_org_and_registry_and_key() {
        let sealer = CredentialSealer::new([7; KEY_BYTES]);
        let sealed = sealer.seal("acme", "127.0.0.1:5000", "hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            sealer.open("acme", "127.0.0.1:5000", &sealed).unwrap(),
            "hunter2"
        );
        assert!(sealer.open("globex", "127.0.0.1:5000", &sealed).is_err());
        assert!(sealer.open("acme", "ghcr.io", &sealed).is_err());
        assert!(
            CredentialSealer::new([8; KEY_BYTES])
                .open("acme", "127.0.0.1:5000", &sealed)
                .is_err()
        );
        assert!(
            sealer
                .open("acme", "127.0.0.1:5000", &sealed[..10])
                .is_err()
        );
        // A fresh nonce each time.
        assert_ne!(sealed, sealer.seal("acme", "127.0.0.1:5000", "hunter2"));
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = CredentialSealer::from_key_file(&path).unwrap();
        let sealed = first.seal("acme", "r", "s");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = CredentialSealer::from_key_file(&path).unwrap();
        assert_eq!(again.open("acme", "r", &sealed).unwrap(), "s");
        std::fs::write(&path, b"short").unwrap();
        assert!(CredentialSealer::from_key_file(&path).is_err());
    }
}
