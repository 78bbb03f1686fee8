//! What a run of a machine is made of: the image's layers, the network
//! attachment, the size, and what init is told (the image's process, the
//! config's overrides, env with Fly's FLY_* variables, files).

use base64::Engine;
use midge_agent_api::AgentError;
use midge_driver::{GuestResources, MachineLaunch, NetworkAttachment};
use midge_image::Image;
use midge_init::{FileSpec, ImageProcess, InitOverrides, RunSpec};
use midge_types::MachineConfig;

use crate::agent::AgentCore;
use crate::record::MachineRecord;

impl AgentCore {
    /// Everything a run of this machine's current version needs; attaches
    /// the network if it went missing.
    pub(crate) async fn launch_for(
        &self,
        record: &MachineRecord,
    ) -> Result<MachineLaunch, AgentError> {
        // The machine's own image: its create or update already checked access.
        let image = self.image_for_run(&record.image_key_or_config()).await?;
        let mut net = self
            .network
            .plan(&record.id, record.net_slot(), record.org_network)
            .map_err(|e| AgentError::host("planning the machine's network", e))?;
        if !self.network.is_attached(&net).await {
            net = self
                .network
                .attach(&record.id, record.net_slot(), record.org_network)
                .await
                .map_err(|e| AgentError::host("attaching the machine's network", e))?;
        }
        let guest = record.config().guest_or_default();
        let holds_run = self
            .machines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&record.id)
            .is_some_and(|entry| entry.current().is_some());
        let volumes = self
            .volume_disks(&record.id, record.config(), holds_run)
            .await?;
        Ok(MachineLaunch {
            machine_id: record.id.clone(),
            layers: image.layers.clone(),
            network: NetworkAttachment {
                netns_path: net.netns_path,
                ipv4: net.ipv4,
                gateway_v4: net.gateway_v4,
                ipv6: net.ipv6,
                gateway_v6: net.gateway_v6,
                mtu: net.mtu,
            },
            hostname: record.id.clone(),
            guest: GuestResources {
                cpus: guest.cpus,
                memory_mb: guest.memory_mb,
            },
            kernel_args: kernel_args(&guest),
            run_spec: run_spec(record, &image)?,
            etc_hosts: etc_hosts(record),
            resolv_conf: resolv_conf(self.config.nameserver, record.config()),
            volumes,
        })
    }
}

/// Fly's `guest.kernel_args` (kept among the guest's other fields).
fn kernel_args(guest: &midge_types::Guest) -> Vec<String> {
    guest
        .extra
        .get("kernel_args")
        .and_then(|args| args.as_array())
        .map(|args| {
            args.iter()
                .filter_map(|arg| arg.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl MachineRecord {
    /// The image store key, or the configured image before the first pull.
    pub(crate) fn image_key_or_config(&self) -> String {
        if self.image_key.is_empty() {
            self.config().image.clone()
        } else {
            self.image_key.clone()
        }
    }
}

/// Log files are rotated past this size (one old file is kept).
pub const LOG_MAX_BYTES: u64 = 4 * 1024 * 1024;

pub fn run_spec(record: &MachineRecord, image: &Image) -> Result<RunSpec, AgentError> {
    let config: &MachineConfig = record.config();
    let guest = config.guest_or_default();
    let process = config.processes.first().cloned().unwrap_or_default();
    let mut env = config.env.clone();
    env.extend(process.env.clone());
    for from in &process.env_from {
        env.insert(from.env_var.clone(), field_value(record, &from.field_ref)?);
    }
    let fly_env = [
        ("FLY_APP_NAME", record.app.clone()),
        ("FLY_MACHINE_ID", record.id.clone()),
        ("FLY_ALLOC_ID", record.id.clone()),
        ("FLY_REGION", record.region.clone()),
        ("FLY_PRIVATE_IP", record.private_ip.clone()),
        ("FLY_IMAGE_REF", config.image.clone()),
        ("FLY_MACHINE_VERSION", record.version().to_string()),
        ("FLY_VM_MEMORY_MB", guest.memory_mb.to_string()),
        ("PRIMARY_REGION", record.region.clone()),
    ];
    for (key, value) in fly_env {
        env.entry(key.to_string()).or_insert(value);
    }
    let files = config
        .files
        .iter()
        .filter_map(|file| file.raw_value.as_ref().map(|raw| (file, raw)))
        .map(|(file, raw)| {
            base64::engine::general_purpose::STANDARD
                .decode(raw.trim())
                .map_err(|e| {
                    AgentError::Invalid(format!(
                        "files: raw_value of {} is not base64: {e}",
                        file.guest_path
                    ))
                })?;
            Ok(FileSpec {
                guest_path: file.guest_path.clone(),
                content_base64: raw.trim().to_string(),
                mode: file.mode,
            })
        })
        .collect::<Result<Vec<_>, AgentError>>()?;
    let non_empty = |v: &Option<Vec<String>>| v.clone().filter(|v| !v.is_empty());
    Ok(RunSpec {
        machine_id: record.id.clone(),
        hostname: record.id.clone(),
        image: ImageProcess {
            entrypoint: image.config.entrypoint.clone(),
            cmd: image.config.cmd.clone(),
            env: image.config.env.clone(),
            user: image.config.user.clone(),
            working_dir: image.config.working_dir.clone(),
        },
        init: InitOverrides {
            // The process's exec gives way to any of init's overrides.
            exec: non_empty(&config.init.exec).or_else(|| {
                (config.init.entrypoint.is_none() && config.init.cmd.is_none())
                    .then(|| non_empty(&process.exec))
                    .flatten()
            }),
            entrypoint: non_empty(&config.init.entrypoint)
                .or_else(|| non_empty(&process.entrypoint)),
            cmd: non_empty(&config.init.cmd).or_else(|| non_empty(&process.cmd)),
            tty: config.init.tty,
        },
        env,
        user: process.user.clone().filter(|u| !u.trim().is_empty()),
        files,
        volume_paths: config.mounts.iter().map(|m| m.path.clone()).collect(),
        log_max_bytes: LOG_MAX_BYTES,
    })
}

/// The machine field an `env_from` names.
fn field_value(record: &MachineRecord, field: &str) -> Result<String, AgentError> {
    Ok(match field {
        "id" => record.id.clone(),
        "version" => record.version().to_string(),
        "app_name" => record.app.clone(),
        "private_ip" => record.private_ip.clone(),
        "region" => record.region.clone(),
        "image" => record.config().image.clone(),
        other => {
            return Err(AgentError::Invalid(format!(
                "processes: env_from field_ref {other:?} is not a machine field"
            )));
        }
    })
}

pub fn etc_hosts(record: &MachineRecord) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{id} fly-local-6pn\n",
        ip = record.private_ip,
        id = record.id
    )
}

/// The machine's `/etc/resolv.conf`: its `config.dns` nameservers, search
/// domains and options where it sets them, else the host's DNS server (or,
/// without one, the host's resolvers that mean something inside the
/// machine's network namespace).
pub fn resolv_conf(nameserver: Option<std::net::IpAddr>, config: &MachineConfig) -> String {
    let dns = config.extra.get("dns");
    let strings = |key: &str| -> Vec<String> {
        dns.and_then(|d| d.get(key))
            .and_then(|v| v.as_array())
            .map(|items| {
                items
                    .iter()
                    .filter_map(|v| v.as_str())
                    .filter(|s| !s.trim().is_empty() && !s.contains(['\n', '\r']))
                    .map(|s| s.trim().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut text = String::new();
    let chosen = strings("nameservers");
    if !chosen.is_empty() {
        for server in chosen {
            text.push_str(&format!("nameserver {server}\n"));
        }
    } else if let Some(server) = nameserver {
        text.push_str(&format!("nameserver {server}\n"));
    } else {
        text.push_str(&host_resolvers());
    }
    let searches = strings("searches");
    if !searches.is_empty() {
        text.push_str(&format!("search {}\n", searches.join(" ")));
    }
    let options: Vec<String> = dns
        .and_then(|d| d.get("options"))
        .and_then(|v| v.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|o| {
                    let name = o.get("name")?.as_str()?.trim();
                    if name.is_empty() || name.contains(char::is_whitespace) {
                        return None;
                    }
                    match o.get("value").and_then(|v| v.as_str()).map(str::trim) {
                        Some(value)
                            if !value.is_empty() && !value.contains(char::is_whitespace) =>
                        {
                            Some(format!("{name}:{value}"))
                        }
                        _ => Some(name.to_string()),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if !options.is_empty() {
        text.push_str(&format!("options {}\n", options.join(" ")));
    }
    text
}

/// The host's resolvers, unless they are loopback addresses that mean
/// nothing inside the machine's own network namespace.
fn host_resolvers() -> String {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let usable: Vec<&str> = host
        .lines()
        .filter(|line| {
            let line = line.trim();
            match line.strip_prefix("nameserver") {
                Some(addr) => {
                    let addr = addr.trim();
                    !(addr.starts_with("127.") || addr == "::1")
                }
                None => !line.is_empty(),
            }
        })
        .collect();
    let mut text = usable.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_the_hosts_dns_unless_the_config_says_otherwise() {
        let plain = MachineConfig::default();
        let dns: std::net::IpAddr = "fdaa::3".parse().unwrap();
        assert_eq!(resolv_conf(Some(dns), &plain), "nameserver fdaa::3\n");
        let custom: MachineConfig = serde_json::from_value(serde_json::json!({
            "image": "x",
            "dns": {
                "nameservers": ["1.1.1.1", "bad\nline"],
                "searches": ["a.internal", "b"],
                "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}, {"name": "x y"}],
            }
        }))
        .unwrap();
        assert_eq!(
            resolv_conf(Some(dns), &custom),
            "nameserver 1.1.1.1\nsearch a.internal b\noptions ndots:2 edns0\n"
        );
    }
}
