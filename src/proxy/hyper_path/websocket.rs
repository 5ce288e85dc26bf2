//! WebSocket relaying, for a handshake the policy allowed: the handshake goes to a target on a
//! connection of its own; on its `101 Switching Protocols` both connections are taken over
//! from hyper and bytes are relayed both ways until both sides have closed, or nothing has
//! passed for `idle_timeout`. Counted as a connection with its duration, and as one of the
//! upstream's `max_upstream_connections` for as long as it lasts; any other answer is relayed as
//! an ordinary response.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Either, Empty, Full, Limited};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::response::{ResponseBody, refusal_response, refuse_forward};
use crate::observe::RequestRecord;
use crate::proxy::policy::{ConnectError, Forward, Policy, UpstreamFailure};
use crate::tls::UpstreamStream;
use crate::upstream::{Attempt, ClusterState, Outcome, Tried, connect_tcp};

/// How long the side still open may stay silent once the other has closed.
const LINGER: Duration = Duration::from_secs(5);

/// The largest body of a refused handshake relayed (an error page); a larger one is cut.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Sends the handshake in `parts` to a target and relays what follows.
pub(super) async fn relay(
    policy: &Arc<Policy>,
    mut parts: http::request::Parts,
    client: Option<OnUpgrade>,
    forward: &Forward,
    cluster: &Arc<ClusterState>,
    record: &mut RequestRecord,
) -> Response<ResponseBody> {
    let Some(client) = client else {
        let refusal = policy.upstream_failed(record, "", UpstreamFailure::Broken, false);
        return refusal_response(refusal, record.presented);
    };
    // A place at the upstream, as any request takes, held until the tunnel ends: a flood of
    // handshakes opens no more upstream connections than `max_upstream_connections`.
    let limits = forward.limits;
    let place = match cluster
        .place(limits.max_upstream_connections, limits.connect_timeout)
        .await
    {
        Ok(place) => place,
        Err(_busy) => return refuse_forward(crate::refusal::Refusal::UpstreamBusy, record),
    };
    let Some(attempt) = cluster.pick(record.user.as_deref(), Tried::default()) else {
        return refuse_forward(crate::refusal::Refusal::NoHealthyUpstream, record);
    };
    let target = attempt.target();
    // The upstream's `host`, else the client's `Host` as it came, else the target's.
    let host = match attempt.host() {
        Some(host) => Some(host.clone()),
        None if parts.headers.contains_key(HOST) => None,
        None => HeaderValue::from_str(target.authority.as_str()).ok(),
    };
    if let Some(host) = host {
        parts.headers.insert(HOST, host);
    }
    // The hop-by-hop headers were removed with the rest; the handshake needs these two back.
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    parts.uri = Uri::from(forward.path_for(&target.base_path));
    parts.version = http::Version::HTTP_11;
    let sent = Instant::now();
    let deadline = tokio::time::Instant::from_std(sent) + forward.upstream_timeout;
    let handshake = handshake(
        &attempt,
        Request::from_parts(parts, Empty::<Bytes>::new()),
        forward,
    );
    let answer = tokio::time::timeout_at(deadline, handshake).await;
    record.upstream_time = Some(sent.elapsed());
    let failure = match answer {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(failure)) => Err(failure),
        Err(_) => Err(UpstreamFailure::Timeout),
    };
    let mut response = match failure {
        Ok(response) => response,
        Err(failure) => {
            attempt.report(Outcome::Failed(&failure.to_string()));
            let refusal = policy.upstream_failed(
                record,
                target.authority.as_str(),
                failure,
                attempt.fallback,
            );
            return refusal_response(refusal, record.presented);
        }
    };
    attempt.report(Outcome::Answered(response.status().as_u16()));
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused by the upstream: its answer is relayed, and the connection stays HTTP.
        let (mut head, body) = response.into_parts();
        crate::proxy::policy::headers::strip_response(&mut head.headers);
        let body = Limited::new(body, MAX_REFUSAL_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Response::from_parts(head, Either::Right(Full::new(body)));
    }
    let upstream = hyper::upgrade::on(&mut response);
    let (mut head, _) = response.into_parts();
    // What the client needs to complete its handshake: the upstream's headers, with the two
    // hop-by-hop ones that make it a switch.
    head.headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    head.headers
        .insert(UPGRADE, HeaderValue::from_static("websocket"));
    let route = record.route.clone().unwrap_or_else(|| "".into());
    let idle = forward.idle_timeout;
    let policy = Arc::clone(policy);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::join!(client, upstream) {
            (Ok(c), Ok(u)) => (c, u),
            (c, u) => {
                tracing::debug!(
                    client = c.is_ok(),
                    upstream = u.is_ok(),
                    "WebSocket upgrade did not complete"
                );
                return;
            }
        };
        let opened = Instant::now();
        policy.telemetry.metrics.websocket_opened(&route);
        tunnel(TokioIo::new(client), TokioIo::new(upstream), idle).await;
        policy
            .telemetry
            .metrics
            .websocket_closed(&route, opened.elapsed());
        // Outstanding on its target, and holding its place at the upstream, for as long as the
        // tunnel lasted.
        drop(attempt);
        drop(place);
    });
    Response::from_parts(head, Either::Right(Full::new(Bytes::new())))
}

/// The handshake on a new connection to the attempt's target (an upgraded connection is never
/// pooled).
async fn handshake(
    attempt: &Attempt,
    request: Request<Empty<Bytes>>,
    forward: &Forward,
) -> Result<Response<hyper::body::Incoming>, UpstreamFailure> {
    let target = attempt.target();
    // An `https` target is spoken to over TLS (ALPN `http/1.1`: an upgrade is HTTP/1.1's).
    let opened = async {
        let tcp = connect_tcp(&target.authority, target.tls.is_some()).await?;
        match &target.tls {
            None => Ok(UpstreamStream::Plain(tcp)),
            Some(tls) => Ok(UpstreamStream::Tls(Box::new(tls.connect_http1(tcp).await?))),
        }
    };
    let stream = match tokio::time::timeout(forward.limits.connect_timeout, opened).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(UpstreamFailure::Connect(ConnectError::from_io(&e))),
        Err(_) => return Err(UpstreamFailure::Connect(ConnectError::TimedOut)),
    };
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_headers(forward.limits.response_head.headers)
        .max_header_size(forward.limits.response_head.bytes)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|_| UpstreamFailure::Broken)?;
    tokio::spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    sender.send_request(request).await.map_err(|e| {
        if e.is_incomplete_message() {
            UpstreamFailure::Reset
        } else {
            UpstreamFailure::Broken
        }
    })
}

/// Relays bytes both ways. A side that ends its sending has that passed on (a half close), and
/// the relay goes on the other way until it ends too, for at most `LINGER` of silence (a
/// WebSocket whose one side has closed is over: what may still come is the other's Close);
/// nothing either way for `idle` ends both.
async fn tunnel<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let mut a_buf = vec![0u8; 16 * 1024];
    let mut b_buf = vec![0u8; 16 * 1024];
    let (mut a_open, mut b_open) = (true, true);
    while a_open || b_open {
        let wait = if a_open && b_open {
            idle
        } else {
            idle.min(LINGER)
        };
        let step = tokio::time::timeout(wait, async {
            tokio::select! {
                read = a_read.read(&mut a_buf), if a_open => match read {
                    Ok(0) | Err(_) => { let _ = b_write.shutdown().await; a_open = false; true }
                    Ok(n) => b_write.write_all(&a_buf[..n]).await.is_ok(),
                },
                read = b_read.read(&mut b_buf), if b_open => match read {
                    Ok(0) | Err(_) => { let _ = a_write.shutdown().await; b_open = false; true }
                    Ok(n) => a_write.write_all(&b_buf[..n]).await.is_ok(),
                },
            }
        })
        .await;
        match step {
            Ok(true) => {}
            // A write failed (that side is gone), or nothing passed for `idle`.
            Ok(false) | Err(_) => break,
        }
    }
}
