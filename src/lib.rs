//! apiward: an authenticating reverse proxy that gives any HTTP API per-integration API users.
// One measured exception, `config::reload::release_freed_memory` (malloc_trim), is allowed there.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod explain;
pub mod keys;
pub mod observe;
pub mod proxy;
pub mod refusal;
pub mod snapshot;

pub use proxy::{Gateway, Options, StartError};
