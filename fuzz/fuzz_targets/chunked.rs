//! The chunked-body tracker on arbitrary bytes, fed whole and in pieces: the same end either way,
//! never past the bytes fed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    // The first byte says how many of the next ones are split points.
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, body) = rest.split_at(n);
    let splits: Vec<usize> = cuts.iter().map(|c| usize::from(*c)).collect();
    let _ = apiward::fuzzing::chunked(body, &splits);
});
