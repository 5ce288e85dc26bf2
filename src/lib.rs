//! apiward: an authenticating reverse proxy that gives any HTTP API per-integration API users.
// One measured exception, `config::reload::release_freed_memory` (mi_collect), is allowed there.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod explain;
pub mod gateway;
pub mod keys;
pub mod limits;
pub mod observe;
pub mod proxy;
pub mod refusal;
pub mod snapshot;
pub mod suggest;
pub mod tls;
pub mod upstream;

pub use gateway::{Gateway, Options, Runtimes, StartError};
/// For the fuzz targets and property tests only: not a stable interface.
#[doc(hidden)]
pub use proxy::fuzzing;

/// mimalloc, for the gateway and everything built on this crate (tests, benchmarks), so that what
/// is measured is what runs: about 10 % more requests per second than glibc's allocator and a
/// third less time to compile a large file, and with `mi_collect` after each load the freed
/// parse tree goes back to the system (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
