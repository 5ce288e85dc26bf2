//! Request-path normalisation: the one form of a path that is both checked and forwarded.
//!
//! Percent-encoded unreserved characters are decoded, `//` is merged, `.` and `..` segments are
//! resolved. Anything two servers could read differently (an encoded `/` or `\`, a raw `\`, NUL,
//! a `..` that climbs above the root, a malformed escape) is refused instead of guessed at.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadPath {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL or control character")]
    ControlCharacter,
    #[error("the path contains a malformed percent escape")]
    MalformedEscape,
    #[error("the path climbs above the root with '..'")]
    ClimbsAboveRoot,
}

/// Returns the normalised path; borrows the input when it is already normal (the common case).
pub fn normalise(path: &str) -> Result<Cow<'_, str>, BadPath> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(BadPath::NotAbsolute);
    }
    if is_already_normal(bytes)? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    resolve_segments(&decoded).map(Cow::Owned)
}

/// One pass over the bytes: refuses what is never valid, and says whether any work is needed.
fn is_already_normal(bytes: &[u8]) -> Result<bool, BadPath> {
    let mut normal = true;
    for (i, &b) in bytes.iter().enumerate() {
        // Most bytes are ordinary: one table load each, and the `match` only for the rest.
        if !NEEDS_A_LOOK[usize::from(b)] {
            continue;
        }
        let prev = if i == 0 { 0 } else { bytes[i - 1] };
        match b {
            b'\\' => return Err(BadPath::Backslash),
            0..=0x1f | 0x7f => return Err(BadPath::ControlCharacter),
            b'%' => normal = false,
            b'/' if prev == b'/' => normal = false,
            b'.' if prev == b'/' => {
                // "/." starts a "." or ".." segment only when followed by '/', '.' + '/', or the end.
                let rest = &bytes[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    normal = false;
                }
            }
            _ => {}
        }
    }
    Ok(normal)
}

/// The bytes `is_already_normal` has to look at: controls, DEL, `\`, `%`, `/` and `.`.
static NEEDS_A_LOOK: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = b <= 0x1f || b == 0x7f || matches!(b as u8, b'\\' | b'%' | b'/' | b'.');
        b += 1;
    }
    table
};

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes `%XX` of unreserved characters; other escapes stay encoded, in upper-case hex. Built
/// as bytes: a byte of a multi-byte character is copied as it is (pushed as a `char`, it would be
/// read as Latin-1 and the path changed each time it is normalised, as fuzzing found).
fn decode_unreserved(bytes: &[u8]) -> Result<String, BadPath> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex_value),
            bytes.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(BadPath::MalformedEscape);
        };
        let decoded = hi << 4 | lo;
        match decoded {
            b'/' | b'\\' => return Err(BadPath::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(BadPath::ControlCharacter),
            d if is_unreserved(d) => out.push(d),
            d => {
                out.push(b'%');
                out.push(b"0123456789ABCDEF"[usize::from(d >> 4)]);
                out.push(b"0123456789ABCDEF"[usize::from(d & 0xf)]);
            }
        }
        i += 3;
    }
    // Valid UTF-8: the input's bytes, with only ASCII escapes and characters changed.
    String::from_utf8(out).map_err(|_| BadPath::MalformedEscape)
}

/// Merges empty segments and resolves `.` and `..`; keeps a trailing slash.
fn resolve_segments(path: &str) -> Result<String, BadPath> {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadPath::ClimbsAboveRoot);
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_multi_byte_characters_is_normalised_once_and_for_all() {
        // Found by fuzz/path_normalise: `њ` came out as the Latin-1 reading of its bytes.
        let normal = normalise("/\u{45a}/./b/%40").unwrap().into_owned();
        assert_eq!(normal, "/\u{45a}/b/%40");
        assert_eq!(normalise(&normal).unwrap(), normal);
        assert_eq!(normalise("/caf\u{e9}/%7e/..").unwrap(), "/caf\u{e9}/");
    }

    fn ok(p: &str) -> String {
        normalise(p)
            .unwrap_or_else(|e| panic!("{p:?} refused: {e}"))
            .into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in [
            "/",
            "/supporters/",
            "/supporters/123",
            "/a.b/c..d/.e/f.",
            "/a/b?c",
        ] {
            assert!(
                matches!(normalise(p), Ok(Cow::Borrowed(q)) if q == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_double_slashes_resolve() {
        assert_eq!(ok("/a//b"), "/a/b");
        assert_eq!(ok("//a"), "/a");
        assert_eq!(ok("/a/./b"), "/a/b");
        assert_eq!(ok("/a/b/../c"), "/a/c");
        assert_eq!(ok("/a/b/.."), "/a/");
        assert_eq!(ok("/a/."), "/a/");
        assert_eq!(ok("/a/b/"), "/a/b/");
        assert_eq!(ok("/."), "/");
        assert_eq!(ok("/a/.."), "/");
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded_before_resolving() {
        assert_eq!(ok("/supporters/%2e%2e/admin"), "/admin");
        assert_eq!(ok("/supporters/%2E%2E/admin"), "/admin");
        assert_eq!(ok("/supporters/.%2e/admin"), "/admin");
        assert_eq!(ok("/%73upporters/1"), "/supporters/1");
        assert_eq!(ok("/a%7eb"), "/a~b");
        // Reserved characters stay encoded, in one canonical case.
        assert_eq!(ok("/a%3fb"), "/a%3Fb");
        assert_eq!(ok("/caf%c3%a9"), "/caf%C3%A9");
        assert_eq!(ok("/a%20b"), "/a%20b");
    }

    #[test]
    fn hostile_paths_are_refused() {
        let cases = [
            ("", BadPath::NotAbsolute),
            ("*", BadPath::NotAbsolute),
            ("a/b", BadPath::NotAbsolute),
            ("/a%2fb", BadPath::EncodedSeparator),
            ("/a%2Fb", BadPath::EncodedSeparator),
            ("/a%5cb", BadPath::EncodedSeparator),
            ("/a\\b", BadPath::Backslash),
            ("/a%00b", BadPath::ControlCharacter),
            ("/a\0b", BadPath::ControlCharacter),
            ("/a%0d%0aX-Injected:1", BadPath::ControlCharacter),
            ("/a%", BadPath::MalformedEscape),
            ("/a%2", BadPath::MalformedEscape),
            ("/a%zz", BadPath::MalformedEscape),
            ("/a%%32%65", BadPath::MalformedEscape),
            ("/..", BadPath::ClimbsAboveRoot),
            ("/../etc/passwd", BadPath::ClimbsAboveRoot),
            ("/a/../../b", BadPath::ClimbsAboveRoot),
            ("/%2e%2e/a", BadPath::ClimbsAboveRoot),
            ("/a/%2e%2e/%2e%2e", BadPath::ClimbsAboveRoot),
        ];
        for (p, want) in cases {
            assert_eq!(normalise(p), Err(want), "{p:?}");
        }
    }

    #[test]
    fn double_encoding_is_decoded_once_only() {
        // %252e is "%2e" literally: it must stay a literal, never become a dot segment.
        assert_eq!(ok("/a/%252e%252e/b"), "/a/%252e%252e/b");
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for p in ["/a//b/../c/", "/%2e/x", "/a%3fb/./c", "/x/%7e/y/.."] {
            let once = ok(p);
            assert_eq!(ok(&once), once, "{p}");
        }
    }
}
