//! The Fly Machines API v1 HTTP server.
//!
//! Authenticates callers against the catalog, checks that the app they name
//! is theirs, validates input, and hands machine operations to the host
//! agent. Every route is declared once, with its OpenAPI description, so the
//! served `/v1/openapi.json` always matches what the server does.

mod addresses;
mod auth;
mod error;
mod extract;
mod idempotency;
mod limits;
mod pages;
mod router;
mod routes;
mod schema;
mod sealer;
mod state;

pub use addresses::AddressPlan;
pub use error::Error;
pub use extract::LEASE_NONCE_HEADER;
pub use limits::{FLY_ACTION_RATE, FLY_READ_RATE, Rate, RateLimits};
pub use router::{REQUEST_ID_HEADER, no_delay, openapi, router, serve, serve_with_shutdown};
pub use sealer::CredentialSealer;
pub use state::ApiState;
