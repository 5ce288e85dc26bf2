//! Whether a request is a WebSocket handshake and may be one here: only on a route with
//! `websocket = true` (elsewhere 403, never an unchecked tunnel), and only a well-formed
//! handshake (RFC 6455 4.1). The request was authenticated and authorised before this, as a GET.

use base64::Engine;
use http::header::{CONNECTION, HeaderMap, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};

use crate::refusal::Refusal;
use crate::snapshot::Route;

/// Whether the request asks to switch to WebSocket (`Upgrade: websocket`).
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// `Ok(true)`: a WebSocket handshake to relay; `Ok(false)`: an ordinary request.
pub(super) fn check(
    headers: &HeaderMap,
    method: &http::Method,
    route: &Route,
) -> Result<bool, Refusal> {
    if !is_websocket_upgrade(headers) {
        return Ok(false);
    }
    if !route.websocket {
        return Err(Refusal::Forbidden);
    }
    let connection_upgrade = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let version_13 = headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
    let key_ok = headers.get_all(SEC_WEBSOCKET_KEY).iter().count() == 1
        && headers.get(SEC_WEBSOCKET_KEY).is_some_and(|k| {
            base64::engine::general_purpose::STANDARD
                .decode(k.as_bytes().trim_ascii())
                .is_ok_and(|nonce| nonce.len() == 16)
        });
    if *method != http::Method::GET || !connection_upgrade || !version_13 || !key_ok {
        return Err(Refusal::BadUpgrade);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(websocket: bool) -> Route {
        Route {
            prefix: "/ws/".into(),
            upstream: 0,
            strip_prefix: false,
            upstream_timeout: None,
            websocket,
        }
    }

    fn handshake(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, "websocket".parse().unwrap());
        h.insert(CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        h.insert(SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        h.insert(SEC_WEBSOCKET_KEY, key.parse().unwrap());
        h
    }

    #[test]
    fn a_handshake_is_relayed_only_where_allowed_and_only_when_well_formed() {
        let good = handshake("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(check(&good, &http::Method::GET, &route(true)), Ok(true));
        assert_eq!(
            check(&good, &http::Method::GET, &route(false)),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            check(&handshake("short"), &http::Method::GET, &route(true)),
            Err(Refusal::BadUpgrade)
        );
        assert_eq!(
            check(&good, &http::Method::POST, &route(true)),
            Err(Refusal::BadUpgrade)
        );
        assert_eq!(
            check(&HeaderMap::new(), &http::Method::GET, &route(false)),
            Ok(false)
        );
    }
}
