//! The engine's forwarding of one allowed request: the upstream request head written from the
//! client's by the policy's header rules, then the response relayed as the upstream framed it,
//! its upstream connection back in the pool as soon as the response has been read.

use std::time::Instant;

use bytes::Buf;
use http::uri::Authority;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::{BadChunk, ChunkTracker, body_part};
use super::codec::{Framing, Lines, ResponseHead, http_date, push_header};
use super::conn::{Conn, Head, Step};

use crate::limits::Admitted;
use crate::observe::RequestRecord;
use crate::observe::request_line::write_u64;
use crate::proxy::policy::headers::{Known, OnRequest, accepts_trailers};
use crate::proxy::policy::{Forward, InvalidResponse, UpstreamFailure};
use crate::proxy::upstream::Limits;
use crate::snapshot::Target;
use crate::upstream::Slot;

/// Where a request's upstream connection goes back to, and on what terms.
struct Upstream<'a> {
    authority: &'a Authority,
    limits: Limits,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, S> {
    /// The request head for `target`: its base path before the checked path, and `Host` the
    /// upstream's `host` if set, else the client's.
    pub(super) fn build_upstream_head(
        &mut self,
        head: &Head,
        forward: &Forward,
        target: &Target,
        host: Option<&http::HeaderValue>,
        record: &RequestRecord,
    ) {
        let user = record.user.as_deref().unwrap_or_default();
        // The upstream's `host`, else the client's `Host` (as HAProxy passes it), else (an
        // HTTP/1.0 request without one) the target's host and port.
        let host: &[u8] = match host {
            Some(host) => host.as_bytes(),
            None => self
                .req_headers
                .iter()
                .find(|(_, _, known)| *known == Known::Host)
                .map(|(_, value, _)| &head.bytes[value.clone()])
                .filter(|value| !value.is_empty())
                .unwrap_or(target.authority.as_str().as_bytes()),
        };
        let out = &mut self.up_out;
        out.clear();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.base_path.as_bytes());
        out.extend_from_slice(forward.path_and_query.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host);
        out.extend_from_slice(b"\r\n");
        let trusted = forward.peer_is_trusted;
        let strip_authorization = forward.strip_authorization;
        let mut original_host: Option<&[u8]> = None;
        let mut forwarded_for: Vec<&[u8]> = Vec::new();
        let (mut has_proto, mut has_host) = (false, false);
        let mut trailers_accepted = false;
        let mut lines = Lines::new(&head.bytes, out);
        for (name, value_range, known) in &self.req_headers {
            let value = &head.bytes[value_range.clone()];
            match known.on_request(trusted, strip_authorization) {
                OnRequest::Keep => {}
                OnRequest::Drop
                    if head.bytes[name.clone()].eq_ignore_ascii_case(b"te")
                        && accepts_trailers(value) =>
                {
                    trailers_accepted = true;
                    continue;
                }
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
            push_header(out, b"x-forwarded-proto", forward.proto.as_bytes());
        }
        if !has_host && let Some(host) = original_host {
            push_header(out, b"x-forwarded-host", host);
        }
        if trailers_accepted {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        push_header(out, b"x-apiward-user", user.as_bytes());
        push_header(out, b"x-apiward-group", forward.group.as_bytes());
        push_header(out, b"x-request-id", record.request_id.as_bytes());
        if let Some(left) = forward.remaining_for_upstream(record) {
            out.extend_from_slice(b"x-apiward-ratelimit-remaining: ");
            write_u64(out, left);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the response head and relays the body, then decides whether the connection goes on.
    /// `received` is when the response head arrived.
    pub(super) async fn relay(
        &mut self,
        response: ResponseHead,
        client_close: bool,
        record: &mut RequestRecord,
        (authority, limits, place): (&Authority, Limits, Slot),
        received: Instant,
        admitted: &Admitted,
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
        let ours = !admitted.fields.is_empty();
        for (name, value) in &self.resp_headers {
            // The gateway's RateLimit fields replace an upstream's, as `insert` does on hyper's path.
            if ours && is_ratelimit_field(&self.up_buf[name.clone()]) {
                continue;
            }
            lines.header(name.clone(), value.clone());
        }
        lines.flush();
        push_header(rebuilt, b"x-request-id", record.request_id.as_bytes());
        admitted.write_head(rebuilt);
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
        let mut place = Some(place);
        if done {
            // The whole response is in this one write: the upstream connection goes back to the
            // pool and the request is recorded before the client sees the answer (so the client's
            // next request finds the connection, and its next scrape finds the count).
            let reusable = self.up_buf.is_empty() && !response.upstream_closes;
            self.release_upstream(reusable, upstream, received);
            drop(place.take());
            self.answered(record, bytes_out, received);
            recorded = true;
        }
        // What follows the first part of the body is read into `up_buf` while what is ahead of
        // it is written to the client, up to `response_buffer` ahead: an answer that fits frees
        // its upstream connection (and its place) however slowly the client reads it, and a
        // larger one streams with at most that much held.
        self.up_buf.clear();
        let ahead = limits.response_buffer;
        let idle = self.timeouts.idle_timeout;
        // `response_timeout` bounds the whole relay, however steadily a slow reader takes it.
        let relay_deadline = limits
            .response_timeout
            .map(|t| tokio::time::Instant::from_std(received) + t);
        let within = |d: tokio::time::Instant| relay_deadline.map_or(d, |r| r.min(d));
        let since = tokio::time::Instant::from_std(received);
        let (mut write_by, mut read_by) = (within(since + idle), within(since + idle));
        // Written of `out` (the head and the first part); `up_buf[..framed]` is body checked
        // against its framing and not yet written.
        let (mut out_at, mut framed) = (0usize, 0usize);
        let mut done = done;
        loop {
            let pending = (self.out.len() - out_at) + framed;
            let read = !done && (pending == 0 || pending < ahead) && self.held.is_some();
            if pending == 0 && !read {
                if done {
                    break;
                }
                return self.abort(record, bytes_out);
            }
            let event = self
                .relay_step(pending != 0, read, (out_at, framed), (write_by, read_by))
                .await;
            match event {
                Relayed::Wrote(n) => {
                    if out_at < self.out.len() {
                        out_at += n;
                    } else {
                        self.up_buf.advance(n);
                        framed -= n;
                        bytes_out += n as u64;
                    }
                    // A write that leaves nothing pending of a whole response ends the relay:
                    // no clock read for a deadline nothing would wait on (the common answer).
                    if !done || (self.out.len() - out_at) + framed != 0 {
                        write_by = within(tokio::time::Instant::now() + idle);
                    }
                }
                Relayed::WriteFailed => {
                    self.held = None;
                    return if recorded {
                        Step::Close
                    } else {
                        self.abort(record, bytes_out)
                    };
                }
                Relayed::Read(0) if response.framing == Framing::UntilClose => {
                    self.held = None;
                    drop(place.take());
                    done = true;
                }
                Relayed::Read(0) | Relayed::ReadFailed => {
                    self.held = None;
                    return self.abort(record, bytes_out);
                }
                Relayed::Read(_) => {
                    let fresh = &self.up_buf[framed..];
                    let (n, d) = body_part(&response.framing, &mut tracker, &mut remaining, fresh);
                    let Ok(n) = n else {
                        self.held = None;
                        return self.abort(record, bytes_out);
                    };
                    if d {
                        let reusable = fresh.len() == n && !response.upstream_closes;
                        self.up_buf.truncate(framed + n);
                        self.release_upstream(reusable, upstream, Instant::now());
                        drop(place.take());
                        done = true;
                    }
                    framed += n;
                    read_by = within(tokio::time::Instant::now() + idle);
                }
            }
        }
        self.held = None; // released above when reusable; an until-close body ended it
        if self.up_buf.capacity() > 64 * 1024 {
            // A large read-ahead is not kept for the connection's next requests.
            self.up_buf = bytes::BytesMut::new();
        }
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

    /// One step of a relay: writes what is pending to the client (`out[out_at..]` first, then
    /// `up_buf[..framed]`) and, when `read`, reads more from the upstream behind it, whichever
    /// is ready first. A client that stops reading is given until `write_by`, an upstream that
    /// stops sending until `read_by`.
    async fn relay_step(
        &mut self,
        write: bool,
        read: bool,
        (out_at, framed): (usize, usize),
        (write_by, read_by): (tokio::time::Instant, tokio::time::Instant),
    ) -> Relayed {
        if read && self.up_buf.capacity() - self.up_buf.len() < 4096 {
            self.up_buf.reserve(8192);
        }
        let Conn {
            client,
            held,
            up_buf,
            out,
            idle_timer,
            upstream_timer,
            ..
        } = self;
        std::future::poll_fn(|cx| {
            if write {
                let bytes = if out_at < out.len() {
                    &out[out_at..]
                } else {
                    &up_buf[..framed]
                };
                match Pin::new(&mut *client).poll_write(cx, bytes) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Relayed::WriteFailed);
                    }
                    Poll::Ready(Ok(n)) => return Poll::Ready(Relayed::Wrote(n)),
                    Poll::Pending => {
                        // Timers only for a wait: most answers go out in one write.
                        idle_timer.arm_by(write_by);
                        if idle_timer.poll_passed(cx, write_by) {
                            return Poll::Ready(Relayed::WriteFailed);
                        }
                    }
                }
            }
            if read {
                let Some(upstream) = held.as_mut() else {
                    return Poll::Ready(Relayed::ReadFailed);
                };
                let reading = std::pin::pin!(upstream.read_buf(&mut *up_buf));
                match reading.poll(cx) {
                    Poll::Ready(Ok(n)) => return Poll::Ready(Relayed::Read(n)),
                    Poll::Ready(Err(_)) => return Poll::Ready(Relayed::ReadFailed),
                    Poll::Pending => {
                        upstream_timer.arm_by(read_by);
                        if upstream_timer.poll_passed(cx, read_by) {
                            return Poll::Ready(Relayed::ReadFailed);
                        }
                    }
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Ends this request's use of the upstream connection: back to the pool when `reusable`
    /// (the response ended exactly where it should and the upstream did not say it closes),
    /// closed otherwise.
    fn release_upstream(&mut self, reusable: bool, to: &Upstream<'_>, now: Instant) {
        if let Some(held) = self.held.take()
            && reusable
        {
            self.engine
                .pool
                .put(to.authority, held, to.limits.keepalive(), now);
        }
    }
}

/// What one step of a relay did.
enum Relayed {
    /// This many bytes went to the client.
    Wrote(usize),
    /// The client connection failed, or the client read nothing for `idle_timeout` (or the
    /// relay passed `response_timeout`).
    WriteFailed,
    /// This many bytes came from the upstream (0: it closed).
    Read(usize),
    /// The upstream connection failed, or sent nothing for `idle_timeout` (or the relay passed
    /// `response_timeout`).
    ReadFailed,
}

/// `RateLimit` or `RateLimit-Policy`, in any case.
fn is_ratelimit_field(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"ratelimit") || name.eq_ignore_ascii_case(b"ratelimit-policy")
}
