//! The request log's delivery: lines are appended to a buffer of the appending thread's own and
//! a writer thread hands whole buffers to the destination in large writes, so a request pays
//! for formatting its line and nothing else.
//!
//! - A line is appended whole under its buffer's lock and buffers are written whole, by the one
//!   writer, so lines are never torn or interleaved.
//! - The writer takes every buffer at least every `FLUSH_EVERY` while lines keep coming, at
//!   once when a buffer passes `WRITE_AT`, and sleeps when there is nothing to write.
//! - A buffer holds at most `BUFFER_CAP` (plus the line that crossed it); when the destination
//!   cannot keep up, further lines are dropped and counted (`dropped`, a metric, a warning at
//!   most every `WARN_EVERY`), so memory stays bounded whatever the disk does.
//! - `close` writes what is left and flushes; lines that arrive after it are counted as dropped.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::request_line::ClockText;

/// Buffers, one per appending thread as long as there are no more threads than this.
const BUFFERS: usize = 16;
/// A buffer this full wakes the writer at once.
const WRITE_AT: usize = 128 * 1024;
/// A buffer this full takes no more lines until the writer has taken it.
const BUFFER_CAP: usize = 1024 * 1024;
/// Lines wait at most about this long before they are written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// At most one warning about dropped lines this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Where lines go, and what is told when they cannot.
pub struct RequestLog {
    shared: Arc<Shared>,
    /// Ends (with `()`) when the writer thread has written everything and returned.
    finished: Mutex<Option<mpsc::Receiver<()>>>,
}

struct Shared {
    buffers: Box<[Buffer]>,
    /// The writer sleeps with no timeout (nothing was buffered): the next line must wake it.
    idle: AtomicBool,
    closed: AtomicBool,
    dropped: AtomicU64,
    on_drop: Box<dyn Fn(u64) + Send + Sync>,
    started: Instant,
    /// Milliseconds after `started` of the last warning, plus one (0: none yet).
    warned_at: AtomicU64,
    writer: Thread,
}

/// Aligned so that two threads' buffers never share a cache line.
#[repr(align(128))]
struct Buffer {
    pending: Mutex<Pending>,
}

#[derive(Default)]
pub struct Pending {
    pub bytes: Vec<u8>,
    lines: u64,
    pub clock: ClockText,
}

impl RequestLog {
    /// Starts the writer thread. `on_drop(n)` is called (on the thread that dropped them) for
    /// every `n` lines that could not be kept, for a metric.
    pub fn start(
        destination: Box<dyn Write + Send>,
        on_drop: Box<dyn Fn(u64) + Send + Sync>,
    ) -> std::io::Result<RequestLog> {
        let (ready_tx, ready_rx) = mpsc::channel::<Arc<Shared>>();
        let (finished_tx, finished_rx) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("apiward-request-log".into())
            .spawn(move || {
                let Ok(shared) = ready_rx.recv() else { return };
                write_until_closed(&shared, destination);
                let _ = finished_tx.send(());
            })?;
        let shared = Arc::new(Shared {
            buffers: (0..BUFFERS)
                .map(|_| Buffer {
                    pending: Mutex::new(Pending::default()),
                })
                .collect(),
            idle: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            on_drop,
            started: Instant::now(),
            warned_at: AtomicU64::new(0),
            writer: handle.thread().clone(),
        });
        // The thread only ends by `close` (or this log being dropped): detached, not joined.
        drop(handle);
        ready_tx
            .send(Arc::clone(&shared))
            .map_err(|_| std::io::Error::other("the request log writer did not start"))?;
        Ok(RequestLog {
            shared,
            finished: Mutex::new(Some(finished_rx)),
        })
    }

    /// Appends one line: `line` writes it (ending in `\n`) into the calling thread's buffer,
    /// with that buffer's clock cache at hand. Dropped and counted if the buffer is full.
    pub fn append(&self, line: impl FnOnce(&mut Pending)) {
        let shared = &*self.shared;
        let buffer = &shared.buffers[thread_slot() % shared.buffers.len()];
        let mut pending = lock(&buffer.pending);
        let before = pending.bytes.len();
        if before >= BUFFER_CAP || shared.closed.load(Ordering::Acquire) {
            drop(pending);
            self.dropped(1);
            return;
        }
        line(&mut pending);
        pending.lines += 1;
        let after = pending.bytes.len();
        drop(pending);
        // A buffer that crossed `WRITE_AT` is written at once; the first line of an empty
        // buffer wakes a writer that sleeps with nothing to do (otherwise it comes by within
        // `FLUSH_EVERY`).
        let crossed = before < WRITE_AT && after >= WRITE_AT;
        let woke_idle = || {
            before == 0
                && shared.idle.load(Ordering::Relaxed)
                && shared.idle.swap(false, Ordering::AcqRel)
        };
        if crossed || woke_idle() {
            shared.writer.unpark();
        }
    }

    /// Lines dropped so far.
    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Bytes waiting in the buffers (not those the writer is writing now).
    pub fn buffered_bytes(&self) -> usize {
        self.shared
            .buffers
            .iter()
            .map(|b| lock(&b.pending).bytes.len())
            .sum()
    }

    fn dropped(&self, lines: u64) {
        self.shared.note_dropped(lines);
    }

    /// Writes everything buffered, flushes, and stops the writer; waits at most `limit` for a
    /// destination that does not take the bytes. Returns whether everything was written.
    pub fn close(&self, limit: Duration) -> bool {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.writer.unpark();
        let finished = lock(&self.finished).take();
        match finished {
            Some(rx) => rx.recv_timeout(limit).is_ok(),
            None => true,
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        // Without a wait: whoever needed the lines on disk called `close`.
        self.shared.closed.store(true, Ordering::Release);
        self.shared.writer.unpark();
    }
}

impl Shared {
    fn note_dropped(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        (self.on_drop)(lines);
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = self.dropped.load(Ordering::Relaxed),
                "the request log's destination does not keep up: lines are being dropped (apiward_request_log_dropped_total counts them)"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while formatting a line leaves at worst a partial last line; keep logging.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A small number per thread, given out in the order threads first log.
fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

/// The writer thread's loop.
fn write_until_closed(shared: &Shared, mut destination: Box<dyn Write + Send>) {
    let mut taken: Vec<(Vec<u8>, u64)> = Vec::with_capacity(shared.buffers.len());
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut failing = false;
    loop {
        // Read before taking the buffers: a line appended after this sees `closed` under its
        // buffer's lock, or was taken here.
        let closing = shared.closed.load(Ordering::Acquire);
        for buffer in shared.buffers.iter() {
            let mut pending = lock(&buffer.pending);
            if pending.bytes.is_empty() {
                continue;
            }
            let fresh = spare.pop().unwrap_or_default();
            let bytes = std::mem::replace(&mut pending.bytes, fresh);
            let lines = std::mem::take(&mut pending.lines);
            drop(pending);
            taken.push((bytes, lines));
        }
        let wrote = !taken.is_empty();
        for (mut bytes, lines) in taken.drain(..) {
            match destination.write_all(&bytes) {
                Ok(()) => failing = false,
                Err(e) => {
                    if !failing {
                        tracing::error!(error = %e, "cannot write the request log; its lines are dropped until writes succeed again");
                        failing = true;
                    }
                    shared.note_dropped(lines);
                }
            }
            bytes.clear();
            // Keep as many spares as buffers; an outsized one is not kept.
            if spare.len() < shared.buffers.len() && bytes.capacity() <= 2 * BUFFER_CAP {
                spare.push(bytes);
            }
        }
        if wrote {
            let _ = destination.flush();
        }
        if closing {
            let _ = destination.flush();
            return;
        }
        if wrote {
            std::thread::park_timeout(FLUSH_EVERY);
        } else {
            shared.idle.store(true, Ordering::SeqCst);
            let anything = shared
                .buffers
                .iter()
                .any(|b| !lock(&b.pending).bytes.is_empty());
            if !anything && !shared.closed.load(Ordering::Acquire) {
                std::thread::park();
            }
            shared.idle.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests;
