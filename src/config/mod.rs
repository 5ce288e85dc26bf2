//! The configuration file: its raw form, its validation into a `Snapshot`, and its reloading.

pub mod compile;
pub mod diff;
pub mod duration;
pub mod edit;
pub mod error;
pub mod guard;
pub mod incremental;
mod parse;
pub mod raw;
pub mod reload;
mod schema;
mod whole;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};

use crate::snapshot::Snapshot;

/// Parses and validates one file's text. `file` is only used to name the file in errors.
pub fn compile(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    incremental::compile_full(file, text)
}

/// Reads and compiles one file. A missing or unreadable file is an error like any other, and
/// so is one with nothing in it (`guard::refuse_blank`).
pub fn load(path: &Path) -> Result<Snapshot, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![error::whole_file(
            path,
            format!("cannot read the configuration file: {e}"),
        )])
    })?;
    guard::refuse_blank(path, &text)?;
    compile(path, &text)
}
