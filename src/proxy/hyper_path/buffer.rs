//! The response buffer on hyper's path (`response_buffer`): a body that came whole with its head
//! is kept as read; otherwise a task of its own reads the upstream's body up to that many bytes
//! ahead of the client, so that an answer that fits has
//! given its upstream connection back to the pool (and its `max_upstream_connections` place)
//! whatever the client does, and a larger one streams with at most that much held. hyper's
//! server polls a response body only when the client's socket takes more, which is why the
//! reading cannot be left to it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{Semaphore, mpsc};

use super::client::{RelayError, UpstreamBody};
use super::raw::RawBody;

/// Frames in the channel at most, whatever their size (the byte budget bounds the memory).
const FRAMES: usize = 64;

/// A response body as the client receives it: the upstream's directly (no buffer, or nothing
/// left to read), all of it already read (one frame that ended it), or through the read-ahead
/// task.
///
/// The bodies that hold a connection are boxed: a response moves by value several times on its
/// way through hyper's HTTP/2 server and into the stream's task, and this keeps what moves small
/// for the common answer that was read whole.
pub enum Relayed {
    Direct(Box<UpstreamBody>),
    /// Read from its socket the HTTP/1 engine's way (`raw.rs`), with no buffer.
    Raw(Box<RawBody>),
    /// The whole body, read before the response head went to the client (its connection is
    /// back in the pool already): the frame, then the end.
    Read(Option<Frame<Bytes>>),
    Buffered(Buffered),
}

/// The client's end of a read-ahead: frames with the budget they hold.
pub struct Buffered {
    frames: mpsc::Receiver<(Result<Frame<Bytes>, RelayError>, u32)>,
    budget: Arc<Semaphore>,
    hint: SizeHint,
    ended: bool,
    /// `response_timeout`: when the relay to the client must have ended.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Relayed {
    /// A body read from its socket (`raw.rs`), through a read-ahead of `ahead` bytes unless 0.
    pub fn raw(body: RawBody, ahead: usize, response_timeout: Option<Duration>) -> Relayed {
        if ahead == 0 {
            return Relayed::Raw(Box::new(body));
        }
        let hint = body.size_hint();
        Relayed::read_ahead(body, None, hint, ahead, response_timeout)
    }

    /// `body` (and first `first`, a frame already taken from it) through a read-ahead task;
    /// `hint` is the whole body's.
    fn read_ahead<B>(
        body: B,
        first: Option<Result<Frame<Bytes>, RelayError>>,
        hint: SizeHint,
        ahead: usize,
        response_timeout: Option<Duration>,
    ) -> Relayed
    where
        B: Body<Data = Bytes, Error = RelayError> + Send + Unpin + 'static,
    {
        let permits = u32::try_from(ahead)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        let budget = Arc::new(Semaphore::new(permits as usize));
        let (tx, rx) = mpsc::channel(FRAMES);
        tokio::spawn(read_ahead(body, first, tx, Arc::clone(&budget), permits));
        Relayed::Buffered(Buffered {
            frames: rx,
            budget,
            hint,
            ended: false,
            deadline: response_timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        })
    }

    /// `body` relayed through a read-ahead of `ahead` bytes (none when 0, or when the body has
    /// already ended), bounded by `response_timeout` from now.
    ///
    /// The body is polled once first: the common small answer arrived with its head and ends
    /// with its first frame, and then it is kept here as read, with no task, channel or budget
    /// for it.
    pub async fn new(
        mut body: UpstreamBody,
        ahead: usize,
        response_timeout: Option<Duration>,
    ) -> Relayed {
        if ahead == 0 || body.is_end_stream() {
            return Relayed::Direct(Box::new(body.within(response_timeout)));
        }
        // The whole body's, before its first frame is taken.
        let hint = body.size_hint();
        let first = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Some(frame),
                Poll::Pending => None,
            })
        })
        .await;
        let first = match first {
            Some(Some(Ok(frame))) if body.is_end_stream() && frame.is_data() => {
                return Relayed::Read(Some(frame));
            }
            Some(None) => return Relayed::Read(None),
            // An error, or trailers: the body goes on as it is, the frame first.
            Some(frame) => frame,
            None => None,
        };
        Relayed::read_ahead(body, first, hint, ahead, response_timeout)
    }
}

/// Reads `body` into the channel while the budget allows. The client going away (the receiver
/// dropped) ends it: the upstream body is dropped, which closes its connection mid-response.
async fn read_ahead<B: Body<Data = Bytes, Error = RelayError> + Unpin>(
    mut body: B,
    mut first: Option<Result<Frame<Bytes>, RelayError>>,
    tx: mpsc::Sender<(Result<Frame<Bytes>, RelayError>, u32)>,
    budget: Arc<Semaphore>,
    most: u32,
) {
    loop {
        let frame = match first.take() {
            Some(frame) => Some(frame),
            None => tokio::select! {
                frame = body.frame() => frame,
                () = tx.closed() => return,
            },
        };
        let Some(frame) = frame else { return };
        let failed = frame.is_err();
        let len = frame
            .as_ref()
            .ok()
            .and_then(Frame::data_ref)
            .map_or(0, Bytes::len);
        // A frame larger than the whole budget takes all of it.
        let cost = u32::try_from(len).unwrap_or(u32::MAX).min(most);
        let permits = tokio::select! {
            permits = budget.acquire_many(cost) => permits,
            () = tx.closed() => return,
        };
        match permits {
            Ok(p) => p.forget(),
            Err(_) => return,
        }
        if tx.send((frame, cost)).await.is_err() || failed {
            return;
        }
        if body.is_end_stream() {
            // The upstream body has given its connection back; nothing more to read.
            return;
        }
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        match self.get_mut() {
            Relayed::Direct(body) => Pin::new(&mut **body).poll_frame(cx),
            Relayed::Raw(body) => Pin::new(&mut **body).poll_frame(cx),
            Relayed::Read(frame) => Poll::Ready(frame.take().map(Ok)),
            Relayed::Buffered(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Relayed::Direct(body) => body.is_end_stream(),
            Relayed::Raw(body) => body.is_end_stream(),
            Relayed::Read(frame) => frame.is_none(),
            Relayed::Buffered(b) => b.ended,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Relayed::Direct(body) => body.size_hint(),
            Relayed::Raw(body) => body.size_hint(),
            Relayed::Read(frame) => SizeHint::with_exact(
                frame
                    .as_ref()
                    .and_then(Frame::data_ref)
                    .map_or(0, |data| data.len() as u64),
            ),
            Relayed::Buffered(b) => b.hint,
        }
    }
}

impl Buffered {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // An error, not an early end: hyper's server then closes the client connection
            // instead of framing a truncated body as complete.
            self.ended = true;
            self.frames.close();
            return Poll::Ready(Some(Err(RelayError::ResponseTimeout)));
        }
        match self.frames.poll_recv(cx) {
            Poll::Ready(Some((frame, cost))) => {
                self.budget.add_permits(cost as usize);
                if frame.is_err() {
                    self.ended = true;
                }
                Poll::Ready(Some(frame))
            }
            Poll::Ready(None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
