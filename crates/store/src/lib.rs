//! The catalog: orgs, tokens and apps in SQLite.
