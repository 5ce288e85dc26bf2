//! Hot reload: edits take effect at once, bad files never take the gateway down, nothing is dropped.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

struct Keys {
    a: TestKey,
    b: TestKey,
}

fn keys() -> Keys {
    Keys {
        a: TestKey::new("reloadA"),
        b: TestKey::new("reloadB"),
    }
}

/// Version one: only user a. Version two: a is gone (its key revoked), b is new.
fn v1(upstream: &str, k: &Keys) -> String {
    versioned(
        upstream,
        &user(
            "a@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k.a],
        ),
    )
}

fn v2(upstream: &str, k: &Keys) -> String {
    versioned(
        upstream,
        &user(
            "b@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k.b],
        ),
    )
}

/// A version of the file, for the transport the test runs on (every file written keeps it).
fn versioned(upstream: &str, users: &str) -> String {
    for_transport(&config(upstream, users))
}

async fn status_with(gw: &TestGateway, key: &str) -> u16 {
    get(&gw.url("/supporters/1"), &[("x-api-key", key)])
        .await
        .status
        .as_u16()
}

async fn becomes(gw: &TestGateway, key: &str, status: u16) -> bool {
    eventually(|| async { status_with(gw, key).await == status }).await
}

// Each runs on both transports: what a reload changes is what every request sees, on the
// fast path and through hyper alike.
both_transports! {
    async fn an_edit_in_place_takes_effect() {
        let up = echo_upstream().await;
        let k = keys();
        let gw = TestGateway::start(&v1(&up.url(), &k)).await;
        assert_eq!(status_with(&gw, &k.a.key).await, 200);
        // Truncate and rewrite the same inode, as `echo > file` or a simple editor does.
        std::fs::write(&gw.config_path, v2(&up.url(), &k)).unwrap();
        assert!(
            becomes(&gw, &k.a.key, 401).await,
            "the revoked key still works"
        );
        assert_eq!(status_with(&gw, &k.b.key).await, 200);
        assert!(gw.gateway().store().generation() >= 2);
    }

    async fn a_file_renamed_into_place_takes_effect() {
        let up = echo_upstream().await;
        let k = keys();
        let gw = TestGateway::start(&v1(&up.url(), &k)).await;
        gw.replace_config(&v2(&up.url(), &k));
        assert!(
            becomes(&gw, &k.b.key, 200).await,
            "the new user cannot get in"
        );
        assert_eq!(status_with(&gw, &k.a.key).await, 401);
        // And again: the watch survives the rename (it is on the directory, not the old inode).
        gw.replace_config(&v1(&up.url(), &k));
        assert!(
            becomes(&gw, &k.a.key, 200).await,
            "the second rename was not seen"
        );
    }

    #[cfg(unix)]
    async fn a_configmap_style_symlink_swap_takes_effect() {
        use std::os::unix::fs::symlink;
        let up = echo_upstream().await;
        let k = keys();
        // The layout kubelet makes: file -> ..data/file, ..data -> ..<timestamp>/
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("..2026_11_22_10_00_00.000000001");
        std::fs::create_dir(&first).unwrap();
        std::fs::write(first.join("apiward.toml"), v1(&up.url(), &k)).unwrap();
        symlink("..2026_11_22_10_00_00.000000001", dir.path().join("..data")).unwrap();
        symlink("..data/apiward.toml", dir.path().join("apiward.toml")).unwrap();
        let path = dir.path().join("apiward.toml");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gw = TestGateway::start_at(dir, path, listener).await;
        assert_eq!(status_with(&gw, &k.a.key).await, 200);

        // An update: a new timestamped directory, a temporary symlink, renamed over ..data.
        let root = gw.dir.path();
        let second = root.join("..2026_11_22_10_05_00.000000002");
        std::fs::create_dir(&second).unwrap();
        std::fs::write(second.join("apiward.toml"), v2(&up.url(), &k)).unwrap();
        symlink("..2026_11_22_10_05_00.000000002", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join("..2026_11_22_10_00_00.000000001")).unwrap();

        assert!(
            becomes(&gw, &k.b.key, 200).await,
            "the ConfigMap update was not seen"
        );
        assert_eq!(status_with(&gw, &k.a.key).await, 401);
    }

    async fn an_invalid_file_is_refused_and_the_last_good_one_keeps_serving() {
        let up = echo_upstream().await;
        let k = keys();
        let gw = TestGateway::start(&v1(&up.url(), &k)).await;
        let store = Arc::clone(gw.gateway().store());
        let broken = v2(&up.url(), &k).replace(
            "remote_addresses = \"127.0.0.1\"",
            "remote_addresses = \"127.0.0.1~not-an-address\"",
        );
        gw.replace_config(&broken);
        assert!(
            eventually(|| async { store.reloads_failed() >= 1 }).await,
            "the refusal was not counted"
        );
        let failure = store
            .last_failure()
            .expect("the error is kept for status pages");
        assert!(
            failure.message.contains("apiward.toml:"),
            "{}",
            failure.message
        );
        assert!(
            failure.message.contains("not-an-address"),
            "{}",
            failure.message
        );
        // The old configuration is untouched.
        assert_eq!(status_with(&gw, &k.a.key).await, 200);
        assert_eq!(status_with(&gw, &k.b.key).await, 401);
        assert_eq!(store.generation(), 1);
        // Fixing the file and saving again loads it.
        gw.replace_config(&v2(&up.url(), &k));
        assert!(becomes(&gw, &k.b.key, 200).await);
        assert!(store.last_failure().is_none());
    }

    async fn a_revoked_key_is_refused_on_an_open_keep_alive_connection() {
        let up = echo_upstream().await;
        let k = keys();
        let gw = TestGateway::start(&v1(&up.url(), &k)).await;
        let mut conn = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "GET /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {}\r\n\r\n",
            k.a.key
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));

        gw.replace_config(&v2(&up.url(), &k));
        let store = Arc::clone(gw.gateway().store());
        assert!(eventually(|| async { store.generation() >= 2 }).await);

        conn.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut conn).await;
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "same connection, after the revocation: {answer}"
        );
        assert!(answer.contains("invalid_credentials"), "{answer}");
    }

    async fn reloads_under_load_drop_nothing_and_never_mix_snapshots() {
        let up = echo_upstream().await;
        let both = TestKey::new("loadboth");
        let only_a = TestKey::new("loadonlya");
        // File A: "both" is in group ga; "only_a" exists. File B: "both" is in group gb; "only_a" does not exist.
        let groups = "[groups.ga]\nallow = [{ path = \"/supporters/**\", verbs = [\"view\"] }]\n\n[groups.gb]\nallow = [{ path = \"/supporters/**\", verbs = [\"view\"] }]\n\n";
        let file_a = config(
            &up.url(),
            &(groups.to_string()
                + &user("both@example.org", "active", "ga", "127.0.0.1", &[&both])
                + &user("onlya@example.org", "active", "ga", "127.0.0.1", &[&only_a])),
        );
        let file_b = config(
            &up.url(),
            &(groups.to_string() + &user("both@example.org", "active", "gb", "127.0.0.1", &[&both])),
        );
        let invalid = file_b.replace("status = \"active\"", "status = \"activ\"");
        let gw = TestGateway::start(&file_a).await;
        let store = Arc::clone(gw.gateway().store());

        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let mut clients = Vec::new();
        for i in 0..32 {
            let (stop, requests, failures) = (
                Arc::clone(&stop),
                Arc::clone(&requests),
                Arc::clone(&failures),
            );
            let url = gw.url("/supporters/1");
            let key = if i % 2 == 0 {
                both.key.clone()
            } else {
                only_a.key.clone()
            };
            let is_both = i % 2 == 0;
            clients.push(tokio::spawn(async move {
                // One keep-alive client per task, like wrk's connections.
                let client = client();
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) && done < 5000 {
                    done += 1;
                    let req = http::Request::get(&url)
                        .header("x-api-key", &key)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    let outcome = match client.request(req).await {
                        Err(e) => Err(format!("connection error: {e}")),
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            use http_body_util::BodyExt;
                            let body = resp
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let doc: serde_json::Value =
                                serde_json::from_slice(&body).unwrap_or_default();
                            let group = doc["headers"]["x-apiward-group"][0]
                                .as_str()
                                .unwrap_or("")
                                .to_string();
                            match (is_both, status, group.as_str()) {
                                (true, 200, "ga" | "gb") => Ok(()),
                                (false, 200, "ga") => Ok(()),
                                (false, 401, _) if doc["error"] == "invalid_credentials" => Ok(()),
                                // Many revoked-key requests from one address: the failed-auth
                                // limiter answers for the credential check (docs/limits.md).
                                (false, 429, _) if doc["error"] == "too_many_failed_attempts" => Ok(()),
                                other => Err(format!("inconsistent answer {other:?}")),
                            }
                        }
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = outcome {
                        failures.lock().unwrap().push(e);
                    }
                }
            }));
        }

        let files = [&file_b, &invalid, &file_a];
        let mut applied_before = store.reloads_applied();
        let mut failed_before = store.reloads_failed();
        for n in 0..50 {
            let text = files[n % 3];
            gw.replace_config(text);
            // Wait for this file's reload to be applied (or refused) before writing the next one.
            let refused = std::ptr::eq(text, &invalid);
            let seen = eventually(|| async {
                if refused {
                    store.reloads_failed() > failed_before
                } else {
                    store.reloads_applied() > applied_before
                }
            })
            .await;
            assert!(seen, "reload {n} was not processed");
            applied_before = store.reloads_applied();
            failed_before = store.reloads_failed();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }
        let failures = failures.lock().unwrap();
        let total = requests.load(Ordering::Relaxed);
        assert!(total > 500, "too little traffic to mean anything: {total}");
        assert!(
            failures.is_empty(),
            "{} of {total} requests failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(store.reloads_applied() >= 33);
        assert!(store.reloads_failed() >= 16);
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let up = echo_upstream().await;
    let k = keys();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    std::fs::write(&path, v1(&up.url(), &k)).unwrap();
    let options = apiward::Options {
        watch_config: false,
        reload_on_sighup: true,
        ..apiward::Options::default()
    };
    let gateway = apiward::Gateway::start(&path, None, options).await.unwrap();
    let url = format!("http://{}/supporters/1", gateway.local_addr());
    std::fs::write(&path, v2(&up.url(), &k)).unwrap();
    // Without a watcher nothing changes until the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(&url, &[("x-api-key", k.b.key.as_str())]).await.status,
        401
    );
    let pid = std::process::id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let ok =
        eventually(|| async { get(&url, &[("x-api-key", k.b.key.as_str())]).await.status == 200 })
            .await;
    assert!(ok, "SIGHUP did not reload");
    gateway.shutdown().await;
}

#[test]
fn replaced_snapshots_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let k = keys();
    let (a, b) = (v1("http://127.0.0.1:9", &k), v2("http://127.0.0.1:9", &k));
    std::fs::write(&path, &a).unwrap();
    let store = apiward::config::reload::ConfigStore::open(&path).unwrap();
    let mut old = Vec::new();
    for i in 0..1000 {
        old.push(Arc::downgrade(&store.load_full()));
        std::fs::write(&path, if i % 2 == 0 { &b } else { &a }).unwrap();
        assert!(matches!(
            store.reload(),
            apiward::config::reload::ReloadOutcome::Applied { .. }
        ));
    }
    assert_eq!(store.generation(), 1001);
    let alive = old.iter().filter(|w| w.strong_count() > 0).count();
    assert_eq!(alive, 0, "{alive} replaced snapshots are still alive");
}

#[test]
fn undoing_a_refused_edit_clears_the_reload_error() {
    use apiward::config::reload::{ConfigStore, ReloadOutcome};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let good = v1("http://127.0.0.1:9", &keys());
    std::fs::write(&path, &good).unwrap();
    let store = ConfigStore::open(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("status = \"active\"", "status = \"on\""),
    )
    .unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::Refused(_)));
    assert!(store.last_failure().is_some());
    // The file is byte-identical to the loaded one again: nothing to apply, but the failure
    // /status shows is stale.
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::BackInLine));
    assert!(store.last_failure().is_none());
    assert_eq!(store.generation(), 1, "nothing was applied");
    assert!(matches!(store.reload(), ReloadOutcome::Unchanged));
}

/// A reload streams the file and keeps only the tables that changed; a broken table among
/// thousands (more than the buffer the file is read through) is still refused at its exact
/// line and column, as the whole file's compile reports it, and the last good file keeps serving.
#[test]
fn a_broken_table_in_a_large_file_is_refused_at_its_line() {
    use apiward::config::reload::{ConfigStore, ReloadOutcome};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let ids: Vec<String> = (0..12_000).map(|i| format!("u{i}@example.org")).collect();
    let keys: Vec<TestKey> = (0..ids.len())
        .map(|i| TestKey::new(&format!("big{i}")))
        .collect();
    let file = |status_of_7777: &str, revoked: Option<usize>| {
        let mut users = String::new();
        for (i, id) in ids.iter().enumerate() {
            let status = if i == 7777 { status_of_7777 } else { "active" };
            let k: Vec<&TestKey> = if revoked == Some(i) {
                vec![]
            } else {
                vec![&keys[i]]
            };
            users.push_str(&user(id, status, "manage-supporters", "*", &k));
        }
        config("http://127.0.0.1:9", &users)
    };
    let good = file("active", None);
    assert!(good.len() > 2 << 20, "larger than the streaming buffer");
    std::fs::write(&path, &good).unwrap();
    let store = ConfigStore::open(&path).unwrap();

    let broken = file("on", None);
    std::fs::write(&path, &broken).unwrap();
    let ReloadOutcome::Refused(errors) = store.reload() else {
        panic!("the broken table was not refused");
    };
    let at = broken.find("status = \"on\"").unwrap();
    let line = broken[..at].matches('\n').count() + 1;
    assert_eq!(
        (errors.0[0].line, errors.0[0].column),
        (line, 10),
        "{errors}"
    );
    assert_eq!(
        errors,
        apiward::config::compile(&path, &broken).unwrap_err(),
        "the errors of one parse of the whole file"
    );
    let digest = apiward::snapshot::KeyDigest::of(&keys[7777].key);
    assert!(
        store.load().keys.contains_key(&digest),
        "the last good file serves"
    );
    assert_eq!(store.generation(), 1);

    // Back to the good file: nothing to apply, the stale error is cleared.
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(store.reload(), ReloadOutcome::BackInLine));

    // A key revoked deep in the file: only its table is compiled again.
    std::fs::write(&path, file("active", Some(9000))).unwrap();
    let ReloadOutcome::Applied { changes, .. } = store.reload() else {
        panic!("the revocation was not applied");
    };
    assert_eq!(changes.users_changed, vec![ids[9000].clone()]);
    assert_eq!(changes.keys_revoked, 1);
    let revoked = apiward::snapshot::KeyDigest::of(&keys[9000].key);
    assert!(!store.load().keys.contains_key(&revoked));
    assert!(store.load().keys.contains_key(&digest));
    assert!(matches!(store.reload(), ReloadOutcome::Unchanged));
}
