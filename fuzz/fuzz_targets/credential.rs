//! Credential parsing (key header, Bearer, Basic) on arbitrary header values: never panics, and
//! a key it finds is a part of the value presented.
#![no_main]

use apiward::auth::credential::{self, Credential};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let key_header = HeaderName::from_static("x-api-key");
    let mut headers = HeaderMap::new();
    match which % 3 {
        0 => headers.insert(&key_header, value.clone()),
        1 => headers.insert(http::header::AUTHORIZATION, value.clone()),
        _ => {
            headers.append(&key_header, value.clone());
            headers.append(&key_header, value.clone());
            None
        }
    };
    let mut scratch = String::new();
    let (found, _) = credential::extract(&headers, &key_header, &mut scratch);
    if let Credential::Key(key) = found {
        let presented = String::from_utf8_lossy(value.as_bytes());
        assert!(presented.contains(key), "{key:?} is not in {presented:?}");
        let _ = credential::key_prefix(key);
    }
});
