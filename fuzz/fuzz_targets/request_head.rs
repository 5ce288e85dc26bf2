//! The engine's request-head reading on arbitrary bytes: never panics, never reads past the head,
//! and serves only what httparse and hyper's rules frame the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    apiward::fuzzing::request_head(data);
});
