//! The request log as operators rely on it: one whole JSON line per request, whatever the load,
//! written within moments, all of it on shutdown, and dropped lines counted, never a stalled
//! gateway, when the destination does not take them.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

/// The gateway in this process, writing its request log as `apiward run` does.
async fn logging_gateway(toml: &str) -> (apiward::Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    std::fs::write(&path, toml).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = apiward::Options {
        request_log: true,
        ..apiward::Options::default()
    };
    let gateway = apiward::Gateway::start(&path, Some(listener), options)
        .await
        .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    (gateway, dir)
}

fn logged_to(toml: &str, log: &Path) -> String {
    toml.replace(
        "upstream_timeout = \"2s\"",
        &format!(
            "upstream_timeout = \"2s\"\naccess_log = {:?}",
            log.display().to_string()
        ),
    )
}

/// Every line of the log, each of which must be one whole JSON object.
fn lines_of(text: &str) -> Vec<serde_json::Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the log ends in a cut line"
    );
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object ({e}): {l:?}"))
        })
        .collect()
}

fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    lines_of(&std::fs::read_to_string(path).unwrap_or_default())
}

/// Sends `n` requests on one keep-alive connection and returns their statuses.
async fn requests_on_one_connection(addr: SocketAddr, heads: Vec<String>) -> Vec<u16> {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let mut statuses = Vec::new();
    for head in heads {
        conn.write_all(head.as_bytes()).await.unwrap();
        let response = read_response(&mut conn).await;
        statuses.push(
            response
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_connections_at_once_give_one_whole_line_per_request() {
    let up = echo_upstream().await;
    let good = TestKey::new("loadgood");
    let far = TestKey::new("loadfar");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let toml = logged_to(&config(&up.url(), &good_and_far_users(&good, &far)), &log);
    let (gateway, _config_dir) = logging_gateway(&toml).await;
    let addr = gateway.local_addr();

    // Allowed, refused for the source, refused for an unknown key, and paths JSON must escape.
    let paths = [
        "/supporters/1",
        "/supporters/with%22quote",
        "/supporters/back%5Cslash",
        "/supporters/caf%C3%A9",
        "/pages/a",
    ];
    let connections = 32;
    let per_connection = 40;
    let clients: Vec<_> = (0..connections)
        .map(|c| {
            let heads = (0..per_connection)
                .map(|i| {
                    let path = paths[(c + i) % paths.len()];
                    match (c + i) % 3 {
                        0 => get_with_key(path, &good),
                        1 => get_with_key(path, &far),
                        _ => format!(
                            "GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: aw_unknownUNKNOWNunknownUNKNOWNunknown00{c:02}\r\n\r\n"
                        ),
                    }
                })
                .collect();
            tokio::spawn(requests_on_one_connection(addr, heads))
        })
        .collect();
    let mut answered = 0;
    for client in clients {
        let statuses = client.await.unwrap();
        assert!(
            statuses.iter().all(|&s| s != 0),
            "a request got no answer: {statuses:?}"
        );
        answered += statuses.len();
    }
    gateway.shutdown().await;

    let text = std::fs::read_to_string(&log).unwrap();
    let lines = lines_of(&text);
    assert_eq!(lines.len(), answered, "one line per request");
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), answered, "every line is a different request");
    for l in &lines {
        for field in ["timestamp", "client", "method", "path", "decision"] {
            assert!(l[field].is_string(), "{field} missing in {l}");
        }
        for field in ["status", "bytes_in", "bytes_out", "total_ms"] {
            assert!(l[field].is_number(), "{field} missing in {l}");
        }
    }
    let allowed = lines.iter().filter(|l| l["decision"] == "allowed").count();
    let unregistered = lines
        .iter()
        .filter(|l| l["decision"] == "unregistered_source")
        .count();
    assert!(
        allowed > 0 && unregistered > 0,
        "{allowed} allowed, {unregistered} refused"
    );
    assert!(
        lines.iter().any(|l| l["path"]
            .as_str()
            .is_some_and(|p| p.contains('"') || p.contains("%22"))),
        "the quoted path is logged"
    );
    for key in [&good.key, &far.key] {
        assert!(!text.contains(key.as_str()), "a whole key was logged");
    }
    assert!(
        !text.contains("aw_unknownUNKNOWNunknownUNKNOWNunknown"),
        "a whole unknown key was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_reaches_the_file_while_the_gateway_keeps_running() {
    let up = echo_upstream().await;
    let k = TestKey::new("soon");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let toml = logged_to(&one_user_config(&up.url(), "soon@example.org", &k), &log);
    let (gateway, _config_dir) = logging_gateway(&toml).await;
    let reply = get(
        &format!("http://{}/supporters/1", gateway.local_addr()),
        &[("x-api-key", k.key.as_str())],
    )
    .await;
    assert_eq!(reply.status, 200);
    // No further request and no shutdown: only the periodic flush can write it.
    assert!(
        eventually(|| async { read_lines(&log).len() == 1 }).await,
        "the line was not written while the gateway ran"
    );
    assert_eq!(read_lines(&log)[0]["user"], "soon@example.org");
    gateway.shutdown().await;
}

/// The binary, stopped by SIGTERM as a supervisor stops it, leaves every line in the file.
#[test]
fn sigterm_leaves_every_line_in_the_file() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let up = runtime.block_on(echo_upstream());
    let k = TestKey::new("sigterm");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let config_path = dir.path().join("apiward.toml");
    std::fs::write(
        &config_path,
        logged_to(&one_user_config(&up.url(), "term@example.org", &k), &log),
    )
    .unwrap();
    let (mut child, addr) = start_binary(&config_path);
    let heads = (0..300)
        .map(|_| get_with_key("/supporters/1", &k))
        .collect();
    let statuses = runtime.block_on(requests_on_one_connection(addr, heads));
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .expect("SIGTERM sent");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "apiward exited with {exit}");
    assert_eq!(read_lines(&log).len(), 300);
}

/// A destination that takes nothing (a FIFO nobody reads) costs dropped, counted lines: the
/// gateway keeps answering, and what does get through is whole lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_nobody_reads_drops_and_counts_lines_and_never_stalls_requests() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("requests.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo (coreutils) is needed for this test");
    assert!(made.success());
    // Someone has the FIFO open for reading, so the gateway's open succeeds; nobody reads yet.
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::File::open(reader_path).unwrap());

    let up = echo_upstream().await;
    let toml = with_admin(&logged_to(&config(&up.url(), ""), &fifo));
    let (gateway, _config_dir) = logging_gateway(&toml).await;
    let mut reader = reader.join().unwrap();
    let addr = gateway.local_addr();
    let admin = gateway.admin_addr().unwrap();

    // Refusals are always logged; a long path makes each line about 2 KB, so the pipe and the
    // log's buffers fill after a few thousand.
    let long = format!("/supporters/{}", "p".repeat(2000));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let heads = (0..1500)
                .map(|_| format!("GET {long} HTTP/1.1\r\nhost: x\r\n\r\n"))
                .collect();
            tokio::spawn(requests_on_one_connection(addr, heads))
        })
        .collect();
    for client in clients {
        let statuses = client.await.unwrap();
        assert!(
            statuses.iter().all(|&s| s == 401),
            "requests stalled or failed"
        );
    }
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("apiward_request_log_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in\n{text}"));
    assert!(dropped > 0, "nothing counted as dropped");
    assert_eq!(
        gateway.telemetry().request_log().map(|l| l.dropped_lines()),
        Some(dropped)
    );

    // Now read: what was kept arrives, in whole lines, and adds up with what was dropped.
    let drain = std::thread::spawn(move || {
        let mut all = String::new();
        reader.read_to_string(&mut all).unwrap();
        all
    });
    gateway.shutdown().await;
    let all = drain.join().unwrap();
    let lines = lines_of(&all);
    assert_eq!(lines.len() as u64 + dropped, 8 * 1500);
    assert!(lines.iter().all(|l| l["decision"] == "missing_credentials"));
}

/// `apiward run` on `config`, and the address it listens on (from its start-up line).
fn start_binary(config: &PathBuf) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiward"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the gateway started")
        .parse()
        .unwrap();
    (child, addr)
}
