//! The `remote_addresses` parser on arbitrary text: what it accepts prints as a list that parses
//! to the same whitelist, and every entry is an address block that contains its own network.
#![no_main]

use apiward::auth::address::SourceWhitelist;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(list) = SourceWhitelist::parse_tilde(text) else {
        return;
    };
    let printed = list.to_string();
    let again = SourceWhitelist::parse_tilde(&printed).expect("a printed list parses");
    assert_eq!(again.entries(), list.entries(), "{text:?} printed as {printed:?}");
    let entries = list.entries();
    let from_entries =
        SourceWhitelist::from_entries(entries.iter().map(String::as_str)).expect("entries parse");
    assert_eq!(from_entries.entries(), entries);
});
