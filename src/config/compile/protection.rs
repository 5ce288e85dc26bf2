//! The `[server]` settings that protect the gateway and what is behind it: which request
//! headers carry credentials, and the limits on connections and upstream responses.

use std::sync::Arc;

use http::HeaderName;
use toml::Spanned;

use super::compiler::Compiler;
use crate::config::raw::{RawServer, RawSize};
use crate::snapshot::ServerLimits;

/// Request headers the gateway has its own rule for (the policy's header table), which
/// `credential_headers` cannot take over.
const HANDLED_HEADERS: &[&str] = &[
    "authorization",
    "connection",
    "content-length",
    "date",
    "expect",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "x-apiward-group",
    "x-apiward-user",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-request-id",
];

const MAX_RESPONSE_HEADERS_CAP: usize = ServerLimits::MAX_RESPONSE_HEADERS_CAP;

impl Compiler<'_> {
    /// `credential_headers`: names of other headers that carry a credential, never forwarded.
    pub(super) fn credential_headers(
        &mut self,
        raw: &RawServer,
        key_header: &HeaderName,
    ) -> Arc<[HeaderName]> {
        let mut names = Vec::new();
        for h in raw.credential_headers.iter().flatten() {
            let name = match HeaderName::from_bytes(h.get_ref().as_bytes()) {
                Ok(n) => n,
                Err(_) => {
                    self.error(
                        h.span(),
                        format!("credential_headers: {:?} is not a header name", h.get_ref()),
                    );
                    continue;
                }
            };
            if name == *key_header || HANDLED_HEADERS.contains(&name.as_str()) {
                self.error(
                    h.span(),
                    format!("credential_headers: {name} is a header the gateway handles itself (the key header and Authorization are never forwarded when they carry a credential): list only other headers"),
                );
                continue;
            }
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names.into()
    }

    /// Connection and upstream-response limits.
    pub(super) fn limits(&mut self, raw: &RawServer) -> ServerLimits {
        let response_timeout = raw
            .response_timeout
            .as_ref()
            .map(|v| self.duration(Some(v), "0s", false))
            .filter(|d| !d.is_zero());
        ServerLimits {
            response_timeout,
            max_upstream_connections: self
                .count(raw.max_upstream_connections.as_ref(), Some(1024), 1..=1_000_000, "max_upstream_connections is how many requests one upstream (all its targets) has in hand at once")
                .unwrap_or(1024),
            response_buffer: self.response_buffer(raw.response_buffer.as_ref()),
            max_connections: self.count(raw.max_connections.as_ref(), None, 16..=1_000_000, "max_connections is how many client connections are open at most (leave it out to derive it from the file-descriptor limit)"),
            max_connections_per_source: self
                .count(raw.max_connections_per_source.as_ref(), Some(256), 1..=1_000_000, "max_connections_per_source is how many connections one client address may hold (trusted proxies are exempt)")
                .unwrap_or(256),
            max_response_headers: self
                .count(raw.max_response_headers.as_ref(), Some(100), 8..=MAX_RESPONSE_HEADERS_CAP, "max_response_headers is how many header lines an upstream response may have: 8 to 256")
                .unwrap_or(100),
            max_response_header_bytes: self
                .count(raw.max_response_header_bytes.as_ref(), Some(64 * 1024), 1024..=1024 * 1024, "max_response_header_bytes is the largest upstream response head: 1024 to 1048576")
                .unwrap_or(64 * 1024),
        }
    }

    /// `response_buffer`: bytes (a number, or `"64KiB"`, `"1MiB"`), `0` or `"off"` for none.
    fn response_buffer(&mut self, value: Option<&Spanned<RawSize>>) -> usize {
        const DEFAULT: usize = ServerLimits::DEFAULT_RESPONSE_BUFFER;
        const MAX: usize = ServerLimits::MAX_RESPONSE_BUFFER;
        let Some(v) = value else { return DEFAULT };
        let parsed = match v.get_ref() {
            RawSize::Bytes(n) => {
                usize::try_from(*n).map_err(|_| "a size cannot be negative".to_string())
            }
            RawSize::Text(t) => parse_size(t),
        };
        match parsed {
            Ok(n) if n <= MAX => n,
            Ok(_) => {
                self.error(
                    v.span(),
                    format!("response_buffer: at most {}MiB per request", MAX >> 20),
                );
                DEFAULT
            }
            Err(why) => {
                self.error(v.span(), format!("response_buffer: {why}"));
                DEFAULT
            }
        }
    }

    fn count(
        &mut self,
        value: Option<&Spanned<i64>>,
        default: Option<usize>,
        range: std::ops::RangeInclusive<usize>,
        what: &str,
    ) -> Option<usize> {
        let Some(v) = value else { return default };
        match usize::try_from(*v.get_ref()) {
            Ok(n) if range.contains(&n) => Some(n),
            _ => {
                self.error(
                    v.span(),
                    format!("{what}: between {} and {}", range.start(), range.end()),
                );
                default
            }
        }
    }
}

/// A size as operators write it: `"65536"`, `"64KiB"`, `"64k"`, `"1MiB"`, `"1m"`, or `"off"`.
fn parse_size(text: &str) -> Result<usize, String> {
    let hint = "write a number of bytes, or one with KiB or MiB (\"64KiB\", \"1MiB\"), or \"off\"";
    let t = text.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(0);
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!("invalid size {text:?}: {hint}"));
    }
    let value: usize = t[..digits]
        .parse()
        .map_err(|_| format!("size {text:?} is too large"))?;
    let unit = match t[digits..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("unknown unit {other:?} in {text:?}: {hint}")),
    };
    value
        .checked_mul(unit)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_read_as_operators_write_them() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(64 * 1024));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("off"), Ok(0));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("4GB").is_err());
    }
}
