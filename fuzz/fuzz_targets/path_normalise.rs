//! Path normalisation on arbitrary paths: a normal path is its own normal form (idempotent), starts
//! with '/', and holds no `.` or `..` segment, no `//`, no NUL and no backslash.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = apiward::auth::path::normalise(path) {
        assert!(normal.starts_with('/'), "{normal:?}");
        assert!(!normal.contains("//"), "{normal:?}");
        assert!(!normal.contains('\\') && !normal.contains('\0'), "{normal:?}");
        assert!(
            !normal.split('/').any(|s| s == "." || s == ".."),
            "{normal:?} has a dot segment"
        );
        let again = apiward::auth::path::normalise(&normal).expect("a normal path is accepted");
        assert_eq!(again, normal, "normalising twice changes nothing");
    }
});
