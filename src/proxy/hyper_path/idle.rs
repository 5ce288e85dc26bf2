//! A client connection for hyper's server that closes itself after `idle_timeout` without a byte
//! in either direction: a client that stops sending, or one that stops reading its answers (as
//! the HTTP/1 engine gives each wait `idle_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct IdleTimeout<T> {
    inner: T,
    idle: IdleSetting,
    last_activity: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

/// A connection's `idle_timeout`, which its requests set again from the current snapshot (so a
/// reload applies to an open connection from its next request, as on the HTTP/1 engine).
#[derive(Clone)]
pub struct IdleSetting(Arc<AtomicU64>);

impl IdleSetting {
    pub fn new(idle: Duration) -> IdleSetting {
        IdleSetting(Arc::new(AtomicU64::new(nanos(idle))))
    }

    pub fn set(&self, idle: Duration) {
        self.0.store(nanos(idle), Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, idle: IdleSetting) -> Self {
        IdleTimeout {
            inner,
            idle,
            last_activity: Instant::now(),
            timer: None,
        }
    }

    /// A write's outcome: progress is activity; a write that waits for a client that does not
    /// read fails once the connection has been idle for too long.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.last_activity = Instant::now();
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.idle_expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle timeout: the client stopped reading",
            ))),
            other => other,
        }
    }

    /// Called when a read or write is pending: true once the connection has been idle for too
    /// long.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let deadline = self.last_activity + self.idle.get();
        if Instant::now() >= deadline {
            return true;
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if self.idle_expired(cx) {
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(cx, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
