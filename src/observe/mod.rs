//! What the gateway tells operators: metrics, one log line per request, key last-use, request ids.

pub mod key_usage;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod recent;
mod record;
pub mod request_line;
pub mod request_log;
mod series;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use crate::config::reload::ReloadOutcome;
use crate::snapshot::Snapshot;

pub use key_usage::KeyUsage;
pub use metrics::Metrics;
pub use recent::RecentRequests;
use record::RequestIds;
pub use record::{LoggedPrefix, RequestRecord};
pub use request_log::RequestLog;

/// Shared by every request of one gateway.
pub struct Telemetry {
    pub metrics: Metrics,
    pub key_usage: KeyUsage,
    /// Recent requests per user and recent refusals of non-users, for the console.
    pub recent: RecentRequests,
    request_ids: RequestIds,
    sampled: AtomicU64,
    /// Where request log lines go; `None` writes none.
    request_log: Option<RequestLog>,
    /// The request log's file, to reopen after logrotate moved it; let go of at close, so that
    /// nothing holds the file (or a pipe's writing end) open after the gateway stopped.
    request_log_file: std::sync::Mutex<Option<logging::AccessFile>>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        Telemetry {
            metrics: Metrics::new(),
            key_usage: KeyUsage::default(),
            recent: RecentRequests::default(),
            request_ids: RequestIds::new(),
            sampled: AtomicU64::new(0),
            request_log: None,
            request_log_file: std::sync::Mutex::new(None),
        }
    }

    /// Telemetry whose request log lines go to `destination` (see `logging::open_request_log`);
    /// lines that cannot be kept count in `apiward_request_log_dropped_total`.
    pub fn with_request_log(
        destination: logging::RequestLogDestination,
    ) -> std::io::Result<Telemetry> {
        let mut telemetry = Telemetry::new();
        let dropped = telemetry.metrics.request_log_dropped();
        telemetry.request_log = Some(RequestLog::start(
            destination.writer,
            Box::new(move |n| dropped.increment(n)),
        )?);
        telemetry.request_log_file = std::sync::Mutex::new(destination.file);
        Ok(telemetry)
    }

    /// The request log, if this gateway writes one.
    pub fn request_log(&self) -> Option<&RequestLog> {
        self.request_log.as_ref()
    }

    /// Reopens the request log's file at its path (after logrotate renamed it): lines written
    /// from then on go to the new file. `None` when the request log is not a file; an error
    /// leaves the current file in use.
    pub fn reopen_request_log(&self) -> Option<std::io::Result<PathBuf>> {
        let file = self
            .request_log_file
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let file = file.as_ref()?;
        Some(file.reopen().map(|()| file.path().to_path_buf()))
    }

    /// Writes out every buffered request log line and stops the log's writer, waiting at most
    /// `limit` for a destination that does not take them; later lines are counted as dropped.
    pub fn close_request_log(&self, limit: Duration) {
        self.request_log_file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(log) = &self.request_log
            && !log.close(limit)
        {
            tracing::warn!(
                ?limit,
                "the request log's destination took no bytes at shutdown: its last lines are lost"
            );
        }
    }

    pub fn next_request_id(&self) -> HeaderValue {
        self.request_ids.next()
    }

    /// Counts a reload and keeps the per-key state in step with the new snapshot.
    pub fn reloaded(&self, outcome: &ReloadOutcome, current: &Snapshot, generation: u64) {
        match outcome {
            ReloadOutcome::Applied { .. } => {
                self.metrics.reload("applied");
                self.metrics.forget_handles();
                self.key_usage.retain_keys_of(current);
                self.recent.follow(current);
            }
            ReloadOutcome::Refused(_) => self.metrics.reload("refused"),
            ReloadOutcome::Missing => self.metrics.reload("missing"),
            ReloadOutcome::Unchanged | ReloadOutcome::BackInLine => {}
        }
        self.metrics.set_generation(generation);
    }

    /// Whether an allowed request is logged, for a sampling fraction in (0, 1].
    fn sample(&self, fraction: f64) -> bool {
        if fraction >= 1.0 {
            return true;
        }
        let every = (1.0 / fraction).round().max(1.0) as u64;
        self.sampled
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(every)
    }

    /// Records a finished request: metrics always, a log line unless sampled out. The record's
    /// path is handed over to the recent-requests ring: a record is finished once.
    pub fn finish(&self, record: &mut RequestRecord, bytes_in: u64, bytes_out: u64) {
        self.finish_at(record, Instant::now(), bytes_in, bytes_out);
    }

    /// `finish` for a caller that has just read the clock: `now` is when the request ended.
    pub fn finish_at(
        &self,
        record: &mut RequestRecord,
        now: Instant,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let total = now.saturating_duration_since(record.started);
        self.metrics.request(
            record.user.as_ref(),
            record.route.as_ref(),
            record.decision,
            record.status,
            total,
            record.upstream_time,
        );
        self.metrics.protocol(record.protocol, record.tls.is_some());
        // One wall-clock read for the ring's time and the line's timestamp.
        let at = SystemTime::now();
        self.log_line(record, at, total, bytes_in, bytes_out);
        // The line is written: the ring takes the path over instead of copying it.
        let path = std::mem::take(&mut record.path);
        self.recent.record(record, path, total, at);
    }

    fn log_line(
        &self,
        record: &RequestRecord,
        at: SystemTime,
        total: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        let Some(log) = &self.request_log else {
            return;
        };
        // A shadow refusal is always logged: it is what an operator reads before enforcing.
        let sampled = record.decision == "allowed" && record.shadow_refusal.is_none();
        if !record.log || (sampled && !self.sample(record.sample)) {
            return;
        }
        let facts = request_line::LineFacts {
            bytes_in,
            bytes_out,
            total,
        };
        log.append(|pending| {
            request_line::write_line(&mut pending.bytes, &mut pending.clock, at, record, &facts)
        });
    }
}
