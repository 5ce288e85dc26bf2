//! The configuration compiler on arbitrary text: never panics; every error it reports points at
//! a line of the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = apiward::config::compile(std::path::Path::new("fuzz.toml"), text);
});
