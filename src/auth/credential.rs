//! Credential extraction: the key header, `Authorization: Bearer <key>`, or `Authorization: Basic`.

use std::fmt;

use base64::Engine;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName};

/// What the client presented. Never printed whole: `Debug` shows only a key's prefix.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential<'r> {
    Missing,
    Key(&'r str),
    Basic {
        user: &'r str,
        password: &'r str,
    },
    /// Something was presented but cannot be read (two key headers, bad Base64, no ':').
    Malformed,
}

/// Where the credential came from, so that exactly that header is stripped before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSource {
    None,
    KeyHeader,
    Authorization,
}

/// The longest key the gateway hashes, in bytes. Issued keys are 46; anything longer than this
/// is refused as `invalid_credentials` before it costs a digest (a 30 KiB header would
/// otherwise cost six times the CPU of a real key).
pub const MAX_KEY_LEN: usize = 256;

/// How many characters of a key may be shown in logs and explanations.
pub const KEY_PREFIX_LEN: usize = 8;

/// The first characters of a key, safe to log.
pub fn key_prefix(key: &str) -> &str {
    let end = key
        .char_indices()
        .nth(KEY_PREFIX_LEN)
        .map_or(key.len(), |(i, _)| i);
    &key[..end.min(key.len() / 2)]
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Missing => f.write_str("Missing"),
            Credential::Key(k) => write!(f, "Key({}…)", key_prefix(k)),
            Credential::Basic { user, .. } => write!(f, "Basic({user}, password hidden)"),
            Credential::Malformed => f.write_str("Malformed"),
        }
    }
}

/// Reads the credential from the request headers. A Basic credential is decoded into `scratch`.
pub fn extract<'r>(
    headers: &'r HeaderMap,
    key_header: &HeaderName,
    scratch: &'r mut String,
) -> (Credential<'r>, CredentialSource) {
    let mut keys = headers.get_all(key_header).iter();
    if let Some(value) = keys.next() {
        if keys.next().is_some() {
            return (Credential::Malformed, CredentialSource::KeyHeader);
        }
        return match value.to_str() {
            Ok("") => (Credential::Missing, CredentialSource::KeyHeader),
            Ok(k) => (Credential::Key(k.trim_ascii()), CredentialSource::KeyHeader),
            Err(_) => (Credential::Malformed, CredentialSource::KeyHeader),
        };
    }
    let Some(auth) = headers.get(AUTHORIZATION) else {
        return (Credential::Missing, CredentialSource::None);
    };
    let Ok(auth) = auth.to_str() else {
        return (Credential::Missing, CredentialSource::None);
    };
    let (scheme, rest) = auth.trim_ascii().split_once(' ').unwrap_or((auth, ""));
    let rest = rest.trim_ascii();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return (Credential::Malformed, CredentialSource::Authorization);
        }
        return (Credential::Key(rest), CredentialSource::Authorization);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return (Credential::Malformed, CredentialSource::Authorization);
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return (Credential::Malformed, CredentialSource::Authorization);
        };
        *scratch = text;
        return match scratch.split_once(':') {
            Some((user, password)) if !user.is_empty() => (
                Credential::Basic { user, password },
                CredentialSource::Authorization,
            ),
            _ => (Credential::Malformed, CredentialSource::Authorization),
        };
    }
    // Another scheme belongs to the upstream's own authentication; it is not ours to take.
    (Credential::Missing, CredentialSource::None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn x_api_key() -> HeaderName {
        HeaderName::from_static("x-api-key")
    }

    #[test]
    fn key_header_wins_over_authorization() {
        let h = headers(&[("x-api-key", "aw_one"), ("authorization", "Bearer aw_two")]);
        let mut s = String::new();
        assert_eq!(
            extract(&h, &x_api_key(), &mut s),
            (Credential::Key("aw_one"), CredentialSource::KeyHeader)
        );
    }

    #[test]
    fn bearer_and_basic_are_read() {
        let mut s = String::new();
        let h = headers(&[("authorization", "bearer aw_two")]);
        assert_eq!(
            extract(&h, &x_api_key(), &mut s),
            (Credential::Key("aw_two"), CredentialSource::Authorization)
        );
        let h = headers(&[(
            "authorization",
            "Basic Y3JtQGV4YW1wbGUub3JnOnNlY3JldDE6Mg==",
        )]);
        let mut s = String::new();
        assert_eq!(
            extract(&h, &x_api_key(), &mut s).0,
            Credential::Basic {
                user: "crm@example.org",
                password: "secret1:2"
            }
        );
    }

    #[test]
    fn unreadable_credentials_are_malformed_and_other_schemes_ignored() {
        for (name, value) in [
            ("authorization", "Basic !!!"),
            ("authorization", "Basic OnNlY3JldA=="), // ":secret", no user
            ("authorization", "Basic c2VjcmV0"),     // "secret", no ':'
            ("authorization", "Bearer"),
        ] {
            let h = headers(&[(name, value)]);
            let mut s = String::new();
            assert_eq!(
                extract(&h, &x_api_key(), &mut s).0,
                Credential::Malformed,
                "{value}"
            );
        }
        let h = headers(&[("x-api-key", "a"), ("x-api-key", "b")]);
        let mut s = String::new();
        assert_eq!(extract(&h, &x_api_key(), &mut s).0, Credential::Malformed);
        let h = headers(&[("authorization", "Token abc")]);
        let mut s = String::new();
        assert_eq!(
            extract(&h, &x_api_key(), &mut s),
            (Credential::Missing, CredentialSource::None)
        );
    }

    #[test]
    fn debug_output_never_shows_a_whole_key_or_password() {
        let key = "aw_0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
        let shown = format!("{:?}", Credential::Key(key));
        assert!(!shown.contains(key));
        assert!(shown.contains("aw_01234"));
        let shown = format!(
            "{:?}",
            Credential::Basic {
                user: "u@example.org",
                password: "hunter22"
            }
        );
        assert!(!shown.contains("hunter22"));
        assert_eq!(key_prefix("short"), "sh");
    }
}
