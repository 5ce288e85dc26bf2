//! What the fuzz targets (`fuzz/`) and the property tests drive of the engine's codec, without
//! making the codec itself public: each function runs one parser on arbitrary bytes and checks
//! the invariants the engine relies on, panicking when one breaks.

use http::Method;

use super::chunked::ChunkTracker;
use super::codec::{Framing, parse_response_head};

/// What the engine made of a response head, for a caller to compare with another parser's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSummary {
    pub status: u16,
    pub head_len: usize,
    /// `None`: no body; `Some(None)`: chunked or until close; `Some(Some(n))`: `n` bytes.
    pub length: Option<Option<u64>>,
    pub chunked: bool,
    pub upstream_closes: bool,
}

/// Parses `buf` as a response head to a `HEAD` request (`head`) or a `GET`. `Ok(None)`: partial;
/// `Err(())`: refused. Panics if the head runs past the buffer or a kept header range does.
#[allow(clippy::result_unit_err)]
pub fn response_head(buf: &[u8], head: bool) -> Result<Option<ResponseSummary>, ()> {
    let method = if head { Method::HEAD } else { Method::GET };
    let mut kept = Vec::new();
    let limits = crate::proxy::policy::HeadLimits {
        headers: 100,
        bytes: 64 * 1024,
    };
    let Some(parsed) = parse_response_head(buf, &method, &mut kept, limits).map_err(|_| ())? else {
        return Ok(None);
    };
    assert!(
        parsed.head_len <= buf.len(),
        "the head ends inside the buffer"
    );
    assert!(parsed.status_line.end <= parsed.head_len);
    for (name, value) in &kept {
        assert!(name.end <= parsed.head_len && value.end <= parsed.head_len);
    }
    let (length, chunked) = match parsed.framing {
        Framing::None => (None, false),
        Framing::Length(n) => (Some(Some(n)), false),
        Framing::Chunked => (Some(None), true),
        Framing::UntilClose => (Some(None), false),
    };
    if parsed.framing == Framing::UntilClose {
        assert!(
            parsed.upstream_closes,
            "a body to the end of the connection closes it"
        );
    }
    Ok(Some(ResponseSummary {
        status: parsed.status,
        head_len: parsed.head_len,
        length,
        chunked,
        upstream_closes: parsed.upstream_closes,
    }))
}

/// Follows `body` as a chunked body fed in pieces split at `splits` (offsets, any order). Returns
/// where the body ends (`Ok(Some(n))`), `Ok(None)` if it has not ended, `Err(())` if malformed.
/// Panics if the split changes the answer or the end lies past the bytes fed.
#[allow(clippy::result_unit_err)]
pub fn chunked(body: &[u8], splits: &[usize]) -> Result<Option<usize>, ()> {
    let whole = ChunkTracker::default().feed(body).map_err(|_| ());
    if let Ok(Some(end)) = whole {
        assert!(end <= body.len());
    }
    let mut cuts: Vec<usize> = splits.iter().map(|s| s % (body.len() + 1)).collect();
    cuts.push(body.len());
    cuts.sort_unstable();
    let mut tracker = ChunkTracker::default();
    let mut at = 0;
    let mut pieces = Ok(None);
    for cut in cuts {
        if cut < at {
            continue;
        }
        match tracker.feed(&body[at..cut]) {
            Ok(Some(end)) => {
                pieces = Ok(Some(at + end));
                break;
            }
            Ok(None) => {}
            Err(_) => {
                pieces = Err(());
                break;
            }
        }
        at = cut;
    }
    assert_eq!(
        whole, pieces,
        "fed whole or in pieces, the same body ends at the same byte"
    );
    whole
}

/// Reads `buf` as the engine reads a request head. Panics if a head it serves runs past the
/// buffer, or is one that another parser could frame differently: it must be HTTP/1.1 with
/// exactly one `Host`, no `Transfer-Encoding`, no `Content-Length` but `0` (so its body is empty
/// to httparse and to hyper alike), and the head must end where httparse says it ends.
/// Returns whether the engine serves it.
pub fn request_head(buf: &[u8]) -> bool {
    use super::codec::{RequestHead, read_request_head};
    let key_header = http::HeaderName::from_static("x-api-key");
    let mut decision = http::HeaderMap::new();
    let mut lines = Vec::new();
    let RequestHead::Fast { path, len, .. } =
        read_request_head(buf, 64 * 1024, &key_header, &[], &mut decision, &mut lines)
    else {
        return false;
    };
    assert!(len <= buf.len() && path.end <= len, "inside the head");
    for (name, value, _) in &lines {
        assert!(name.end <= len && value.end <= len);
    }
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    assert_eq!(
        request.parse(buf).ok(),
        Some(httparse::Status::Complete(len)),
        "httparse ends the head at the same byte"
    );
    assert_eq!(request.version, Some(1));
    let named = |n: &'static str| {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(n))
    };
    assert_eq!(named("host").count(), 1, "exactly one Host");
    assert_eq!(named("transfer-encoding").count(), 0);
    assert!(named("content-length").all(|h| h.value == b"0"));
    assert!(request.headers.iter().all(|h| !h.name.contains('_')));
    true
}
