//! Parsing of flyctl-style flag values (memory sizes, ports, `K=V` pairs, guest
//! files) and the edits they make to a `MachineConfig`.

use base64::Engine as _;
use midge_types::{Guest, MachinePort, MachineService, RestartConfig};

/// A memory size as flyctl reads it: a bare number is megabytes; `k`, `m`, `g`,
/// `t` suffixes (optionally followed by `b` or `ib`, any case) are binary units.
pub fn parse_memory_mb(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let invalid = || format!("invalid memory size {text:?}: expected e.g. 512, 512mb or 1gb");
    let value: f64 = number.parse().map_err(|_| invalid())?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let megabytes = match unit {
        "" | "m" => value,
        "k" => value / 1024.0,
        "g" => value * 1024.0,
        "t" => value * 1024.0 * 1024.0,
        _ => return Err(invalid()),
    };
    if megabytes.fract() != 0.0 {
        return Err(format!(
            "invalid memory size {text:?}: not a whole number of megabytes"
        ));
    }
    if megabytes <= 0.0 || megabytes > f64::from(u32::MAX) {
        return Err(format!("invalid memory size {text:?}"));
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a whole number within 1..=u32::MAX, checked above"
    )]
    Ok(megabytes as u32)
}

/// `NAME=VALUE`; the value may itself contain `=`.
pub fn parse_key_value(text: &str, what: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("invalid {what} {text:?}: expected NAME=VALUE")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgePorts {
    Single(u16),
    Range { start: u16, end: u16 },
}

/// One `--port` value: `port[:machinePort][/protocol[:handler…]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub edge: EdgePorts,
    pub internal_port: u16,
    pub protocol: String,
    pub handlers: Vec<String>,
    /// `…/tcp:-` removes the port instead of adding it.
    pub remove: bool,
}

pub fn parse_port(text: &str) -> Result<PortSpec, String> {
    let invalid = |why: &str| format!("invalid port {text:?}: {why}");
    let (ports, protocol_part) = match text.trim().split_once('/') {
        Some((ports, rest)) => (ports, Some(rest)),
        None => (text.trim(), None),
    };
    let (protocol, handlers) = match protocol_part {
        Some(rest) => {
            let mut parts = rest.split(':');
            let protocol = parts.next().unwrap_or_default().to_ascii_lowercase();
            (protocol, parts.map(str::to_string).collect::<Vec<_>>())
        }
        None => ("tcp".to_string(), Vec::new()),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(invalid("protocol must be tcp or udp"));
    }
    let remove = handlers == ["-"];
    if !remove {
        for handler in &handlers {
            let valid = !handler.is_empty()
                && handler
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(invalid(&format!(
                    "bad handler {handler:?} (e.g. http, tls, pg_tls, proxy_proto)"
                )));
            }
        }
    }
    let parse_number = |value: &str| -> Result<u16, String> {
        match value.trim().parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(invalid(&format!("{value:?} is not a port number"))),
        }
    };
    let (edge_text, internal_text) = match ports.split_once(':') {
        Some((edge, internal)) => (edge, Some(internal)),
        None => (ports, None),
    };
    let edge = match edge_text.split_once('-') {
        Some((start, end)) => {
            let (start, end) = (parse_number(start)?, parse_number(end)?);
            if start > end {
                return Err(invalid("the range start is above its end"));
            }
            EdgePorts::Range { start, end }
        }
        None => EdgePorts::Single(parse_number(edge_text)?),
    };
    let internal_port = match (internal_text, edge) {
        (Some(internal), _) => parse_number(internal)?,
        (None, EdgePorts::Single(port)) => port,
        (None, EdgePorts::Range { start, .. }) => start,
    };
    Ok(PortSpec {
        edge,
        internal_port,
        protocol,
        handlers,
        remove,
    })
}

impl PortSpec {
    fn matches(&self, port: &MachinePort) -> bool {
        match self.edge {
            EdgePorts::Single(number) => port.port == Some(number),
            EdgePorts::Range { start, end } => {
                port.start_port == Some(start) && port.end_port == Some(end)
            }
        }
    }

    fn to_machine_port(&self) -> MachinePort {
        let (port, start_port, end_port) = match self.edge {
            EdgePorts::Single(number) => (Some(number), None, None),
            EdgePorts::Range { start, end } => (None, Some(start), Some(end)),
        };
        MachinePort {
            port,
            start_port,
            end_port,
            handlers: self.handlers.clone(),
            ..Default::default()
        }
    }
}

/// Adds, replaces or removes ports in services keyed by (internal port,
/// protocol); services left without ports are dropped.
pub fn apply_ports(services: &mut Vec<MachineService>, specs: &[PortSpec]) {
    if specs.is_empty() {
        return;
    }
    for spec in specs {
        let position = services
            .iter()
            .position(|s| s.internal_port == spec.internal_port && s.protocol == spec.protocol);
        if spec.remove {
            if let Some(index) = position {
                services[index].ports.retain(|port| !spec.matches(port));
            }
            continue;
        }
        let index = position.unwrap_or_else(|| {
            services.push(MachineService {
                protocol: spec.protocol.clone(),
                internal_port: spec.internal_port,
                ..Default::default()
            });
            services.len() - 1
        });
        let ports = &mut services[index].ports;
        match ports.iter_mut().find(|port| spec.matches(port)) {
            Some(existing) => existing.handlers = spec.handlers.clone(),
            None => ports.push(spec.to_machine_port()),
        }
    }
    services.retain(|service| !service.ports.is_empty());
}

/// `--autostop` values: `off`, `stop`, `suspend`, or flyctl's `true`/`false`.
pub fn parse_autostop(text: &str) -> Result<String, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "stop" | "true" => Ok("stop".into()),
        "off" | "false" => Ok("off".into()),
        "suspend" => Ok("suspend".into()),
        _ => Err(format!(
            "invalid --autostop {text:?}: expected off, stop or suspend"
        )),
    }
}

/// What a `--restart` value does to the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartChange {
    Set(&'static str),
    Clear,
}

pub fn parse_restart(text: &str) -> Result<RestartChange, String> {
    match text.trim() {
        "" => Ok(RestartChange::Clear),
        "no" => Ok(RestartChange::Set("no")),
        "always" => Ok(RestartChange::Set("always")),
        "on-failure" | "on-fail" => Ok(RestartChange::Set("on-failure")),
        other => Err(format!(
            "invalid restart policy {other:?}: expected no, always or on-failure"
        )),
    }
}

pub fn apply_restart(restart: &mut Option<RestartConfig>, change: &RestartChange) {
    match change {
        RestartChange::Clear => *restart = None,
        RestartChange::Set(policy) => {
            let config = restart.get_or_insert_with(RestartConfig::default);
            if config.policy != *policy {
                config.max_retries = None;
            }
            config.policy = policy.to_string();
        }
    }
}

/// `--file-local` / `--file-literal` value split into guest path and value.
pub fn parse_file_arg(text: &str, flag: &str) -> Result<(String, String), String> {
    let (path, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid --{flag} {text:?}: expected /guest/path=VALUE"))?;
    if !path.starts_with('/') {
        return Err(format!(
            "invalid --{flag} {text:?}: the guest path {path:?} must be absolute"
        ));
    }
    Ok((path.to_string(), value.to_string()))
}

pub fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// flyctl's size rules: shared cpus ∈ {1,2,4,6,8} with 256–2048 MB per cpu in
/// steps of 256; performance cpus ∈ {1…16 even, 32, 64, 128} with 2048–8192 MB
/// per cpu in steps of 1024.
pub fn validate_guest(guest: &Guest) -> Result<(), String> {
    let (allowed_cpus, step, min_per_cpu, max_per_cpu): (&[u32], u32, u32, u32) =
        match guest.cpu_kind.as_str() {
            "shared" => (&[1, 2, 4, 6, 8], 256, 256, 2048),
            "performance" => (
                &[1, 2, 4, 6, 8, 10, 12, 14, 16, 32, 64, 128],
                1024,
                2048,
                8192,
            ),
            other => {
                return Err(format!(
                    "invalid cpu kind {other:?}: expected shared or performance"
                ));
            }
        };
    let kind = &guest.cpu_kind;
    if !allowed_cpus.contains(&guest.cpus) {
        return Err(format!(
            "invalid number of cpus {} for {kind} machines: choose one of {allowed_cpus:?}",
            guest.cpus
        ));
    }
    let (min, max) = (guest.cpus * min_per_cpu, guest.cpus * max_per_cpu);
    if guest.memory_mb < min || guest.memory_mb > max {
        return Err(format!(
            "invalid memory size {} MB for {} {kind} cpu(s): choose between {min} MB and {max} MB",
            guest.memory_mb, guest.cpus
        ));
    }
    if !guest.memory_mb.is_multiple_of(step) {
        let suggestion = guest.memory_mb.div_ceil(step) * step;
        return Err(format!(
            "invalid memory size {} MB: {kind} machines take multiples of {step} MB (try {suggestion} MB)",
            guest.memory_mb
        ));
    }
    Ok(())
}

pub fn min_memory_per_cpu(cpu_kind: &str) -> u32 {
    if cpu_kind == "performance" { 2048 } else { 256 }
}

/// The image a clone pins to: `registry/repository:tag@digest` of the resolved image.
pub fn pinned_image(image_ref: &midge_types::ImageRef, fallback: &str) -> String {
    image_ref.pinned().unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_as_flyctl_reads_them() {
        for (text, expected) in [
            ("512", 512),
            ("512M", 512),
            ("512mb", 512),
            ("512MiB", 512),
            ("1G", 1024),
            ("1GB", 1024),
            ("1gb", 1024),
            ("2g", 2048),
            ("1.5gb", 1536),
            ("1048576k", 1024),
        ] {
            assert_eq!(parse_memory_mb(text), Ok(expected), "{text}");
        }
        for bad in ["", "lots", "1x", "0", "-5", "0.5", "1.3mb"] {
            assert!(parse_memory_mb(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn key_values_keep_equals_in_the_value() {
        assert_eq!(
            parse_key_value("A=b=c", "env").unwrap(),
            ("A".into(), "b=c".into())
        );
        assert_eq!(
            parse_key_value("EMPTY=", "env").unwrap(),
            ("EMPTY".into(), String::new())
        );
        assert!(
            parse_key_value("novalue", "env")
                .unwrap_err()
                .contains("NAME=VALUE")
        );
        assert!(parse_key_value("=x", "env").is_err());
    }

    #[test]
    fn ports_parse_like_flyctl_with_ranges_fixed() {
        let spec = parse_port("443:8080/tcp:http:tls").unwrap();
        assert_eq!(spec.edge, EdgePorts::Single(443));
        assert_eq!(spec.internal_port, 8080);
        assert_eq!(spec.handlers, ["http", "tls"]);
        let plain = parse_port("80").unwrap();
        assert_eq!((plain.internal_port, plain.protocol.as_str()), (80, "tcp"));
        let udp = parse_port("53/UDP").unwrap();
        assert_eq!(udp.protocol, "udp");
        let range = parse_port("8000-8010:9000/tcp").unwrap();
        assert_eq!(
            range.edge,
            EdgePorts::Range {
                start: 8000,
                end: 8010
            }
        );
        assert_eq!(range.internal_port, 9000);
        assert!(parse_port("80/tcp:-").unwrap().remove);
        for bad in [
            "",
            "x",
            "0",
            "70000",
            "80/sctp",
            "9-3:80",
            "80/tcp:HTTP",
            "80:",
        ] {
            assert!(parse_port(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn ports_become_services_and_can_be_removed() {
        let mut services = Vec::new();
        let specs: Vec<_> = [
            "80:8080/tcp:http",
            "443:8080/tcp:http:tls",
            "8000-8010:9000",
        ]
        .iter()
        .map(|p| parse_port(p).unwrap())
        .collect();
        apply_ports(&mut services, &specs);
        assert_eq!(services.len(), 2);
        assert_eq!(services[0].internal_port, 8080);
        assert_eq!(services[0].ports.len(), 2);
        assert_eq!(services[0].ports[1].handlers, ["http", "tls"]);
        let range = &services[1].ports[0];
        assert_eq!(
            (range.start_port, range.end_port, range.port),
            (Some(8000), Some(8010), None)
        );

        apply_ports(&mut services, &[parse_port("80:8080/tcp:tls").unwrap()]);
        assert_eq!(
            services[0].ports[0].handlers,
            ["tls"],
            "same edge port replaces handlers"
        );

        let removals: Vec<_> = ["80:8080/tcp:-", "443:8080/tcp:-"]
            .iter()
            .map(|p| parse_port(p).unwrap())
            .collect();
        apply_ports(&mut services, &removals);
        assert_eq!(services.len(), 1, "a service without ports is dropped");
        assert_eq!(services[0].internal_port, 9000);
    }

    #[test]
    fn restart_and_autostop_values() {
        let mut restart = Some(RestartConfig {
            policy: "on-failure".into(),
            max_retries: Some(3),
            ..Default::default()
        });
        apply_restart(&mut restart, &parse_restart("on-fail").unwrap());
        assert_eq!(
            restart.as_ref().unwrap().max_retries,
            Some(3),
            "same policy keeps retries"
        );
        apply_restart(&mut restart, &parse_restart("no").unwrap());
        assert_eq!(restart.as_ref().unwrap().policy, "no");
        assert_eq!(restart.as_ref().unwrap().max_retries, None);
        apply_restart(&mut restart, &parse_restart("").unwrap());
        assert!(restart.is_none());
        assert!(parse_restart("sometimes").is_err());
        assert_eq!(parse_autostop("true").unwrap(), "stop");
        assert_eq!(parse_autostop("suspend").unwrap(), "suspend");
        assert!(parse_autostop("maybe").is_err());
    }

    #[test]
    fn file_args_need_absolute_paths() {
        assert_eq!(
            parse_file_arg("/etc/a=b=c", "file-literal").unwrap(),
            ("/etc/a".into(), "b=c".into())
        );
        assert!(
            parse_file_arg("etc/a=b", "file-literal")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(parse_file_arg("/etc/a", "file-local").is_err());
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn guest_rules() {
        assert!(validate_guest(&Guest::preset("shared-cpu-1x").unwrap()).is_ok());
        assert!(validate_guest(&Guest::preset("performance-2x").unwrap()).is_ok());
        let guest = |kind: &str, cpus, memory_mb| Guest {
            cpu_kind: kind.into(),
            cpus,
            memory_mb,
            ..Default::default()
        };
        assert!(
            validate_guest(&guest("shared", 3, 768))
                .unwrap_err()
                .contains("cpus")
        );
        assert!(
            validate_guest(&guest("shared", 1, 300))
                .unwrap_err()
                .contains("try 512")
        );
        assert!(validate_guest(&guest("shared", 1, 4096)).is_err());
        assert!(validate_guest(&guest("performance", 1, 1024)).is_err());
        assert!(validate_guest(&guest("gpu", 1, 1024)).is_err());
    }

    #[test]
    fn pinned_image_names_the_digest() {
        let image_ref = midge_types::ImageRef {
            registry: "127.0.0.1:5000".into(),
            repository: "library/busybox".into(),
            tag: "latest".into(),
            digest: "sha256:abc".into(),
            labels: Default::default(),
        };
        assert_eq!(
            pinned_image(&image_ref, "busybox"),
            "127.0.0.1:5000/library/busybox:latest@sha256:abc"
        );
        assert_eq!(
            pinned_image(&midge_types::ImageRef::default(), "busybox"),
            "busybox"
        );
    }
}
