//! Measures reloading: how long a revocation takes to be enforced, how long a large file takes to
//! compile, and whether memory grows across many reloads. Figures go in docs/benchmarks.md.
//!
//! cargo run --release --example reload_bench
//!     compile time at 100,000 users, revocation at 10,000 users, memory across 1,000 reloads
//! cargo run --release --example reload_bench -- --revocation USERS [--rounds N] [--load C]
//!     revocation only, at USERS users, with C connections (default 2) of requests running all
//!     along (each in a thread of its own, with a key of a user that stays); each round writes and
//!     syncs the new file, renames it into place, and times from the rename's return to the first
//!     refusal (401; 429 once the failed-credential limiter has counted 20 rounds' refusals);
//!     prints each round on stderr, the median, the rename's own time, and the process's peak and
//!     final resident memory
//! cargo run --release --example reload_bench -- --reload-cost USERS [--rounds N]
//!     the reload's own work, without a gateway or load: for N revocations of one key at USERS
//!     users, the time to read the file and to compile it after the previous snapshot (what a
//!     reload does before the swap), and the median of each
//!
//! Everything runs on 127.0.0.1 and stops by itself.

#[path = "../benches/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use apiward::config::reload::{ConfigStore, ReloadOutcome};
use apiward::snapshot::KeyDigest;

fn main() {
    // RUST_LOG=apiward::config=debug: each reload's phases (the scan, the compile, the swap).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| {
                v.parse::<usize>()
                    .unwrap_or_else(|_| panic!("{name} takes a number"))
            })
    };
    if let Some(users) = arg("--reload-cost") {
        reload_cost(users, arg("--rounds").unwrap_or(7));
        return;
    }
    if let Some(users) = arg("--revocation") {
        let rounds = arg("--rounds").unwrap_or(11);
        let load = arg("--load").unwrap_or(2);
        runtime.block_on(revocation_latency(users, rounds, load));
        return;
    }
    compile_time(100_000);
    runtime.block_on(revocation_latency(10_000, 21, 2));
    memory_across_reloads(10_000, 1_000);
}

/// The reload's own work for a revocation of one key among `users`: reading the file (from the
/// page cache) and compiling it after the snapshot serving, as `ConfigStore::reload` does before
/// the swap.
fn reload_cost(users: usize, rounds: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("apiward.toml");
    let mut spec = support::Spec::in_memory(users);
    spec.access_log = Some("off");
    let full = support::config_text(&spec);
    let previous = apiward::config::compile(&path, &full).expect("the file compiles");
    let (mut reads, mut compiles, mut streams) = (Vec::new(), Vec::new(), Vec::new());
    let mut cpus = Vec::new();
    for round in 0..rounds {
        let victim = 1 + round * ((users - 1) / (rounds + 1));
        let digest = KeyDigest::of(&support::key(victim)).to_hex();
        let revoked = full.replacen(
            &format!("sha256 = \"{digest}\""),
            &format!(
                "sha256 = \"{}\"",
                KeyDigest::of(&format!("replacement-{round}")).to_hex()
            ),
            1,
        );
        replace(&path, &revoked);
        let started = Instant::now();
        let text = std::fs::read_to_string(&path).expect("read");
        let read = started.elapsed();
        let started = Instant::now();
        let compiled = apiward::config::incremental::reload_after(&path, &text, &previous)
            .expect("valid")
            .expect("changed");
        let compile = started.elapsed();
        assert!(compiled.changes.is_some(), "compiled incrementally");
        assert!(
            !compiled
                .snapshot
                .keys
                .contains_key(&KeyDigest::of(&support::key(victim)))
        );
        drop((text, compiled));
        // What a reload does now: the file streamed, only its changed tables kept and compiled.
        let started = Instant::now();
        let cpu_before = cpu_ms();
        let streamed = apiward::config::incremental::reload_streamed(&path, &previous);
        let stream = started.elapsed();
        let stream_cpu = cpu_ms() - cpu_before;
        let apiward::config::incremental::Streamed::Compiled(streamed) = streamed else {
            panic!("streamed and compiled incrementally");
        };
        assert!(
            !streamed
                .snapshot
                .keys
                .contains_key(&KeyDigest::of(&support::key(victim)))
        );
        drop(streamed);
        println!(
            "round {round}: read {read:?}, compile after the previous snapshot {compile:?}; streamed read and compile {stream:?} ({stream_cpu} ms of CPU, user and system, all threads)"
        );
        cpus.push(stream_cpu);
        reads.push(read);
        compiles.push(compile);
        streams.push(stream);
    }
    cpus.sort_unstable();
    println!(
        "reload cost at {users} users ({:.1} MiB), {rounds} rounds: read median {:?}, compile median {:?}; streamed (read and compile, what a reload does) median {:?}, CPU median {} ms",
        full.len() as f64 / (1024.0 * 1024.0),
        median(&mut reads),
        median(&mut compiles),
        median(&mut streams),
        cpus[cpus.len() / 2]
    );
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

/// Writes a file without one user's key, renames it into place, and measures until a request
/// with that key is refused on an open keep-alive connection, while `load` other connections
/// keep sending requests.
async fn revocation_latency(users: usize, rounds: usize, load: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("apiward.toml");
    let mut spec = support::Spec::in_memory(users);
    spec.access_log = Some("off");
    let full = support::config_text(&spec);
    replace(&path, &full);
    let started = Instant::now();
    let gateway = apiward::Gateway::start(&path, None, apiward::Options::default())
        .await
        .expect("start");
    println!(
        "start with {users} users ({:.1} MiB of TOML): loaded in {:?}; peak resident {} MiB, resident {} MiB",
        full.len() as f64 / (1024.0 * 1024.0),
        started.elapsed(),
        proc_status_kib("VmHWM") / 1024,
        proc_status_kib("VmRSS") / 1024
    );
    let addr = gateway.local_addr();

    // The load: keys of users that are never revoked (the first few), on keep-alive connections.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let loaders: Vec<_> = (0..load)
        .map(|c| {
            let stop = std::sync::Arc::clone(&stop);
            let served = std::sync::Arc::clone(&served);
            std::thread::spawn(move || {
                let mut conn = TcpStream::connect(addr).expect("connect");
                conn.set_nodelay(true).ok();
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: bench\r\n{}: {}\r\n\r\n",
                    support::REQUEST_PATH,
                    support::KEY_HEADER,
                    support::key(c % users.max(1))
                );
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(
                        status(&mut conn, &request),
                        200,
                        "the load's key stays valid"
                    );
                    served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    let load_started = Instant::now();

    let mut latencies = Vec::new();
    let mut renames = Vec::new();
    for round in 0..rounds {
        let victim = load + 1 + round * ((users - load - 1) / (rounds + 1));
        let key = support::key(victim);
        let digest = apiward::snapshot::KeyDigest::of(&key).to_hex();
        let revoked = full.replacen(
            &format!("sha256 = \"{digest}\""),
            &format!(
                "sha256 = \"{}\"",
                apiward::snapshot::KeyDigest::of(&format!("replacement-{round}")).to_hex()
            ),
            1,
        );
        assert_ne!(revoked.len(), 0);
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
            // Written and synced first, as `apiward users` does (src/config/edit/replace.rs):
            // without the sync, ext4 writes the new file's data out inside the rename that
            // replaces the old one (auto_da_alloc), 100-170 ms at 10^6 users, which is the
            // writer's time, not the gateway's. The clock starts when the rename returns: from
            // then on the file in place is the new one.
            let tmp = round_path.with_extension("tmp");
            write_synced(&tmp, &revoked);
            let before = Instant::now();
            std::fs::rename(&tmp, &round_path).expect("rename");
            let renamed = Instant::now();
            let rename_took = renamed - before;
            // Refused is 401, or 429 once the failed-credential limiter has counted 20 of
            // these rounds' refusals from 127.0.0.1 (docs/limits.md): it answers before the
            // key is looked at, which from then on would hide the 401 for 3 s a round.
            loop {
                let answer = status(&mut conn, &request);
                if answer == 401 || answer == 429 {
                    return (renamed.elapsed(), rename_took);
                }
                assert_eq!(answer, 200, "the key is served until it is refused");
                assert!(renamed.elapsed() < Duration::from_secs(60), "never refused");
            }
        })
        .await
        .expect("round");
        eprintln!(
            "round {round}: refused {:?} after the rename ({:?} in the rename)",
            latency.0, latency.1
        );
        latencies.push(latency.0);
        renames.push(latency.1);
        restore(
            gateway.store(),
            &path,
            &full,
            KeyDigest::of(&support::key(victim)),
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loaders {
        l.join().expect("load thread");
    }
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    latencies.sort();
    renames.sort();
    println!(
        "revocation with {users} users (from the rename's return to the first refusal on an open connection: 401, or 429 from the failed-credential limiter), {rounds} rounds, {load} connections of load ({:.0} req/s through it all): median {:?}, p90 {:?}, max {:?}; the rename itself (file written and synced before): median {:?}, max {:?}",
        served as f64 / load_started.elapsed().as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        latencies[latencies.len() - 1],
        renames[renames.len() / 2],
        renames[renames.len() - 1]
    );
    println!(
        "memory: peak resident {} MiB (the generated text, its copies and the first compile included), resident now {} MiB",
        proc_status_kib("VmHWM") / 1024,
        proc_status_kib("VmRSS") / 1024
    );
    gateway.shutdown().await;
}

/// Writes `text` to `path` and syncs it to the disk.
fn write_synced(path: &Path, text: &str) {
    let mut file = std::fs::File::create(path).expect("create");
    file.write_all(text.as_bytes()).expect("write");
    file.sync_all().expect("sync");
}

/// Writes `text` beside `path` and renames it over, as editors and the CLI do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// Puts the full file back (atomically too) and waits until it serves again: the revoked key
/// is back, and the reload that brought it has finished (its generation counted).
async fn restore(store: &ConfigStore, path: &Path, full: &str, victim: KeyDigest) {
    let generation = store.generation();
    replace(path, full);
    while !store.load().keys.contains_key(&victim) || store.generation() == generation {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The next round starts with no reload in flight.
    tokio::time::sleep(Duration::from_millis(50)).await;
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

/// The process's CPU time so far, user and system, every thread (in clock ticks of 10 ms:
/// rough for one reload, which the median over rounds evens out).
fn cpu_ms() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (tick(11) + tick(12)) * 10
}

fn rss_kib() -> u64 {
    proc_status_kib("VmRSS")
}

/// A `kB` figure of /proc/self/status (`VmRSS`, `VmHWM`).
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
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
