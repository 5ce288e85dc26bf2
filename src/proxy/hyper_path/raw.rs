//! hyper's path to a plain HTTP/1.1 upstream for a bodiless request that came over HTTP/2: the
//! HTTP/1 engine's kind of exchange (a pooled socket, the head written straight from the header
//! map, the answer's head read with the engine's codec) instead of hyper's client, whose
//! dispatcher writes and parses through a channel and a oneshot per request and keeps a copy of
//! the head to resend. The common small answer, whole with its head, is handed back as read and
//! its connection is in the pool again before the client has its first byte.
//!
//! Only what needs no request body is sent here (GET, HEAD, DELETE, OPTIONS, ended with their
//! headers), as on the engine; a reused connection that closed before any byte of the answer
//! gets the request once more on a new one.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::client::RelayError;
use crate::observe::request_line::write_u64;
use crate::proxy::h1::{Framing, RawPool, is_open, parse_response_head};
use crate::proxy::policy::headers::{self, OnRequest};
use crate::proxy::policy::{ConnectError, Forward, InvalidResponse, UpstreamFailure};
use crate::proxy::upstream::Limits;
use crate::upstream::{Attempt, Slot, connect_tcp};

/// What a response head is read into at first (a larger one grows it).
const HEAD_BUFFER: usize = 8 * 1024;

/// The methods sent this way: never with a body here, and idempotent (a stale connection's
/// request is sent again).
pub fn serves(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    )
}

/// The answer: its head as hyper's server sends it on, and its body, whole or still to read.
pub enum Answer {
    Whole(Response<Option<Bytes>>),
    Streamed(Box<Response<RawBody>>),
}

/// The request head for a plain HTTP/1.1 target, written straight from the client's HTTP/2
/// header map by the policy's rules (`Known::on_request`), as the HTTP/1 engine writes it from the
/// client's head (`h1/forward.rs`): what `headers::strip_request` would drop is skipped and what
/// `headers::add_forwarding` would add is appended, without a map to change first.
pub struct ClientHead<'a> {
    pub method: &'a Method,
    pub path: &'a PathAndQuery,
    /// `Host`: the upstream's `host`, else the client's, else the target's authority.
    pub host: Option<&'a [u8]>,
    /// The client's headers, as hyper's server received them.
    pub headers: &'a HeaderMap,
    pub forward: &'a Forward,
    /// The TCP peer as sent in `X-Forwarded-For`.
    pub peer: &'a HeaderValue,
    /// The host the request is for (`Forward::host`), as sent in `X-Forwarded-Host`.
    pub original_host: Option<&'a HeaderValue>,
    pub user: &'a str,
    pub request_id: &'a HeaderValue,
    /// `X-Apiward-Ratelimit-Remaining`, when forwarded.
    pub remaining: Option<u64>,
    /// The client sent `TE: trailers`: the one TE that crosses.
    pub trailers_accepted: bool,
}

impl ClientHead<'_> {
    pub fn write(&self, out: &mut Vec<u8>) {
        let forward = self.forward;
        let trusted = forward.peer_is_trusted;
        let credential_headers = forward.credential_headers.as_deref().unwrap_or_default();
        head_line(out, self.method, self.path);
        if let Some(host) = self.host {
            push_header(out, b"host", host);
        }
        // Headers a `Connection` line names go too (HTTP/2 forbids `Connection`, so this is
        // empty but for a client that broke the rule and a server that let it).
        let mut named = Vec::new();
        if self.headers.contains_key(http::header::CONNECTION) {
            headers::connection_named(self.headers.get_all(http::header::CONNECTION), &mut named);
        }
        let mut forwarded_for: Vec<&str> = Vec::new();
        let (mut has_proto, mut has_host) = (false, false);
        for (name, value) in self.headers {
            if *name == forward.key_header || credential_headers.contains(name) {
                continue;
            }
            let bytes = name.as_str().as_bytes();
            if headers::has_underscore(bytes)
                && !headers::forwards_underscore_name(
                    bytes,
                    &forward.key_header,
                    credential_headers,
                    forward.underscore_headers,
                )
            {
                continue;
            }
            if !named.is_empty() && named.contains(name) {
                continue;
            }
            match headers::classify(bytes).on_request(trusted, forward.strip_authorization) {
                OnRequest::Keep | OnRequest::Framing => {}
                OnRequest::Drop | OnRequest::DropWithNamed | OnRequest::Host => continue,
                OnRequest::ForwardedFor => {
                    // A trusted proxy's chain goes on with the peer appended (the lines that are
                    // text, as `add_forwarding` joins them); anyone else's is replaced.
                    if trusted && let Ok(text) = value.to_str() {
                        forwarded_for.push(text);
                    }
                    continue;
                }
                OnRequest::TrustedProto => has_proto = true,
                OnRequest::TrustedHost => has_host = true,
            }
            push_header(out, bytes, value.as_bytes());
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        for previous in &forwarded_for {
            out.extend_from_slice(previous.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !has_proto {
            push_header(out, b"x-forwarded-proto", forward.proto.as_bytes());
        }
        if !has_host && let Some(host) = self.original_host {
            push_header(out, b"x-forwarded-host", host.as_bytes());
        }
        push_header(out, b"x-apiward-user", self.user.as_bytes());
        push_header(out, b"x-apiward-group", forward.group.as_bytes());
        push_header(out, b"x-request-id", self.request_id.as_bytes());
        if let Some(left) = self.remaining {
            out.extend_from_slice(b"x-apiward-ratelimit-remaining: ");
            write_u64(out, left);
            out.extend_from_slice(b"\r\n");
        }
        if self.trailers_accepted {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The request head from `headers` as they are: the map the policy's rules were already applied
/// to (`headers::strip_request`, `headers::add_forwarding`, `Host` set), as for an attempt after
/// one through hyper's client.
pub fn head_from_map(out: &mut Vec<u8>, method: &Method, path: &PathAndQuery, headers: &HeaderMap) {
    head_line(out, method, path);
    for (name, value) in headers {
        push_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

fn head_line(out: &mut Vec<u8>, method: &Method, path: &PathAndQuery) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Sends `head` (a whole request head, `ClientHead` or `head_from_map`) for `method` to
/// `authority` and reads the response head.
pub async fn exchange(
    pool: &Arc<RawPool>,
    authority: &Authority,
    limits: Limits,
    method: &Method,
    head: &[u8],
) -> Result<Answer, UpstreamFailure> {
    let out = head;
    let mut may_reuse = true;
    let mut kept = Vec::new();
    loop {
        let pooled = if may_reuse {
            pool.take(authority, Instant::now(), |s| is_open(s))
        } else {
            None
        };
        let reused = pooled.is_some();
        let mut stream = match pooled {
            Some(stream) => stream,
            None => {
                match tokio::time::timeout(limits.connect_timeout, connect_tcp(authority, false))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return Err(UpstreamFailure::Connect(ConnectError::from_io(&e))),
                    Err(_) => return Err(UpstreamFailure::Connect(ConnectError::TimedOut)),
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if stream.write_all(out).await.is_err() {
            if reused {
                may_reuse = false;
                continue;
            }
            return Err(UpstreamFailure::Reset);
        }
        let mut buf = BytesMut::with_capacity(HEAD_BUFFER);
        let head = 'read: loop {
            match tokio::io::AsyncReadExt::read_buf(&mut stream, &mut buf).await {
                Ok(0) | Err(_) if buf.is_empty() => break None,
                Ok(0) | Err(_) => return Err(UpstreamFailure::Broken),
                Ok(_) => {}
            }
            loop {
                match parse_response_head(&buf, method, &mut kept, limits.response_head)? {
                    Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                        // An interim response (103 Early Hints): skipped, the final one follows.
                        buf.advance(head.head_len);
                    }
                    Some(head) if head.status == 101 => {
                        return Err(InvalidResponse::UnaskedUpgrade.into());
                    }
                    Some(head) => break 'read Some(head),
                    None => break,
                }
            }
            if buf.len() > limits.response_head.bytes {
                return Err(InvalidResponse::TooLarge.into());
            }
        };
        let Some(head) = head else {
            if reused {
                may_reuse = false;
                continue;
            }
            return Err(UpstreamFailure::Reset);
        };
        let status = StatusCode::from_u16(head.status).map_err(|_| InvalidResponse::Malformed)?;
        // The values are slices of the head as read, not copies: one shared buffer instead of
        // an allocation per header.
        let head_bytes = buf.split_to(head.head_len).freeze();
        // Room for what hyper's path adds (`X-Request-Id`, the two RateLimit fields) without
        // growing the map.
        let mut response_headers = HeaderMap::with_capacity(kept.len() + 3);
        for (name, value) in &kept {
            let name = response_header_name(&head_bytes[name.clone()])
                .map_err(|_| InvalidResponse::Malformed)?;
            if name == http::header::TRANSFER_ENCODING {
                // The body is decoded here; HTTP/2 frames it itself.
                continue;
            }
            let value = HeaderValue::from_maybe_shared(head_bytes.slice(value.clone()))
                .map_err(|_| InvalidResponse::Malformed)?;
            response_headers.append(name, value);
        }
        let checkin = Checkin {
            pool: Arc::downgrade(pool),
            authority: authority.clone(),
            limits,
        };
        let whole = match head.framing {
            Framing::None => Some(None),
            Framing::Length(n) if buf.len() as u64 >= n => {
                Some(Some(buf.split_to(n as usize).freeze()))
            }
            _ => None,
        };
        if let Some(body) = whole {
            // Stray bytes after the answer: the connection is not reused.
            if !head.upstream_closes && buf.is_empty() {
                checkin.put(stream);
            }
            return Ok(Answer::Whole(respond(status, response_headers, body)));
        }
        let framing = match head.framing {
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(Chunk::Size),
            _ => Reading::UntilClose,
        };
        return Ok(Answer::Streamed(Box::new(respond(
            status,
            response_headers,
            RawBody {
                stream: Some(stream),
                buf,
                reading: framing,
                reuse: !head.upstream_closes,
                checkin: Some(checkin),
                attempt: None,
                place: None,
                deadline: limits
                    .response_timeout
                    .map(|t| Box::pin(tokio::time::sleep(t))),
            },
        ))));
    }
}

/// An answer's header name. The ones most answers carry are matched here and given as http's
/// constants; `HeaderName::from_bytes` would lower-case each into a buffer and look it up among
/// all the standard names. `name` is as httparse read it (a valid token, any case).
fn response_header_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use headers::same_token as is;
    use http::header;
    Ok(match name.len() {
        4 if is(name, b"date") => header::DATE,
        4 if is(name, b"etag") => header::ETAG,
        4 if is(name, b"vary") => header::VARY,
        6 if is(name, b"server") => header::SERVER,
        12 if is(name, b"content-type") => header::CONTENT_TYPE,
        13 if is(name, b"cache-control") => header::CACHE_CONTROL,
        13 if is(name, b"last-modified") => header::LAST_MODIFIED,
        14 if is(name, b"content-length") => header::CONTENT_LENGTH,
        _ => return HeaderName::from_bytes(name),
    })
}

fn respond<B>(status: StatusCode, headers: HeaderMap, body: B) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// Where a connection goes back to once its answer has been read.
struct Checkin {
    pool: Weak<RawPool>,
    authority: Authority,
    limits: Limits,
}

impl Checkin {
    fn put(self, stream: TcpStream) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(
                &self.authority,
                stream,
                self.limits.keepalive(),
                Instant::now(),
            );
        }
    }
}

/// How the rest of a body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    /// This many bytes of the chunk still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields, then the empty line.
    Trailers,
}

/// A response body read from its upstream socket as the client takes it; when it ends, the
/// socket goes back to the pool (unless the upstream said it closes), and when it is dropped
/// before that the socket is closed.
pub struct RawBody {
    stream: Option<TcpStream>,
    buf: BytesMut,
    reading: Reading,
    reuse: bool,
    checkin: Option<Checkin>,
    /// The request's attempt on its target: outstanding there until the body is done with.
    attempt: Option<Attempt>,
    /// The request's place at its upstream, given back with the body.
    place: Option<Slot>,
    /// `response_timeout`: when the relay of this body must have ended.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RawBody {
    /// Keeps `attempt` outstanding on its target, and `place` taken, until the body ends.
    pub fn holding(mut self, attempt: Attempt, place: Slot) -> Self {
        self.attempt = Some(attempt);
        self.place = Some(place);
        self
    }

    fn finish(&mut self) {
        self.reading = Reading::Done;
        self.attempt = None;
        self.place = None;
        if let (Some(stream), Some(checkin)) = (self.stream.take(), self.checkin.take())
            && self.reuse
            && self.buf.is_empty()
        {
            checkin.put(stream);
        }
    }

    fn fail(&mut self, error: RelayError) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        self.reading = Reading::Done;
        self.stream = None;
        self.attempt = None;
        self.place = None;
        Poll::Ready(Some(Err(error)))
    }

    /// The next frame from what has been read, if there is one yet.
    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, RelayError> {
        loop {
            match self.reading {
                Reading::Done => return Ok(None),
                Reading::Length(left) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(self.buf.len() as u64);
                    let data = self.buf.split_to(n as usize).freeze();
                    self.reading = Reading::Length(left - n);
                    return Ok(Some(Frame::data(data)));
                }
                Reading::UntilClose => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Frame::data(self.buf.split().freeze())));
                }
                Reading::Chunked(Chunk::Size) => match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete((used, 0))) => {
                        self.buf.advance(used);
                        self.reading = Reading::Chunked(Chunk::Trailers);
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        self.buf.advance(used);
                        self.reading = Reading::Chunked(Chunk::Data(size));
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(RelayError::Malformed),
                },
                Reading::Chunked(Chunk::Data(left)) => {
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(self.buf.len() as u64);
                    let data = self.buf.split_to(n as usize).freeze();
                    self.reading = Reading::Chunked(if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    });
                    return Ok(Some(Frame::data(data)));
                }
                Reading::Chunked(Chunk::DataEnd) => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(RelayError::Malformed);
                    }
                    self.buf.advance(2);
                    self.reading = Reading::Chunked(Chunk::Size);
                }
                Reading::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; 64];
                    match httparse::parse_headers(&self.buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for field in fields {
                                if let (Ok(name), Ok(value)) = (
                                    HeaderName::from_bytes(field.name.as_bytes()),
                                    HeaderValue::from_bytes(field.value),
                                ) {
                                    trailers.append(name, value);
                                }
                            }
                            self.buf.advance(used);
                            self.finish();
                            return Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers)));
                        }
                        Ok(httparse::Status::Partial) => return Ok(None),
                        Err(_) => return Err(RelayError::Malformed),
                    }
                }
            }
        }
    }

    fn ended(&self) -> bool {
        matches!(self.reading, Reading::Done | Reading::Length(0))
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
            && !this.ended()
        {
            this.deadline = None;
            return this.fail(RelayError::ResponseTimeout);
        }
        loop {
            if this.reading == Reading::Length(0) {
                this.finish();
            }
            if this.reading == Reading::Done {
                this.finish();
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(frame)) => {
                    if this.reading == Reading::Length(0) {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) if this.reading == Reading::Done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
            let Some(stream) = this.stream.as_mut() else {
                return this.fail(RelayError::Closed);
            };
            this.buf.reserve(16 * 1024);
            match stream.try_read_buf(&mut this.buf) {
                Ok(0) if this.reading == Reading::UntilClose => {
                    this.reuse = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(RelayError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    match stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(_)) => return this.fail(RelayError::Closed),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(_) => return this.fail(RelayError::Closed),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(left) => SizeHint::with_exact(left),
            Reading::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_header_name_is_what_from_bytes_makes_of_it_whatever_its_case() {
        for name in [
            &b"Date"[..],
            b"ETAG",
            b"vary",
            b"Server",
            b"Content-Type",
            b"cache-control",
            b"Last-Modified",
            b"CONTENT-LENGTH",
            b"X-Custom",
            b"dates",
            b"Servers",
            b"content-typo",
            b"x-request-id",
        ] {
            let expected = HeaderName::from_bytes(name).unwrap();
            assert_eq!(response_header_name(name).unwrap(), expected, "{name:?}");
        }
        assert_eq!(
            response_header_name(b"Content-Type").unwrap(),
            http::header::CONTENT_TYPE
        );
        assert!(response_header_name(b"bad name").is_err());
    }
}
