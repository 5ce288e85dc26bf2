//! The engine's upstream response-head parser on arbitrary bytes: never panics, never reads past
//! the head, and agrees with httparse on where a head it accepts ends.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flag, buf)) = data.split_first() else {
        return;
    };
    if let Ok(Some(summary)) = apiward::fuzzing::response_head(buf, flag & 1 == 1) {
        // As many slots as the engine's parser has (it checks the configured count after).
        let mut headers = [httparse::EMPTY_HEADER; 256];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buf) {
            Ok(httparse::Status::Complete(n)) => assert_eq!(n, summary.head_len),
            other => panic!("accepted a head httparse reads as {other:?}"),
        }
    }
});
