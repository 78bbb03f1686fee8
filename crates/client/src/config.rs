//! The client configuration file: where the API is and which token to send.
//! `midge up` writes it so that every other command finds the local platform
//! without flags or environment variables.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const DEFAULT_API_URL: &str = "http://127.0.0.1:4280";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClientConfig {
    #[serde(default)]
    pub api_url: String,
    #[serde(default)]
    pub token: String,
}

impl ClientConfig {
    /// `$MIDGE_CONFIG`, else `$XDG_CONFIG_HOME/midge/config.json`, else
    /// `~/.config/midge/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("MIDGE_CONFIG").filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(path));
        }
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
        Some(config_home.join("midge").join("config.json"))
    }

    /// Reads the config at the default path; `None` when there is no file.
    pub fn load() -> Result<Option<ClientConfig>> {
        match Self::default_path() {
            Some(path) => Self::load_from(&path),
            None => Ok(None),
        }
    }

    pub fn load_from(path: &Path) -> Result<Option<ClientConfig>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("reading client config {}", path.display()));
            }
        };
        let config = serde_json::from_str(&text)
            .with_context(|| format!("parsing client config {}", path.display()))?;
        Ok(Some(config))
    }

    /// Writes the config to the default path and returns that path.
    pub fn save(&self) -> Result<PathBuf> {
        let path = Self::default_path()
            .context("cannot tell where to write the client config: set MIDGE_CONFIG or HOME")?;
        self.save_to(&path)?;
        Ok(path)
    }

    /// Writes atomically with mode 0600: the file holds a token.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;

        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("config.json");
        let temp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temp)?;
            file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, path)
        };
        write()
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&temp);
            })
            .with_context(|| format!("writing client config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_round_trips_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/config.json");
        let config = ClientConfig {
            api_url: "http://127.0.0.1:9999".into(),
            token: "secret".into(),
        };
        config.save_to(&path).unwrap();
        assert_eq!(ClientConfig::load_from(&path).unwrap(), Some(config));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_file_is_none_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            ClientConfig::load_from(&dir.path().join("absent.json")).unwrap(),
            None
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json").unwrap();
        let err = ClientConfig::load_from(&bad).unwrap_err();
        assert!(format!("{err:#}").contains("bad.json"), "{err:#}");
    }
}
