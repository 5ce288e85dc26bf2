//! Tests of the request log writer: whole lines, flushing, and counted drops.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{BUFFER_CAP, RequestLog};

/// A destination that keeps what it is given, and can be held shut.
#[derive(Clone, Default)]
struct Sink {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// While `false`, every write waits.
    gate: Arc<(Mutex<bool>, Condvar)>,
    writes: Arc<AtomicU64>,
}

impl Sink {
    fn open() -> Sink {
        let sink = Sink::default();
        sink.release();
        sink
    }

    fn shut() -> Sink {
        Sink::default()
    }

    fn release(&self) {
        let (open, cv) = &*self.gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }

    fn text(&self) -> String {
        String::from_utf8(self.bytes.lock().unwrap().clone()).expect("the log is UTF-8")
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, cv) = &*self.gate;
        let mut open = open.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn start(sink: &Sink) -> (RequestLog, Arc<AtomicU64>) {
    let counted = Arc::new(AtomicU64::new(0));
    let metric = Arc::clone(&counted);
    let log = RequestLog::start(
        Box::new(sink.clone()),
        Box::new(move |n| {
            metric.fetch_add(n, Ordering::Relaxed);
        }),
    )
    .unwrap();
    (log, counted)
}

fn line(log: &RequestLog, thread: usize, n: usize, padding: usize) {
    log.append(|p| {
        writeln!(
            p.bytes,
            "{{\"thread\":{thread},\"n\":{n},\"pad\":\"{}\"}}",
            "x".repeat(padding)
        )
        .unwrap()
    });
}

fn parsed(text: &str) -> Vec<serde_json::Value> {
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the last line is cut"
    );
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object: {l:?}: {e}"))
        })
        .collect()
}

#[test]
fn lines_from_many_threads_arrive_whole_and_in_each_threads_order() {
    let sink = Sink::open();
    let (log, _) = start(&sink);
    let log = Arc::new(log);
    let threads: Vec<_> = (0..24)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for n in 0..3_000 {
                    line(&log, t, n, (t * 37 + n) % 300);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(log.close(Duration::from_secs(30)));
    let lines = parsed(&sink.text());
    // Threads this eager can outrun the writer (each buffer stops at its cap): every line is
    // written or counted, and a thread's written lines keep their order.
    assert_eq!(lines.len() as u64 + log.dropped_lines(), 24 * 3_000);
    let mut last = [None::<u64>; 24];
    for l in &lines {
        let t = l["thread"].as_u64().unwrap() as usize;
        let n = l["n"].as_u64().unwrap();
        assert!(
            last[t].is_none_or(|p| p < n),
            "thread {t}'s lines out of order"
        );
        last[t] = Some(n);
    }
    // Large writes, not one per line.
    assert!(sink.writes.load(Ordering::Relaxed) < 24 * 3_000 / 10);
}

#[test]
fn a_line_is_written_without_waiting_for_more_lines_or_for_close() {
    let sink = Sink::open();
    let (log, _) = start(&sink);
    line(&log, 0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.text().is_empty() {
        assert!(Instant::now() < deadline, "the line was never written");
        std::thread::sleep(Duration::from_millis(5));
    }
    // And again after the writer had nothing to do for a while.
    std::thread::sleep(super::FLUSH_EVERY * 3);
    line(&log, 0, 1, 0);
    while parsed(&sink.text()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second line was never written"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(log);
}

#[test]
fn close_writes_everything_buffered() {
    let sink = Sink::open();
    let (log, _) = start(&sink);
    for n in 0..1_000 {
        line(&log, 0, n, 10);
    }
    assert!(log.close(Duration::from_secs(30)));
    assert_eq!(parsed(&sink.text()).len(), 1_000);
    // After close, a line is counted, not kept.
    line(&log, 0, 1_000, 10);
    assert_eq!(log.dropped_lines(), 1);
}

#[test]
fn a_destination_that_blocks_costs_bounded_memory_and_counted_lines() {
    let sink = Sink::shut();
    let (log, metric) = start(&sink);
    let log = Arc::new(log);
    // 40 MB of lines from two threads against a writer stuck in its first write.
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for n in 0..100_000 {
                    line(&log, t, n, 180);
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let dropped = log.dropped_lines();
    assert!(dropped > 0, "nothing was dropped");
    assert_eq!(
        metric.load(Ordering::Relaxed),
        dropped,
        "the metric counts every drop"
    );
    // Each thread's buffer stops at the cap (plus the one line that crossed it).
    assert!(
        log.buffered_bytes() <= 2 * (BUFFER_CAP + 256),
        "{} bytes buffered",
        log.buffered_bytes()
    );
    sink.release();
    assert!(log.close(Duration::from_secs(30)));
    let lines = parsed(&sink.text());
    assert_eq!(
        lines.len() as u64 + dropped,
        200_000,
        "every line is written or counted"
    );
}

#[test]
fn a_destination_that_fails_counts_its_lines_as_dropped() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let counted = Arc::new(AtomicU64::new(0));
    let metric = Arc::clone(&counted);
    let log = RequestLog::start(
        Box::new(Broken),
        Box::new(move |n| {
            metric.fetch_add(n, Ordering::Relaxed);
        }),
    )
    .unwrap();
    let log_ref = &log;
    for n in 0..500 {
        line(log_ref, 0, n, 10);
    }
    assert!(log.close(Duration::from_secs(30)));
    assert_eq!(log.dropped_lines(), 500);
    assert_eq!(counted.load(Ordering::Relaxed), 500);
}

#[test]
fn close_gives_up_on_a_destination_that_never_takes_the_bytes() {
    let sink = Sink::shut();
    let (log, _) = start(&sink);
    line(&log, 0, 0, 0);
    assert!(!log.close(Duration::from_millis(200)));
    sink.release();
}
