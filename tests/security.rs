//! Regression tests for the findings of the security review (one section each in docs/security.md),
//! on both request paths where the finding applies: raw sockets, real upstreams.

mod common;

use common::*;

/// A user whose whitelist is the trusted balancer's own subnet, behind that balancer.
async fn behind_trusted_balancer() -> (Upstream, TestGateway, TestKey) {
    let upstream = echo_upstream().await;
    let k = TestKey::new("lbsubnet");
    let users = user(
        "lb-subnet@example.org",
        "active",
        "manage-supporters",
        "127.0.0.0/8",
        &[&k],
    );
    let toml = config(&upstream.url(), &users).replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"2s\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let gw = TestGateway::start(&toml).await;
    (upstream, gw, k)
}

/// The request heads that reach the fast path (a bodiless GET) and hyper's path (a POST).
fn both_paths(k: &TestKey, forwarded_for: &[u8]) -> [Vec<u8>; 2] {
    ["GET", "POST"].map(|method| {
        let mut head = format!(
            "{method} /supporters/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\nx-api-key: {}\r\n",
            k.key
        )
        .into_bytes();
        if method == "GET" {
            // A bodiless GET without Content-Length is what the fast path serves.
            let text = String::from_utf8(head).unwrap();
            head = text.replace("content-length: 0\r\n", "").into_bytes();
        }
        head.extend_from_slice(b"x-forwarded-for: ");
        head.extend_from_slice(forwarded_for);
        head.extend_from_slice(b"\r\n\r\n");
        head
    })
}

fn status_of(response: &str) -> &str {
    response.get(9..12).unwrap_or(response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_forwarded_entry_is_never_replaced_by_the_trusted_hop() {
    let (_upstream, gw, k) = behind_trusted_balancer().await;
    let addr = gw.gateway().local_addr();
    // The balancer (127.0.0.1, whitelisted) appended the real client, 203.0.113.9.
    for forwarded in [
        &b"203.0.113.9"[..],
        b"\x80, 203.0.113.9",
        b"203.0.113.9\xff",
        b"\xff",
        b"not-an-address",
    ] {
        for request in both_paths(&k, forwarded) {
            let response = raw(addr, &request).await;
            assert_eq!(
                status_of(&response),
                "403",
                "X-Forwarded-For {:?} via {}: {response}",
                String::from_utf8_lossy(forwarded),
                String::from_utf8_lossy(&request[..4]),
            );
            assert!(response.contains("unregistered_source"), "{response}");
        }
    }
    // A readable chain that ends in the whitelisted subnet is still admitted, on both paths.
    for request in both_paths(&k, b"\x80, 127.0.0.9") {
        let response = raw(addr, &request).await;
        assert_eq!(status_of(&response), "200", "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_forwarded_for_lines_are_one_list_in_order() {
    let (_upstream, gw, k) = behind_trusted_balancer().await;
    let addr = gw.gateway().local_addr();
    // The later line was appended by the nearer proxy: its entry is the client.
    for request in both_paths(&k, b"127.0.0.9\r\nx-forwarded-for: 203.0.113.9") {
        let response = raw(addr, &request).await;
        assert_eq!(status_of(&response), "403", "{response}");
    }
    for request in both_paths(&k, b"203.0.113.9\r\nx-forwarded-for: 127.0.0.9") {
        let response = raw(addr, &request).await;
        assert_eq!(status_of(&response), "200", "{response}");
    }
}
