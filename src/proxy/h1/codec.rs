//! The HTTP/1 codec the engine reads and writes heads with: request heads read and judged
//! servable here or not, response heads parsed with `httparse` into ranges of the buffer and a
//! framing, header lines copied in canonical form, and the `Date` value.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::time::Duration;

use http::Method;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::proxy::policy::X_REQUEST_ID;
use crate::proxy::policy::headers::{
    Known, OnResponse, X_FORWARDED_FOR, classify, has_underscore, is_host_value,
};
use crate::proxy::policy::{HeadLimits, InvalidResponse};
use crate::snapshot::ServerLimits;

/// The most header lines a head may have here (requests and responses alike).
pub(super) const MAX_HEADERS: usize = 64;

/// Copies header lines out of a received head: a run of lines that are next to each other and
/// already in the form `name: value\r\n` goes out in one copy; any other line is rewritten in
/// that form by `push_header`. The bytes written are the same either way.
pub(super) struct Lines<'a> {
    src: &'a [u8],
    pub(super) out: &'a mut Vec<u8>,
    run: Range<usize>,
}

impl<'a> Lines<'a> {
    pub(super) fn new(src: &'a [u8], out: &'a mut Vec<u8>) -> Lines<'a> {
        Lines {
            src,
            out,
            run: 0..0,
        }
    }

    /// Copies `src[line]` (one whole line, its CRLF included) as it is.
    pub(super) fn raw(&mut self, line: Range<usize>) {
        if self.run.is_empty() || self.run.end != line.start {
            self.flush();
            self.run.start = line.start;
        }
        self.run.end = line.end;
    }

    pub(super) fn header(&mut self, name: Range<usize>, value: Range<usize>) {
        let src = self.src;
        let canonical = src.get(name.end..value.start) == Some(b": ")
            && src.get(value.end..value.end + 2) == Some(b"\r\n");
        if canonical {
            self.raw(name.start..value.end + 2);
        } else {
            self.flush();
            push_header(self.out, &src[name], &src[value]);
        }
    }

    pub(super) fn flush(&mut self) {
        if !self.run.is_empty() {
            self.out.extend_from_slice(&self.src[self.run.clone()]);
            self.run = 0..0;
        }
    }
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What `read_request_head` made of the bytes read so far.
pub(super) enum RequestHead {
    /// A head the engine serves: the method, where its target is, whether the client asked to
    /// close, and the head's length.
    Fast {
        method: Method,
        path: Range<usize>,
        close: bool,
        len: usize,
    },
    Partial,
    /// Hyper's path serves it (see `h1/mod.rs` for what that is).
    Slow,
}

/// Reads a request head from `buf` and decides whether the engine serves it: only a bodiless
/// origin-form HTTP/1.1 `GET`, `HEAD`, `DELETE` or `OPTIONS` with exactly one plain `Host`, no
/// `Transfer-Encoding`, no `Content-Length` but `0`, no `Expect` or `Upgrade`, no `Connection`
/// naming headers and no header name with `_` (but a configured credential header's). Its headers go to `req_headers` as ranges of
/// `buf`, and those the decision reads to `decision_headers` (both cleared first).
pub(super) fn read_request_head(
    buf: &[u8],
    max_header_bytes: usize,
    key_header: &HeaderName,
    credential_headers: &[HeaderName],
    decision_headers: &mut HeaderMap,
    req_headers: &mut Vec<(Range<usize>, Range<usize>, Known)>,
) -> RequestHead {
    // Left uninitialised: httparse writes only the entries it fills (2 KiB of stores saved).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return RequestHead::Partial,
        Err(_) => return RequestHead::Slow,
    };
    if len > max_header_bytes || request.version != Some(1) {
        return RequestHead::Slow;
    }
    let method = match request.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        Some("DELETE") => Method::DELETE,
        Some("OPTIONS") => Method::OPTIONS,
        _ => return RequestHead::Slow,
    };
    let Some(path) = request.path.filter(|p| p.starts_with('/')) else {
        return RequestHead::Slow;
    };
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    // Cleared, not made anew: its tables stay allocated from one request to the next.
    decision_headers.clear();
    req_headers.clear();
    let mut close = false;
    let mut hosts = 0u32;
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        // Not `same_token`: a configured name may hold `_` and other bytes bit 5 would change.
        let known = if name.eq_ignore_ascii_case(key_header.as_str().as_bytes()) {
            Known::Key
        } else {
            match classify(name) {
                Known::Other
                    if credential_headers
                        .iter()
                        .any(|c| name.eq_ignore_ascii_case(c.as_str().as_bytes())) =>
                {
                    Known::ExtraCredential
                }
                known => known,
            }
        };
        match known {
            Known::TransferEncoding | Known::Expect | Known::Upgrade => return RequestHead::Slow,
            // Names with `_`, and a `Host` that is not plainly one: admission decides those on
            // hyper's path (`HeadChecked::ByEngine`).
            Known::Other if has_underscore(name) => return RequestHead::Slow,
            Known::Host => {
                hosts += 1;
                if h.value.is_empty() || !is_host_value(h.value) {
                    return RequestHead::Slow;
                }
            }
            Known::ContentLength if h.value != b"0" => return RequestHead::Slow,
            Known::Connection => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        return RequestHead::Slow; // names headers to remove: hyper's path does that
                    }
                }
            }
            Known::Key | Known::Authorization | Known::XForwardedFor | Known::XRequestId => {
                // The name is known already: no need to parse it again.
                let name = match known {
                    Known::Key => key_header.clone(),
                    Known::Authorization => header::AUTHORIZATION,
                    Known::XForwardedFor => X_FORWARDED_FOR.clone(),
                    _ => X_REQUEST_ID.clone(),
                };
                let Ok(value) = HeaderValue::from_bytes(h.value) else {
                    return RequestHead::Slow;
                };
                decision_headers.append(name, value);
            }
            _ => {}
        }
        req_headers.push((range(name), range(h.value), known));
    }
    if hosts != 1 {
        return RequestHead::Slow;
    }
    RequestHead::Fast {
        method,
        path: range(path.as_bytes()),
        close,
        len,
    }
}

/// How a response body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

pub(crate) struct ResponseHead {
    pub(crate) status: u16,
    pub(crate) head_len: usize,
    /// `200 OK`: the status line after the version.
    pub(super) status_line: std::ops::Range<usize>,
    pub(super) has_date: bool,
    pub(crate) framing: Framing,
    pub(crate) upstream_closes: bool,
}

/// A `Content-Length` value: `1*DIGIT` (RFC 9110, 8.6) between optional spaces or tabs, that fits
/// in a `u64`. A sign, an empty value or anything else is refused, as hyper refuses it.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Parses a response head; the headers to pass on go to `kept` as ranges of `buf`.
pub(crate) fn parse_response_head(
    buf: &[u8],
    method: &Method,
    kept: &mut Vec<(Range<usize>, Range<usize>)>,
    limits: HeadLimits,
) -> Result<Option<ResponseHead>, InvalidResponse> {
    // Room for the most any configuration allows; the configured count is checked after.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() };
        ServerLimits::MAX_RESPONSE_HEADERS_CAP];
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(InvalidResponse::TooLarge),
        Err(_) => return Err(InvalidResponse::Malformed),
    };
    if head_len > limits.bytes || response.headers.len() > limits.headers {
        return Err(InvalidResponse::TooLarge);
    }
    let status = response.code.ok_or(InvalidResponse::Malformed)?;
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    // "HTTP/1.1 " is 9 bytes; the status line runs to the first LF, less the CR before it
    // (httparse accepts a bare LF too).
    let lf = buf
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(InvalidResponse::Malformed)?;
    let line_end = if buf[..lf].ends_with(b"\r") {
        lf - 1
    } else {
        lf
    };
    if line_end < 12 {
        return Err(InvalidResponse::Malformed);
    }
    let status_line = 9..line_end;
    kept.clear();
    let mut has_date = false;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut upstream_closes = response.version == Some(0);
    let mut named: Vec<&[u8]> = Vec::new();
    for h in response.headers.iter() {
        let known = classify(h.name.as_bytes());
        match known.on_response() {
            OnResponse::DropWithNamed => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        upstream_closes = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        if response.version == Some(0) {
                            upstream_closes = false;
                        }
                    } else if !token.is_empty()
                        && !matches!(
                            classify(token),
                            Known::TransferEncoding | Known::ContentLength
                        )
                    {
                        // The framing is never removed by name (`headers::connection_named`).
                        named.push(token);
                    }
                }
                continue;
            }
            OnResponse::Drop => continue,
            OnResponse::Framing => {
                let last = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                if last.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    other_coding = true;
                }
                kept.push((range(h.name.as_bytes()), range(h.value)));
                continue;
            }
            OnResponse::Keep => {}
        }
        match known {
            Known::ContentLength => {
                let value = content_length(h.value).ok_or(InvalidResponse::BadLength)?;
                if length.is_some_and(|l| l != value) {
                    return Err(InvalidResponse::ConflictingLengths);
                }
                length = Some(value);
            }
            Known::Date => has_date = true,
            _ => {}
        }
        kept.push((range(h.name.as_bytes()), range(h.value)));
    }
    if length.is_some() && (chunked || other_coding) {
        // Two framings: refused, not resolved (see `InvalidResponse::LengthWithCoding`), as
        // hyper's path refuses it.
        return Err(InvalidResponse::LengthWithCoding);
    }
    if !named.is_empty() {
        kept.retain(|(name, _)| {
            !named
                .iter()
                .any(|token| buf[name.clone()].eq_ignore_ascii_case(token))
        });
    }
    let framing = if *method == Method::HEAD || status == 204 || status == 304 || status < 200 {
        Framing::None
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if chunked || other_coding {
        // A coding that does not end in chunked: the body runs to the end of the connection.
        kept.retain(|(name, _)| !buf[name.clone()].eq_ignore_ascii_case(b"transfer-encoding"));
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if framing != Framing::Chunked {
        kept.retain(|(name, _)| !buf[name.clone()].eq_ignore_ascii_case(b"transfer-encoding"));
    }
    if framing == Framing::UntilClose {
        upstream_closes = true;
    }
    Ok(Some(ResponseHead {
        status,
        head_len,
        status_line,
        has_date,
        framing,
        upstream_closes,
    }))
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted at most once a
/// second per thread.
pub(super) fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let (at, text) = cache.get();
        if at == now {
            return text;
        }
        let text = format_http_date(now);
        cache.set((now, text));
        text
    })
}

/// `httpdate` is what hyper formats its own `Date` headers with.
fn format_http_date(unix: u64) -> [u8; 29] {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    let mut out = [b' '; 29];
    let text = httpdate::fmt_http_date(at);
    let n = text.len().min(29);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        headers: 100,
        bytes: 64 * 1024,
    };

    #[test]
    fn http_dates_are_imf_fixdates() {
        assert_eq!(
            &format_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &format_http_date(1_795_341_600),
            b"Sun, 22 Nov 2026 10:00:00 GMT"
        );
    }

    #[test]
    fn header_lines_come_out_as_push_header_writes_them_however_they_came_in() {
        let src: &[u8] = b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc:   3  \r\nd: 4\ne:\r\nf: 6\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        assert!(response.parse(src).unwrap().is_complete());
        let base = src.as_ptr() as usize;
        let range = |s: &[u8]| s.as_ptr() as usize - base..s.as_ptr() as usize - base + s.len();
        // Every subset of the headers, in order, as the request and response paths keep them.
        let all = response.headers;
        for mask in 0u32..(1 << all.len()) {
            let kept: Vec<_> = (0..all.len()).filter(|i| mask & (1 << i) != 0).collect();
            let mut expected = Vec::new();
            for &i in &kept {
                push_header(&mut expected, all[i].name.as_bytes(), all[i].value);
            }
            let mut out = Vec::new();
            let mut lines = Lines::new(src, &mut out);
            for &i in &kept {
                lines.header(range(all[i].name.as_bytes()), range(all[i].value));
            }
            lines.flush();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "headers {kept:?}"
            );
        }
    }

    #[test]
    fn the_status_line_ends_at_its_line_end_whatever_the_line_ends_are() {
        for text in [
            "HTTP/1.1 404 Not Found\r\nx: 1\r\n\r\n",
            "HTTP/1.1 404 Not Found\nx: 1\r\n\n",
        ] {
            let head = parse_response_head(text.as_bytes(), &Method::GET, &mut Vec::new(), LIMITS)
                .unwrap()
                .unwrap();
            assert_eq!(&text[head.status_line], "404 Not Found", "{text:?}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"20"), Some(20));
        assert_eq!(content_length(b" \t0020 "), Some(20));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+20",
            b"-1",
            b"2 0",
            b"20;",
            b"0x14",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let get = Method::GET;
        let parse = |text: &str, m: &Method| {
            parse_response_head(text.as_bytes(), m, &mut Vec::new(), LIMITS)
                .unwrap()
                .unwrap()
                .framing
        };
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &get),
            Framing::Length(5)
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &get
            ),
            Framing::Chunked
        );
        assert_eq!(parse("HTTP/1.1 200 OK\r\n\r\n", &get), Framing::UntilClose);
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", &get),
            Framing::None
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &Method::HEAD
            ),
            Framing::None
        );
        assert!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                &get,
                &mut Vec::new(),
                LIMITS
            )
            .is_err()
        );
        let mut kept = Vec::new();
        for coding in ["chunked", "gzip"] {
            let both = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: {coding}\r\n\r\n"
            );
            assert_eq!(
                parse_response_head(both.as_bytes(), &get, &mut kept, LIMITS).err(),
                Some(InvalidResponse::LengthWithCoding),
                "a length beside a coding is refused, not resolved"
            );
        }
        parse_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\ncontent-length: 0\r\n\r\n",
            &get,
            &mut kept,
            LIMITS,
        )
        .unwrap()
        .unwrap();
        assert_eq!(kept.len(), 2, "x-kept and content-length only");
    }
}
