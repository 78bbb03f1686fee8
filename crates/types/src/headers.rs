//! HTTP headers of the Fly Machines API that server and clients share.

/// The lease nonce a mutation of a leased machine must carry.
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";
/// The request id every response carries (and error messages quote).
pub const REQUEST_ID_HEADER: &str = "fly-request-id";
