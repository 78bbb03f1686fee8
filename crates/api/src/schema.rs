//! Request and response bodies the API itself defines, with their OpenAPI
//! schemas. Machine objects and configs are `midge-types` structs and appear
//! in the document as free-form objects.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Fly's error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// `<code>: <message>`, the code being one of `invalid_argument`,
    /// `unauthenticated`, `permission_denied`, `not_found`,
    /// `deadline_exceeded`, `aborted`, `failed_precondition`, …
    pub error: String,
    /// Machine-readable cause: `insufficient_capacity`, `name_taken`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct CreateAppBody {
    pub name: Option<String>,
    /// Older clients send the name as `app_name`.
    pub app_name: Option<String>,
    /// `personal` (the default) means the token's own org.
    pub org_slug: Option<String>,
    /// A named private network of the org, isolated from its default one.
    pub network: Option<String>,
    /// A retried create with the same key returns the app the first one made.
    pub idempotency_key: Option<String>,
    /// Accepted (and type-checked) for Fly clients; midge has no use for it.
    #[allow(dead_code)]
    pub enable_subdomains: Option<bool>,
    /// Accepted (and type-checked) for fly-go; midge has no app roles.
    #[allow(dead_code)]
    pub app_role_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateAppResponse {
    pub id: String,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgRef {
    pub name: String,
    pub slug: String,
    pub internal_numeric_id: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AppResponse {
    pub id: String,
    pub name: String,
    pub status: String,
    pub organization: OrgRef,
    pub network: String,
    pub machine_count: u64,
    pub volume_count: u64,
    pub internal_numeric_id: i64,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Where the proxy serves the app: its host name on the shared
    /// listener, then its own addresses (midge's extension).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListAppsResponse {
    pub total_apps: u64,
    pub apps: Vec<AppResponse>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateOrgBody {
    pub slug: String,
    pub name: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrgResponse {
    pub slug: String,
    pub name: String,
    pub internal_numeric_id: i64,
    /// The 32 network bits of the org's private IPv6 prefix.
    pub network: u32,
    /// Unix milliseconds.
    pub created_at: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListOrgsResponse {
    pub orgs: Vec<OrgResponse>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateTokenBody {
    pub name: String,
    /// The org the token acts in; `personal` when omitted.
    pub org_slug: Option<String>,
    /// An admin token sees every org; `org_slug` must then be omitted.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreateTokenResponse {
    /// Shown once; only its hash is kept.
    pub token: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OkResponse {
    pub ok: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct LeaseBody {
    /// Seconds; the `ttl` query parameter wins when both are given.
    pub ttl: Option<u64>,
    pub description: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseInfo {
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
    pub version: String,
}

/// Fly's lease envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseEnvelope {
    pub status: String,
    pub data: LeaseInfo,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseReleaseEnvelope {
    pub status: String,
    pub data: OkResponse,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct MetadataPatchBody {
    /// Keys to set; `null` or `""` deletes the key.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// When given, must be the machine's current version (412 otherwise).
    pub machine_version: Option<String>,
    /// Accepted (and type-checked) for Fly clients; the agent stamps its own time.
    #[allow(dead_code)]
    pub updated_at: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct MetadataValue {
    pub value: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Region {
    pub code: String,
    pub name: String,
    pub gateway_available: bool,
    pub requires_paid_plan: bool,
    pub deprecated: bool,
    /// midge extension: the region's hosts, and those answering.
    pub hosts: u32,
    pub hosts_up: u32,
    /// midge extension: the hosts' capacity and what machines hold of it.
    pub cpus: u32,
    pub memory_mb: u32,
    /// What machines hold, in CPUs (a shared vCPU holds 1/16).
    pub used_cpus: f64,
    pub used_memory_mb: u32,
}

/// midge extension: one host of the platform.
#[derive(Debug, Serialize, ToSchema)]
pub struct Host {
    pub id: String,
    /// Its field in machines' 6PN addresses.
    pub number: u32,
    pub region: String,
    /// `ok`, `unknown` or `unreachable`, by the age of its last heartbeat.
    pub status: String,
    /// The driver its machines run with: `sandbox` or `microvm`.
    pub driver: String,
    /// How a microVM host runs guests: `kvm`, or `tcg` (emulation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<String>,
    /// Takes no new machines (`midge host drain` cordons it).
    pub cordoned: bool,
    pub cpus: u32,
    pub memory_mb: u32,
    /// What machines hold, in CPUs (a shared vCPU holds 1/16).
    pub used_cpus: f64,
    pub used_memory_mb: u32,
    /// Machines on the host that are not destroyed.
    pub machines: u32,
}

/// midge extension: what a drain moved, and what it could not.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrainResponse {
    pub host: String,
    pub moved: Vec<DrainedMachine>,
    pub failed: Vec<DrainedMachine>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrainedMachine {
    pub id: String,
    pub app: String,
    /// Why it could not move (failed ones only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegionsResponse {
    pub nearest: String,
    pub regions: Vec<Region>,
}

/// Documentation of bodies that `midge-types` parses; never built here.
#[allow(dead_code)]
pub mod documented {
    use super::*;

    #[derive(ToSchema)]
    pub struct StopBody {
        /// Name (`SIGTERM`) or number; default SIGINT or the config's stop signal.
        pub signal: Option<String>,
        /// Go duration (`"10s"`) or integer nanoseconds.
        pub timeout: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct SignalBody {
        /// Name (`SIGTERM`, `term`) or number (`9`).
        #[schema(value_type = Object)]
        pub signal: String,
    }

    #[derive(ToSchema)]
    pub struct ExecBody {
        /// argv.
        pub command: Option<Vec<String>>,
        /// Deprecated: one string, split like a shell would.
        pub cmd: Option<String>,
        pub stdin: Option<String>,
        /// Seconds.
        pub timeout: Option<u64>,
    }

    #[derive(ToSchema)]
    pub struct ExecResponse {
        pub exit_code: i32,
        pub exit_signal: i32,
        pub stdout: String,
        pub stderr: String,
    }

    #[derive(ToSchema)]
    pub struct WaitResponse {
        pub ok: bool,
        pub state: String,
        pub version: String,
        pub event_id: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct StartResponse {
        pub previous_state: String,
        pub migrated: bool,
        pub new_host: String,
    }
}
