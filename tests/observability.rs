//! What operators see: metrics after known traffic, the request log, request ids, key last use,
//! and the admin endpoints. Never a whole key anywhere.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The value of one sample line of the Prometheus text, e.g. `apiward_requests_total{...}`.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(admin: SocketAddr, path: &str) -> Reply {
    get(&format!("http://{admin}{path}"), &[]).await
}

both_transports! {
    async fn metrics_count_known_traffic_exactly() {
        let up = echo_upstream().await;
        let good = TestKey::new("metricsgood");
        let far = TestKey::new("metricsfar");
        let users = good_and_far_users(&good, &far);
        let gw = TestGateway::start(&with_admin(&config(&up.url(), &users))).await;
        let admin = gw.gateway().admin_addr().expect("admin listener");

        for _ in 0..3 {
            assert_eq!(
                get(
                    &gw.url("/supporters/1"),
                    &[("x-api-key", good.key.as_str())]
                )
                .await
                .status,
                200
            );
        }
        assert_eq!(
            send(
                "DELETE",
                &gw.url("/supporters/1"),
                &[("x-api-key", good.key.as_str())],
                ""
            )
            .await
            .status,
            403
        );
        for _ in 0..2 {
            assert_eq!(
                get(&gw.url("/supporters/1"), &[("x-api-key", far.key.as_str())])
                    .await
                    .status,
                403
            );
        }
        assert_eq!(get(&gw.url("/supporters/1"), &[]).await.status, 401);
        assert_eq!(
            get(&gw.url("/nowhere"), &[("x-api-key", good.key.as_str())])
                .await
                .status,
            404
        );

        let m = scrape(admin, "/metrics").await;
        assert_eq!(m.status, 200);
        let text = String::from_utf8_lossy(&m.body).into_owned();
        let r = |labels: &str| sample(&text, &format!("apiward_requests_total{{{labels}}}"));
        assert_eq!(
            r(
                "user=\"good@example.org\",route=\"/supporters/\",decision=\"allowed\",status_class=\"2xx\""
            ),
            Some(3.0),
            "{text}"
        );
        // A refusal is counted without a route label: only an allowed request has one.
        assert_eq!(
            r("user=\"good@example.org\",route=\"none\",decision=\"forbidden\",status_class=\"4xx\""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            r(
                "user=\"far@example.org\",route=\"none\",decision=\"unregistered_source\",status_class=\"4xx\""
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            r("user=\"none\",route=\"none\",decision=\"missing_credentials\",status_class=\"4xx\""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            r("user=\"good@example.org\",route=\"none\",decision=\"no_route\",status_class=\"4xx\""),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "apiward_request_duration_seconds_count{route=\"/supporters/\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "apiward_upstream_duration_seconds_count{route=\"/supporters/\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(sample(&text, "apiward_config_generation"), Some(1.0));
        assert!(!text.contains(&good.key) && !text.contains(&far.key));
    }
}

both_transports! {
    async fn upstream_errors_and_reloads_are_counted() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let k = TestKey::new("metricserr");
        let toml = with_admin(&config(
            &format!("http://{closed}"),
            &user(
                "e@example.org",
                "active",
                "manage-supporters",
                "127.0.0.1",
                &[&k],
            ),
        ));
        let gw = TestGateway::start(&toml).await;
        let admin = gw.gateway().admin_addr().unwrap();
        for _ in 0..2 {
            assert_eq!(
                get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())])
                    .await
                    .status,
                502
            );
        }
        gw.replace_config(&toml.replace("status = \"active\"", "status = \"oops\""));
        let store = std::sync::Arc::clone(gw.gateway().store());
        assert!(eventually(|| async { store.reloads_failed() == 1 }).await);
        gw.replace_config(&toml.replace("status = \"active\"", "status = \"inactive\""));
        assert!(eventually(|| async { store.generation() == 2 }).await);
        let text = String::from_utf8_lossy(&scrape(admin, "/metrics").await.body).into_owned();
        assert_eq!(
            sample(
                &text,
                "apiward_upstream_errors_total{upstream=\"api\",kind=\"connect\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "apiward_requests_total{user=\"e@example.org\",route=\"/supporters/\",decision=\"upstream_unavailable\",status_class=\"5xx\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert!(
            eventually(|| async {
                let t = String::from_utf8_lossy(&scrape(admin, "/metrics").await.body).into_owned();
                sample(&t, "apiward_reloads_total{outcome=\"applied\"}") == Some(1.0)
                    && sample(&t, "apiward_reloads_total{outcome=\"refused\"}") == Some(1.0)
                    && sample(&t, "apiward_config_generation") == Some(2.0)
            })
            .await
        );
    }
}

both_transports! {
    async fn request_ids_are_generated_forwarded_and_returned() {
        let up = echo_upstream().await;
        let k = TestKey::new("reqid");
        let users = user(
            "r@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k],
        );
        let gw = TestGateway::start(&config(&up.url(), &users)).await;
        let r = get(
            &gw.url("/supporters/1"),
            &[
                ("x-api-key", k.key.as_str()),
                ("x-request-id", "client-chosen"),
            ],
        )
        .await;
        let returned = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(
            returned, "client-chosen",
            "an untrusted peer's request id is not kept"
        );
        assert_eq!(returned.len(), 24);
        assert_eq!(
            r.upstream_header("x-request-id").unwrap(),
            std::slice::from_ref(&returned)
        );
        let r2 = get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())]).await;
        assert_ne!(r2.headers["x-request-id"], returned.as_str());
        // Refusals carry one too, so a client's complaint can be matched to a log line.
        assert!(
            get(&gw.url("/supporters/1"), &[])
                .await
                .headers
                .contains_key("x-request-id")
        );

        // From a trusted proxy, its id is kept.
        let trusted = config(&up.url(), &users).replace(
            "upstream_timeout = \"2s\"",
            "upstream_timeout = \"2s\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
        );
        let gw = TestGateway::start(&trusted).await;
        let r = get(
            &gw.url("/supporters/1"),
            &[("x-api-key", k.key.as_str()), ("x-request-id", "lb-1234")],
        )
        .await;
        assert_eq!(r.headers["x-request-id"], "lb-1234");
        assert_eq!(r.upstream_header("x-request-id").unwrap(), ["lb-1234"]);
    }
}

both_transports! {
    async fn admin_endpoints_report_status_and_key_last_use() {
        let up = echo_upstream().await;
        let used = TestKey::new("lastused");
        let idle = TestKey::new("neverused");
        let users = user(
            "k@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&used, &idle],
        );
        let gw = TestGateway::start(&with_admin(&config(&up.url(), &users))).await;
        let admin = gw.gateway().admin_addr().unwrap();
        assert_eq!(scrape(admin, "/healthz").await.status, 200);
        assert_eq!(scrape(admin, "/readyz").await.status, 200);
        let status = scrape(admin, "/status").await.json();
        assert_eq!(status["config_generation"], 1);
        assert_eq!(status["users"], 1);
        assert_eq!(status["keys"], 2);
        assert_eq!(status["routes"], 3);
        assert!(status["last_reload_error"].is_null());
        assert_eq!(status["listen"], gw.addr.to_string());

        assert_eq!(
            get(
                &gw.url("/supporters/1"),
                &[("x-api-key", used.key.as_str())]
            )
            .await
            .status,
            200
        );
        let keys = scrape(admin, "/keys").await.json();
        let keys = keys["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 2);
        let by_digest = |d: &str| keys.iter().find(|k| k["sha256"] == d).unwrap();
        assert!(by_digest(&used.sha256)["last_used"].is_string());
        assert!(by_digest(&idle.sha256)["last_used"].is_null());
        assert_eq!(by_digest(&used.sha256)["user"], "k@example.org");
        // The admin endpoints are not on the public listener.
        assert_eq!(
            get(&gw.url("/metrics"), &[("x-api-key", used.key.as_str())])
                .await
                .status,
            404
        );
    }
}

/// The real binary, with its stdout (the request log) and stderr (diagnostics) captured.
struct Process {
    child: Child,
    addr: SocketAddr,
    stdout: std::sync::mpsc::Receiver<String>,
    _dir: tempfile::TempDir,
}

impl Process {
    fn start(toml: &str) -> Process {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiward.toml");
        std::fs::write(&path, toml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_apiward"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The bound address is in the start-up line on stderr (listen = "127.0.0.1:0" picks a free port).
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listen=").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = addr_tx.send(addr);
                }
            }
        });
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (line_tx, line_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the gateway started")
            .parse()
            .unwrap();
        Process {
            child,
            addr,
            stdout: line_rx,
            _dir: dir,
        }
    }

    /// Log lines until `n` have arrived (or 10 s pass).
    fn log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        self.log_lines_within(n, Duration::from_secs(10))
    }

    fn log_lines_within(&self, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        let deadline = std::time::Instant::now() + limit;
        while lines.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(l) => lines.push(
                    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")),
                ),
                Err(_) => break,
            }
        }
        lines
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

both_transports! {
    async fn each_request_writes_one_json_log_line_without_the_key() {
        let up = echo_upstream().await;
        let k = TestKey::new("logged");
        let users = user(
            "log@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k],
        );
        let p = Process::start(&config(&up.url(), &users));
        let url = |path: &str| format!("http://{}{path}", p.addr);
        let ok = send(
            "POST",
            &url("/supporters/1?q=1"),
            &[("x-api-key", k.key.as_str())],
            "hello",
        )
        .await;
        assert_eq!(ok.status, 200);
        let unknown = "aw_UNKNOWNkeyUNKNOWNkeyUNKNOWNkeyUNKNOWNkey12";
        assert_eq!(
            get(&url("/supporters/1"), &[("x-api-key", unknown)])
                .await
                .status,
            401
        );
        let lines = p.log_lines(2);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let a = &lines[0];
        assert_eq!(
            a["request_id"],
            ok.headers["x-request-id"].to_str().unwrap()
        );
        assert_eq!(a["client"], "127.0.0.1");
        assert_eq!(a["user"], "log@example.org");
        assert_eq!(a["method"], "POST");
        assert_eq!(a["path"], "/supporters/1");
        assert_eq!(a["route"], "/supporters/");
        assert_eq!(a["upstream"], "api");
        assert_eq!(a["decision"], "allowed");
        assert_eq!(a["status"], 200);
        assert_eq!(a["bytes_in"], 5);
        assert_eq!(a["bytes_out"], ok.body.len());
        assert!(a["upstream_ms"].as_f64().is_some() && a["total_ms"].as_f64().is_some());
        assert!(a["timestamp"].is_string());
        assert_eq!(a["key_prefix"], &k.key[..8]);
        let b = &lines[1];
        assert_eq!(b["decision"], "invalid_credentials");
        assert_eq!(b["status"], 401);
        assert!(b.get("user").is_none());
        let all: String = lines.iter().map(|l| l.to_string()).collect();
        assert!(!all.contains(&k.key), "a whole key was logged");
        assert!(!all.contains(unknown), "a whole unknown key was logged");
    }
}

both_transports! {
    async fn the_request_log_can_be_sampled_or_turned_off() {
        let up = echo_upstream().await;
        let k = TestKey::new("sampled");
        let users = user(
            "s@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k],
        );
        let sampled = config(&up.url(), &users).replace(
            "upstream_timeout = \"2s\"",
            "upstream_timeout = \"2s\"\naccess_log_sample = 0.25",
        );
        let p = Process::start(&sampled);
        for _ in 0..8 {
            assert_eq!(
                get(
                    &format!("http://{}/supporters/1", p.addr),
                    &[("x-api-key", k.key.as_str())]
                )
                .await
                .status,
                200
            );
        }
        for _ in 0..3 {
            assert_eq!(
                get(&format!("http://{}/supporters/1", p.addr), &[])
                    .await
                    .status,
                401
            );
        }
        let lines = p.log_lines(6);
        let allowed = lines.iter().filter(|l| l["decision"] == "allowed").count();
        let refused = lines
            .iter()
            .filter(|l| l["decision"] == "missing_credentials")
            .count();
        assert_eq!(
            (allowed, refused),
            (2, 3),
            "one allowed request in four, every refusal: {lines:?}"
        );

        let off = config(&up.url(), &users).replace(
            "upstream_timeout = \"2s\"",
            "upstream_timeout = \"2s\"\naccess_log = \"off\"",
        );
        let p = Process::start(&off);
        assert_eq!(
            get(&format!("http://{}/supporters/1", p.addr), &[])
                .await
                .status,
            401
        );
        // A line would arrive within milliseconds; a second of silence means none was written.
        assert!(p.log_lines_within(1, Duration::from_secs(1)).is_empty());
    }
}

both_transports! {
    async fn readyz_turns_503_while_requests_drain_on_shutdown() {
        use bytes::Bytes;
        use http_body_util::Full;
        let slow = upstream_with(|_| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            http::Response::new(Full::new(Bytes::from_static(b"done")))
        })
        .await;
        let k = TestKey::new("draining");
        let toml = with_admin(&one_user_config(&slow.url(), "d@example.org", &k));
        let gw = TestGateway::start(&toml).await;
        let admin = gw.gateway().admin_addr().unwrap();
        let url = gw.url("/supporters/1");
        let key = k.key.clone();
        let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", key.as_str())]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stopping = tokio::spawn(gw.shutdown());
        assert!(
            eventually(|| async { scrape(admin, "/readyz").await.status == 503 }).await,
            "/readyz did not report the drain"
        );
        assert_eq!(scrape(admin, "/healthz").await.status, 200);
        let r = in_flight.await.unwrap();
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"done"[..]));
        stopping.await.unwrap();
    }
}

both_transports! {
    async fn users_list_shows_last_use_from_the_running_gateway() {
        let up = echo_upstream().await;
        let used = TestKey::new("listused");
        let idle = TestKey::new("listidle");
        let users = user(
            "a@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&used],
        ) + &user(
            "b@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&idle],
        );
        let gw = TestGateway::start(&with_admin(&config(&up.url(), &users))).await;
        let admin = gw.gateway().admin_addr().unwrap().to_string();
        assert_eq!(
            get(
                &gw.url("/supporters/1"),
                &[("x-api-key", used.key.as_str())]
            )
            .await
            .status,
            200
        );
        let config = gw.config_path.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_apiward"))
                .args([
                    "users", "list", "--format", "json", "--admin", &admin, "--config",
                ])
                .arg(&config)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let last_used = |id: &str| {
            listing
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["id"] == id)
                .unwrap()["keys"][0]["last_used"]
                .clone()
        };
        assert!(last_used("a@example.org").is_string(), "{listing}");
        assert!(last_used("b@example.org").is_null(), "{listing}");

        // Without a reachable gateway the listing still works and says why last use is unknown.
        let config = gw.config_path.clone();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_apiward"))
                .args(["users", "list", "--admin", "127.0.0.1:1", "--config"])
                .arg(&config)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).starts_with(
            "hint: LAST USED is \"?\": the gateway's admin listener at 127.0.0.1:1 is not reachable"
        ));
        assert!(String::from_utf8_lossy(&out.stdout).contains("LAST USED"));
    }
}
