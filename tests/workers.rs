//! `[server] workers` and `worker_runtime`: with `"per_worker"` (the default), each worker is a
//! thread with a single-threaded runtime and a listening socket of its own on the one port
//! (`SO_REUSEPORT`); with `"shared"`, one multi-threaded runtime serves them all. Either way
//! every connection is answered, a reload reaches every connection, and shutdown drains them.
//! `connection_balance = "exact"` (the default) moves each new connection to the per-worker
//! runtime serving the fewest; `"cpu"` to the one of the CPU that received it, while the counts
//! stay close.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::process::GatewayProcess;
use common::tls::{HttpConnection, Pki};
use common::*;

/// `toml` with two workers of `runtime` and an admin listener.
fn two_workers(toml: &str, runtime: &str) -> String {
    with_server_setting(
        &with_server_setting(&with_admin(toml), "workers = 2"),
        &format!("worker_runtime = \"{runtime}\""),
    )
}

/// Sends one request with `k`'s key on `conn` and asserts its answer's status line starts
/// with `status` (`what` says which connection, for the message).
async fn answers(conn: &mut TcpStream, k: &TestKey, status: &str, what: &str) {
    conn.write_all(get_with_key("/supporters/1", k).as_bytes())
        .await
        .expect("write");
    let answer = read_response(conn).await;
    assert!(answer.starts_with(status), "{what} was answered {answer:?}");
}

/// `n` keep-alive connections to `addr`, each answered 200 once with `k`'s key, still open.
async fn connections(addr: std::net::SocketAddr, k: &TestKey, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(TcpStream::connect(addr).await.expect("connect"));
    }
    for conn in &mut conns {
        conn.write_all(get_with_key("/supporters/1", k).as_bytes())
            .await
            .expect("write");
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        let answer = read_response(conn).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "connection {i} was answered {answer:?}"
        );
    }
    conns
}

/// A listener on an ephemeral loopback port with `SO_REUSEPORT`, as another apiward with
/// several workers holds its port.
fn reuse_port_listener() -> std::net::TcpListener {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    socket.listen(128).expect("listen");
    std::net::TcpListener::from(socket)
}

/// `/status` `worker_connections` of the gateway.
/// `/status`'s connections per worker, which must be two workers that each took some (`what`
/// says which connections, for the message).
async fn every_worker_took(gw: &TestGateway, what: &str) -> Vec<u64> {
    let per_worker = worker_connections(gw).await;
    assert!(
        per_worker.len() == 2 && per_worker.iter().all(|&n| n > 0),
        "every worker took {what}: {per_worker:?}"
    );
    per_worker
}

async fn worker_connections(gw: &TestGateway) -> Vec<u64> {
    per_worker(gw, "worker_connections").await
}

/// `/status`'s `field`, one count per worker.
async fn per_worker(gw: &TestGateway, field: &str) -> Vec<u64> {
    let admin = gw.gateway().admin_addr().expect("admin listener");
    status(admin).await[field]
        .as_array()
        .unwrap_or_else(|| panic!("{field} in /status"))
        .iter()
        .map(|n| n.as_u64().expect("a count"))
        .collect()
}

/// `n` keep-alive connections opened one after the other, each answered before the next
/// opens, so that no two workers accept at the same instant.
async fn connections_one_by_one(
    addr: std::net::SocketAddr,
    k: &TestKey,
    n: usize,
) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.extend(connections(addr, k, 1).await);
    }
    conns
}

#[tokio::test]
async fn exact_balance_spreads_keep_alive_connections_evenly_and_a_reload_switches_it() {
    let upstream = echo_upstream().await;
    let k = TestKey::new("balance");
    let toml = |balance: &str| {
        with_server_setting(
            &two_workers(
                &one_user_config(&upstream.url(), "b@example.org", &k),
                "per_worker",
            ),
            &format!("connection_balance = \"{balance}\""),
        )
    };
    let gw = TestGateway::start_with_workers(&toml("kernel")).await;
    // The kernel's SO_REUSEPORT hash puts each connection where it falls; nothing moves.
    let mut conns = connections_one_by_one(gw.addr, &k, 64).await;
    let open = per_worker(&gw, "worker_open_connections").await;
    assert_eq!(open.iter().sum::<u64>(), 64, "{open:?}");
    assert_eq!(open, worker_connections(&gw).await, "nothing closed yet");
    let kernel = open;

    let generation = gw.gateway().store().generation();
    gw.replace_config(&toml("exact"));
    assert!(
        eventually(|| async { gw.gateway().store().generation() > generation }).await,
        "the reload was not applied"
    );
    // From now on each new connection goes to the worker serving the fewest: 64 more even the
    // two out, however the kernel had spread the first 64 (and wherever it puts these).
    conns.extend(connections_one_by_one(gw.addr, &k, 64).await);
    assert_eq!(
        per_worker(&gw, "worker_open_connections").await,
        [64, 64],
        "after the kernel's {kernel:?}"
    );
    // Every connection, moved or not, still serves.
    for (i, conn) in conns.iter_mut().enumerate() {
        answers(conn, &k, "HTTP/1.1 200", &format!("connection {i}")).await;
    }
    // The counts follow the connections that end.
    drop(conns);
    assert!(
        eventually(|| async { per_worker(&gw, "worker_open_connections").await == [0, 0] }).await,
        "the closed connections are still counted: {:?}",
        per_worker(&gw, "worker_open_connections").await
    );
    let exact = connections_one_by_one(gw.addr, &k, 10).await;
    assert_eq!(per_worker(&gw, "worker_open_connections").await, [5, 5]);
    drop(exact);
    gw.shutdown().await;
}

/// `n` keep-alive connections to `addr` opened one after the other from a thread of its own
/// pinned to `cpu`, each answered 200 to `request` before the next opens (its handshake and
/// request sent from that CPU, so the kernel records it as the CPU that received the
/// connection's packets). The test's runtime goes on serving meanwhile (the echo upstream is on
/// it).
async fn connections_from_cpu(
    addr: std::net::SocketAddr,
    request: String,
    n: usize,
    cpu: usize,
) -> Vec<std::net::TcpStream> {
    use std::io::{Read, Write};
    let (done, conns) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        #[allow(unsafe_code)]
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity
        // (thread 0: the calling thread) get valid pointers to it and its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            let pinned = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(pinned, 0, "cannot pin a thread to CPU {cpu}");
        }
        let conns: Vec<_> = (0..n)
            .map(|i| {
                let mut conn = std::net::TcpStream::connect(addr).expect("connect");
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                conn.write_all(request.as_bytes()).expect("write");
                let mut answer = [0u8; 512];
                let got = conn.read(&mut answer).expect("read");
                assert!(
                    answer[..got].starts_with(b"HTTP/1.1 200"),
                    "connection {i} from CPU {cpu} was answered {:?}",
                    String::from_utf8_lossy(&answer[..got])
                );
                conn
            })
            .collect();
        let _ = done.send(conns);
    });
    conns.await.expect("the pinned thread")
}

#[tokio::test]
async fn cpu_balance_gives_each_connection_to_its_cpus_worker_while_the_counts_stay_close() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus >= 2,
        "this test needs 2 CPUs to pin its clients to (the machine gives it {cpus})"
    );
    let upstream = echo_upstream().await;
    let k = TestKey::new("cpu-balance");
    let gw = TestGateway::start_with_workers(&with_server_setting(
        &two_workers(
            &one_user_config(&upstream.url(), "c@example.org", &k),
            "per_worker",
        ),
        "connection_balance = \"cpu\"",
    ))
    .await;
    let addr = gw.addr;
    let request = get_with_key("/supporters/1", &k);
    // Four connections from CPU 1 (worker 1's): worker 1 takes them while it then serves at
    // most 2 more than worker 0, so the third goes to worker 0 ("exact" would make it 2 / 2).
    let from_1 = connections_from_cpu(addr, request.clone(), 4, 1).await;
    assert_eq!(per_worker(&gw, "worker_open_connections").await, [1, 3]);
    // Four from CPU 0: worker 0 takes all of them (it serves the fewest, then at most 2 more).
    let from_0 = connections_from_cpu(addr, request.clone(), 4, 0).await;
    assert_eq!(per_worker(&gw, "worker_open_connections").await, [5, 3]);
    drop((from_0, from_1));
    gw.shutdown().await;
}

both_transports! {
    async fn per_worker_runtimes_share_one_port_and_each_takes_connections() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("workers");
        let gw = TestGateway::start_with_workers(&two_workers(
            &one_user_config(&upstream.url(), "w@example.org", &k),
            "per_worker",
        ))
        .await;
        assert_ne!(gw.addr.port(), 0, "the workers listen on one ephemeral port");
        // The kernel spreads new connections over the two sockets by their addresses and
        // ports: with 64 of them, one socket getting none has a chance of 2⁻⁶³.
        let conns = connections(gw.addr, &k, 64).await;
        let per_worker = every_worker_took(&gw, "connections").await;
        assert_eq!(per_worker.iter().sum::<u64>(), 64, "{per_worker:?}");
        drop(conns);
        gw.shutdown().await;
    }

    async fn a_reload_reaches_the_connections_of_every_worker() {
        let upstream = echo_upstream().await;
        let (kept, revoked) = (TestKey::new("kept"), TestKey::new("revoked"));
        let users = |keys: &[&TestKey]| {
            config(
                &upstream.url(),
                &user("r@example.org", "active", "manage-supporters", "127.0.0.1", keys),
            )
        };
        let gw = TestGateway::start_with_workers(&two_workers(&users(&[&kept, &revoked]), "per_worker"))
            .await;
        // 16 connections: both workers get some (all on one: a chance of 2⁻¹⁵), and 16 refusals
        // stay under the failed-credential limiter's burst for one address.
        let mut conns = connections(gw.addr, &revoked, 16).await;
        every_worker_took(&gw, "connections").await;

        let generation = gw.gateway().store().generation();
        gw.replace_config(&two_workers(&users(&[&kept]), "per_worker"));
        assert!(
            eventually(|| async { gw.gateway().store().generation() > generation }).await,
            "the reload was not applied"
        );
        // The same connections, opened before the reload, on both workers: the key is refused
        // on every one of them, and the key kept still works on each.
        for (i, conn) in conns.iter_mut().enumerate() {
            answers(conn, &revoked, "HTTP/1.1 401", &format!("connection {i}, the revoked key,")).await;
            answers(conn, &kept, "HTTP/1.1 200", &format!("connection {i}, the kept key,")).await;
        }
        gw.shutdown().await;
    }

    async fn shutdown_drains_the_requests_in_flight_on_every_worker() {
        let arrived = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&arrived);
        let upstream = upstream_with(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                Response::new(Full::new(Bytes::from_static(b"finished")))
            }
        })
        .await;
        let k = TestKey::new("drain");
        let gw = TestGateway::start_with_workers(&two_workers(
            &one_user_config(&upstream.url(), "d@example.org", &k),
            "per_worker",
        ))
        .await;
        let addr = gw.addr;
        let admin = gw.gateway().admin_addr().expect("admin listener");
        const IN_FLIGHT: usize = 32;
        let mut conns = Vec::new();
        for _ in 0..IN_FLIGHT {
            let mut conn = TcpStream::connect(addr).await.expect("connect");
            conn.write_all(get_with_key("/supporters/1", &k).as_bytes())
                .await
                .expect("write");
            conns.push(conn);
        }
        assert!(
            eventually(|| async { arrived.load(Ordering::SeqCst) == IN_FLIGHT }).await,
            "only {} of {IN_FLIGHT} requests reached the upstream",
            arrived.load(Ordering::SeqCst)
        );
        let per_worker: Vec<u64> = status(admin).await["worker_connections"]
            .as_array()
            .expect("worker_connections")
            .iter()
            .filter_map(|n| n.as_u64())
            .collect();
        assert!(
            per_worker.len() == 2 && per_worker.iter().all(|&n| n > 0),
            "both workers hold requests in flight: {per_worker:?}"
        );
        let readers = conns
            .into_iter()
            .map(|mut conn| tokio::spawn(async move { read_response(&mut conn).await }))
            .collect::<Vec<_>>();
        gw.shutdown().await;
        for (i, reader) in readers.into_iter().enumerate() {
            let answer = reader.await.expect("reader");
            assert!(
                answer.starts_with("HTTP/1.1 200") && answer.ends_with("finished"),
                "request {i} in flight at shutdown got {answer:?}"
            );
        }
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a worker still accepts after shutdown"
        );
    }
}

#[tokio::test]
async fn every_worker_serves_tls_with_http1_and_http2_and_plain_h2c() {
    let upstream = echo_upstream().await;
    let k = TestKey::new("workerstls");
    let header = [("x-api-key", k.key.as_str())];
    let toml = one_user_config(&upstream.url(), "t@example.org", &k);
    let pki = Pki::new();
    let gw =
        TestGateway::start_with_workers(&two_workers(&pki.with_tls(&toml, ""), "per_worker")).await;
    for i in 0..32 {
        let alpn: &[&[u8]] = if i % 2 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
        let mut conn = HttpConnection::tls(gw.addr, "api.example.org", pki.client(alpn)).await;
        assert_eq!(conn.is_h2(), i % 2 == 0);
        let r = conn.send("GET", "/supporters/1", &header, "").await;
        assert_eq!(r.status, 200, "TLS connection {i}: {:?}", r.body);
    }
    every_worker_took(&gw, "TLS connections").await;
    gw.shutdown().await;

    let gw = TestGateway::start_with_workers(&two_workers(&toml, "per_worker")).await;
    for i in 0..32 {
        let mut conn = HttpConnection::h2c(gw.addr).await;
        let r = conn.send("GET", "/supporters/1", &header, "").await;
        assert_eq!(r.status, 200, "h2c connection {i}: {:?}", r.body);
    }
    every_worker_took(&gw, "h2c connections").await;
    gw.shutdown().await;
}

/// A listener handed over to per-worker runtimes: one bound with `SO_REUSEPORT` is joined by a
/// socket per further worker on its port; one without is shared, every worker accepting from it.
#[tokio::test]
async fn a_listener_handed_over_serves_every_worker_with_or_without_so_reuseport() {
    let upstream = echo_upstream().await;
    let k = TestKey::new("handed");
    let toml = two_workers(
        &one_user_config(&upstream.url(), "h@example.org", &k),
        "per_worker",
    );
    let options = || apiward::Options {
        runtimes: apiward::Runtimes::FromConfig,
        ..apiward::Options::default()
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("apiward.toml");
    std::fs::write(&path, &toml).expect("write config");

    let joinable = reuse_port_listener();
    let port = joinable.local_addr().expect("address").port();
    let gw = apiward::Gateway::start(&path, Some(joinable), options())
        .await
        .expect("start");
    assert_eq!(gw.local_addr().port(), port, "the port handed over");
    drop(connections(gw.local_addr(), &k, 64).await);
    let admin = gw.admin_addr().expect("admin listener");
    let per_worker = status(admin).await["worker_connections"].clone();
    let counts: Vec<u64> = per_worker
        .as_array()
        .expect("worker_connections")
        .iter()
        .filter_map(|n| n.as_u64())
        .collect();
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n > 0),
        "SO_REUSEPORT: the kernel spread the connections over both workers: {counts:?}"
    );
    gw.shutdown().await;

    let shared = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gw = apiward::Gateway::start(&path, Some(shared), options())
        .await
        .expect("start");
    drop(connections(gw.local_addr(), &k, 64).await);
    let admin = gw.admin_addr().expect("admin listener");
    let counts = status(admin).await["worker_connections"].clone();
    assert_eq!(
        counts
            .as_array()
            .map(|c| c.iter().filter_map(|n| n.as_u64()).sum::<u64>()),
        Some(64),
        "one queue, two workers accepting from it, every connection answered: {counts}"
    );
    gw.shutdown().await;
}

/// Another process listening on the port with `SO_REUSEPORT` (an apiward still running, say)
/// would share its connections with the workers' sockets if they just joined it: the start
/// fails instead, as it does with one worker.
#[tokio::test]
async fn a_listen_port_another_process_holds_fails_the_start_even_with_so_reuseport() {
    let taken = reuse_port_listener();
    let addr = taken.local_addr().expect("address");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("apiward.toml");
    let upstream = echo_upstream().await;
    let k = TestKey::new("taken");
    std::fs::write(
        &path,
        two_workers(
            &one_user_config(&upstream.url(), "t@example.org", &k),
            "per_worker",
        )
        .replace("127.0.0.1:0\"\nupstream", &format!("{addr}\"\nupstream")),
    )
    .expect("write config");
    let options = apiward::Options {
        runtimes: apiward::Runtimes::FromConfig,
        ..apiward::Options::default()
    };
    match apiward::Gateway::start(&path, None, options).await {
        Err(apiward::StartError::Bind { addr: at, source }) => {
            assert_eq!(at, addr);
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        Err(e) => panic!("expected the port in use, got {e}"),
        Ok(_) => panic!("the gateway started on a port another socket listens on"),
    }
}

/// The real binary, as `apiward run` runs it: requests answered, `/status` showing how many
/// runtimes accept, a reload that changes `worker_runtime` saying it needs a restart (the
/// workers running keep serving), and SIGTERM ending it with status 0 after the drain.
async fn run_serves_and_stops(runtime: &str, runtimes: usize, other: &str) {
    let upstream = echo_upstream().await;
    let k = TestKey::new("run");
    let toml = one_user_config(&upstream.url(), "p@example.org", &k);
    let mut gw = GatewayProcess::start(&two_workers(&toml, runtime), &[]);
    for _ in 0..16 {
        let r = get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let serving = gw
        .stderr_line(|l| l.contains("apiward is serving"))
        .expect("the start-up line");
    assert!(
        serving.contains(&format!("workers=2 worker_runtime={runtime}")),
        "{serving}"
    );
    let admin = gw.admin.expect("admin listener");
    let per_worker = status(admin).await["worker_connections"].clone();
    assert_eq!(
        per_worker.as_array().map(Vec::len),
        Some(runtimes),
        "worker_runtime = {runtime:?}: {per_worker}"
    );
    let worker_threads = std::fs::read_dir(format!("/proc/{}/task", gw.child.id()))
        .expect("the gateway's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("apiward-w"))
        .count();
    let expected = if runtimes > 1 { runtimes } else { 0 };
    assert_eq!(
        worker_threads, expected,
        "threads of their own for worker_runtime = {runtime:?}"
    );
    replace_file(&gw.config_path, &two_workers(&toml, other));
    assert!(
        gw.stderr_line(|l| l.contains("worker_runtime changed"))
            .is_some(),
        "no restart warning for worker_runtime:\n{}",
        gw.stderr_text()
    );
    let r = get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())]).await;
    assert_eq!(r.status, 200);
    let after = status(admin).await["worker_connections"].clone();
    assert_eq!(after.as_array().map(Vec::len), Some(runtimes), "{after}");
    gw.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = gw.child.try_wait().expect("wait") {
            assert_eq!(status.code(), Some(0), "{}", gw.stderr_text());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not stop on SIGTERM:\n{}",
            gw.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gw.stderr_lines()
            .iter()
            .any(|l| l.contains("all connections closed") || l.contains("shutting down")),
        "{}",
        gw.stderr_text()
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn apiward_run_with_per_worker_runtimes_serves_and_stops_on_sigterm() {
    run_serves_and_stops("per_worker", 2, "shared").await;
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn apiward_run_with_one_shared_runtime_serves_and_stops_on_sigterm() {
    run_serves_and_stops("shared", 1, "per_worker").await;
}
