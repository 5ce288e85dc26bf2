//! Active health checks: every `interval`, an HTTP/1.1 GET of the check path on a new
//! connection to the target, answered within `timeout` with a 2xx or 3xx status to pass;
//! `unhealthy_after` failures in a row take the target out, `healthy_after` passes bring it back.
//! An `https` target is checked over TLS, verified as its requests are.

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pool::connect_tcp;
use super::state::{Checker, TargetState};
use crate::snapshot::HealthCheck;
use crate::tls::UpstreamTls;

/// Starts (or restarts, when its settings changed) the health check of `state`, or stops it
/// when `check` is `None`.
pub(super) fn ensure(
    state: &Arc<TargetState>,
    check: Option<&HealthCheck>,
    authority: &Authority,
    host: HeaderValue,
    tls: Option<&Arc<UpstreamTls>>,
) {
    let Some(check) = check else {
        state.stop_checker();
        return;
    };
    let mut running = state.checker.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(r) = running.as_ref() {
        let same_tls = match (&r.tls, tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.server_name() == b.server_name(),
            _ => false,
        };
        if r.config == *check && r.host == host && same_tls {
            return;
        }
        r.task.abort();
    }
    let task = tokio::spawn(run(
        Arc::downgrade(state),
        check.clone(),
        authority.clone(),
        host.clone(),
        tls.cloned(),
    ));
    *running = Some(Checker {
        config: check.clone(),
        host,
        tls: tls.cloned(),
        task: task.abort_handle(),
    });
}

/// Checks until the target's state is gone (its last user dropped it) or the task is aborted.
async fn run(
    state: Weak<TargetState>,
    check: HealthCheck,
    authority: Authority,
    host: HeaderValue,
    tls: Option<Arc<UpstreamTls>>,
) {
    let request = format!(
        "GET {} HTTP/1.1\r\nhost: {}\r\nuser-agent: apiward-health-check\r\nconnection: close\r\n\r\n",
        check.path,
        String::from_utf8_lossy(host.as_bytes())
    );
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let verdict = probe(
            &authority,
            tls.as_deref(),
            request.as_bytes(),
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

/// One check: connect (and open TLS), send, read the status line, all within `timeout`.
async fn probe(
    authority: &Authority,
    tls: Option<&UpstreamTls>,
    request: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let exchange = async {
        let tcp = connect_tcp(authority, tls.is_some())
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut stream = match tls {
            None => crate::tls::UpstreamStream::Plain(tcp),
            Some(tls) => crate::tls::UpstreamStream::Tls(Box::new(
                tls.connect_http1(tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?,
            )),
        };
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
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
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
