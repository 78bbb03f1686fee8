//! The catalog: orgs, tokens and apps in SQLite.
//!
//! One SQLite file in WAL mode with `synchronous=NORMAL`: every committed
//! write is in the WAL before the call returns, so it survives the process
//! being killed (an OS crash may lose the last transactions, never corrupt).

mod catalog;
mod error;
mod names;
mod schema;
mod tokens;

pub use catalog::{AppRecord, Catalog, Identity, NewApp, Org, PERSONAL_ORG, Principal, TokenScope};
pub use error::StoreError;
pub use names::{validate_app_name, validate_org_slug};
