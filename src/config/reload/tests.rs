//! Tests of the reload loop: what it reloads for, and how often.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{ConfigStore, ReloadOutcome, reload_loop, watch_file};
use crate::snapshot::KeyDigest;

fn file(key: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.api]\nurl = \"builtin:echo\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n\n[groups.g0]\nallow = [{{ path = \"/**\", verbs = [\"view\"] }}]\n\n[users.\"u@example.org\"]\nstatus = \"active\"\ngroup = \"g0\"\nremote_addresses = \"*\"\nkeys = [{{ sha256 = \"{}\" }}]\n",
        KeyDigest::of(key).to_hex()
    )
}

/// Waits up to 10 s for `done`.
async fn until(done: impl Fn() -> bool) -> bool {
    for _ in 0..1000 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// A file renamed into place is reloaded without waiting for more events, and once: inotify
/// reports the rename twice (its `To` and its `Both` event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_renamed_into_place_is_reloaded_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    std::fs::write(&path, file("first")).unwrap();
    let store = ConfigStore::open(&path).unwrap();
    let (triggers, triggers_rx) = tokio::sync::mpsc::unbounded_channel();
    let _watch = watch_file(&path, triggers).unwrap();
    let (applied, other) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counts = (Arc::clone(&applied), Arc::clone(&other));
    tokio::spawn(reload_loop(
        Arc::clone(&store),
        triggers_rx,
        move |outcome: &ReloadOutcome| {
            let count = match outcome {
                ReloadOutcome::Applied { .. } => &counts.0,
                _ => &counts.1,
            };
            count.fetch_add(1, Ordering::SeqCst);
        },
    ));
    for (round, key) in ["second", "third"].into_iter().enumerate() {
        let tmp = dir.path().join("apiward.toml.tmp");
        std::fs::write(&tmp, file(key)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(until(|| applied.load(Ordering::SeqCst) == round + 1).await);
        assert!(store.load().keys.contains_key(&KeyDigest::of(key)));
        // Time for a second reload of the same rename, if there were one.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(applied.load(Ordering::SeqCst), round + 1);
        assert_eq!(
            other.load(Ordering::SeqCst),
            0,
            "the same rename reloaded again"
        );
    }
}
