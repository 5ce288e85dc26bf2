//! The shipped Grafana dashboard and metrics documentation name only metrics the gateway exports:
//! every `apiward_*` series in every panel's query is found in a real `/metrics` scrape after
//! real traffic.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;

const DASHBOARD: &str = include_str!("../docs/grafana/apiward-dashboard.json");
const METRICS_DOC: &str = include_str!("../docs/metrics.md");
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

/// Every `apiward_[a-z_]+` in `text`, as written (suffixes kept).
fn series_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("apiward_") {
        let tail = &rest[start..];
        let end = tail
            .char_indices()
            .skip("apiward_".len())
            .find(|(_, c)| !(c.is_ascii_lowercase() || *c == '_'))
            .map_or(tail.len(), |(i, _)| i);
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// A series name without a histogram's `_bucket`/`_sum`/`_count`: the metric's own name.
fn metric_name(series: &str) -> &str {
    HISTOGRAM_SUFFIXES
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Each query panel's title and the `expr` of each of its targets.
fn exprs(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("a target of {title:?} has no expr"));
            out.push((title.clone(), expr.to_string()));
        }
    }
    out
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(DASHBOARD).expect("the dashboard is JSON")
}

#[test]
fn the_dashboard_is_importable_with_a_prometheus_datasource_input() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    assert_eq!(d["uid"], "apiward-overview");
    assert!(d["schemaVersion"].as_u64().is_some());
    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "duplicate id in {title:?}"
        );
        let pos = &panel["gridPos"];
        let (x, w) = (pos["x"].as_u64().unwrap(), pos["w"].as_u64().unwrap());
        assert!(x + w <= 24 && pos["h"].as_u64().unwrap() > 0, "{title:?}");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title:?}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title:?} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title:?}");
        }
    }
    for variable in d["templating"]["list"].as_array().expect("templating") {
        assert_eq!(variable["datasource"]["uid"], "${DS_PROMETHEUS}");
    }
}

#[test]
fn every_exported_metric_is_on_the_dashboard_and_documented() {
    let used: BTreeSet<String> = exprs(&dashboard())
        .iter()
        .flat_map(|(_, e)| series_names(e))
        .map(|s| metric_name(&s).to_string())
        .collect();
    let documented = series_names(METRICS_DOC);
    for name in apiward::observe::metrics::ALL {
        assert!(used.contains(name), "{name} is on no dashboard panel");
        assert!(
            documented.contains(name),
            "{name} is not in docs/metrics.md"
        );
    }
    for name in documented.iter().map(|s| metric_name(s)) {
        assert!(
            apiward::observe::metrics::ALL.contains(&name),
            "docs/metrics.md names {name}, which is not exported"
        );
    }
}

async fn scrape(admin: SocketAddr) -> String {
    let reply = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(reply.status, 200);
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// Whether the exposition has a sample of exactly this series (`name{...} v` or `name v`).
fn has_sample(exposition: &str, series: &str) -> bool {
    exposition.lines().any(|l| {
        l.strip_prefix(series)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let upstream = echo_upstream().await;
    // A port nothing listens on: connections to it are refused (upstream errors of kind connect).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("address")
    };
    let key = TestKey::new("dashboard");
    let readonly = TestKey::new("dashboardreadonly");
    let (ws_upstream, _) = common::websocket::ws_echo_upstream().await;
    let mut users = format!(
        "[upstreams.dead]\nurl = \"http://{dead}\"\n\n[[routes]]\nprefix = \"/dead/\"\nupstream = \"dead\"\n\n\
         [upstreams.pair]\ntargets = [{{ url = \"{}\" }}, {{ url = \"http://{dead}\" }}]\nretries = 1\n\n\
         [[routes]]\nprefix = \"/pair/\"\nupstream = \"pair\"\n\n\
         [upstreams.ws]\nurl = \"http://{ws_upstream}\"\n\n[[routes]]\nprefix = \"/ws/\"\nupstream = \"ws\"\nwebsocket = true\n\n\
         [groups.everything]\nallow = [{{ path = \"/**\", verbs = [\"view\"] }}]\n\
         shadow_allow = [{{ path = \"/supporters/**\", verbs = [\"view\"] }}]\n\n",
        upstream.url()
    );
    users += &user(
        "dashboard@example.org",
        "active",
        "everything",
        "127.0.0.1",
        &[&key],
    );
    users += &user(
        "readonly@example.org",
        "active",
        "nothing",
        "127.0.0.1",
        &[&readonly],
    );
    let limited = TestKey::new("dashboardlimited");
    users += "[groups.limited]\nallow = [{ path = \"/**\", verbs = [\"view\"] }]\nrate_limit = { requests = 1, per = \"1h\" }\nmax_concurrent = 5\n\n";
    users += &user(
        "limited@example.org",
        "active",
        "limited",
        "127.0.0.1",
        &[&limited],
    );
    let toml = config(&upstream.url(), &users).replacen(
        "[server]\n",
        "[server]\nadmin_listen = \"127.0.0.1:0\"\n",
        1,
    );
    let gw = TestGateway::start(&toml).await;
    let admin = gw.gateway().admin_addr().expect("admin listener");

    let k = [("x-api-key", key.key.as_str())];
    assert_eq!(get(&gw.url("/supporters/1"), &k).await.status, 200);
    // Outside the group's shadow_allow: admitted, and a shadow refusal.
    assert_eq!(get(&gw.url("/echo/1"), &k).await.status, 200);
    assert_eq!(get(&gw.url("/supporters/1"), &[]).await.status, 401);
    let r = get(
        &gw.url("/supporters/1"),
        &[("x-api-key", readonly.key.as_str())],
    )
    .await;
    assert_eq!(r.status, 403);
    // A limited user: one admitted, one refused (the limit series).
    let l = [("x-api-key", limited.key.as_str())];
    assert_eq!(get(&gw.url("/supporters/1"), &l).await.status, 200);
    assert_eq!(get(&gw.url("/supporters/1"), &l).await.status, 429);
    let r = get(&gw.url("/dead/1"), &k).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code()),
        (502, "upstream_unavailable".into())
    );
    // Two targets, one dead: GETs are retried to the live one until the dead one is ejected.
    for _ in 0..12 {
        assert_eq!(get(&gw.url("/pair/1"), &k).await.status, 200);
    }
    // A WebSocket opened and closed.
    let mut ws = common::websocket::ws_connect(gw.addr, "/ws/1", &key.key).await;
    futures_util::SinkExt::close(&mut ws).await.expect("close");
    while futures_util::StreamExt::next(&mut ws).await.is_some() {}
    drop(ws);
    // A reload, so that reload outcomes exist whether or not the first load is counted.
    gw.replace_config(&format!("{toml}\n# touched\n"));

    // The TLS series come from a second gateway that terminates TLS: a handshake over each
    // protocol, and plain HTTP on its port (a handshake failure).
    let pki = common::tls::Pki::new();
    let tls_gw = TestGateway::start(&pki.with_tls(&toml, "")).await;
    let tls_admin = tls_gw.gateway().admin_addr().expect("admin listener");
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let mut conn =
            common::tls::HttpConnection::tls(tls_gw.addr, "api.example.org", pki.client(&[alpn]))
                .await;
        assert_eq!(conn.send("GET", "/echo/1", &k, "").await.status, 200);
    }
    assert!(
        raw(tls_gw.addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );

    let wanted: BTreeSet<(String, String)> = exprs(&dashboard())
        .into_iter()
        .flat_map(|(title, e)| {
            series_names(&e)
                .into_iter()
                .map(move |s| (title.clone(), s))
        })
        .collect();
    assert!(!wanted.is_empty());
    // The exposition has the metric (its TYPE line) and the very series a panel queries: a
    // `_bucket` query needs a histogram, not a summary.
    let exported = |exposition: &str, series: &str| {
        exposition.contains(&format!("# TYPE {} ", metric_name(series)))
            && has_sample(exposition, series)
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (all_there, last) = loop {
        let last = scrape(admin).await + &scrape(tls_admin).await;
        let all = wanted.iter().all(|(_, series)| exported(&last, series));
        if all || tokio::time::Instant::now() >= deadline {
            break (all, last);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    if !all_there {
        let missing: Vec<String> = wanted
            .iter()
            .filter(|(_, s)| !exported(&last, s))
            .map(|(title, s)| format!("{s} (panel {title:?})"))
            .collect();
        panic!("not exported: {missing:?}\n/metrics:\n{last}");
    }
    gw.shutdown().await;
    tls_gw.shutdown().await;
}
