//! The seccomp filter of every sandbox: Docker's default profile, resolved
//! for this host's architecture, kernel and the capabilities a machine gets.
//!
//! `seccomp/docker-default.json` is Docker's profile as data, unchanged: the
//! file `seccomp/default.json` of github.com/moby/profiles (Apache-2.0), as
//! moby/moby vendors it at commit b985e2313a86. Its entries may name the
//! architectures, kernels and capabilities they apply to; the OCI runtime
//! spec has no such conditions, so they are resolved here, as Docker does
//! before it hands the filter to runc.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

const DOCKER_DEFAULT: &str = include_str!("../seccomp/docker-default.json");

/// Sub-architectures the filter leaves out, unlike Docker: the x32 ABI.
/// With it, runc 1.1 takes about 20 ms longer to build the filter of every
/// container (measured on x86_64: 48 → 68 ms per `runc run`, 51 ms without
/// it); x32 binaries are all but extinct and most kernels refuse them anyway.
/// A syscall of an architecture not listed gets no rule and is refused.
const LEFT_OUT_ARCHES: &[&str] = &["SCMP_ARCH_X32"];

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    default_errno_ret: Option<u32>,
    arch_map: Vec<ArchEntry>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchEntry {
    architecture: String,
    sub_architectures: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: String,
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

/// When a rule applies (`includes`: all of these hold) or does not
/// (`excludes`: any of these holds).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    min_kernel: Option<String>,
}

/// The host a filter is resolved for.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Go's name of the architecture (`amd64`, `arm64`), as the profile uses.
    pub arch: &'a str,
    /// libseccomp's name of it (`SCMP_ARCH_X86_64`).
    pub scmp_arch: &'a str,
    /// (major, minor) of the running kernel.
    pub kernel: (u32, u32),
    pub capabilities: &'a [&'a str],
}

/// The filter as the OCI runtime spec's `linux.seccomp`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSeccomp {
    default_action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_errno_ret: Option<u32>,
    architectures: Vec<String>,
    syscalls: Vec<SyscallRule>,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct SyscallRule {
    names: Vec<String>,
    action: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno_ret: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<Value>,
}

#[cfg(test)]
impl LinuxSeccomp {
    /// Whether a syscall is allowed unconditionally (by a rule without
    /// argument checks).
    pub fn allows(&self, name: &str) -> bool {
        self.syscalls.iter().any(|rule| {
            rule.action == "SCMP_ACT_ALLOW"
                && rule.args.is_empty()
                && rule.names.iter().any(|n| n == name)
        })
    }
}

/// Docker's default filter for `target`.
pub fn docker_default(target: &Target) -> LinuxSeccomp {
    // The profile is part of the binary and checked by a test: it parses.
    let profile: Profile =
        serde_json::from_str(DOCKER_DEFAULT).expect("the built-in seccomp profile parses");
    resolve(&profile, target)
}

fn resolve(profile: &Profile, target: &Target) -> LinuxSeccomp {
    let capabilities: BTreeSet<&str> = target.capabilities.iter().copied().collect();
    let architectures = profile
        .arch_map
        .iter()
        .find(|entry| entry.architecture == target.scmp_arch)
        .map(|entry| {
            std::iter::once(entry.architecture.clone())
                .chain(entry.sub_architectures.iter().flatten().cloned())
                .filter(|arch| !LEFT_OUT_ARCHES.contains(&arch.as_str()))
                .collect()
        })
        .unwrap_or_else(|| vec![target.scmp_arch.to_owned()]);
    let syscalls = profile
        .syscalls
        .iter()
        .filter(|rule| applies(rule, target, &capabilities))
        .map(|rule| SyscallRule {
            names: rule.names.clone(),
            action: rule.action.clone(),
            errno_ret: rule.errno_ret,
            args: rule.args.clone(),
        })
        .collect();
    LinuxSeccomp {
        default_action: profile.default_action.clone(),
        default_errno_ret: profile.default_errno_ret,
        architectures,
        syscalls,
    }
}

fn applies(rule: &Rule, target: &Target, capabilities: &BTreeSet<&str>) -> bool {
    let included = (rule.includes.arches.is_empty()
        || rule.includes.arches.iter().any(|a| a == target.arch))
        && rule
            .includes
            .caps
            .iter()
            .all(|cap| capabilities.contains(cap.as_str()))
        && rule
            .includes
            .min_kernel
            .as_deref()
            .and_then(parse_kernel_version)
            .is_none_or(|min| target.kernel >= min);
    let excluded = rule.excludes.arches.iter().any(|a| a == target.arch)
        || rule
            .excludes
            .caps
            .iter()
            .any(|cap| capabilities.contains(cap.as_str()));
    included && !excluded
}

/// `"6.18.0-1-amd64"` → `(6, 18)`.
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's version; (0, 0) when unreadable, so that rules
/// needing a newer kernel are left out rather than assumed.
pub fn running_kernel() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|release| parse_kernel_version(release.trim()))
        .unwrap_or((0, 0))
}

/// This build's architecture in the profile's two vocabularies.
pub fn host_arch() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "SCMP_ARCH_X86_64"),
        "aarch64" => ("arm64", "SCMP_ARCH_AARCH64"),
        "riscv64" => ("riscv64", "SCMP_ARCH_RISCV64"),
        "s390x" => ("s390x", "SCMP_ARCH_S390X"),
        other => (other, "SCMP_ARCH_NATIVE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CAPS: &[&str] = &["CAP_CHOWN", "CAP_SYS_CHROOT", "CAP_KILL"];

    fn amd64(capabilities: &'static [&'static str]) -> Target<'static> {
        Target {
            arch: "amd64",
            scmp_arch: "SCMP_ARCH_X86_64",
            kernel: (6, 18),
            capabilities,
        }
    }

    #[test]
    fn the_default_profile_allows_the_common_calls_and_denies_the_dangerous() {
        let filter = docker_default(&amd64(DOCKER_CAPS));
        assert_eq!(filter.default_action, "SCMP_ACT_ERRNO");
        assert_eq!(filter.default_errno_ret, Some(1));
        assert_eq!(filter.architectures, ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]);
        for allowed in ["read", "execve", "arch_prctl", "ptrace", "chroot"] {
            assert!(filter.allows(allowed), "{allowed} is allowed");
        }
        // Without CAP_SYS_ADMIN: no mounts, no namespaces, no kernel modules.
        for denied in [
            "mount",
            "unshare",
            "setns",
            "init_module",
            "reboot",
            "keyctl",
            "s390_runtime_instr",
        ] {
            assert!(!filter.allows(denied), "{denied} is denied");
        }
        // clone is allowed only without namespace flags; clone3 says ENOSYS
        // so that libcs fall back to clone.
        let clone3 = filter
            .syscalls
            .iter()
            .find(|rule| rule.names == ["clone3"])
            .expect("a clone3 rule");
        assert_eq!(clone3.errno_ret, Some(38));
        assert!(
            filter
                .syscalls
                .iter()
                .any(|rule| rule.names == ["clone"] && !rule.args.is_empty())
        );
    }

    #[test]
    fn capabilities_and_kernels_select_rules() {
        let admin = docker_default(&amd64(&["CAP_SYS_ADMIN"]));
        assert!(admin.allows("mount") && admin.allows("clone3"));
        assert!(
            !admin
                .syscalls
                .iter()
                .any(|rule| rule.names == ["clone3"] && rule.action == "SCMP_ACT_ERRNO")
        );
        let old_kernel = docker_default(&Target {
            kernel: (4, 4),
            ..amd64(&[])
        });
        assert!(
            !old_kernel.allows("ptrace"),
            "ptrace needs 4.8 without CAP_SYS_PTRACE"
        );
        let arm = docker_default(&Target {
            arch: "arm64",
            scmp_arch: "SCMP_ARCH_AARCH64",
            kernel: (6, 1),
            capabilities: &[],
        });
        assert!(arm.allows("set_tls") && !arm.allows("arch_prctl"));
        assert_eq!(arm.architectures, ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]);
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_kernel_version("4.8"), Some((4, 8)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
