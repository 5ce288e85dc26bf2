//! Header hygiene: who the client is, and what crosses the gateway in each direction.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::auth::address::ClientAddress;
use crate::snapshot::{Snapshot, UnderscoreHeaders};

/// The request id the gateway gives every request, upstream and in its answer.
pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_APIWARD_USER: HeaderName = HeaderName::from_static("x-apiward-user");
pub static X_APIWARD_GROUP: HeaderName = HeaderName::from_static("x-apiward-group");
/// What is left of a limited user's allowance, sent upstream with `[rate_limits]
/// forward_remaining = true`; a client's own is dropped like the identity headers.
pub static X_APIWARD_RATELIMIT_REMAINING: HeaderName =
    HeaderName::from_static("x-apiward-ratelimit-remaining");
/// Every header name the gateway acts on, in either direction: the one list both transports read.
/// Found by length first (`classify`), so a name is compared with at most two candidates instead
/// of every one. What happens to each is `Known::on_request` and `Known::on_response`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// The configured key header.
    Key,
    /// A configured `credential_headers` entry.
    ExtraCredential,
    Host,
    Date,
    Connection,
    /// Hop-by-hop besides `Connection` and `Transfer-Encoding`.
    Hop,
    TransferEncoding,
    ContentLength,
    Expect,
    Upgrade,
    Authorization,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRequestId,
    /// `X-Apiward-User` and `X-Apiward-Group`: ours only.
    Identity,
    Other,
}

pub fn classify(name: &[u8]) -> Known {
    use Known::*;
    let candidates: &[(&[u8], Known)] = match name.len() {
        2 => &[(b"te", Hop)],
        4 => &[(b"host", Host), (b"date", Date)],
        6 => &[(b"expect", Expect)],
        7 => &[(b"trailer", Hop), (b"upgrade", Upgrade)],
        10 => &[(b"connection", Connection), (b"keep-alive", Hop)],
        12 => &[(b"x-request-id", XRequestId)],
        13 => &[(b"authorization", Authorization)],
        14 => &[
            (b"content-length", ContentLength),
            (b"x-apiward-user", Identity),
        ],
        15 => &[
            (b"x-forwarded-for", XForwardedFor),
            (b"x-apiward-group", Identity),
        ],
        16 => &[
            (b"proxy-connection", Hop),
            (b"x-forwarded-host", XForwardedHost),
        ],
        17 => &[
            (b"transfer-encoding", TransferEncoding),
            (b"x-forwarded-proto", XForwardedProto),
        ],
        18 => &[(b"proxy-authenticate", Hop)],
        19 => &[(b"proxy-authorization", Hop)],
        29 => &[(b"x-apiward-ratelimit-remaining", Identity)],
        _ => &[],
    };
    candidates
        .iter()
        .find(|(n, _)| same_token(name, n))
        .map_or(Other, |(_, k)| *k)
}

/// Whether header name `name` equals `lower`, a name of lower-case letters and `-` only, ignoring
/// ASCII case. Setting bit 5 lower-cases a letter and leaves `-` as it is; the only other bytes it
/// would turn into those (controls) cannot be in a header name, which `httparse` has checked.
pub fn same_token(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b)
}

/// Whether a client header named `name` (one with `_`) may be forwarded under `mode`. Never when
/// the name, with `_` read as `-` (what CGI, WSGI, PHP and Rack backends do), is one the gateway
/// acts on (`classify`: its identity and forwarding headers, the credential, the framing, `Host`,
/// hop-by-hop) or a configured key or credential header: `X_Apiward_User` must not arrive as the identity the
/// gateway vouches for, whatever `mode` says.
pub fn forwards_underscore_name(
    name: &[u8],
    key_header: &HeaderName,
    credential_headers: &[HeaderName],
    mode: UnderscoreHeaders,
) -> bool {
    if mode != UnderscoreHeaders::Allow {
        return false;
    }
    let mut read_as = [0u8; 64];
    let Some(read_as) = read_as.get_mut(..name.len()) else {
        // Longer than any name the gateway acts on, so it cannot pose as one.
        return true;
    };
    for (to, &from) in read_as.iter_mut().zip(name) {
        *to = if from == b'_' { b'-' } else { from };
    }
    let read_as = &*read_as;
    classify(read_as) == Known::Other
        && std::iter::once(key_header)
            .chain(credential_headers)
            .all(|own| !read_as.eq_ignore_ascii_case(own.as_str().as_bytes()))
}

/// Whether a header name holds `_`.
#[inline]
pub fn has_underscore(name: &[u8]) -> bool {
    name.contains(&b'_')
}

/// A request's `Host` breaks RFC 9112 3.2 (see `request_host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no Host, more than one, one that is not a host, or one other than the target's authority")]
pub struct BadHost;

/// The request's `Host` by RFC 9112 3.2: an HTTP/1.1 request has exactly one `Host` line, holding
/// a host (name, IPv4 or bracketed IPv6) and optional port, or empty; an absolute-form target's
/// authority is the request's host (3.2.2), and a `Host` that disagrees with it is refused, as
/// HAProxy does. Returns the host the request is for, as sent upstream in `X-Forwarded-Host`.
pub fn request_host(
    version: http::Version,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, BadHost> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() || host.is_some_and(|h| !is_host_value(h.as_bytes())) {
        return Err(BadHost);
    }
    if let Some(authority) = uri.authority() {
        if host.is_some_and(|h| {
            !h.as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())
        }) {
            return Err(BadHost);
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| BadHost);
    }
    if host.is_none() && version == http::Version::HTTP_11 {
        return Err(BadHost);
    }
    Ok(host.filter(|h| !h.is_empty()).cloned())
}

/// Whether `value` is a `Host` value: `uri-host [ ":" port ]` (RFC 9112 3.2, RFC 3986 3.2.2), or
/// empty. Checked byte by byte, without allocating: the fast path checks every request's.
pub fn is_host_value(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|b| *b == b':') {
        // `[::1]` has colons inside the brackets: a port follows only the closing one.
        Some(i) if !value[i..].contains(&b']') => (&value[..i], &value[i + 1..]),
        _ => (value, &b""[..]),
    };
    if !port.iter().all(u8::is_ascii_digit) || port.len() > 5 {
        return false;
    }
    if let Some(inside) = host.strip_prefix(b"[") {
        let Some(inside) = inside.strip_suffix(b"]") else {
            return false;
        };
        return !inside.is_empty()
            && inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
    }
    if host.is_empty() && !port.is_empty() {
        return false;
    }
    // reg-name and IPv4: unreserved, pct-encoded, sub-delims.
    host.iter().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

/// What happens to a request header on its way upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRequest {
    /// Passed on as received.
    Keep,
    /// Never forwarded: the credential, hop-by-hop headers, forged identity headers, a client's
    /// `X-Request-Id` (the gateway sends the request's own), an untrusted peer's `X-Forwarded-*`.
    Drop,
    /// `Connection`: dropped, and so is every header it names.
    DropWithNamed,
    /// `Transfer-Encoding` (exactly `chunked`: admission refuses any other): kept, so that the
    /// body goes upstream with its framing whatever the method. hyper's client would otherwise
    /// send a `GET`'s body of unknown length as no body at all, and the request on without it.
    /// The engine never forwards a body: it hands such requests to hyper's path.
    Framing,
    /// `Host`: replaced by the upstream's authority; the client's becomes `X-Forwarded-Host`
    /// unless a trusted proxy sent one.
    Host,
    /// `X-Forwarded-For`: a trusted proxy's chain gets the peer appended; anyone else's is
    /// replaced by the peer.
    ForwardedFor,
    /// A trusted proxy's `X-Forwarded-Proto`: kept, and the gateway adds none.
    TrustedProto,
    /// A trusted proxy's `X-Forwarded-Host`: kept, and the gateway adds none.
    TrustedHost,
}

/// What happens to a response header on its way to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnResponse {
    Keep,
    /// Hop-by-hop, or the upstream's `X-Request-Id` (the client gets the request's own).
    Drop,
    /// `Connection`: dropped, and so is every header it names.
    DropWithNamed,
    /// `Transfer-Encoding`: the transport frames the body it sends, and says so itself.
    Framing,
}

impl Known {
    /// The request rule. `peer_is_trusted`: the TCP peer is a trusted proxy;
    /// `authorization_is_ours`: an `Authorization` line uses a scheme the gateway consumes
    /// (`authorization_is_ours`).
    #[inline]
    pub fn on_request(self, peer_is_trusted: bool, authorization_is_ours: bool) -> OnRequest {
        match self {
            // Whatever credential was used, none that the gateway recognises is forwarded: a key
            // header, a configured credential header, a Bearer or Basic `Authorization`.
            Known::Key | Known::ExtraCredential => OnRequest::Drop,
            Known::Authorization if authorization_is_ours => OnRequest::Drop,
            Known::Authorization => OnRequest::Keep,
            Known::Host => OnRequest::Host,
            Known::Connection => OnRequest::DropWithNamed,
            Known::TransferEncoding => OnRequest::Framing,
            Known::Hop | Known::Upgrade => OnRequest::Drop,
            Known::Identity | Known::XRequestId => OnRequest::Drop,
            Known::XForwardedFor => OnRequest::ForwardedFor,
            Known::XForwardedProto if peer_is_trusted => OnRequest::TrustedProto,
            Known::XForwardedHost if peer_is_trusted => OnRequest::TrustedHost,
            Known::XForwardedProto | Known::XForwardedHost => OnRequest::Drop,
            Known::Date | Known::ContentLength | Known::Expect | Known::Other => OnRequest::Keep,
        }
    }

    /// The response rule.
    #[inline]
    pub fn on_response(self) -> OnResponse {
        match self {
            Known::Connection => OnResponse::DropWithNamed,
            Known::Hop | Known::Upgrade | Known::XRequestId => OnResponse::Drop,
            Known::TransferEncoding => OnResponse::Framing,
            Known::Key
            | Known::ExtraCredential
            | Known::Host
            | Known::Date
            | Known::ContentLength
            | Known::Expect
            | Known::Authorization
            | Known::XForwardedFor
            | Known::XForwardedProto
            | Known::XForwardedHost
            | Known::Identity
            | Known::Other => OnResponse::Keep,
        }
    }
}

/// Whether an `Authorization` value uses a scheme the gateway consumes (Bearer, Basic): such a
/// line carries what the gateway recognises as a credential, whether or not it was the one used.
pub fn is_our_scheme(value: &[u8]) -> bool {
    let value = value.trim_ascii_start();
    let scheme = value.split(|b| *b == b' ').next().unwrap_or(value);
    scheme.eq_ignore_ascii_case(b"bearer") || scheme.eq_ignore_ascii_case(b"basic")
}

/// Whether any `Authorization` line of `headers` uses a scheme the gateway consumes.
pub fn authorization_is_ours(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .any(|v| is_our_scheme(v.as_bytes()))
}

/// The header names a `Connection` value lists besides `close` and `keep-alive` (a `Keep-Alive`
/// header goes anyway: it is hop-by-hop), in a form `HeaderMap::remove` takes.
pub(crate) fn connection_named(
    values: http::header::GetAll<'_, HeaderValue>,
    out: &mut Vec<HeaderName>,
) {
    let named = values
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        // A message's framing stays with its body: `Connection: transfer-encoding` must not
        // make a body go on without the header that delimits it.
        .filter(|t| {
            !matches!(
                classify(t.as_bytes()),
                Known::TransferEncoding | Known::ContentLength
            )
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok());
    out.extend(named);
}

/// The client address: the TCP peer, unless the peer is a trusted proxy, in which case it is the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy. Several header lines
/// are one list, in order. The entries are read as bytes: an entry that is not an address (not
/// UTF-8, a name, garbage) ends the walk as the client, which then matches no whitelist; the walk
/// never falls back to a hop nearer to the gateway, since a balancer that appends the real client
/// to what the client sent would otherwise let any client be judged as the balancer.
pub fn client_address(snapshot: &Snapshot, peer: SocketAddr, headers: &HeaderMap) -> ClientAddress {
    let peer_ip = crate::auth::address::canonical(peer.ip());
    if snapshot.server.trusted_proxies.is_empty() || !snapshot.is_trusted_proxy(peer_ip) {
        return ClientAddress::Ip(peer_ip);
    }
    let mut farthest = peer_ip;
    // Later header lines were appended by nearer proxies, so walk the lines and entries from the end.
    let lines: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
    for line in lines.iter().rev() {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                // `a, , b` and a trailing comma: list syntax (RFC 9110 5.6.1), not an entry.
                continue;
            }
            let Some(ip) = parse_forwarded_entry(entry) else {
                return ClientAddress::Unreadable;
            };
            let ip = crate::auth::address::canonical(ip);
            if !snapshot.is_trusted_proxy(ip) {
                return ClientAddress::Ip(ip);
            }
            farthest = ip;
        }
    }
    // Every entry was a trusted proxy (or there was none): the farthest trusted hop is the client.
    ClientAddress::Ip(farthest)
}

/// `192.0.2.1`, `2001:db8::1`, `192.0.2.1:4711` or `[2001:db8::1]:4711`.
fn parse_forwarded_entry(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?;
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// Removes the headers that must not reach the upstream, by the rules of `Known::on_request`: the
/// credential, every hop-by-hop header but the body's framing and every header `Connection`
/// names, identity headers a client may have forged, an untrusted peer's `X-Forwarded-*`, and
/// the names with `_` that `underscore_headers` does not let through. Only after that does the gateway
/// add its own (`add_forwarding`), so a client cannot make it drop them.
pub fn strip_request(
    headers: &mut HeaderMap,
    key_header: &HeaderName,
    credential_headers: &[HeaderName],
    authorization_is_ours: bool,
    peer_is_trusted: bool,
    underscore: UnderscoreHeaders,
) {
    headers.remove(key_header);
    for name in credential_headers {
        headers.remove(name);
    }
    let in_authorization = authorization_is_ours;
    // Most requests carry none of them: then nothing is allocated.
    let mut dropped = Vec::new();
    for name in headers.keys() {
        let bytes = name.as_str().as_bytes();
        if has_underscore(bytes)
            && !forwards_underscore_name(bytes, key_header, credential_headers, underscore)
        {
            dropped.push(name.clone());
            continue;
        }
        match classify(bytes).on_request(peer_is_trusted, in_authorization) {
            OnRequest::Drop => dropped.push(name.clone()),
            OnRequest::DropWithNamed => {
                dropped.push(name.clone());
                connection_named(headers.get_all(name), &mut dropped);
            }
            OnRequest::Keep
            | OnRequest::Framing
            | OnRequest::Host
            | OnRequest::ForwardedFor
            | OnRequest::TrustedProto
            | OnRequest::TrustedHost => {}
        }
    }
    for name in dropped {
        headers.remove(name);
    }
}

/// Removes what must not reach the client, by the rules of `Known::on_response`: hop-by-hop
/// headers (those `Connection` names too), the framing (the transport frames the body anew) and
/// the upstream's `X-Request-Id`.
pub fn strip_response(headers: &mut HeaderMap) {
    let mut dropped = Vec::new();
    for name in headers.keys() {
        match classify(name.as_str().as_bytes()).on_response() {
            OnResponse::Drop | OnResponse::Framing => dropped.push(name.clone()),
            OnResponse::DropWithNamed => {
                dropped.push(name.clone());
                connection_named(headers.get_all(name), &mut dropped);
            }
            OnResponse::Keep => {}
        }
    }
    for name in dropped {
        headers.remove(name);
    }
}

/// What the gateway tells the upstream about the request. The identity values are already
/// header values (validated once, when the request was decided).
pub struct Forwarded {
    /// The TCP peer's address as text, made once per connection.
    pub peer: HeaderValue,
    pub peer_is_trusted: bool,
    pub proto: &'static str,
    pub user: HeaderValue,
    pub group: HeaderValue,
}

/// Adds `X-Forwarded-*` and the identity headers. Call after `strip_request`.
pub fn add_forwarding(headers: &mut HeaderMap, original_host: Option<HeaderValue>, fwd: Forwarded) {
    let peer = fwd.peer;
    if fwd.peer_is_trusted {
        // Keep the chain the trusted proxy sent and append the hop we saw.
        let previous: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if previous.is_empty() {
            headers.insert(&X_FORWARDED_FOR, peer);
        } else {
            let hop = peer.to_str().unwrap_or_default();
            let chain = format!("{}, {hop}", previous.join(", "));
            match HeaderValue::from_str(&chain) {
                Ok(v) => {
                    headers.insert(&X_FORWARDED_FOR, v);
                }
                Err(_) => {
                    headers.insert(&X_FORWARDED_FOR, peer);
                }
            }
        }
    } else {
        // An untrusted peer's X-Forwarded-* are replaced, never believed.
        headers.insert(&X_FORWARDED_FOR, peer);
    }
    if !fwd.peer_is_trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    }
    if !fwd.peer_is_trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match original_host {
            Some(host) => {
                headers.insert(&X_FORWARDED_HOST, host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
    headers.insert(&X_APIWARD_USER, fwd.user);
    headers.insert(&X_APIWARD_GROUP, fwd.group);
}

/// Whether a `TE` value lists `trailers` (`TE: trailers`, `TE: trailers, deflate;q=0.5`): the one
/// transfer coding that crosses the gateway (as `TE: trailers`, which gRPC needs); any other is
/// this hop's. Both transports ask this.
pub fn accepts_trailers(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.split(|&b| b == b';').next().map(<[u8]>::trim_ascii) == Some(b"trailers"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn header_names_are_classified_whatever_their_case() {
        for (name, known) in [
            ("Host", Known::Host),
            ("TE", Known::Hop),
            ("Keep-Alive", Known::Hop),
            ("Proxy-Authorization", Known::Hop),
            ("connection", Known::Connection),
            ("Transfer-Encoding", Known::TransferEncoding),
            ("X-Forwarded-Proto", Known::XForwardedProto),
            ("x-apiward-GROUP", Known::Identity),
            ("X-Request-ID", Known::XRequestId),
            ("x-forwarded-fox", Known::Other),
            ("accept", Known::Other),
            ("", Known::Other),
            ("x_request_id", Known::Other),
            ("X-REQUEST-ID", Known::XRequestId),
            ("x-request-i^", Known::Other),
        ] {
            assert_eq!(classify(name.as_bytes()), known, "{name}");
        }
    }

    #[test]
    fn every_hop_by_hop_header_is_dropped_both_ways() {
        // RFC 9110 7.6.1, plus the usual extras. `Transfer-Encoding` is hop-by-hop too, but a
        // request's is the framing of the body that goes on (`OnRequest::Framing`).
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let known = classify(name.as_bytes());
            for trusted in [false, true] {
                assert!(
                    matches!(
                        known.on_request(trusted, false),
                        OnRequest::Drop | OnRequest::DropWithNamed | OnRequest::Framing
                    ),
                    "{name}"
                );
            }
            assert_ne!(known.on_response(), OnResponse::Keep, "{name}");
        }
    }

    #[test]
    fn connection_named_headers_are_removed_but_ours_are_added_after() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Forwarded-For, X-Apiward-User, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert(
            "x-apiward-user",
            HeaderValue::from_static("forged@example.org"),
        );
        h.insert("x-api-key", HeaderValue::from_static("aw_key"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_request(
            &mut h,
            &HeaderName::from_static("x-api-key"),
            &[],
            false,
            false,
            UnderscoreHeaders::Drop,
        );
        add_forwarding(
            &mut h,
            Some(HeaderValue::from_static("api.example.org")),
            Forwarded {
                peer: HeaderValue::from_static("192.0.2.10"),
                peer_is_trusted: false,
                proto: "http",
                user: HeaderValue::from_static("crm@example.org"),
                group: HeaderValue::from_static("g"),
            },
        );
        assert!(!h.contains_key("connection"));
        assert!(!h.contains_key("x-secret"), "named by Connection");
        assert!(!h.contains_key("x-secret"));
        assert!(!h.contains_key("keep-alive"));
        assert!(!h.contains_key("x-api-key"));
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["x-forwarded-for"], "192.0.2.10");
        assert_eq!(h["x-apiward-user"], "crm@example.org");
        assert_eq!(h["x-forwarded-host"], "api.example.org");
    }

    #[test]
    fn response_hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Internal"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-internal", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_response(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-type"]
        );

        // Nothing to remove: nothing changes.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let before = h.clone();
        strip_response(&mut h);
        assert_eq!(h, before);
    }
}
