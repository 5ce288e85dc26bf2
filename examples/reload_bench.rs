//! Measures reloading: how long a revocation takes to be enforced, how long a large file takes to
//! compile, and whether memory grows across many reloads. Figures go in docs/reload.md.
//!
//! cargo run --release --example reload_bench
//!
//! Everything runs on 127.0.0.1 and stops by itself.

#[path = "../benches/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use apiward::config::reload::{ConfigStore, ReloadOutcome};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    compile_time(100_000);
    runtime.block_on(revocation_latency(10_000, 21));
    memory_across_reloads(10_000, 1_000);
}

/// The benchmark file with a second key for every user (the rotation case).
fn two_keys_per_user(users: usize) -> String {
    let text = support::config_text(&support::Spec::in_memory(users));
    let mut out = String::with_capacity(text.len() + users * 120);
    let mut i = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("keys = [") {
            let second =
                apiward::snapshot::KeyDigest::of(&format!("{}-rotated", support::key(i))).to_hex();
            out.push_str(&format!("keys = [{{ sha256 = \"{second}\" }}, {rest}\n"));
            i += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn compile_time(users: usize) {
    let text = two_keys_per_user(users);
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let snapshot = apiward::config::compile(Path::new("bench.toml"), &text).expect("valid");
        times.push(started.elapsed());
        assert_eq!(snapshot.keys.len(), users * 2);
    }
    println!(
        "compile: {users} users x 2 keys ({:.1} MiB of TOML): median {:?} (min {:?}, max {:?}) over {} runs",
        text.len() as f64 / (1024.0 * 1024.0),
        median(&mut times),
        times[0],
        times[times.len() - 1],
        times.len()
    );
}

/// Writes a file without user `revoked`'s key, renames it into place, and measures until a
/// request with that key is refused on an open keep-alive connection.
async fn revocation_latency(users: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("apiward.toml");
    let spec = support::Spec::in_memory(users);
    let full = support::config_text(&spec);
    std::fs::write(&path, &full).expect("write");
    let gateway = apiward::Gateway::start(&path, None, apiward::Options::default())
        .await
        .expect("start");
    let addr = gateway.local_addr();

    let mut latencies = Vec::new();
    for round in 0..rounds {
        let victim = 1 + round * (users / (rounds + 1));
        let key = support::key(victim);
        let digest = apiward::snapshot::KeyDigest::of(&key).to_hex();
        let revoked = full.replace(
            &format!("sha256 = \"{digest}\""),
            &format!(
                "sha256 = \"{}\"",
                apiward::snapshot::KeyDigest::of(&format!("replacement-{round}")).to_hex()
            ),
        );
        let round_path = path.clone();
        let latency = tokio::task::spawn_blocking(move || {
            let mut conn = TcpStream::connect(addr).expect("connect");
            conn.set_nodelay(true).ok();
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: bench\r\n{}: {key}\r\n\r\n",
                support::REQUEST_PATH,
                support::KEY_HEADER
            );
            assert_eq!(
                status(&mut conn, &request),
                200,
                "the key works before the revocation"
            );
            let tmp = round_path.with_extension("tmp");
            std::fs::write(&tmp, &revoked).expect("write");
            let renamed = Instant::now();
            std::fs::rename(&tmp, &round_path).expect("rename");
            loop {
                if status(&mut conn, &request) == 401 {
                    return renamed.elapsed();
                }
                assert!(renamed.elapsed() < Duration::from_secs(10), "never refused");
            }
        })
        .await
        .expect("round");
        latencies.push(latency);
        // Put the full file back for the next round, and let it load.
        let store = gateway.store().clone();
        let generation = store.generation();
        std::fs::write(&path, &full).expect("restore");
        while store.generation() == generation {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    latencies.sort();
    println!(
        "revocation with {users} users (rename to first 401 on an open connection), {rounds} rounds: median {:?}, p90 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        latencies[latencies.len() - 1]
    );
    gateway.shutdown().await;
}

/// Sends one request on a keep-alive connection and returns the status.
fn status(conn: &mut TcpStream, request: &str) -> u16 {
    conn.write_all(request.as_bytes()).expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = conn.read(&mut chunk).expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[9..12].parse().unwrap_or(0);
            }
        }
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn memory_across_reloads(users: usize, reloads: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("apiward.toml");
    let a = support::config_text(&support::Spec::in_memory(users));
    let b = a.replace(
        "status = \"active\"\ngroup = \"bench\"\nremote_addresses = \"198.51.0.1~",
        "status = \"inactive\"\ngroup = \"bench\"\nremote_addresses = \"198.51.0.1~",
    );
    assert_ne!(a, b);
    std::fs::write(&path, &a).expect("write");
    let store = ConfigStore::open(&path).expect("open");
    // Two warm-up reloads so the allocator has seen both shapes.
    for text in [&b, &a] {
        std::fs::write(&path, text).expect("write");
        store.reload();
    }
    let before = rss_kib();
    let started = Instant::now();
    for i in 0..reloads {
        std::fs::write(&path, if i % 2 == 0 { &b } else { &a }).expect("write");
        assert!(matches!(store.reload(), ReloadOutcome::Applied { .. }));
    }
    let after = rss_kib();
    println!(
        "memory: {reloads} reloads of {users} users in {:?}: resident {before} KiB before, {after} KiB after ({:+} KiB)",
        started.elapsed(),
        after as i64 - before as i64
    );
}
