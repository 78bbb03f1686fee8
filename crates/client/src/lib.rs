//! A client of the Fly Machines API as midge serves it, shared by the
//! `midge` CLI, the benchmarks and (later) the proxy's admin calls.
//!
//! [`ApiClient`] makes the calls and turns error answers into
//! [`ClientError`]s whose text carries Fly's error, the request id and a
//! hint; [`ClientConfig`] is the file `midge up` writes so the CLI on the
//! same host finds the API without flags.

mod api_client;
mod config;

pub use api_client::{
    ApiClient, ApiFailure, ClientError, ClientResult, DrainedMachine, HostDrained, PlatformHost,
    PlatformRegion, PlatformRegions, error_chain, install_crypto_provider,
};
pub use config::{ClientConfig, DEFAULT_API_URL};
pub use midge_types::headers::{LEASE_NONCE_HEADER, REQUEST_ID_HEADER};
