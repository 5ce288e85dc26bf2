//! The engine's forwarding of one allowed request: the upstream request head written from the
//! client's by the policy's header rules, then the response relayed as the upstream framed it,
//! its upstream connection back in the pool as soon as the response has been read.

use std::time::Instant;

use bytes::Buf;
use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::chunked::{BadChunk, ChunkTracker, body_part};
use super::codec::{Framing, Lines, ResponseHead, http_date, push_header};
use super::conn::{Conn, Head, Step};
use super::deadline::{Read, Written, read_until, write_until};
use crate::limits::Fields;
use crate::observe::RequestRecord;
use crate::proxy::policy::headers::OnRequest;
use crate::proxy::policy::{Forward, InvalidResponse, UpstreamFailure};
use crate::proxy::upstream::Limits;
use crate::snapshot::Target;

/// Where a request's upstream connection goes back to, and on what terms.
struct Upstream<'a> {
    authority: &'a Authority,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, S> {
    /// The request head for `target`: its base path before the checked path, and `Host` the
    /// upstream's `host` if set, else the target's host and port.
    pub(super) fn build_upstream_head(
        &mut self,
        head: &Head,
        forward: &Forward,
        target: &Target,
        host: Option<&http::HeaderValue>,
        record: &RequestRecord,
    ) {
        let user = record.user.as_deref().unwrap_or_default();
        let out = &mut self.up_out;
        out.clear();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.base_path.as_bytes());
        out.extend_from_slice(forward.path_and_query.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        match host {
            Some(host) => out.extend_from_slice(host.as_bytes()),
            None => out.extend_from_slice(target.authority.as_str().as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
        let trusted = forward.peer_is_trusted;
        let strip_authorization = forward.strip_authorization;
        let mut original_host: Option<&[u8]> = None;
        let mut forwarded_for: Vec<&[u8]> = Vec::new();
        let (mut has_proto, mut has_host) = (false, false);
        let mut lines = Lines::new(&head.bytes, out);
        for (name, value_range, known) in &self.req_headers {
            let value = &head.bytes[value_range.clone()];
            match known.on_request(trusted, strip_authorization) {
                OnRequest::Keep => {}
                // A `Connection` here says only `keep-alive` or `close` (one naming headers
                // went to hyper), so nothing else needs removing with it.
                OnRequest::Drop | OnRequest::DropWithNamed => continue,
                // Never here: a request with `Transfer-Encoding` goes to hyper's path.
                OnRequest::Framing => continue,
                OnRequest::Host => {
                    original_host.get_or_insert(value);
                    continue;
                }
                OnRequest::ForwardedFor => {
                    if trusted {
                        forwarded_for.push(value);
                    }
                    continue;
                }
                OnRequest::TrustedProto => has_proto = true,
                OnRequest::TrustedHost => has_host = true,
            }
            lines.header(name.clone(), value_range.clone());
        }
        lines.flush();
        out.extend_from_slice(b"x-forwarded-for: ");
        for previous in &forwarded_for {
            out.extend_from_slice(previous);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer_text.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !has_proto {
            out.extend_from_slice(b"x-forwarded-proto: http\r\n");
        }
        if !has_host {
            if let Some(host) = original_host {
                push_header(out, b"x-forwarded-host", host);
            }
        }
        push_header(out, b"x-apiward-user", user.as_bytes());
        push_header(out, b"x-apiward-group", forward.group.as_bytes());
        push_header(out, b"x-request-id", record.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the response head and relays the body, then decides whether the connection goes on.
    /// `received` is when the response head arrived.
    pub(super) async fn relay(
        &mut self,
        response: ResponseHead,
        client_close: bool,
        record: &mut RequestRecord,
        (authority, limits): (&Authority, Limits),
        received: Instant,
        limit_fields: &Fields,
    ) -> Step {
        let upstream = &Upstream { authority, limits };
        let close = client_close || response.framing == Framing::UntilClose || self.shutting_down();
        record.status = response.status;
        // The head as received minus its hop-by-hop lines: status line and kept headers were
        // recorded by `read_response_head` as ranges of the upstream buffer.
        let rebuilt = &mut self.out;
        rebuilt.clear();
        let mut lines = Lines::new(&self.up_buf, rebuilt);
        let status_end = response.status_line.end;
        if self.up_buf.starts_with(b"HTTP/1.1 ")
            && self.up_buf.get(status_end..status_end + 2) == Some(b"\r\n")
        {
            lines.raw(0..status_end + 2);
        } else {
            lines.out.extend_from_slice(b"HTTP/1.1 ");
            lines
                .out
                .extend_from_slice(&self.up_buf[response.status_line.clone()]);
            lines.out.extend_from_slice(b"\r\n");
        }
        let ours = !limit_fields.is_empty();
        for (name, value) in &self.resp_headers {
            // The gateway's RateLimit fields replace an upstream's, as `insert` does on hyper's path.
            if ours && is_ratelimit_field(&self.up_buf[name.clone()]) {
                continue;
            }
            lines.header(name.clone(), value.clone());
        }
        lines.flush();
        push_header(rebuilt, b"x-request-id", record.request_id.as_bytes());
        limit_fields.write_head(rebuilt);
        if !response.has_date {
            push_header(rebuilt, b"date", &http_date());
        }
        if close {
            rebuilt.extend_from_slice(b"connection: close\r\n");
        }
        rebuilt.extend_from_slice(b"\r\n");
        self.up_buf.advance(response.head_len);
        let mut bytes_out = 0u64;
        let mut tracker = match response.framing {
            Framing::Chunked => Some(ChunkTracker::default()),
            _ => None,
        };
        let mut remaining = match response.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // The part of the body that arrived with the head goes out in the same write.
        let (first, done) = body_part(
            &response.framing,
            &mut tracker,
            &mut remaining,
            &self.up_buf,
        );
        let first = match first {
            Ok(n) => n,
            Err(BadChunk) => {
                // Nothing of the response has been sent: the client gets a 502, and the
                // connection is closed (what followed cannot be delimited).
                self.held = None;
                let failure = UpstreamFailure::Invalid(InvalidResponse::BadChunks);
                // Invalid chunks are not a failure to connect: `fallback` does not turn them
                // into no_healthy_upstream.
                let refusal = self.policy.upstream_failed(
                    record,
                    upstream.authority.as_str(),
                    failure,
                    false,
                );
                return self.refuse(refusal, record, true).await;
            }
        };
        rebuilt.extend_from_slice(&self.up_buf[..first]);
        self.up_buf.advance(first);
        bytes_out += first as u64;
        let mut recorded = false;
        if done {
            // The whole response is in this one write: the upstream connection goes back to the
            // pool and the request is recorded before the client sees the answer (so the client's
            // next request finds the connection, and its next scrape finds the count).
            let reusable = self.up_buf.is_empty() && !response.upstream_closes;
            self.release_upstream(reusable, upstream, received);
            self.answered(record, bytes_out, received);
            recorded = true;
        }
        if self.send_out(received).await != Written::All {
            self.held = None;
            return if recorded {
                Step::Close
            } else {
                self.abort(record, bytes_out)
            };
        }
        let idle = self.timeouts.idle_timeout;
        // `response_timeout` bounds the whole relay, however steadily a slow reader takes it.
        let relay_deadline = limits
            .response_timeout
            .map(|t| tokio::time::Instant::from_std(received) + t);
        let within = |d: tokio::time::Instant| relay_deadline.map_or(d, |r| r.min(d));
        let mut done = done;
        while !done {
            let Some(held) = self.held.as_mut() else {
                return self.abort(record, bytes_out);
            };
            self.up_buf.clear();
            let read = read_until(
                held,
                &mut self.up_buf,
                &mut self.upstream_timer,
                within(tokio::time::Instant::now() + idle),
                None,
            )
            .await;
            match read {
                Read::Data => {}
                Read::Eof if response.framing == Framing::UntilClose => {
                    self.held = None;
                    break;
                }
                _ => {
                    self.held = None;
                    return self.abort(record, bytes_out);
                }
            }
            let (n, d) = body_part(
                &response.framing,
                &mut tracker,
                &mut remaining,
                &self.up_buf,
            );
            let Ok(n) = n else {
                self.held = None;
                return self.abort(record, bytes_out);
            };
            if d {
                let reusable = self.up_buf.len() == n && !response.upstream_closes;
                self.release_upstream(reusable, upstream, Instant::now());
            }
            // A client that stops reading is given idle_timeout, as one that stops sending is.
            let deadline = within(tokio::time::Instant::now() + idle);
            let body = &self.up_buf[..n];
            let wrote = write_until(&mut self.client, body, &mut self.idle_timer, deadline).await;
            if wrote != Written::All {
                self.held = None;
                return self.abort(record, bytes_out);
            }
            self.up_buf.advance(n);
            bytes_out += n as u64;
            done = d;
        }
        self.held = None; // released above when reusable; an until-close body ended it
        if !recorded {
            self.answered(record, bytes_out, Instant::now());
        }
        if close {
            let _ = self.client.shutdown().await;
            Step::Close
        } else {
            Step::Next
        }
    }

    /// Ends this request's use of the upstream connection: back to the pool when `reusable`
    /// (the response ended exactly where it should and the upstream did not say it closes),
    /// closed otherwise.
    fn release_upstream(&mut self, reusable: bool, to: &Upstream<'_>, now: Instant) {
        if let Some(held) = self.held.take() {
            if reusable {
                self.engine
                    .pool
                    .put(to.authority, held, to.limits.keepalive(), now);
            }
        }
    }
}

/// `RateLimit` or `RateLimit-Policy`, in any case.
fn is_ratelimit_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"ratelimit") || name.eq_ignore_ascii_case(b"ratelimit-policy")
}
