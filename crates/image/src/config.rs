//! The runtime part of an OCI image config and its JSON form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ImageError;

/// What a machine needs from the image to run it.
#[derive(Debug, Serialize, Deserialize, Clone, Default, PartialEq)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub working_dir: String,
    /// "port/proto", e.g. "8080/tcp".
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The `config` object of an OCI/Docker image config; every field may be absent or null.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawRuntimeConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    user: Option<String>,
    working_dir: Option<String>,
    exposed_ports: Option<BTreeMap<String, Value>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawImageConfig {
    config: Option<RawRuntimeConfig>,
}

impl ImageConfig {
    /// Reads the runtime config out of an image config blob.
    pub fn from_oci_json(bytes: &[u8]) -> Result<ImageConfig, ImageError> {
        let raw: RawImageConfig =
            serde_json::from_slice(bytes).map_err(|err| ImageError::BadImage {
                what: "config".to_string(),
                detail: err.to_string(),
            })?;
        let runtime = raw.config.unwrap_or_default();
        Ok(ImageConfig {
            entrypoint: runtime.entrypoint,
            cmd: runtime.cmd,
            env: runtime.env.unwrap_or_default(),
            user: runtime.user.unwrap_or_default(),
            working_dir: runtime.working_dir.unwrap_or_default(),
            exposed_ports: runtime
                .exposed_ports
                .map(|ports| ports.into_keys().collect())
                .unwrap_or_default(),
            labels: runtime.labels.unwrap_or_default(),
        })
    }

    /// Builds an OCI image config blob for a linux/amd64 image with the given layer diff ids.
    pub fn to_oci_json(&self, diff_ids: &[String]) -> Vec<u8> {
        let mut runtime = serde_json::Map::new();
        if let Some(entrypoint) = &self.entrypoint {
            runtime.insert("Entrypoint".into(), json!(entrypoint));
        }
        if let Some(cmd) = &self.cmd {
            runtime.insert("Cmd".into(), json!(cmd));
        }
        if !self.env.is_empty() {
            runtime.insert("Env".into(), json!(self.env));
        }
        if !self.user.is_empty() {
            runtime.insert("User".into(), json!(self.user));
        }
        if !self.working_dir.is_empty() {
            runtime.insert("WorkingDir".into(), json!(self.working_dir));
        }
        if !self.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = self
                .exposed_ports
                .iter()
                .map(|port| (port.clone(), json!({})))
                .collect();
            runtime.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !self.labels.is_empty() {
            runtime.insert("Labels".into(), json!(self.labels));
        }
        let document = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": runtime,
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        serde_json::to_vec(&document).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_fields_are_read_and_nulls_tolerated() {
        let blob = br#"{"architecture":"amd64","config":{"Entrypoint":null,"Cmd":["sh"],
            "Env":["A=1"],"User":"app","WorkingDir":"/srv","ExposedPorts":{"80/tcp":{}},
            "Labels":{"k":"v"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config = ImageConfig::from_oci_json(blob).unwrap();
        assert_eq!(config.entrypoint, None);
        assert_eq!(config.cmd, Some(vec!["sh".to_string()]));
        assert_eq!(config.env, vec!["A=1"]);
        assert_eq!(config.user, "app");
        assert_eq!(config.working_dir, "/srv");
        assert_eq!(config.exposed_ports, vec!["80/tcp"]);
        assert_eq!(config.labels.get("k").map(String::as_str), Some("v"));
    }

    #[test]
    fn round_trips_through_oci_json() {
        let config = ImageConfig {
            entrypoint: Some(vec!["/bin/app".into()]),
            cmd: Some(vec!["--flag".into()]),
            env: vec!["PATH=/bin".into()],
            user: "1000:1000".into(),
            working_dir: "/home/app".into(),
            exposed_ports: vec!["8080/tcp".into()],
            labels: BTreeMap::from([("team".to_string(), "core".to_string())]),
        };
        let blob = config.to_oci_json(&["sha256:00".to_string()]);
        assert_eq!(ImageConfig::from_oci_json(&blob).unwrap(), config);
    }

    #[test]
    fn config_without_runtime_section_is_empty() {
        let config = ImageConfig::from_oci_json(br#"{"rootfs":{}}"#).unwrap();
        assert_eq!(config, ImageConfig::default());
        assert!(ImageConfig::from_oci_json(b"not json").is_err());
    }
}
