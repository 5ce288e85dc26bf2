//! Strict HTTP where RFC 9112 says MUST, and the header tricks backends fall for (issue #18,
//! docs/security.md "Hardening"): each rule on both request paths, over raw sockets, against a
//! real upstream that describes what reached it.

mod common;

use common::*;

/// The upstream, a gateway in front of it (with `setting` under `[server]`, if any) and a user.
async fn gateway_with(setting: Option<&str>) -> (Upstream, TestGateway, TestKey) {
    let upstream = echo_upstream().await;
    let k = TestKey::new("hardening");
    let mut toml = one_user_config(&upstream.url(), "crm@example.org", &k);
    if let Some(line) = setting {
        toml = with_server_setting(&toml, line);
    }
    let gw = TestGateway::start(&toml).await;
    (upstream, gw, k)
}

/// A request head for `/supporters/1` with the user's key, `extra` header lines and no body: a
/// `GET` (the fast path serves it if nothing in it needs hyper) or a `POST` with an empty body
/// (hyper's path always). `Host` comes first unless `extra` brings its own.
fn request(method: &str, k: &TestKey, extra: &str) -> Vec<u8> {
    let lower = extra.to_ascii_lowercase();
    let host = if lower.starts_with("host:") || lower.contains("\nhost:") {
        ""
    } else {
        "host: api.example.org\r\n"
    };
    let length = if method == "POST" {
        "content-length: 0\r\n"
    } else {
        ""
    };
    format!(
        "{method} /supporters/1 HTTP/1.1\r\n{host}x-api-key: {}\r\nconnection: close\r\n{length}{extra}\r\n",
        k.key
    )
    .into_bytes()
}

fn status_of(response: &str) -> &str {
    response.get(9..12).unwrap_or(response)
}

/// The JSON body of a raw response.
fn body_of(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {response}"))
}

/// The header names the upstream saw.
fn upstream_saw(response: &str) -> Vec<String> {
    let doc = body_of(response);
    doc["headers"]
        .as_object()
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

fn upstream_value(response: &str, name: &str) -> Option<String> {
    body_of(response)["headers"][name][0]
        .as_str()
        .map(str::to_string)
}

/// Names a CGI, WSGI, PHP or Rack backend reads as the gateway's own headers.
const POSING: &str = "X_Apiward_User: forged@example.org\r\nx-apiward_group: admins\r\nX-Forwarded_For: 10.9.9.9\r\nx_forwarded_host: evil.example\r\nX_Request_Id: forged\r\nx_api_key: aw_forged\r\n";

both_transports! {
    async fn by_default_a_header_name_with_an_underscore_is_not_forwarded() {
        let (_upstream, gw, k) = gateway_with(None).await;
        for method in ["GET", "POST"] {
            let extra = format!("{POSING}x_custom: 1\r\nx-kept: yes\r\n");
            let response = raw(gw.addr, &request(method, &k, &extra)).await;
            assert_eq!(status_of(&response), "200", "{method}: {response}");
            let saw = upstream_saw(&response);
            assert!(saw.iter().all(|name| !name.contains('_')), "{method}: {saw:?}");
            assert_eq!(upstream_value(&response, "x-kept").as_deref(), Some("yes"));
            assert_eq!(
                upstream_value(&response, "x-apiward-user").as_deref(),
                Some("crm@example.org")
            );
            assert_eq!(upstream_value(&response, "x-forwarded-for").as_deref(), Some("127.0.0.1"));
        }
    }

    async fn underscore_headers_refuse_answers_400() {
        let (_upstream, gw, k) = gateway_with(Some("underscore_headers = \"refuse\"")).await;
        for method in ["GET", "POST"] {
            let response = raw(gw.addr, &request(method, &k, "x_custom: 1\r\n")).await;
            assert_eq!(status_of(&response), "400", "{method}: {response}");
            assert_eq!(body_of(&response)["error"], "underscore_header", "{response}");
            // Without one, the same request is served.
            let response = raw(gw.addr, &request(method, &k, "x-custom: 1\r\n")).await;
            assert_eq!(status_of(&response), "200", "{method}: {response}");
        }
    }

    async fn underscore_headers_allow_still_drops_names_that_pose_as_the_gateways_own() {
        let (_upstream, gw, k) = gateway_with(Some("underscore_headers = \"allow\"")).await;
        for method in ["GET", "POST"] {
            let extra = format!("{POSING}Transfer_Encoding: chunked\r\nx_custom: 1\r\n");
            let response = raw(gw.addr, &request(method, &k, &extra)).await;
            assert_eq!(status_of(&response), "200", "{method}: {response}");
            let saw = upstream_saw(&response);
            assert_eq!(
                saw.iter().filter(|n| n.contains('_')).collect::<Vec<_>>(),
                ["x_custom"],
                "{method}: only the name that poses as nothing is forwarded"
            );
            assert_eq!(
                upstream_value(&response, "x-apiward-user").as_deref(),
                Some("crm@example.org")
            );
        }
    }

    async fn an_http_1_1_request_without_host_or_with_two_is_answered_400() {
        let (_upstream, gw, k) = gateway_with(None).await;
        for method in ["GET", "POST"] {
            for hosts in [
                "",
                "host: a.example\r\nhost: b.example\r\n",
                "host: a.example\r\nHost: a.example\r\n",
                "host: a b\r\n",
                "host: a.example:http\r\n",
                "host: [::1\r\n",
            ] {
                let mut head = request(method, &k, hosts);
                if hosts.is_empty() {
                    let text = String::from_utf8(head).unwrap();
                    head = text.replace("host: api.example.org\r\n", "").into_bytes();
                }
                let response = raw(gw.addr, &head).await;
                assert_eq!(status_of(&response), "400", "{method} {hosts:?}: {response}");
                assert_eq!(body_of(&response)["error"], "bad_host", "{response}");
            }
            // An HTTP/1.0 request needs none (RFC 9112 3.2 binds HTTP/1.1).
            let old = format!(
                "{method} /supporters/1 HTTP/1.0\r\nx-api-key: {}\r\ncontent-length: 0\r\n\r\n",
                k.key
            );
            let response = raw(gw.addr, old.as_bytes()).await;
            assert_eq!(status_of(&response), "200", "{method} HTTP/1.0: {response}");
            // An IPv6 literal with a port is a host.
            let response = raw(gw.addr, &request(method, &k, "host: [2001:db8::1]:8443\r\n")).await;
            assert_eq!(status_of(&response), "200", "{response}");
            assert_eq!(
                upstream_value(&response, "x-forwarded-host").as_deref(),
                Some("[2001:db8::1]:8443")
            );
        }
    }

    async fn an_absolute_form_target_is_the_host_and_a_host_that_disagrees_is_refused() {
        let (_upstream, gw, k) = gateway_with(None).await;
        for method in ["GET", "POST"] {
            let absolute = |host: &str| {
                let text = String::from_utf8(request(method, &k, host)).unwrap();
                text.replacen(
                    " /supporters/1 ",
                    " http://api.example.org/supporters/1 ",
                    1,
                )
                .into_bytes()
            };
            for agreeing in ["host: api.example.org\r\n", "host: API.example.org\r\n", "x-no-host: 1\r\nhost:\r\n"] {
                let mut head = absolute(agreeing);
                if agreeing.starts_with("x-no-host") {
                    let text = String::from_utf8(head).unwrap();
                    head = text.replace("host:\r\n", "").into_bytes();
                }
                let response = raw(gw.addr, &head).await;
                assert_eq!(status_of(&response), "200", "{method} {agreeing:?}: {response}");
                assert_eq!(
                    upstream_value(&response, "x-forwarded-host").as_deref(),
                    Some("api.example.org"),
                    "the target's authority is the request's host (RFC 9112 3.2.2)"
                );
                assert_eq!(body_of(&response)["path"], "/supporters/1");
            }
            let response = raw(gw.addr, &absolute("host: other.example\r\n")).await;
            assert_eq!(status_of(&response), "400", "{method}: {response}");
            assert_eq!(body_of(&response)["error"], "bad_host", "{response}");
        }
    }
}

both_transports! {
    async fn a_body_is_forwarded_with_its_framing_whatever_the_method() {
        let (_upstream, gw, k) = gateway_with(None).await;
        let digest = apiward::snapshot::KeyDigest::of("hello, world").to_hex();
        // The user's group may view, create and modify.
        for method in ["GET", "OPTIONS", "POST", "PUT", "PATCH"] {
            for (framing, body) in [
                ("transfer-encoding: chunked\r\n", "5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"),
                ("content-length: 12\r\n", "hello, world"),
                (
                    "connection: transfer-encoding\r\ntransfer-encoding: chunked\r\n",
                    "c\r\nhello, world\r\n0\r\n\r\n",
                ),
            ] {
                let mut head = String::from_utf8(request(method, &k, framing)).unwrap();
                head = head.replace("content-length: 0\r\n", "");
                let response = raw(gw.addr, format!("{head}{body}").as_bytes()).await;
                assert_eq!(status_of(&response), "200", "{method} {framing:?}: {response}");
                let doc = body_of(&response);
                assert_eq!(doc["method"], method);
                assert_eq!(doc["body_len"], 12, "{method} {framing:?}: the body went on");
                assert_eq!(doc["body_sha256"], digest.as_str());
            }
        }
    }
}
