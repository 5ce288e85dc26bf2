//! The engine's upstream client: pooled plain connections, the request head written and the
//! response head read within what is left of `upstream_timeout`, and the one resend that is
//! always safe (a reused connection that closed before any byte of the answer; every request the
//! engine serves is idempotent). Retries to other targets are the connection driver's.

use std::ops::Range;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use http::Method;
use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::codec::{ResponseHead, parse_response_head};
use super::conn::Conn;
use super::deadline::{Read, Timer, Written, read_until, write_until};
use super::engine::is_open;
use crate::proxy::policy::{ConnectError, Forward, HeadLimits, InvalidResponse, UpstreamFailure};
use crate::upstream::connect_tcp;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, S> {
    /// Sends the request head upstream and reads the response head, retrying once on a new
    /// connection when a reused one turns out closed before answering.
    pub(super) async fn exchange(
        &mut self,
        authority: &Authority,
        method: &Method,
        forward: &Forward,
        sent: Instant,
    ) -> Result<ResponseHead, UpstreamFailure> {
        let deadline = tokio::time::Instant::from_std(sent) + forward.upstream_timeout;
        let limits = forward.limits;
        // Between requests the connection is in the pool, so nothing is held here. The first
        // attempt may reuse one; a retry always opens a new one.
        let mut may_reuse = true;
        loop {
            let pooled = if may_reuse {
                self.engine.pool.take(authority, sent, |s| is_open(s))
            } else {
                None
            };
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => stream,
                None => match tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + limits.connect_timeout),
                    connect_tcp(authority, false),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return Err(UpstreamFailure::Connect(ConnectError::from_io(&e))),
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(UpstreamFailure::Timeout);
                    }
                    Err(_) => return Err(UpstreamFailure::Connect(ConnectError::TimedOut)),
                },
            };
            self.up_buf.clear();
            let held = self.held.insert(stream);
            // An upstream that stops reading is given what is left of upstream_timeout.
            let head =
                match write_until(held, &self.up_out, &mut self.upstream_timer, deadline).await {
                    Written::All => {
                        read_response_head(
                            held,
                            &mut self.up_buf,
                            &mut self.resp_headers,
                            &mut self.upstream_timer,
                            deadline,
                            method,
                            limits.response_head,
                        )
                        .await
                    }
                    Written::TimedOut => Err(HeadError::TimedOut),
                    Written::Failed => Err(HeadError::ClosedEarly),
                };
            match head {
                Ok(head) => return Ok(head),
                Err(e) => {
                    self.held = None; // an upstream connection that failed is not reused
                    match e {
                        HeadError::TimedOut => return Err(UpstreamFailure::Timeout),
                        HeadError::ClosedEarly if reused => may_reuse = false,
                        HeadError::ClosedEarly => return Err(UpstreamFailure::Reset),
                        HeadError::Broken => return Err(UpstreamFailure::Broken),
                        HeadError::Invalid(invalid) => return Err(invalid.into()),
                    }
                }
            }
        }
    }
}

/// Why no response head was read on an upstream connection.
#[derive(Debug, thiserror::Error)]
enum HeadError {
    /// The connection closed or failed before any byte of a response arrived.
    #[error("the connection closed before any byte of a response")]
    ClosedEarly,
    /// It closed or failed in the middle of a head.
    #[error("the connection closed in the middle of a response head")]
    Broken,
    #[error("{0}")]
    Invalid(InvalidResponse),
    #[error("no response head within upstream_timeout")]
    TimedOut,
}

async fn read_response_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    kept: &mut Vec<(Range<usize>, Range<usize>)>,
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    method: &Method,
    limits: HeadLimits,
) -> Result<ResponseHead, HeadError> {
    loop {
        match read_until(stream, buf, timer, deadline, None).await {
            Read::Data => {}
            Read::Eof | Read::Error if buf.is_empty() => return Err(HeadError::ClosedEarly),
            Read::Eof | Read::Error | Read::ShutDown => return Err(HeadError::Broken),
            Read::TimedOut => return Err(HeadError::TimedOut),
        }
        loop {
            match parse_response_head(buf, method, kept, limits) {
                Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                    // An interim response (103 Early Hints): skip it, the final one follows.
                    buf.advance(head.head_len);
                }
                Ok(Some(head)) if head.status == 101 => {
                    return Err(HeadError::Invalid(InvalidResponse::UnaskedUpgrade));
                }
                Ok(Some(head)) => return Ok(head),
                Ok(None) => break,
                Err(invalid) => return Err(HeadError::Invalid(invalid)),
            }
        }
        if buf.len() > limits.bytes {
            return Err(HeadError::Invalid(InvalidResponse::TooLarge));
        }
    }
}
