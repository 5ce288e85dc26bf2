//! Header hygiene: who the client is, and what crosses the gateway in each direction.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::auth::address::ClientAddress;
use crate::auth::credential::CredentialSource;
use crate::snapshot::Snapshot;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_APIWARD_USER: HeaderName = HeaderName::from_static("x-apiward-user");
pub static X_APIWARD_GROUP: HeaderName = HeaderName::from_static("x-apiward-group");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop and never travel further (RFC 9110 7.6.1, plus the usual extras).
pub(super) static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

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

/// Removes the headers that must not reach the upstream: the credential, every hop-by-hop header
/// and every header `Connection` names, and identity headers a client may have forged. Only
/// after that does the gateway add its own, so a client cannot make it drop them.
pub fn strip_request(
    headers: &mut HeaderMap,
    key_header: &HeaderName,
    credential: CredentialSource,
) {
    if credential == CredentialSource::Authorization {
        headers.remove(header::AUTHORIZATION);
    }
    // A key header is removed even when the credential came from elsewhere: a key is never forwarded.
    headers.remove(key_header);
    let present = present_among(headers, &STRIPPED_FROM_REQUESTS);
    remove_present(headers, &STRIPPED_FROM_REQUESTS, present);
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let present = present_among(headers, &HOP_BY_HOP);
    remove_present(headers, &HOP_BY_HOP, present);
}

/// What `strip_request` removes besides the credential: hop-by-hop headers, then forged identity.
static STRIPPED_FROM_REQUESTS: [&HeaderName; 11] = [
    HOP_BY_HOP[0],
    HOP_BY_HOP[1],
    HOP_BY_HOP[2],
    HOP_BY_HOP[3],
    HOP_BY_HOP[4],
    HOP_BY_HOP[5],
    HOP_BY_HOP[6],
    HOP_BY_HOP[7],
    HOP_BY_HOP[8],
    &X_APIWARD_USER,
    &X_APIWARD_GROUP,
];

/// Which of `names` occur in `headers`, as a bit mask: one pass over the few names a request or
/// response carries, comparing instead of hashing. Most messages carry none of them, and a
/// hashed `remove` of an absent name costs about as much as the whole pass.
fn present_among(headers: &HeaderMap, names: &[&HeaderName]) -> u32 {
    debug_assert!(names.len() <= 32);
    let mut present = 0u32;
    for name in headers.keys() {
        if let Some(i) = names.iter().position(|n| *n == name) {
            present |= 1 << i;
        }
    }
    present
}

/// Removes the `present` ones of `names`; when `Connection` (always `names[0]`) is among them,
/// first every header it names.
fn remove_present(headers: &mut HeaderMap, names: &[&HeaderName], present: u32) {
    debug_assert!(names[0] == header::CONNECTION);
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        // `close` names no header, and a `Keep-Alive` header goes anyway (it is hop-by-hop):
        // the usual `Connection: keep-alive` needs no header name built.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in names.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

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
            CredentialSource::KeyHeader,
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
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            ["content-type"]
        );

        // Nothing to remove: nothing changes.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
