//! `MachineConfig` and its parts. Fields midge acts on are typed; everything
//! else a client sends is kept verbatim in `extra` so that a GET returns what
//! was POSTed (clients do GET-modify-POST updates).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::GoDuration;
use crate::nullable::or_default;
use crate::signal::Signal;

pub type Extra = Map<String, Value>;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineConfig {
    #[serde(default)]
    pub image: String,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "InitConfig::is_empty"
    )]
    pub init: InitConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Guest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub files: Vec<MachineFile>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub services: Vec<MachineService>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub metadata: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub mounts: Vec<MachineMount>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_destroy: bool,
    /// The machine's process; only the first is run, as on Fly.
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub processes: Vec<MachineProcess>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One of `processes`: overrides of the image's process, the config's env
/// and the image user. `init`'s overrides still apply on top.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineProcess {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env_from: Vec<EnvFrom>,
    /// `user`, `uid`, `user:group` or `uid:gid`, as an image's `User`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// An environment variable set from a field of the machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EnvFrom {
    #[serde(default)]
    pub env_var: String,
    /// `id`, `version`, `app_name`, `private_ip`, `region` or `image`.
    #[serde(default)]
    pub field_ref: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl EnvFrom {
    pub const FIELDS: [&str; 6] = ["id", "version", "app_name", "private_ip", "region", "image"];
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InitConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

impl InitConfig {
    pub fn is_empty(&self) -> bool {
        self == &InitConfig::default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Guest {
    #[serde(default = "Guest::default_cpu_kind")]
    pub cpu_kind: String,
    #[serde(default = "Guest::default_cpus")]
    pub cpus: u32,
    #[serde(default = "Guest::default_memory_mb")]
    pub memory_mb: u32,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Default for Guest {
    fn default() -> Self {
        Guest {
            cpu_kind: Self::default_cpu_kind(),
            cpus: Self::default_cpus(),
            memory_mb: Self::default_memory_mb(),
            extra: Extra::new(),
        }
    }
}

/// midge's extension field `config.guest.midge_driver`: the driver a
/// machine asks for. Fly's clients never send it and get the host's driver.
pub const DRIVER_FIELD: &str = "midge_driver";

/// The drivers a machine may ask for.
pub const DRIVERS: [&str; 2] = ["sandbox", "microvm"];

/// A shared vCPU gets this share of a core (in thousandths), as on Fly
/// where a shared vCPU is guaranteed 1/16 of one.
pub const SHARED_CPU_MILLICPUS: u32 = 1000 / 16;

impl Guest {
    /// What the guest reserves of a host's CPUs, in thousandths of a CPU: a
    /// whole core per performance vCPU, a sixteenth per shared one.
    pub fn millicpus(&self) -> u32 {
        let per_cpu = if self.cpu_kind == "performance" {
            1000
        } else {
            SHARED_CPU_MILLICPUS
        };
        self.cpus.saturating_mul(per_cpu)
    }

    /// The driver the guest asks for, when it names one midge has.
    pub fn requested_driver(&self) -> Option<&'static str> {
        let asked = self.extra.get(DRIVER_FIELD)?.as_str()?;
        DRIVERS.into_iter().find(|driver| *driver == asked)
    }

    fn default_cpu_kind() -> String {
        "shared".into()
    }
    fn default_cpus() -> u32 {
        1
    }
    fn default_memory_mb() -> u32 {
        256
    }

    /// Fly's size presets: `shared-cpu-Nx` (N × 256 MB) and `performance-Nx`
    /// (N × 2048 MB).
    pub fn preset(name: &str) -> Option<Guest> {
        let (kind, per_cpu, count) = if let Some(rest) = name.strip_prefix("shared-cpu-") {
            ("shared", 256, rest)
        } else if let Some(rest) = name.strip_prefix("performance-") {
            ("performance", 2048, rest)
        } else {
            return None;
        };
        let cpus: u32 = count.strip_suffix('x')?.parse().ok()?;
        let allowed: &[u32] = if kind == "shared" {
            &[1, 2, 4, 6, 8]
        } else {
            &[1, 2, 4, 6, 8, 10, 12, 14, 16]
        };
        allowed.contains(&cpus).then(|| Guest {
            cpu_kind: kind.into(),
            cpus,
            memory_mb: cpus * per_cpu,
            extra: Extra::new(),
        })
    }
}

/// `no`, `always` or `on-failure` (plus the retired `spot-price`, taken as
/// `on-failure`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RestartConfig {
    #[serde(default)]
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    No,
    Always,
    OnFailure { max_retries: u32 },
}

/// Fly's default for on-failure: 10 retries within five minutes.
pub const DEFAULT_MAX_RETRIES: u32 = 10;

impl MachineConfig {
    pub fn restart_policy(&self) -> RestartPolicy {
        let Some(restart) = &self.restart else {
            return RestartPolicy::OnFailure {
                max_retries: DEFAULT_MAX_RETRIES,
            };
        };
        match restart.policy.as_str() {
            "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            _ => RestartPolicy::OnFailure {
                max_retries: restart.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            },
        }
    }

    pub fn stop_signal(&self) -> Signal {
        self.stop_config
            .as_ref()
            .and_then(|s| s.signal)
            .unwrap_or(Signal::INT)
    }

    pub fn stop_timeout(&self) -> std::time::Duration {
        self.stop_config
            .as_ref()
            .and_then(|s| s.timeout)
            .map(|d| d.0)
            .unwrap_or(std::time::Duration::from_secs(5))
    }

    pub fn guest_or_default(&self) -> Guest {
        self.guest.clone().unwrap_or_default()
    }

    /// Checks what a machine cannot run without; returns the reason.
    pub fn validate(&self) -> Result<(), String> {
        if self.image.trim().is_empty() {
            return Err("config.image is required".into());
        }
        if let Some(restart) = &self.restart
            && !matches!(
                restart.policy.as_str(),
                "" | "no" | "always" | "on-failure" | "spot-price"
            )
        {
            return Err(format!(
                "invalid restart policy {:?}: expected no, always or on-failure",
                restart.policy
            ));
        }
        if let Some(guest) = &self.guest {
            if guest.cpus == 0 || guest.cpus > 128 {
                return Err(format!("invalid guest.cpus {}", guest.cpus));
            }
            if guest.memory_mb < 128 {
                return Err(format!(
                    "invalid guest.memory_mb {}: at least 128 MB",
                    guest.memory_mb
                ));
            }
        }
        for file in &self.files {
            if !file.guest_path.starts_with('/') {
                return Err(format!(
                    "files: guest_path {:?} must be absolute",
                    file.guest_path
                ));
            }
        }
        if let Some(timeout) = self.stop_config.as_ref().and_then(|s| s.timeout)
            && timeout.0 > std::time::Duration::from_secs(300)
        {
            return Err("stop_config.timeout must be at most 300s".into());
        }
        for process in &self.processes {
            for from in &process.env_from {
                if from.env_var.trim().is_empty() {
                    return Err("processes: env_from needs an env_var".into());
                }
                if !EnvFrom::FIELDS.contains(&from.field_ref.as_str()) {
                    return Err(format!(
                        "processes: env_from field_ref {:?} is not one of {}",
                        from.field_ref,
                        EnvFrom::FIELDS.join(", ")
                    ));
                }
            }
            if process.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
                return Err("processes: user must not be empty".into());
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StopConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineFile {
    pub guest_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineService {
    #[serde(default)]
    pub protocol: String,
    #[serde(default)]
    pub internal_port: u16,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<MachinePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// `"off"`, `"stop"`, `"suspend"`, or legacy `true`/`false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_machines_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    /// Health checks the host runs against the service; a machine failing
    /// one gets no traffic.
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub checks: Vec<ServiceCheck>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A service's health check (`tcp` or `http`), as Fly's `MachineServiceCheck`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServiceCheck {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<GoDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<GoDuration>,
    /// The port checked when not the service's internal port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http` or `https`, for http checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub headers: Vec<HttpHeader>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HttpHeader {
    #[serde(default)]
    pub name: String,
    #[serde(default, deserialize_with = "or_default")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachinePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    #[serde(
        default,
        deserialize_with = "or_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub handlers: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Concurrency {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hard_limit: Option<u32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MachineMount {
    #[serde(default)]
    pub volume: String,
    #[serde(default)]
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Auto-extend: grow the volume when it is this full (percent)…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_threshold_percent: Option<u32>,
    /// …by this many GB…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_size_gb: Option<u64>,
    /// …up to this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb_limit: Option<u64>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl MachineMount {
    /// When and how the volume grows on its own: (threshold percent, GB to
    /// add, limit GB). Fly grows only when all three are given.
    pub fn auto_extend(&self) -> Option<(u32, u64, u64)> {
        Some((
            self.extend_threshold_percent?,
            self.add_size_gb?,
            self.size_gb_limit?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip_and_nulls_are_empty() {
        let body = r#"{"image":"busybox","env":null,"dns":{"skip_registration":true},
            "restart":{"policy":"always"},"stop_config":{"signal":"SIGTERM","timeout":"2s"}}"#;
        let config: MachineConfig = serde_json::from_str(body).unwrap();
        assert!(config.env.is_empty());
        assert_eq!(config.restart_policy(), RestartPolicy::Always);
        assert_eq!(config.stop_signal(), Signal::TERM);
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["dns"]["skip_registration"], true);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unknown_numbers_survive_any_number_of_round_trips() {
        let body = r#"{"image":"x","init":{"swap_size_mb":514444.4444444446444444444444442}}"#;
        let config: MachineConfig = serde_json::from_str(body).unwrap();
        let json = serde_json::to_string(&config).unwrap();
        let again: MachineConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(again, config, "{json}");
    }

    #[test]
    fn presets_and_defaults() {
        let preset = Guest::preset("shared-cpu-2x").unwrap();
        assert_eq!((preset.cpus, preset.memory_mb), (2, 512));
        assert_eq!(Guest::preset("performance-1x").unwrap().memory_mb, 2048);
        assert!(Guest::preset("shared-cpu-3x").is_none());
        let config = MachineConfig {
            image: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            config.restart_policy(),
            RestartPolicy::OnFailure { max_retries: 10 }
        );
        assert!(MachineConfig::default().validate().is_err());
    }

    #[test]
    fn processes_keep_what_midge_does_not_read_and_check_env_from() {
        let body = r#"{"image":"x","processes":[{"cmd":["a"],"user":"app",
            "env_from":[{"env_var":"ID","field_ref":"id"}],"secrets":[{"env_var":"S","name":"s"}]}]}"#;
        let config: MachineConfig = serde_json::from_str(body).unwrap();
        assert_eq!(config.processes[0].user.as_deref(), Some("app"));
        assert!(config.processes[0].extra.contains_key("secrets"));
        assert!(config.validate().is_ok());
        let again: MachineConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        let mut bad = config.clone();
        bad.processes[0].env_from[0].field_ref = "password".into();
        assert!(bad.validate().unwrap_err().contains("field_ref"));
    }
}

/// Thousandths of a CPU as people read them: `1`, `0.062`, `2.5`.
pub fn cpus_text(millicpus: u32) -> String {
    let whole = millicpus / 1000;
    let rest = millicpus % 1000;
    if rest == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{rest:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

#[cfg(test)]
mod cpu_tests {
    use super::*;

    #[test]
    fn shared_vcpus_reserve_a_sixteenth_and_performance_ones_a_core() {
        let shared = Guest::default();
        assert_eq!(shared.millicpus(), 62);
        let performance = Guest {
            cpu_kind: "performance".into(),
            cpus: 2,
            ..Guest::default()
        };
        assert_eq!(performance.millicpus(), 2000);
        assert_eq!(cpus_text(2000), "2");
        assert_eq!(cpus_text(62), "0.062");
        assert_eq!(cpus_text(2500), "2.5");
    }
}
