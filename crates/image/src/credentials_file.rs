//! Registry credentials in Docker's `config.json` format, as `docker login`,
//! podman and containerd's tools keep them: `{"auths": {"REGISTRY": {...}}}`
//! with `auth` (base64 of `user:password`), or `username` and `password`,
//! or a `registrytoken`/`identitytoken` sent as a bearer token. Other keys of
//! the file (`credsStore`, `credHelpers`, …) are kept on writes and ignored
//! on reads.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::{ImageError, RegistryCredential, RegistrySecret, tempname};

/// The file container tools use: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn default_credentials_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|dir| !dir.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    let home = std::env::var_os("HOME").filter(|home| !home.is_empty())?;
    Some(PathBuf::from(home).join(".docker").join("config.json"))
}

/// The registry as image references name it: Docker's keys may be URLs
/// (`https://index.docker.io/v1/`), and Docker Hub has several names.
pub fn normalize_registry(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// The credentials in the file at `path`; none when it does not exist.
pub fn read_credentials_file(path: &Path) -> Result<Vec<RegistryCredential>, ImageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(ImageError::io("read registry credentials", path)(err)),
    };
    parse_credentials(&bytes).map_err(|detail| ImageError::BadCredentials {
        path: path.to_path_buf(),
        detail,
    })
}

/// Parses a Docker `config.json`.
pub fn parse_credentials(bytes: &[u8]) -> Result<Vec<RegistryCredential>, String> {
    let file: Value = serde_json::from_slice(bytes).map_err(|err| err.to_string())?;
    let Some(auths) = file.get("auths") else {
        return Ok(Vec::new());
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| "\"auths\" must be an object".to_string())?;
    let mut credentials = Vec::new();
    for (key, entry) in auths {
        let field = |name: &str| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .filter(|value| !value.is_empty())
        };
        let secret = if let Some(token) = field("registrytoken").or_else(|| field("identitytoken"))
        {
            RegistrySecret::Bearer {
                token: token.to_string(),
            }
        } else if let Some(auth) = field("auth") {
            let decoded = STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| format!("{key}: \"auth\" is not base64 of user:password"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| format!("{key}: \"auth\" is not base64 of user:password"))?;
            RegistrySecret::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }
        } else if let (Some(username), Some(password)) = (field("username"), field("password")) {
            RegistrySecret::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }
        } else {
            // An entry a credential helper fills in: nothing to send.
            continue;
        };
        credentials.push(RegistryCredential {
            registry: normalize_registry(key),
            secret,
        });
    }
    Ok(credentials)
}

/// Records `credential` in the file at `path` (created with mode 0600),
/// replacing the registry's entry and keeping everything else.
pub fn write_login(path: &Path, credential: &RegistryCredential) -> Result<(), ImageError> {
    edit(path, |auths| {
        auths.retain(|key, _| normalize_registry(key) != credential.registry);
        let entry = match &credential.secret {
            RegistrySecret::Basic { username, password } => {
                json!({"auth": STANDARD.encode(format!("{username}:{password}"))})
            }
            RegistrySecret::Bearer { token } => json!({"registrytoken": token}),
        };
        auths.insert(credential.registry.clone(), entry);
        true
    })
}

/// Removes `registry`'s entry from the file at `path`; false when it had none.
pub fn remove_login(path: &Path, registry: &str) -> Result<bool, ImageError> {
    let registry = normalize_registry(registry);
    let mut removed = false;
    edit(path, |auths| {
        let before = auths.len();
        auths.retain(|key, _| normalize_registry(key) != registry);
        removed = auths.len() != before;
        removed
    })?;
    Ok(removed)
}

/// Rewrites the file (atomically, mode 0600) after `change` edits its
/// `auths`, when `change` says it changed anything.
fn edit(
    path: &Path,
    change: impl FnOnce(&mut Map<String, Value>) -> bool,
) -> Result<(), ImageError> {
    let bad = |detail: String| ImageError::BadCredentials {
        path: path.to_path_buf(),
        detail,
    };
    let mut file = match fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes).map_err(|err| bad(err.to_string()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(err) => return Err(ImageError::io("read registry credentials", path)(err)),
    };
    let top = file
        .as_object_mut()
        .ok_or_else(|| bad("the file is not a JSON object".to_string()))?;
    let auths = top
        .entry("auths")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("\"auths\" must be an object".to_string()))?;
    if !change(auths) {
        return Ok(());
    }
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(ImageError::io("create registry credentials dir", dir))?;
    let temp = dir.join(tempname::unique("credentials"));
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|err| bad(err.to_string()))?;
    bytes.push(b'\n');
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temp)
        .and_then(|mut out| {
            out.write_all(&bytes)?;
            out.sync_all()
        });
    let renamed = written.and_then(|()| {
        fs::set_permissions(&temp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&temp, path)
    });
    if let Err(err) = renamed {
        let _ = fs::remove_file(&temp);
        return Err(ImageError::io("write registry credentials", path)(err));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_of(credentials: &[RegistryCredential], registry: &str) -> Option<String> {
        credentials
            .iter()
            .find(|credential| credential.registry == registry)
            .map(|credential| match &credential.secret {
                RegistrySecret::Basic { username, password } => {
                    format!("basic {username}:{password}")
                }
                RegistrySecret::Bearer { token } => format!("bearer {token}"),
            })
    }

    #[test]
    fn reads_every_form_docker_writes() {
        let file = json!({
            "auths": {
                "127.0.0.1:5000": {"auth": STANDARD.encode("alice:pa:ss")},
                "https://index.docker.io/v1/": {"username": "bob", "password": "hunter2"},
                "ghcr.io": {"registrytoken": "tok"},
                "quay.io": {"identitytoken": "idtok", "auth": STANDARD.encode("x:y")},
                "helper.example": {},
            },
            "credsStore": "desktop",
        });
        let credentials = parse_credentials(file.to_string().as_bytes()).unwrap();
        assert_eq!(credentials.len(), 4, "{credentials:?}");
        assert_eq!(
            secret_of(&credentials, "127.0.0.1:5000").unwrap(),
            "basic alice:pa:ss"
        );
        assert_eq!(
            secret_of(&credentials, "docker.io").unwrap(),
            "basic bob:hunter2"
        );
        assert_eq!(secret_of(&credentials, "ghcr.io").unwrap(), "bearer tok");
        assert_eq!(secret_of(&credentials, "quay.io").unwrap(), "bearer idtok");
    }

    #[test]
    fn refuses_what_is_not_a_credentials_file() {
        assert!(parse_credentials(b"not json").is_err());
        assert!(parse_credentials(br#"{"auths": []}"#).is_err());
        let bad_auth = json!({"auths": {"r": {"auth": STANDARD.encode("no-colon")}}});
        assert!(parse_credentials(bad_auth.to_string().as_bytes()).is_err());
        assert!(parse_credentials(b"{}").unwrap().is_empty());
    }

    #[test]
    fn login_writes_a_private_file_and_keeps_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker").join("config.json");
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let other = json!({"auths": {"ghcr.io": {"registrytoken": "keep"}}, "credsStore": "x"});
        fs::write(&path, other.to_string()).unwrap();
        let login = |password: &str| RegistryCredential {
            registry: "127.0.0.1:5000".to_string(),
            secret: RegistrySecret::Basic {
                username: "alice".to_string(),
                password: password.to_string(),
            },
        };
        write_login(&path, &login("first")).unwrap();
        write_login(&path, &login("second")).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let credentials = read_credentials_file(&path).unwrap();
        assert_eq!(credentials.len(), 2);
        assert_eq!(
            secret_of(&credentials, "127.0.0.1:5000").unwrap(),
            "basic alice:second"
        );
        assert_eq!(secret_of(&credentials, "ghcr.io").unwrap(), "bearer keep");
        let file: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(file["credsStore"], "x");

        assert!(remove_login(&path, "127.0.0.1:5000").unwrap());
        assert!(!remove_login(&path, "127.0.0.1:5000").unwrap());
        let left = read_credentials_file(&path).unwrap();
        assert_eq!(left.len(), 1);
        assert!(secret_of(&left, "127.0.0.1:5000").is_none());
        // Nothing but the file itself is left in its directory.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_file_has_no_credentials() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_credentials_file(&dir.path().join("none.json"))
                .unwrap()
                .is_empty()
        );
    }
}
