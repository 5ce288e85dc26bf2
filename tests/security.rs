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

both_transports! {
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
}

both_transports! {
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
}

/// Sends `request` from the loopback address `source` (127.0.0.2 is a different client than
/// 127.0.0.1) and reads until the gateway closes.
async fn raw_from(source: &str, addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt as _;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind the client to its loopback source");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_until_close(&mut stream, std::time::Duration::from_secs(20)).await
}

fn basic(id: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{password}"))
    )
}

/// A bodiless GET (the fast path) and a POST (hyper's path) with these extra header lines.
fn get_and_post(extra: &str) -> [Vec<u8>; 2] {
    [
        format!("GET /supporters/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n"),
        format!(
            "POST /supporters/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 2\r\n{extra}\r\n{{}}"
        ),
    ]
    .map(String::into_bytes)
}

/// A gateway with one password user calling from `addresses`.
async fn password_gateway(id: &str, addresses: &str, password: &str) -> (Upstream, TestGateway) {
    let upstream = echo_upstream().await;
    let hash = apiward::auth::password::hash_password(password).expect("hash");
    let users = format!(
        "[users.\"{id}\"]\nstatus = \"active\"\ngroup = \"manage-supporters\"\nremote_addresses = \"{addresses}\"\npassword_hash = \"{hash}\"\n"
    );
    let gw = TestGateway::start(&config(&upstream.url(), &users)).await;
    (upstream, gw)
}

both_transports! {
    async fn password_guesses_from_outside_the_whitelist_never_count_against_the_user() {
        let (_up, gw) = password_gateway("crm@example.org", "127.0.0.1", "Real-secret-7").await;
        let addr = gw.gateway().local_addr();
        // More guesses than any failure budget, from a source the user may not call from: each is
        // refused for its source, and none is a password check.
        for i in 0..6 {
            for request in get_and_post(&format!(
                "authorization: {}\r\n",
                basic("crm@example.org", &format!("guess-{i}"))
            )) {
                let response = raw_from("127.0.0.2", addr, &request).await;
                assert_eq!(status_of(&response), "403", "{response}");
                assert!(response.contains("unregistered_source"), "{response}");
            }
        }
        // The real integration logs in for the first time (nothing cached) on either path.
        for request in get_and_post(&format!(
            "authorization: {}\r\n",
            basic("crm@example.org", "Real-secret-7")
        )) {
            let response = raw_from("127.0.0.1", addr, &request).await;
            assert_eq!(status_of(&response), "200", "{response}");
        }
    }
}

both_transports! {
    async fn password_guesses_from_one_source_do_not_lock_the_user_out_of_another() {
        let (_up, gw) = password_gateway("crm@example.org", "127.0.0.0/8", "Real-secret-7").await;
        let addr = gw.gateway().local_addr();
        // Eight wrong guesses from 127.0.0.2 use up that source's budget (five), on both paths.
        for i in 0..4 {
            for request in get_and_post(&format!(
                "authorization: {}\r\n",
                basic("crm@example.org", &format!("guess-{i}"))
            )) {
                let response = raw_from("127.0.0.2", addr, &request).await;
                assert_eq!(status_of(&response), "401", "{response}");
            }
        }
        let right = get_and_post(&format!(
            "authorization: {}\r\n",
            basic("crm@example.org", "Real-secret-7")
        ));
        // The guessing source is throttled: even the right password waits for its bucket.
        let response = raw_from("127.0.0.2", addr, &right[0]).await;
        assert_eq!(status_of(&response), "401", "{response}");
        // The real integration, elsewhere, logs in for the first time on either path.
        for request in &right {
            let response = raw_from("127.0.0.1", addr, request).await;
            assert_eq!(status_of(&response), "200", "{response}");
        }
    }
}

both_transports! {
    async fn an_oversized_key_is_refused_as_invalid_credentials() {
        let (_upstream, gw, k) = behind_trusted_balancer().await;
        let addr = gw.gateway().local_addr();
        let long = format!("{}{}", k.key, "x".repeat(300));
        for request in get_and_post(&format!("x-api-key: {long}\r\n")) {
            let response = raw(addr, &request).await;
            assert_eq!(status_of(&response), "401", "{response}");
            assert!(response.contains("invalid_credentials"), "{response}");
        }
    }
}

both_transports! {
    async fn an_ipv4_mapped_whitelist_entry_admits_the_ipv4_client() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("mapped");
        let users = user(
            "mapped@example.org",
            "active",
            "manage-supporters",
            "::ffff:127.0.0.1",
            &[&k],
        );
        let gw = TestGateway::start(&config(&upstream.url(), &users)).await;
        for request in get_and_post(&format!("x-api-key: {}\r\n", k.key)) {
            let response = raw(gw.gateway().local_addr(), &request).await;
            assert_eq!(status_of(&response), "200", "{response}");
        }
    }
}

both_transports! {
    async fn many_routes_still_go_to_the_longest_prefix_on_both_paths() {
        let upstream = echo_upstream().await;
        let other = upstream_with(|_| async {
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                b"other",
            )))
        })
        .await;
        let k = TestKey::new("routes");
        let mut routes = format!("[upstreams.other]\nurl = \"{}\"\n\n", other.url());
        for i in 0..2_000 {
            routes.push_str(&format!(
                "[[routes]]\nprefix = \"/supporters/{i}/\"\nupstream = \"other\"\n\n"
            ));
        }
        let toml = config(
            &upstream.url(),
            &user(
                "r@example.org",
                "active",
                "manage-supporters",
                "127.0.0.1",
                &[&k],
            ),
        )
        .replace(
            "[groups.manage-supporters]",
            &format!("{routes}[groups.manage-supporters]"),
        );
        let gw = TestGateway::start(&toml).await;
        let addr = gw.gateway().local_addr();
        for (path, to_other) in [
            ("/supporters/1999/x", true),
            ("/supporters/1999", true),
            ("/supporters/0/", true),
            ("/supporters/20000/x", false),
            ("/supporters/x", false),
        ] {
            for method in ["GET", "POST"] {
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 0\r\nx-api-key: {}\r\n\r\n",
                    k.key
                );
                let request = if method == "GET" {
                    request.replace("content-length: 0\r\n", "")
                } else {
                    request
                };
                let response = raw(addr, request.as_bytes()).await;
                assert_eq!(status_of(&response), "200", "{method} {path}: {response}");
                assert_eq!(
                    response.ends_with("\r\n\r\nother"),
                    to_other,
                    "{method} {path}: {response}"
                );
            }
        }
    }
}

/// Runs the real CLI against `config`, off the async workers; its stdout on success.
async fn cli(config: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_apiward(&config, &args, "");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .expect("cli task")
}

async fn works(gw: &TestGateway, key: &str) -> bool {
    get(&gw.url("/supporters/1"), &[("x-api-key", key)])
        .await
        .status
        == 200
}

both_transports! {
    async fn a_cli_edit_through_a_symlink_into_another_directory_is_reloaded() {
        use std::os::unix::fs::symlink;
        let upstream = echo_upstream().await;
        let seed = TestKey::new("symlinkseed");
        // The gateway is given /etc-like/apiward.toml, a link to a file in another directory (two
        // of them: the link is later pointed at the second, as a deployment switch would).
        let link_dir = tempfile::tempdir().expect("temp dir");
        let real_a = tempfile::tempdir().expect("temp dir");
        let real_b = tempfile::tempdir().expect("temp dir");
        let toml = one_user_config(&upstream.url(), "seed@example.org", &seed);
        std::fs::write(real_a.path().join("real.toml"), &toml).expect("write");
        std::fs::write(real_b.path().join("real.toml"), &toml).expect("write");
        let link = link_dir.path().join("apiward.toml");
        symlink(real_a.path().join("real.toml"), &link).expect("symlink");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let gw = TestGateway::start_at(link_dir, link.clone(), listener).await;
        assert!(works(&gw, &seed.key).await);

        // The CLI writes the link's target, in the other directory; no SIGHUP is sent.
        let add = |id: &'static str| {
            let link = link.clone();
            async move {
                cli(
                    &link,
                    &[
                        "users",
                        "add",
                        id,
                        "--group",
                        "manage-supporters",
                        "--remote-addresses",
                        "127.0.0.1",
                    ],
                )
                .await
                .expect("users add")
            }
        };
        let first = add("first@example.org").await;
        assert!(
            eventually(|| works(&gw, &first)).await,
            "an edit of the symlink's target was not reloaded"
        );
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );

        // The link now points into the second directory (renamed over, as `ln -sfT` does); the
        // watch follows it, and the next CLI edit there is reloaded too.
        let tmp_link = gw.config_path.with_file_name("apiward.toml.new");
        symlink(real_b.path().join("real.toml"), &tmp_link).expect("symlink");
        std::fs::rename(&tmp_link, &link).expect("swap the link");
        assert!(
            eventually(|| async { !works(&gw, &first).await }).await,
            "the swapped link was not reloaded"
        );
        let second = add("second@example.org").await;
        assert!(
            eventually(|| works(&gw, &second)).await,
            "an edit in the directory the link was switched to was not reloaded"
        );
    }
}

both_transports! {
    async fn concurrent_cli_edits_all_land() {
        let upstream = echo_upstream().await;
        let seed = TestKey::new("concurrentseed");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("apiward.toml");
        std::fs::write(
            &path,
            one_user_config(&upstream.url(), "seed@example.org", &seed),
        )
        .expect("write");
        // Six edits at once: without a lock each reads the same file, and all but one are lost or
        // refused as "changed meanwhile".
        let ids: Vec<String> = (0..6)
            .map(|i| format!("concurrent-{i}@example.org"))
            .collect();
        let edits = ids.iter().map(|id| {
            let path = path.clone();
            let id = id.clone();
            tokio::spawn(async move {
                cli(
                    &path,
                    &[
                        "users",
                        "add",
                        &id,
                        "--group",
                        "manage-supporters",
                        "--remote-addresses",
                        "127.0.0.1",
                    ],
                )
                .await
            })
        });
        let results = futures_join_all(edits).await;
        for (id, result) in ids.iter().zip(&results) {
            assert!(result.is_ok(), "{id}: {result:?}");
        }
        let listed = cli(&path, &["users", "list"]).await.expect("users list");
        for id in &ids {
            assert!(listed.contains(id.as_str()), "{id} was lost:\n{listed}");
        }
    }
}

/// Waits for every task, in order.
async fn futures_join_all<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let tasks: Vec<_> = tasks.collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

/// The headers the upstream saw (from the echo upstream's JSON description in `response`).
fn upstream_saw(response: &str) -> serde_json::Value {
    let body = &response[response.find("\r\n\r\n").map_or(0, |i| i + 4)..];
    let doc: serde_json::Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("not the upstream's JSON ({e}): {response}"));
    doc["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_the_gateway_recognises_reaches_the_upstream_whichever_was_used() {
    let upstream = echo_upstream().await;
    let k = TestKey::new("strip");
    let toml = one_user_config(&upstream.url(), "strip@example.org", &k).replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"2s\"\ncredential_headers = [\"X-Legacy-Token\"]",
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.gateway().local_addr();
    // The key in X-Api-Key, and a Bearer key (anyone's) and a legacy token beside it.
    for request in get_and_post(&format!(
        "x-api-key: {}\r\nauthorization: Bearer aw_someoneElsesKey0000000000000000000000000000\r\nx-legacy-token: s3cret\r\nx-kept: yes\r\n",
        k.key
    )) {
        let response = raw(addr, &request).await;
        assert_eq!(status_of(&response), "200", "{response}");
        let headers = upstream_saw(&response);
        assert!(headers.get("authorization").is_none(), "{headers}");
        assert!(headers.get("x-legacy-token").is_none(), "{headers}");
        assert!(headers.get("x-api-key").is_none(), "{headers}");
        assert_eq!(headers["x-kept"][0], "yes", "{headers}");
    }
    // A Basic credential beside the key is ours too; another scheme is the upstream's.
    for (authorization, forwarded) in [
        ("Basic dTpw", false),
        ("bearer x", false),
        ("Token upstream-credential", true),
    ] {
        for request in get_and_post(&format!(
            "x-api-key: {}\r\nauthorization: {authorization}\r\n",
            k.key
        )) {
            let response = raw(addr, &request).await;
            assert_eq!(status_of(&response), "200", "{response}");
            let headers = upstream_saw(&response);
            assert_eq!(
                headers.get("authorization").is_some(),
                forwarded,
                "{authorization}: {headers}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_not_a_keys_last_use_but_its_last_refusal() {
    let upstream = echo_upstream().await;
    let (good, far) = (TestKey::new("lastusegood"), TestKey::new("lastusefar"));
    let toml = with_admin(&config(&upstream.url(), &good_and_far_users(&good, &far)));
    let gw = TestGateway::start(&toml).await;
    let addr = gw.gateway().local_addr();
    let admin = gw.gateway().admin_addr().expect("admin listener");
    let key_entry = |keys: &serde_json::Value, k: &TestKey| {
        keys["keys"]
            .as_array()
            .and_then(|all| {
                all.iter()
                    .find(|e| e["sha256"] == k.sha256.as_str())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no key {} in {keys}", k.sha256))
    };
    // far@ calls from 127.0.0.1, outside its whitelist: refused on both paths.
    for request in get_and_post(&format!("x-api-key: {}\r\n", far.key)) {
        let response = raw(addr, &request).await;
        assert_eq!(status_of(&response), "403", "{response}");
    }
    // good@ asks for a path its group does not allow: refused too.
    let response = raw(
        addr,
        format!(
            "DELETE /supporters/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-api-key: {}\r\n\r\n",
            good.key
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&response), "403", "{response}");
    let keys = get(&format!("http://{admin}/keys"), &[]).await.json();
    for k in [&far, &good] {
        let entry = key_entry(&keys, k);
        assert!(
            entry["last_used"].is_null(),
            "a refusal is not a use: {entry}"
        );
        assert!(entry["last_refused"].is_string(), "{entry}");
    }
    // An admitted request is a use.
    for request in get_and_post(&format!("x-api-key: {}\r\n", good.key)) {
        let response = raw(addr, &request).await;
        assert_eq!(status_of(&response), "200", "{response}");
    }
    let keys = get(&format!("http://{admin}/keys"), &[]).await.json();
    assert!(key_entry(&keys, &good)["last_used"].is_string(), "{keys}");
    assert!(key_entry(&keys, &far)["last_used"].is_null(), "{keys}");
}

/// A response head with `n` extra header lines and the body `ok`.
fn response_with_headers(n: usize) -> Vec<u8> {
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for i in 0..n {
        head.push_str(&format!("x-extra-{i}: {i}\r\n"));
    }
    head.push_str("\r\nok");
    head.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_response_header_limit_holds_on_both_paths() {
    let k = TestKey::new("headlimit");
    for (server_extra, headers, relayed) in [
        // The default (100 lines): 80 are relayed on both paths (the engine refused more than 64).
        ("", 80, true),
        ("", 101, false),
        ("max_response_headers = 20", 19, true),
        ("max_response_headers = 20", 21, false),
        // 30 lines (about 500 bytes) fit in a 1 KiB head; 90 (about 1.5 KiB) do not.
        ("max_response_header_bytes = 1024", 30, true),
        ("max_response_header_bytes = 1024", 90, false),
    ] {
        let upstream = scripted_upstream(response_with_headers(headers)).await;
        let toml = one_user_config(&upstream.url(), "limit@example.org", &k).replace(
            "upstream_timeout = \"2s\"",
            &format!("upstream_timeout = \"2s\"\n{server_extra}"),
        );
        let gw = TestGateway::start(&toml).await;
        for request in get_and_post(&format!("x-api-key: {}\r\n", k.key)) {
            let response = raw(gw.gateway().local_addr(), &request).await;
            let what = format!(
                "{headers} headers, {server_extra:?}, {}",
                String::from_utf8_lossy(&request[..4])
            );
            if relayed {
                assert_eq!(status_of(&response), "200", "{what}: {response}");
                assert!(response.ends_with("\r\n\r\nok"), "{what}: {response}");
                assert!(
                    response.contains(&format!("x-extra-{}: ", headers - 1)),
                    "{what}"
                );
            } else {
                assert_eq!(status_of(&response), "502", "{what}: {response}");
                assert!(
                    response.contains("upstream_invalid_response"),
                    "{what}: {response}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_chunked_trailers_never_lets_a_second_response_through() {
    let k = TestKey::new("barelf");
    // The trailer line ends in a bare LF: a client ends the trailers there and would read the
    // bytes after as the answer to its next request.
    let upstream = scripted_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-trailer: y\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\ninjected\r\n\r\n"
            .to_vec(),
    )
    .await;
    let gw = TestGateway::start(&one_user_config(&upstream.url(), "lf@example.org", &k)).await;
    for request in get_and_post(&format!("x-api-key: {}\r\n", k.key)) {
        let response = raw(gw.gateway().local_addr(), &request).await;
        assert!(!response.contains("injected"), "{response}");
        if request.starts_with(b"GET") {
            // The fast path saw the whole answer before sending any of it: 502, then closed.
            assert_eq!(status_of(&response), "502", "{response}");
            assert!(response.contains("upstream_invalid_response"), "{response}");
        }
    }
}

/// Opens an idle connection from the loopback address `source`.
async fn idle_from(source: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("source address"))
        .expect("bind the client to its loopback source");
    socket.connect(addr).await.expect("connect")
}

/// Sends a request on `stream` and reads what comes back until the gateway closes it.
async fn ask(stream: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    use tokio::io::AsyncWriteExt as _;
    // A connection closed at once may refuse the write itself: then nothing came back.
    if stream.write_all(request).await.is_err() {
        return String::new();
    }
    read_until_close(stream, std::time::Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limits_are_closed_at_once_and_counted() {
    let upstream = echo_upstream().await;
    let k = TestKey::new("connlimit");
    let toml = with_admin(&config(
        &upstream.url(),
        &user("c@example.org", "active", "manage-supporters", "127.0.0.0/8", &[&k]),
    ))
    .replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"2s\"\nmax_connections = 24\nmax_connections_per_source = 5\ntrusted_proxies = [\"127.0.0.9/32\"]",
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.gateway().local_addr();
    let [get, post] = get_and_post(&format!("x-api-key: {}\r\n", k.key));
    // Five idle connections from 127.0.0.2 are its share.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(idle_from("127.0.0.2", addr).await);
    }
    // A sixth from there is closed at once, whichever path its request would take.
    for request in [&get, &post] {
        let mut sixth = idle_from("127.0.0.2", addr).await;
        let response = ask(&mut sixth, request).await;
        assert_eq!(response, "", "over max_connections_per_source: {response}");
    }
    // Another source is served, on both paths; and so is the trusted proxy beyond five.
    for request in [&get, &post] {
        let response = raw_from("127.0.0.3", addr, request).await;
        assert_eq!(status_of(&response), "200", "{response}");
    }
    for _ in 0..10 {
        held.push(idle_from("127.0.0.9", addr).await);
    }
    let response = raw_from("127.0.0.9", addr, &get).await;
    assert_eq!(
        status_of(&response),
        "200",
        "a trusted proxy is exempt: {response}"
    );
    // 15 held; nine more sources fill max_connections (24), and the next is closed at once.
    for i in 0..9 {
        held.push(idle_from(&format!("127.0.1.{i}"), addr).await);
    }
    let mut over = idle_from("127.0.2.1", addr).await;
    assert_eq!(ask(&mut over, &get).await, "", "over max_connections");
    // Closing connections gives their places back.
    held.clear();
    let admin = gw.gateway().admin_addr().expect("admin listener");
    assert!(
        eventually(|| async {
            let response = raw_from("127.0.0.2", addr, &post).await;
            status_of(&response) == "200"
        })
        .await,
        "closed connections never gave their places back"
    );
    let metrics = common::get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let count = |reason: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "apiward_connections_refused_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("max_connections_per_source") >= 2, "{text}");
    assert!(count("max_connections") >= 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_timeout_ends_the_relay_to_a_client_that_reads_slowly_but_steadily() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const BODY: usize = 32 * 1024 * 1024;
    let upstream = upstream_with(|_| async {
        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'x';
            BODY
        ])))
    })
    .await;
    let k = TestKey::new("slowreader");
    // idle_timeout alone would never end it: the client reads 16 KiB every 5 ms (about 3 MB/s,
    // ten seconds for the whole body).
    let toml = one_user_config(&upstream.url(), "slow@example.org", &k).replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"5s\"\nresponse_timeout = \"1s\"",
    );
    let gw = TestGateway::start(&toml).await;
    for request in get_and_post(&format!("x-api-key: {}\r\n", k.key)) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("a small receive buffer");
        let mut stream = socket
            .connect(gw.gateway().local_addr())
            .await
            .expect("connect");
        stream.write_all(&request).await.expect("write");
        let mut received = 0usize;
        let mut chunk = [0u8; 16 * 1024];
        let ended = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received += n,
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            ended.is_ok(),
            "the relay was never ended ({received} bytes read)"
        );
        assert!(
            received < BODY,
            "{}: the whole body was relayed to a client reading slowly for longer than response_timeout",
            String::from_utf8_lossy(&request[..4])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_upstream_connections_wait_briefly_then_get_503() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let arrived = Arc::new(AtomicUsize::new(0));
    // Each answer waits for a permit: the test hands them out.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = {
        let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
        upstream_with(move |_| {
            let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"done",
                )))
            }
        })
        .await
    };
    let k = TestKey::new("upstreamslots");
    let toml = one_user_config(&upstream.url(), "slots@example.org", &k).replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"30s\"\nmax_upstream_connections = 2\nconnect_timeout = \"300ms\"",
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.gateway().local_addr();
    let [get, post] = get_and_post(&format!("x-api-key: {}\r\n", k.key));
    // Two requests in hand at the upstream, one on each path: the upstream's two places.
    let held: Vec<_> = [get.clone(), post.clone()]
        .into_iter()
        .map(|request| tokio::spawn(async move { raw_from("127.0.0.1", addr, &request).await }))
        .collect();
    assert!(
        eventually(|| async { arrived.load(Ordering::SeqCst) == 2 }).await,
        "the upstream never had both requests"
    );
    // A third, on either path, waits connect_timeout for a place, then is refused.
    for request in [&get, &post] {
        let response = raw(addr, request).await;
        assert_eq!(status_of(&response), "503", "{response}");
        assert!(response.contains("upstream_busy"), "{response}");
    }
    assert_eq!(
        arrived.load(Ordering::SeqCst),
        2,
        "the refused ones never reached it"
    );
    // Once the upstream answers, the places are free again.
    release.add_permits(2);
    for h in held {
        let response = h.await.expect("task");
        assert_eq!(status_of(&response), "200", "{response}");
    }
    let later = tokio::spawn(async move { raw_from("127.0.0.1", addr, &get).await });
    assert!(eventually(|| async { arrived.load(Ordering::SeqCst) == 3 }).await);
    release.add_permits(1);
    let response = later.await.expect("task");
    assert_eq!(status_of(&response), "200", "{response}");
}

both_transports! {
    /// One place for the upstream, and a target that refuses connections before the live one:
    /// each request is retried to the live target on the place it took first, and gives it back.
    async fn a_retry_to_another_target_keeps_the_one_place_of_its_request() {
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let dead_url = format!("http://{}", dead.local_addr().expect("addr"));
        drop(dead);
        let live = echo_upstream().await;
        let k = TestKey::new("retryslot");
        let toml = one_user_config(&live.url(), "retry@example.org", &k)
            .replace(
                &format!("url = \"{}\"", live.url()),
                &format!(
                    "targets = [{{ url = \"{dead_url}\" }}, {{ url = \"{}\" }}]\nretries = 1\neject = {{ consecutive_failures = 0 }}",
                    live.url()
                ),
            )
            .replace(
                "upstream_timeout = \"2s\"",
                "upstream_timeout = \"2s\"\nmax_upstream_connections = 1\nconnect_timeout = \"300ms\"",
            );
        let gw = TestGateway::start(&for_transport(&toml)).await;
        let addr = gw.gateway().local_addr();
        let [get, _] = get_and_post(&format!("x-api-key: {}\r\n", k.key));
        // Round robin sends every other request to the dead target first: each of those is a
        // retry, and a leaked or doubled place would make the next one 503.
        for n in 0..6 {
            let response = raw(addr, &get).await;
            assert_eq!(status_of(&response), "200", "request {n}: {response}");
        }
    }

    /// `response_buffer` on both paths: with one place at the upstream, a client that does not
    /// read its answer keeps the place only while the answer is larger than the buffer.
    async fn a_client_that_does_not_read_an_answer_that_fits_the_buffer_frees_its_upstream() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // Larger than what the kernel's socket buffers hold between the gateway and a client
        // with a 4 KiB receive buffer.
        const BODY: usize = 8 * 1024 * 1024;
        let upstream = upstream_with(|_| async {
            http::Response::new(http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; BODY])))
        })
        .await;
        let k = TestKey::new("buffered");
        for (buffer, frees) in [("\"16MiB\"", true), ("\"64KiB\"", false), ("\"off\"", false)] {
            let toml = one_user_config(&upstream.url(), "buffered@example.org", &k).replace(
                "upstream_timeout = \"2s\"",
                &format!("upstream_timeout = \"10s\"\nmax_upstream_connections = 1\nconnect_timeout = \"1s\"\nresponse_buffer = {buffer}"),
            );
            let gw = TestGateway::start(&for_transport(&toml)).await;
            let addr = gw.gateway().local_addr();
            let [get, _] = get_and_post(&format!("x-api-key: {}\r\n", k.key));
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("a small receive buffer");
            let mut unread = socket.connect(addr).await.expect("connect");
            unread.write_all(&get).await.expect("write");
            // The first answer's head reaches the client (so its request has its place), then
            // the client reads nothing more for now.
            let mut head = [0u8; 12];
            unread.read_exact(&mut head).await.expect("the answer starts");
            assert_eq!(&head[9..12], b"200");
            let second = raw(addr, &get).await;
            if frees {
                assert_eq!(status_of(&second), "200", "buffer {buffer}: {}", &second[..second.len().min(300)]);
                assert!(second.ends_with(&"x".repeat(64)), "buffer {buffer}: the second answer is whole");
                let body_at = second.find("\r\n\r\n").expect("a head") + 4;
                assert_eq!(second.len() - body_at, BODY, "buffer {buffer}");
            } else {
                assert_eq!(status_of(&second), "503", "buffer {buffer}: a larger answer than the buffer holds its upstream connection while it streams: {second}");
                assert!(second.contains("upstream_busy"), "{second}");
            }
            // The first answer, read now, is whole whatever the buffer held of it.
            let mut rest = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(20), unread.read_to_end(&mut rest))
                .await
                .expect("the first answer ends")
                .expect("read");
            let text = String::from_utf8_lossy(&rest);
            let body_at = text.find("\r\n\r\n").expect("the rest of a head") + 4;
            assert_eq!(rest.len() - body_at, BODY, "buffer {buffer}: the first answer is whole");
            assert!(rest[body_at..].iter().all(|&b| b == b'x'));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_own_max_upstream_connections_applies_and_a_reload_changes_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let arrived = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let upstream = {
        let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
        upstream_with(move |_| {
            let (arrived, release) = (Arc::clone(&arrived), Arc::clone(&release));
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                if let Ok(permit) = release.acquire().await {
                    permit.forget();
                }
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"done",
                )))
            }
        })
        .await
    };
    let k = TestKey::new("ownlimit");
    let with_limit = |n: usize| {
        one_user_config(&upstream.url(), "own@example.org", &k)
            .replace(
                "upstream_timeout = \"2s\"",
                "upstream_timeout = \"30s\"\nconnect_timeout = \"300ms\"",
            )
            .replace(
                &format!("url = \"{}\"", upstream.url()),
                &format!(
                    "url = \"{}\"\nmax_upstream_connections = {n}",
                    upstream.url()
                ),
            )
    };
    let gw = TestGateway::start(&with_limit(1)).await;
    let addr = gw.gateway().local_addr();
    let [get, _] = get_and_post(&format!("x-api-key: {}\r\n", k.key));
    let first = {
        let get = get.clone();
        tokio::spawn(async move { raw_from("127.0.0.1", addr, &get).await })
    };
    assert!(eventually(|| async { arrived.load(Ordering::SeqCst) == 1 }).await);
    // The upstream's own limit (1), not [server]'s default (1024).
    let response = raw(addr, &get).await;
    assert_eq!(status_of(&response), "503", "{response}");
    assert!(response.contains("upstream_busy"), "{response}");
    // Raised by a reload: the next request gets a place while the first still holds its own.
    gw.replace_config(&with_limit(2));
    let second = {
        let get = get.clone();
        tokio::spawn(async move {
            loop {
                let response = raw_from("127.0.0.1", addr, &get).await;
                if status_of(&response) != "503" {
                    return response;
                }
            }
        })
    };
    assert!(
        eventually(|| async { arrived.load(Ordering::SeqCst) == 2 }).await,
        "the raised limit applies after the reload"
    );
    release.add_permits(2);
    for h in [first, second] {
        let response = h.await.expect("task");
        assert_eq!(status_of(&response), "200", "{response}");
    }
}
