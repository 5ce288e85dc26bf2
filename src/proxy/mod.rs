//! The proxy: its workers (`workers.rs`: one runtime, or one thread and socket each) run the
//! public listener (`listener.rs`), which feeds each connection to a transport, the HTTP/1
//! engine (`h1/`) or hyper's server (`hyper_path/`); both ask the one policy (`policy/`) what
//! each request gets. No transport imports the other; the listener joins them with the stream
//! the engine hands over (`io.rs`).

mod balance;
pub mod conn_limit;
mod h1;
mod https;
mod hyper_path;
mod io;
mod listener;
pub mod policy;
pub mod upstream;
mod workers;

#[doc(hidden)]
pub use h1::fuzzing;
pub(crate) use listener::Shared;
pub(crate) use workers::{Layout, Listeners, Serving, bind, start};
pub use workers::{ProxyStats, WorkerError};
