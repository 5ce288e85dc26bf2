//! Deadlines and graceful shutdown for the engine's waits: a timer per direction armed once, and
//! reads and writes that give up at a deadline or when the gateway stops.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Graceful shutdown as the engine sees it: a flag, and a notification that wakes every
/// connection waiting for a request. Each connection registers for the notification once, when
/// it starts, instead of once per wait.
#[derive(Default)]
pub struct Stop {
    stopping: AtomicBool,
    notify: Arc<Notify>,
}

impl Stop {
    /// Shutdown has begun: connections finish the request in flight, then close.
    pub fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn has_begun(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A future that ends when shutdown begins, registered now (so a `begin` from here on is
    /// not missed; check `has_begun` after calling this for one that came before).
    pub(super) fn watch(&self) -> Pin<Box<OwnedNotified>> {
        let mut notified = Box::pin(Arc::clone(&self.notify).notified_owned());
        notified.as_mut().enable();
        notified
    }
}

pub(super) enum Read {
    Data,
    Eof,
    Error,
    TimedOut,
    ShutDown,
}

/// A connection's deadline timer: armed once, and moved only when it fires before the deadline
/// that counts now, so a request costs no timer registration.
pub(super) struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Polled (so its waker is this task's) since it was last set: until it is set again or
    /// fires, it need not be polled on every wait.
    registered: bool,
}

impl Timer {
    pub(super) fn new(deadline: tokio::time::Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            registered: false,
        }
    }

    pub(super) fn set(&mut self, deadline: tokio::time::Instant) {
        self.sleep.as_mut().reset(deadline);
        self.registered = false;
    }

    /// Makes sure the timer fires by `deadline`: moved only if it is armed for later.
    pub(super) fn arm_by(&mut self, deadline: tokio::time::Instant) {
        if self.sleep.deadline() > deadline {
            self.set(deadline);
        }
    }

    /// Whether `deadline` has passed; otherwise the timer will wake this task by then.
    pub(super) fn poll_passed(
        &mut self,
        cx: &mut Context<'_>,
        deadline: tokio::time::Instant,
    ) -> bool {
        loop {
            if self.registered && !self.sleep.is_elapsed() {
                return false;
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    self.registered = true;
                    return false;
                }
                Poll::Ready(()) if tokio::time::Instant::now() >= deadline => return true,
                // It fired for an earlier deadline than this wait's: set it again.
                Poll::Ready(()) => self.set(deadline),
            }
        }
    }
}

/// A connection's view of graceful shutdown: the notification, polled once so that it wakes
/// this task, then the flag (`Stop::has_begun`) on every wait.
pub(super) struct StopWatch {
    pub(super) notified: Pin<Box<OwnedNotified>>,
    pub(super) polled: bool,
}

impl StopWatch {
    pub(super) fn poll_begun(&mut self, cx: &mut Context<'_>, stop: &Stop) -> bool {
        if stop.has_begun() {
            return true;
        }
        if !self.polled {
            self.polled = true;
            return self.notified.as_mut().poll(cx).is_ready();
        }
        false
    }
}

/// How a wait for a socket ended.
enum Until<T> {
    Done(T),
    TimedOut,
    ShutDown,
}

/// Runs `op` (a read or a write), giving up at `deadline` and, with `stop`, when the gateway
/// shuts down. Once `op` is pending, the timer and the shutdown notification are polled only
/// when they need to be (see `Timer` and `StopWatch`): a task's waker is the same from one poll
/// to the next, so what they registered stays valid.
async fn until<F: Future>(
    op: F,
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    mut stop: Option<(&Stop, &mut StopWatch)>,
) -> Until<F::Output> {
    timer.arm_by(deadline);
    let mut op = std::pin::pin!(op);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = op.as_mut().poll(cx) {
            return Poll::Ready(Until::Done(output));
        }
        if timer.poll_passed(cx, deadline) {
            return Poll::Ready(Until::TimedOut);
        }
        if let Some((stop, watch)) = stop.as_mut()
            && watch.poll_begun(cx, stop)
        {
            return Poll::Ready(Until::ShutDown);
        }
        Poll::Pending
    })
    .await
}

/// Reads once into `buf`, giving up at `deadline` (and, for a client between requests, when the
/// gateway shuts down).
/// (`read_buf` goes through tokio's `poll_read`, which forgets the socket's readiness after a
/// short read: the next read waits for epoll instead of trying a `recvfrom` that would fail.)
pub(super) async fn read_until<T: AsyncRead + Unpin>(
    stream: &mut T,
    buf: &mut BytesMut,
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    stop: Option<(&Stop, &mut StopWatch)>,
) -> Read {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match until(stream.read_buf(buf), timer, deadline, stop).await {
        Until::Done(Ok(0)) => Read::Eof,
        Until::Done(Ok(_)) => Read::Data,
        Until::Done(Err(_)) => Read::Error,
        Until::TimedOut => Read::TimedOut,
        Until::ShutDown => Read::ShutDown,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    All,
    Failed,
    TimedOut,
}

/// Writes all of `bytes`, giving up at `deadline`. The timer is involved only if the write has
/// to wait (the socket's buffer is full), which a request and its answer almost never do.
pub(super) async fn write_until<T: AsyncWrite + Unpin>(
    stream: &mut T,
    bytes: &[u8],
    timer: &mut Timer,
    deadline: tokio::time::Instant,
) -> Written {
    // Almost always the socket takes it all at once: then no timer is involved. One poll with
    // this task's context (a `Pending` leaves a registration the wait below renews).
    let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut *stream).poll_write(cx, bytes))).await;
    let bytes = match first {
        Poll::Ready(Ok(n)) if n == bytes.len() => return Written::All,
        Poll::Ready(Ok(n)) => &bytes[n..],
        Poll::Pending => bytes,
        Poll::Ready(Err(_)) => return Written::Failed,
    };
    match until(stream.write_all(bytes), timer, deadline, None).await {
        Until::Done(Ok(())) => Written::All,
        Until::TimedOut => Written::TimedOut,
        Until::Done(Err(_)) | Until::ShutDown => Written::Failed,
    }
}
