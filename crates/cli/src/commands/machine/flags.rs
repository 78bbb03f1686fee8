//! Flags shared by `machine run`, `create`, `update` and `clone`, and the edits
//! they make to a `MachineConfig`. Only flags that were given change anything,
//! so `update` keeps everything else as it was.

use anyhow::{Context, Result, bail};
use clap::Args;
use midge_types::{Guest, MachineConfig, MachineFile};
use serde_json::Value;

use crate::flag_values::{
    RestartChange, apply_ports, apply_restart, base64_encode, min_memory_per_cpu, parse_autostop,
    parse_key_value, parse_memory_mb, parse_port, parse_restart, validate_guest,
};

/// VM size flags.
#[derive(Args, Debug, Clone, Default)]
pub struct GuestFlags {
    /// Preset VM size: shared-cpu-1x, shared-cpu-2x … shared-cpu-8x, performance-1x … performance-16x
    #[arg(long, value_name = "SIZE")]
    pub vm_size: Option<String>,
    /// Number of CPUs
    #[arg(long, visible_alias = "cpus", value_name = "N")]
    pub vm_cpus: Option<u32>,
    /// Memory: megabytes, or with a unit (512mb, 1gb, 2G)
    #[arg(long, visible_alias = "memory", value_name = "SIZE")]
    pub vm_memory: Option<String>,
    /// CPU kind: shared or performance
    #[arg(long, visible_alias = "vm-cpukind", value_name = "KIND")]
    pub vm_cpu_kind: Option<String>,
    /// Run the machine as a QEMU microVM (midge's extension: sets
    /// guest.midge_driver to "microvm"; the host must run that driver)
    #[arg(long)]
    pub vm: bool,
}

impl GuestFlags {
    pub fn is_set(&self) -> bool {
        self.vm_size.is_some()
            || self.vm_cpus.is_some()
            || self.vm_memory.is_some()
            || self.vm_cpu_kind.is_some()
            || self.vm
    }

    /// The guest after these flags, starting from `current` (or
    /// `shared-cpu-1x` when there is none); unchanged when no flag was given.
    pub fn apply(&self, current: Option<Guest>) -> Result<Option<Guest>> {
        if !self.is_set() {
            return Ok(current);
        }
        let mut guest =
            current.unwrap_or_else(|| Guest::preset("shared-cpu-1x").unwrap_or_default());
        if let Some(size) = &self.vm_size {
            let preset = Guest::preset(size).with_context(|| {
                format!("unknown VM size {size:?}: use shared-cpu-Nx (N = 1, 2, 4, 6, 8) or performance-Nx (N = 1…16)")
            })?;
            guest.cpu_kind = preset.cpu_kind;
            guest.cpus = preset.cpus;
            guest.memory_mb = preset.memory_mb;
        }
        let memory_given = self.vm_memory.is_some() || self.vm_size.is_some();
        if let Some(kind) = &self.vm_cpu_kind {
            if kind != "shared" && kind != "performance" {
                bail!("invalid --vm-cpu-kind {kind:?}: expected shared or performance");
            }
            guest.cpu_kind = kind.clone();
        }
        if let Some(cpus) = self.vm_cpus {
            guest.cpus = cpus;
        }
        if let Some(memory) = &self.vm_memory {
            guest.memory_mb = parse_memory_mb(memory).map_err(anyhow::Error::msg)?;
        } else if !memory_given {
            // More CPUs or a bigger CPU kind need at least the minimum memory per CPU.
            guest.memory_mb = guest
                .memory_mb
                .max(guest.cpus * min_memory_per_cpu(&guest.cpu_kind));
        }
        if self.vm {
            guest
                .extra
                .insert("midge_driver".into(), Value::from("microvm"));
        }
        validate_guest(&guest).map_err(anyhow::Error::msg)?;
        Ok(Some(guest))
    }
}

/// Config flags `run`, `create` and `update` share (flyctl's `sharedFlags`).
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigFlags {
    #[command(flatten)]
    pub guest: GuestFlags,

    /// Set an environment variable: NAME=VALUE (repeatable)
    #[arg(short, long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// Set metadata: NAME=VALUE (repeatable)
    #[arg(short, long = "metadata", value_name = "NAME=VALUE")]
    pub metadata: Vec<String>,

    /// Expose a port: port[:machinePort][/protocol[:handler...]], e.g. 80/tcp,
    /// 443:8080/tcp:http:tls, 8000-8010:8000; `80/tcp:-` removes (repeatable)
    #[arg(short, long = "port", value_name = "PORT")]
    pub port: Vec<String>,

    /// Restart policy: no, always or on-failure (empty clears it)
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,

    /// Override the image's ENTRYPOINT (split like a shell; empty clears)
    #[arg(long, value_name = "COMMAND")]
    pub entrypoint: Option<String>,

    /// Put a local file on the machine: /guest/path=LOCAL_PATH (empty LOCAL_PATH removes)
    #[arg(long, value_name = "/GUEST/PATH=LOCAL_PATH")]
    pub file_local: Vec<String>,

    /// Put a file on the machine from plain text: /guest/path=VALUE. VALUE is the
    /// file's content as is; midge base64-encodes it for the API (empty removes)
    #[arg(long, value_name = "/GUEST/PATH=VALUE")]
    pub file_literal: Vec<String>,

    /// Let the proxy start this machine on requests (applied to every service
    /// only when given)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub autostart: Option<bool>,

    /// Let the proxy stop (or suspend) this machine when idle: off, stop or
    /// suspend; bare --autostop means stop (applied only when given)
    #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "stop")]
    pub autostop: Option<String>,

    /// Mount a volume: vol_ID:/path, or NAME:/path for an unattached volume of
    /// that name (replaces the mount at that path)
    #[arg(short = 'v', long = "volume", value_name = "VOLUME:/PATH")]
    pub volume: Vec<String>,

    /// Run on a schedule: hourly, daily, weekly or monthly
    #[arg(long, value_name = "INTERVAL")]
    pub schedule: Option<String>,

    /// Don't start the machine (create or update it stopped)
    #[arg(long)]
    pub skip_start: bool,
}

/// Autostop without autostart can leave a service with nothing running and
/// nothing to start it again.
fn warn_stops_without_starts(services: &[midge_types::MachineService]) {
    for service in services {
        let stops = match &service.autostop {
            Some(Value::Bool(on)) => *on,
            Some(Value::String(mode)) => mode != "off",
            _ => false,
        };
        if stops && service.autostart == Some(false) {
            eprintln!(
                "warning: the service on port {} stops machines when idle but never starts them; \
                 with no machine started it gets no traffic (hint: --autostart=true)",
                service.internal_port
            );
        }
    }
}

impl ConfigFlags {
    pub fn restart_given(&self) -> bool {
        self.restart.is_some()
    }

    pub fn apply(&self, config: &mut MachineConfig) -> Result<()> {
        config.guest = self.guest.apply(config.guest.take())?;
        for pair in &self.env {
            let (key, value) = parse_key_value(pair, "--env").map_err(anyhow::Error::msg)?;
            config.env.insert(key, value);
        }
        for pair in &self.metadata {
            let (key, value) = parse_key_value(pair, "--metadata").map_err(anyhow::Error::msg)?;
            config.metadata.insert(key, value);
        }
        let ports = self
            .port
            .iter()
            .map(|p| parse_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(anyhow::Error::msg)?;
        apply_ports(&mut config.services, &ports);
        if let Some(restart) = &self.restart {
            let change = parse_restart(restart).map_err(anyhow::Error::msg)?;
            if restart.trim() == "on-fail" {
                eprintln!("warning: --restart on-fail is deprecated, use on-failure");
            }
            apply_restart(&mut config.restart, &change);
            if change == RestartChange::Clear {
                config.restart = None;
            }
        }
        if let Some(entrypoint) = &self.entrypoint {
            config.init.entrypoint = split_command(entrypoint, "--entrypoint")?;
        }
        for spec in &self.volume {
            let mount = parse_volume(spec)?;
            config.mounts.retain(|m| m.path != mount.path);
            config.mounts.push(mount);
        }
        for spec in &self.file_local {
            let (path, local) = crate::flag_values::parse_file_arg(spec, "file-local")
                .map_err(anyhow::Error::msg)?;
            let content = if local.is_empty() {
                None
            } else {
                let bytes = std::fs::read(&local)
                    .with_context(|| format!("reading --file-local {local}"))?;
                Some(base64_encode(&bytes))
            };
            set_file(&mut config.files, path, content);
        }
        for spec in &self.file_literal {
            let (path, value) = crate::flag_values::parse_file_arg(spec, "file-literal")
                .map_err(anyhow::Error::msg)?;
            let content = (!value.is_empty()).then(|| base64_encode(value.as_bytes()));
            set_file(&mut config.files, path, content);
        }
        if self.autostart.is_some() || self.autostop.is_some() {
            let autostop = self
                .autostop
                .as_deref()
                .map(parse_autostop)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            for service in &mut config.services {
                if let Some(autostart) = self.autostart {
                    service.autostart = Some(autostart);
                }
                if let Some(autostop) = &autostop {
                    service.autostop = Some(Value::String(autostop.clone()));
                }
            }
            warn_stops_without_starts(&config.services);
        }
        if let Some(schedule) = &self.schedule {
            match schedule.as_str() {
                "hourly" | "daily" | "weekly" | "monthly" => {
                    config
                        .extra
                        .insert("schedule".into(), Value::String(schedule.clone()));
                }
                "" => {
                    config.extra.remove("schedule");
                }
                other => {
                    bail!("invalid --schedule {other:?}: expected hourly, daily, weekly or monthly")
                }
            }
        }
        Ok(())
    }
}

/// Splits a command line like a shell; an empty line means "none".
/// Turns `NAME:/path` volume flags into `vol_ID:/path`: an unattached volume
/// of that name in `region` (any region when none is given), as flyctl
/// picks one.
pub async fn resolve_volume_names(
    client: &midge_client::ApiClient,
    app: &str,
    region: Option<&str>,
    specs: &mut [String],
) -> Result<()> {
    if specs.iter().all(|spec| spec.starts_with("vol_")) {
        return Ok(());
    }
    let volumes = client.list_volumes(app).await?;
    let mut taken: Vec<String> = Vec::new();
    for spec in specs.iter_mut() {
        let Some((name, path)) = spec.split_once(':') else {
            continue;
        };
        if name.starts_with("vol_") {
            continue;
        }
        let free = volumes.iter().find(|v| {
            v.name == name
                && !v.state.is_destroyed()
                && v.attached_machine_id.is_none()
                && region.is_none_or(|r| r.is_empty() || r == v.region)
                && !taken.contains(&v.id)
        });
        let Some(volume) = free else {
            bail!(
                "not enough unattached volumes named {name:?}{}: create one with `midge volumes create {name} -a {app}`",
                region.map(|r| format!(" in {r}")).unwrap_or_default()
            );
        };
        taken.push(volume.id.clone());
        *spec = format!("{}:{path}", volume.id);
    }
    Ok(())
}

/// `vol_ID:/path`, as flyctl's `--volume` takes it (options after a
/// second colon are not supported).
fn parse_volume(spec: &str) -> Result<midge_types::MachineMount> {
    let (volume, path) = spec
        .split_once(':')
        .with_context(|| format!("invalid --volume {spec:?}: expected VOLUME_ID:/path"))?;
    if !volume.starts_with("vol_") {
        bail!(
            "invalid --volume {spec:?}: give the volume's id (vol_…); `midge volumes list` shows them"
        );
    }
    if !path.starts_with('/') || path.contains(':') {
        bail!("invalid --volume {spec:?}: the path must be absolute, with no options after it");
    }
    Ok(midge_types::MachineMount {
        volume: volume.to_string(),
        path: path.to_string(),
        ..Default::default()
    })
}

pub fn split_command(text: &str, flag: &str) -> Result<Option<Vec<String>>> {
    let words = shell_words::split(text).with_context(|| format!("parsing {flag} {text:?}"))?;
    Ok((!words.is_empty()).then_some(words))
}

fn set_file(files: &mut Vec<MachineFile>, guest_path: String, raw_value: Option<String>) {
    files.retain(|file| file.guest_path != guest_path);
    if let Some(raw_value) = raw_value {
        files.push(MachineFile {
            guest_path,
            raw_value: Some(raw_value),
            ..Default::default()
        });
    }
}

/// `--machine-config`: a JSON document or the path of a file holding one.
pub fn load_machine_config(source: &str) -> Result<MachineConfig> {
    let text = if source.trim_start().starts_with('{') {
        source.to_string()
    } else {
        std::fs::read_to_string(source)
            .with_context(|| format!("reading --machine-config file {source}"))?
    };
    serde_json::from_str(&text).with_context(|| format!("parsing --machine-config {source}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> ConfigFlags {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            flags: ConfigFlags,
        }
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        <Wrapper as clap::Parser>::try_parse_from(argv)
            .unwrap()
            .flags
    }

    #[test]
    fn vm_asks_for_the_microvm_driver() {
        let mut config = MachineConfig::default();
        flags(&["--vm"]).apply(&mut config).unwrap();
        let guest = config.guest.unwrap();
        assert_eq!(guest.extra["midge_driver"], "microvm");
        assert_eq!(guest.cpus, 1, "the default size is kept");
        let mut plain = MachineConfig::default();
        flags(&[]).apply(&mut plain).unwrap();
        assert!(plain.guest.is_none());
    }

    #[test]
    fn flags_build_a_config() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("local.txt");
        std::fs::write(&local, b"from disk").unwrap();
        let file_local = format!("/etc/disk={}", local.display());
        let flags = flags(&[
            "-e",
            "A=1",
            "--env",
            "B=x=y",
            "-m",
            "team=core",
            "-p",
            "443:8080/tcp:http:tls",
            "--restart",
            "always",
            "--entrypoint",
            "/bin/sh -c 'echo hi'",
            "--file-literal",
            "/etc/motd=hello",
            "--file-local",
            &file_local,
            "--vm-memory",
            "1gb",
            "--autostop",
            "--schedule",
            "daily",
        ]);
        let mut config = MachineConfig {
            image: "busybox".into(),
            ..Default::default()
        };
        flags.apply(&mut config).unwrap();
        assert_eq!(config.env["A"], "1");
        assert_eq!(config.env["B"], "x=y");
        assert_eq!(config.metadata["team"], "core");
        assert_eq!(config.services.len(), 1);
        assert_eq!(
            config.services[0].autostop,
            Some(Value::String("stop".into()))
        );
        assert_eq!(
            config.services[0].autostart, None,
            "autostart untouched unless given"
        );
        assert_eq!(config.restart.as_ref().unwrap().policy, "always");
        assert_eq!(
            config.init.entrypoint.as_deref().unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        let motd = config
            .files
            .iter()
            .find(|f| f.guest_path == "/etc/motd")
            .unwrap();
        assert_eq!(motd.raw_value.as_deref(), Some("aGVsbG8="));
        let disk = config
            .files
            .iter()
            .find(|f| f.guest_path == "/etc/disk")
            .unwrap();
        assert_eq!(
            disk.raw_value.as_deref(),
            Some(base64_encode(b"from disk").as_str())
        );
        let guest = config.guest.unwrap();
        assert_eq!(
            (guest.cpu_kind.as_str(), guest.cpus, guest.memory_mb),
            ("shared", 1, 1024)
        );
        assert_eq!(config.extra["schedule"], "daily");
    }

    #[test]
    fn guest_flags_presets_and_adjustments() {
        let preset = flags(&["--vm-size", "performance-2x"])
            .guest
            .apply(None)
            .unwrap()
            .unwrap();
        assert_eq!(
            (preset.cpu_kind.as_str(), preset.cpus, preset.memory_mb),
            ("performance", 2, 4096)
        );
        let more_cpus = flags(&["--cpus", "2"]).guest.apply(None).unwrap().unwrap();
        assert_eq!(
            (more_cpus.cpus, more_cpus.memory_mb),
            (2, 512),
            "memory raised to the per-cpu minimum"
        );
        let current = Guest::preset("shared-cpu-4x");
        assert_eq!(
            flags(&[]).guest.apply(current.clone()).unwrap(),
            current,
            "no flags, no change"
        );
        assert!(flags(&["--vm-size", "huge"]).guest.apply(None).is_err());
        assert!(flags(&["--memory", "100"]).guest.apply(None).is_err());
        assert!(flags(&["--vm-cpu-kind", "gpu"]).guest.apply(None).is_err());
    }

    #[test]
    fn empty_values_clear() {
        let mut config = MachineConfig {
            image: "busybox".into(),
            ..Default::default()
        };
        flags(&[
            "--file-literal",
            "/a=1",
            "--entrypoint",
            "x",
            "--restart",
            "no",
        ])
        .apply(&mut config)
        .unwrap();
        flags(&["--file-literal", "/a=", "--entrypoint", "", "--restart", ""])
            .apply(&mut config)
            .unwrap();
        assert!(config.files.is_empty());
        assert_eq!(config.init.entrypoint, None);
        assert_eq!(config.restart, None);
    }

    #[test]
    fn bad_values_are_errors_naming_the_flag() {
        let mut config = MachineConfig::default();
        let err = flags(&["-e", "NOEQUALS"])
            .apply(&mut config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--env"), "{err}");
        let err = flags(&["--file-local", "/x=/definitely/not/here"])
            .apply(&mut config)
            .unwrap_err();
        assert!(format!("{err:#}").contains("/definitely/not/here"));
        assert!(flags(&["--schedule", "yearly"]).apply(&mut config).is_err());
        assert!(flags(&["--autostop=sometimes"]).apply(&mut config).is_err());
    }

    #[test]
    fn machine_config_from_json_or_file() {
        let inline = load_machine_config(r#"{"image":"busybox","env":{"A":"1"}}"#).unwrap();
        assert_eq!(inline.env["A"], "1");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"image":"alpine"}"#).unwrap();
        assert_eq!(
            load_machine_config(path.to_str().unwrap()).unwrap().image,
            "alpine"
        );
        assert!(load_machine_config("/no/such/file.json").is_err());
    }

    #[test]
    fn volume_flags_add_or_replace_a_mount_by_path() {
        let mut config = MachineConfig::default();
        let flags = ConfigFlags {
            volume: vec!["vol_abc:/data".into()],
            ..Default::default()
        };
        flags.apply(&mut config).unwrap();
        let again = ConfigFlags {
            volume: vec!["vol_def:/data".into()],
            ..Default::default()
        };
        again.apply(&mut config).unwrap();
        assert_eq!(config.mounts.len(), 1);
        assert_eq!(config.mounts[0].volume, "vol_def");
        for bad in [
            "data:/data",
            "vol_abc",
            "vol_abc:relative",
            "vol_abc:/data:rw",
        ] {
            let flags = ConfigFlags {
                volume: vec![bad.into()],
                ..Default::default()
            };
            assert!(flags.apply(&mut MachineConfig::default()).is_err(), "{bad}");
        }
    }
}
