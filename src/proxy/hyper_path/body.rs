//! Body wrappers that count bytes as they stream and record the request when its response ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use crate::observe::RequestRecord;
use crate::proxy::policy::Policy;

/// A request body on its way upstream, counting the bytes that pass.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Self {
        Counted { inner, bytes }
    }

    /// Where the bytes are counted.
    pub fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.bytes)
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body on its way to the client. When it ends, or is dropped because the client
/// went away, the request is recorded once: metrics and the log line.
pub struct Logged<B> {
    inner: B,
    bytes_out: u64,
    /// Boxed: the record is large, and the response this body is in moves by value several times
    /// on its way through hyper's HTTP/2 server; a pointer moves instead.
    finish: Option<Box<Finish>>,
}

pub struct Finish {
    pub policy: Arc<Policy>,
    pub record: RequestRecord,
    pub bytes_in: Arc<AtomicU64>,
    /// The request's place among its user's requests in flight, given back with this: when the
    /// body ends, or is dropped because the client went away.
    pub _admitted: Option<crate::limits::Admitted>,
}

impl<B> Logged<B> {
    pub fn new(inner: B, finish: Box<Finish>) -> Self {
        Logged {
            inner,
            bytes_out: 0,
            finish: Some(finish),
        }
    }

    fn complete(&mut self) {
        if let Some(mut f) = self.finish.take() {
            f.policy.finish(
                &mut f.record,
                std::time::Instant::now(),
                f.bytes_in.load(Ordering::Relaxed),
                self.bytes_out,
            );
        }
    }
}

impl<B> Drop for Logged<B> {
    fn drop(&mut self) {
        self.complete();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Logged<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.complete(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
