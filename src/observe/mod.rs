//! What the gateway tells operators: metrics, one log line per request, key last-use, request ids.

pub mod key_usage;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod recent;
pub mod request_line;
pub mod request_log;
mod series;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use crate::config::reload::ReloadOutcome;
use crate::snapshot::Snapshot;

pub use key_usage::KeyUsage;
pub use metrics::Metrics;
pub use recent::RecentRequests;
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
        if let Some(log) = &self.request_log {
            if !log.close(limit) {
                tracing::warn!(
                    ?limit,
                    "the request log's destination took no bytes at shutdown: its last lines are lost"
                );
            }
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
        self.sampled.fetch_add(1, Ordering::Relaxed) % every == 0
    }

    /// Records a finished request: metrics always, a log line unless sampled out.
    pub fn finish(&self, record: &RequestRecord, bytes_in: u64, bytes_out: u64) {
        self.finish_at(record, Instant::now(), bytes_in, bytes_out);
    }

    /// `finish` for a caller that has just read the clock: `now` is when the request ended.
    pub fn finish_at(&self, record: &RequestRecord, now: Instant, bytes_in: u64, bytes_out: u64) {
        let total = now.saturating_duration_since(record.started);
        self.metrics.request(
            record.user.as_ref(),
            record.route.as_ref(),
            record.decision,
            record.status,
            total,
            record.upstream_time,
        );
        self.recent.record(record, total);
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
        let now = SystemTime::now();
        log.append(|pending| {
            request_line::write_line(&mut pending.bytes, &mut pending.clock, now, record, &facts)
        });
    }
}

/// Everything known about one request by the time its response starts.
pub struct RequestRecord {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub client: crate::auth::address::ClientAddress,
    pub user: Option<Arc<str>>,
    pub key_prefix: Option<Box<str>>,
    /// What the request presented to identify itself (the log's `credential`).
    pub presented: crate::refusal::Presented,
    pub method: http::Method,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub decision: &'static str,
    pub status: u16,
    pub upstream_time: Option<Duration>,
    /// Whether a log line is written at all (`access_log = "off"` turns it off).
    pub log: bool,
    pub sample: f64,
    /// The limit step: `admitted`, the kind that refused (`rate_limited`, ...), or `None` for
    /// a user without limits or a request refused before them.
    pub limit: Option<&'static str>,
    /// The least of what is left of the user's limits after this request.
    pub limit_remaining: Option<u64>,
    /// What the group's `shadow_allow` would have answered an admitted request it refuses
    /// (`forbidden`); `None` when it allows it, or the group has none.
    pub shadow_refusal: Option<&'static str>,
}

/// Request ids: a random per-process prefix and a counter, unique without coordination.
struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut seed = [0u8; 8];
        if getrandom::fill(&mut seed).is_err() {
            // No OS randomness: time is unique enough for correlating log lines.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            seed = nanos.to_le_bytes();
        }
        RequestIds {
            prefix: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    /// `{prefix:016x}{n:08x}`, written by hand: `format!` costs about 1,000 instructions here, a
    /// noticeable part of a request (docs/benchmarks.md).
    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut text = [0u8; 32];
        let len = request_id_text(self.prefix, n, &mut text);
        HeaderValue::from_bytes(&text[..len]).expect("hex digits are a valid header value")
    }
}

/// Writes `prefix` as 16 hex digits and `n` as at least 8, returning the length.
fn request_id_text(prefix: u64, n: u64, out: &mut [u8; 32]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out[..16].iter_mut().enumerate() {
        *byte = HEX[((prefix >> (60 - 4 * i)) & 0xf) as usize];
    }
    let digits = (16 - n.leading_zeros() as usize / 4).max(8);
    for (i, byte) in out[16..16 + digits].iter_mut().enumerate() {
        *byte = HEX[((n >> (4 * (digits - 1 - i))) & 0xf) as usize];
    }
    16 + digits
}

#[cfg(test)]
mod request_id_tests {
    use super::request_id_text;

    #[test]
    fn request_ids_read_as_the_format_string_would_write_them() {
        for (prefix, n) in [
            (0, 0),
            (0x0123_4567_89ab_cdef, 1),
            (u64::MAX, 0xffff_ffff),
            (42, 0x1_0000_0000),
            (7, u64::MAX),
        ] {
            let mut out = [0u8; 32];
            let len = request_id_text(prefix, n, &mut out);
            assert_eq!(
                std::str::from_utf8(&out[..len]).unwrap(),
                format!("{prefix:016x}{n:08x}")
            );
        }
    }
}
