//! midge's internal DNS server, the one machines reach at `fdaa::3`.
//!
//! Names under `internal.` are answered from an in-memory snapshot of the
//! organizations' apps and machines, in the forms Fly defines (`<app>.internal`,
//! `<region>.<app>.internal`, `<id>.vm.<app>.internal`,
//! `top<N>.nearest.of.<app>.internal`, the `vms.`, `regions.`, `_apps` and
//! `_instances` TXT names). Each caller sees only its own organization, found
//! from the query's source address; another organization's apps do not exist
//! for it. Every other name is relayed to the upstream resolvers.
//!
//! `<app>.flycast` answers AAAA with the app's Flycast (`private_v6`)
//! addresses, served by the proxy, to the app's organization only.
//!
//! Address names list started machines only, except `<id>.vm.<app>.internal`,
//! which resolves while the machine exists, whatever its state (its stable
//! name, so a stopped machine's peers can still find where it will come back).
//! The `all.` TXT forms list every machine too.
//!
//! The embedder binds a [`DnsServer`] and calls [`DnsServer::update`] (or
//! [`Directory::update`]) with a new [`DnsSnapshot`] whenever machines change,
//! and [`Directory::update_flycast`] whenever Flycast addresses do.
//!
//! hickory logs every query at `info` under the `hickory_server` target; a
//! production log filter should set that target to `warn`.

mod answer;
mod directory;
mod error;
mod flycast;
mod forward;
mod from_machines;
mod handler;
mod names;
mod org;
mod resolv_conf;
mod server;
mod snapshot;
mod txt;

pub use directory::Directory;
pub use error::DnsError;
pub use flycast::FlycastAddress;
pub use org::{OrgResolver, org_of_6pn};
pub use resolv_conf::system_resolvers;
pub use server::{DEFAULT_FORWARD_TIMEOUT, DnsConfig, DnsServer};
pub use snapshot::{AppRecords, DnsSnapshot, MachineRecords, OrgDirectory};
