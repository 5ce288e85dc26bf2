//! Shadow rules (issue #18, docs/configuration.md "Shadow rules"): a group's `shadow_allow` is
//! tried on every request its `allow` admits; the request is still decided by `allow`, and each
//! one the stricter rules would refuse is counted (`apiward_shadow_refusals_total`) and logged
//! (`shadow_refusal`), on both request paths; `explain` shows both outcomes.

mod common;

use std::path::Path;

use common::*;

/// `manage-supporters` keeps its `allow` (view, create and modify supporters, view pages, ...)
/// and tries `shadow_allow`: view supporters only.
fn with_shadow(toml: &str) -> String {
    toml.replace(
        "\n[groups.nothing]",
        "shadow_allow = [{ path = \"/supporters/**\", verbs = [\"view\"] }]\n\n[groups.nothing]",
    )
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

both_transports! {
    async fn shadow_allow_admits_by_allow_and_counts_and_logs_what_it_would_refuse() {
        let up = echo_upstream().await;
        let k = TestKey::new("shadowed");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("requests.log");
        let toml = with_shadow(&one_user_config(&up.url(), "partner@example.org", &k));
        assert!(toml.contains("shadow_allow"));
        // One allowed request in a thousand is logged; a shadow refusal always is.
        let toml = with_server_setting(
            &toml,
            &format!("access_log = {:?}\naccess_log_sample = 0.001", log.display().to_string()),
        );
        let path = dir.path().join("apiward.toml");
        std::fs::write(&path, for_transport(&toml)).unwrap();
        let options = apiward::Options {
            request_log: true,
            ..apiward::Options::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gateway = apiward::Gateway::start(&path, Some(listener), options)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        let url = |p: &str| format!("http://{}{p}", gateway.local_addr());
        let key = [("x-api-key", k.key.as_str())];

        // Both rule sets allow it (logged: the first allowed request of the sample).
        assert_eq!(get(&url("/supporters/1"), &key).await.status, 200);
        // Both allow it; sampled out.
        assert_eq!(get(&url("/supporters/2"), &key).await.status, 200);
        // `allow` admits them, `shadow_allow` would not: forwarded all the same.
        assert_eq!(send("POST", &url("/supporters/3"), &key, "{}").await.status, 200);
        assert_eq!(get(&url("/pages/4"), &key).await.status, 200);
        // Refused by `allow` itself: a refusal, not a shadow refusal.
        assert_eq!(send("DELETE", &url("/supporters/5"), &key, "").await.status, 403);

        let metrics = gateway.telemetry().metrics.render();
        let counted: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("apiward_shadow_refusals_total{"))
            .collect();
        assert_eq!(counted.len(), 1, "{metrics}");
        assert!(counted[0].contains("user=\"partner@example.org\""), "{}", counted[0]);
        assert!(counted[0].contains("group=\"manage-supporters\""), "{}", counted[0]);
        assert!(counted[0].ends_with(" 2"), "{}", counted[0]);

        gateway.shutdown().await;
        let lines = log_lines(&log);
        let of = |p: &str| lines.iter().find(|l| l["path"] == p);
        let first = of("/supporters/1").expect("the first allowed request is logged");
        assert!(first.get("shadow_refusal").is_none(), "{first}");
        assert!(of("/supporters/2").is_none(), "sampled out: {lines:?}");
        for p in ["/supporters/3", "/pages/4"] {
            let line = of(p).unwrap_or_else(|| panic!("{p} is not logged: {lines:?}"));
            assert_eq!(line["decision"], "allowed", "{line}");
            assert_eq!(line["status"], 200, "{line}");
            assert_eq!(line["shadow_refusal"], "forbidden", "{line}");
        }
        let refused = of("/supporters/5").expect("a refusal is logged");
        assert_eq!(refused["decision"], "forbidden");
        assert!(refused.get("shadow_refusal").is_none(), "{refused}");
    }

    async fn a_group_without_shadow_allow_has_no_shadow_refusals() {
        let up = echo_upstream().await;
        let k = TestKey::new("unshadowed");
        let gw = TestGateway::start(&one_user_config(&up.url(), "crm@example.org", &k)).await;
        let key = [("x-api-key", k.key.as_str())];
        assert_eq!(send("POST", &gw.url("/supporters/3"), &key, "{}").await.status, 200);
        assert_eq!(get(&gw.url("/pages/4"), &key).await.status, 200);
        let metrics = gw.gateway().telemetry().metrics.render();
        assert!(!metrics.contains("apiward_shadow_refusals_total{"), "{metrics}");
    }
}

#[test]
fn explain_shows_what_allow_answers_and_what_shadow_allow_would() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let k = TestKey::new("shadow-explain");
    let toml = with_shadow(&one_user_config(
        "http://127.0.0.1:9",
        "partner@example.org",
        &k,
    ));
    std::fs::write(&path, toml).unwrap();
    let explain = |method: &str, p: &str| {
        let out = run_apiward(
            &path,
            &["explain", "--key", &k.key, "--method", method, "--path", p],
            "",
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let would_break = explain("POST", "/supporters/3");
    assert!(
        would_break.contains("verdict    200 allowed"),
        "{would_break}"
    );
    assert!(
        would_break.contains("shadow     403 forbidden: the group's shadow_allow would refuse it"),
        "{would_break}"
    );
    assert!(
        would_break.contains("shadow_allow: no entry allows POST on /supporters/3"),
        "{would_break}"
    );
    let fine = explain("GET", "/supporters/3");
    assert!(fine.contains("verdict    200 allowed"), "{fine}");
    assert!(
        fine.contains("shadow     200 allowed: the group's shadow_allow allows it too"),
        "{fine}"
    );
    // Refused by allow: the shadow is not asked.
    let refused = explain("DELETE", "/supporters/3");
    assert!(refused.contains("verdict    403 forbidden"), "{refused}");
    assert!(!refused.contains("shadow "), "{refused}");
}
