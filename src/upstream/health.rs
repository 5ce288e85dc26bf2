//! Active health checks: every `interval`, a GET of the check path on a new connection to the
//! target, in the protocol its requests use (HTTP/1.1, or HTTP/2 for `protocol = "h2"`),
//! answered within `timeout` with a 2xx or 3xx status to pass; `unhealthy_after` failures in a
//! row take the target out, `healthy_after` passes bring it back. An `https` target is checked
//! over TLS, verified with its `ca` and `server_name` as its requests are.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;
use http::uri::Authority;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pool::connect_tcp;
use super::state::{Checker, TargetState};
use crate::snapshot::HealthCheck;
use crate::tls::{UpstreamProtocol, UpstreamStream, UpstreamTls};

/// Starts (or restarts, when its settings changed) the health check of `state`, or stops it
/// when `check` is `None`. A reload that changes only the TLS settings (`ca`, `server_name`)
/// hands them to the running check, which uses them from its next probe on. It runs on
/// `runtime` (the gateway's, whichever worker's request found the reload first), else on the
/// current one.
pub(super) fn ensure(
    state: &Arc<TargetState>,
    check: Option<&HealthCheck>,
    authority: &Authority,
    host: HeaderValue,
    tls: Option<&Arc<UpstreamTls>>,
    protocol: UpstreamProtocol,
    runtime: Option<&tokio::runtime::Handle>,
) {
    let Some(check) = check else {
        state.stop_checker();
        return;
    };
    let mut running = state.checker.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = running.as_ref() {
        if r.config == *check
            && r.host == host
            && r.protocol == protocol
            && r.tls.load().is_some() == tls.is_some()
        {
            let current = r.tls.load();
            if !matches!((current.as_ref(), tls), (Some(a), Some(b)) if Arc::ptr_eq(a, b)) {
                r.tls.store(tls.cloned());
            }
            return;
        }
        r.task.abort();
    }
    let shared_tls = Arc::new(ArcSwapOption::new(tls.cloned()));
    let checking = run(
        Arc::downgrade(state),
        check.clone(),
        authority.clone(),
        host.clone(),
        Arc::clone(&shared_tls),
        protocol,
    );
    let task = match runtime {
        Some(runtime) => runtime.spawn(checking),
        None => tokio::spawn(checking),
    };
    *running = Some(Checker {
        config: check.clone(),
        host,
        tls: shared_tls,
        protocol,
        task: task.abort_handle(),
    });
}

/// Checks until the target's state is gone (its last user dropped it) or the task is aborted.
async fn run(
    state: Weak<TargetState>,
    check: HealthCheck,
    authority: Authority,
    host: HeaderValue,
    tls: Arc<ArcSwapOption<UpstreamTls>>,
    protocol: UpstreamProtocol,
) {
    let request = Probe {
        http1: format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: apiward-health-check\r\nconnection: close\r\n\r\n",
            check.path,
            String::from_utf8_lossy(host.as_bytes())
        ),
        path: check.path.to_string(),
        host,
    };
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let tls = tls.load_full();
        let verdict = probe(
            &authority,
            tls.as_deref(),
            protocol,
            &request,
            check.timeout,
        )
        .await;
        let Some(state) = state.upgrade() else { return };
        match verdict {
            Ok(()) => {
                passes += 1;
                fails = 0;
                if passes >= check.healthy_after {
                    state.check_passed();
                    state.set_check_down(
                        false,
                        &format!("{passes} health checks of {} passed in a row", check.path),
                    );
                }
            }
            Err(why) => {
                fails += 1;
                passes = 0;
                if fails >= check.unhealthy_after {
                    state.set_check_down(
                        true,
                        &format!("{fails} health checks failed in a row, the last: {why}"),
                    );
                }
            }
        }
    }
}

/// What a check sends: the HTTP/1.1 request as bytes, and the parts of the HTTP/2 one.
struct Probe {
    http1: String,
    path: String,
    host: HeaderValue,
}

/// One check: connect (and open TLS), send, read the status, all within `timeout`.
async fn probe(
    authority: &Authority,
    tls: Option<&UpstreamTls>,
    protocol: UpstreamProtocol,
    request: &Probe,
    timeout: Duration,
) -> Result<(), String> {
    let exchange = async {
        let tcp = connect_tcp(authority, tls.is_some())
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        match (protocol, tls) {
            (UpstreamProtocol::Http1, None) => {
                probe_http1(UpstreamStream::Plain(tcp), request.http1.as_bytes()).await
            }
            (UpstreamProtocol::Http1, Some(tls)) => {
                let stream = tls
                    .connect_http1(tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                probe_http1(
                    UpstreamStream::Tls(Box::new(stream)),
                    request.http1.as_bytes(),
                )
                .await
            }
            (UpstreamProtocol::Http2, None) => {
                probe_h2(UpstreamStream::Plain(tcp), "http", request).await
            }
            (UpstreamProtocol::Http2, Some(tls)) => {
                let stream = tls.connect(tcp).await.map_err(|e| format!("TLS: {e}"))?;
                if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the target did not agree to HTTP/2 (ALPN h2)".to_string());
                }
                probe_h2(UpstreamStream::Tls(Box::new(stream)), "https", request).await
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// The HTTP/1.1 check: the request as bytes, then the status line read back.
async fn probe_http1(mut stream: UpstreamStream, request: &[u8]) -> Result<(), String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("cannot send the check: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("closed before answering".to_string());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 4096 {
            return Err("the status line is longer than 4 KiB".to_string());
        }
    }
    status_of(&head)
}

/// The HTTP/2 check (over TLS after ALPN `h2`, or h2c with prior knowledge): one stream on a
/// connection of its own, closed when the answer's head has arrived.
async fn probe_h2(stream: UpstreamStream, scheme: &str, request: &Probe) -> Result<(), String> {
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2: {e}"))?;
    let connection = tokio::spawn(connection);
    let authority = String::from_utf8_lossy(request.host.as_bytes());
    let sent = http::Request::get(format!("{scheme}://{authority}{}", request.path))
        .version(http::Version::HTTP_2)
        .header(http::header::USER_AGENT, "apiward-health-check")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("the check's request: {e}"));
    let answer = match sent {
        Ok(req) => sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP/2: {e}")),
        Err(e) => Err(e),
    };
    drop(sender);
    connection.abort();
    let status = answer?.status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(format!("answered {}", status.as_u16()))
    }
}

/// Whether a response's status line says 2xx or 3xx.
fn status_of(head: &[u8]) -> Result<(), String> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(s) if version.starts_with(b"HTTP/1.") && (200..400).contains(&s) => Ok(()),
        Some(s) if version.starts_with(b"HTTP/1.") => Err(format!("answered {s}")),
        _ => Err("the answer is not HTTP/1.x".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn two_and_three_hundreds_pass() {
        assert!(status_of(b"HTTP/1.1 200 OK\r\n").is_ok());
        assert!(status_of(b"HTTP/1.0 302 Found\r\n").is_ok());
        assert!(status_of(b"HTTP/1.1 503 Service Unavailable\r\n").is_err());
        assert!(status_of(b"HTTP/1.1 404 Not Found\r\n").is_err());
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n").is_err());
    }
}
