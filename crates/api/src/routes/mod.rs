//! The route handlers, one module per resource of the Fly Machines API.

pub mod apps;
pub mod certificates;
pub mod egress_ips;
pub mod exec;
pub mod images;
pub mod ips;
pub mod leases;
pub mod lifecycle;
pub mod logs;
pub mod machines;
pub mod metadata;
pub mod orgs;
pub mod platform;
pub mod registry_credentials;
pub mod volumes;
