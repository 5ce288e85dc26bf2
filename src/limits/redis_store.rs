//! The shared store: limit state in Redis, changed only by server-side Lua scripts (one atomic
//! step each, on Redis's clock), through one multiplexed connection that reconnects by itself.
//!
//! Each call *leases* up to `want` requests: they are taken from the shared budget at once and
//! spent by this gateway alone until the lease expires, so a limited user pays a round trip per
//! lease, not per request. Leased requests are counted in Redis before any is admitted, so the
//! fleet never admits more than the shared budget allows; what leasing changes is *when* a
//! leased request is admitted (up to the lease's lifetime later). docs/limits.md works out the
//! worst case.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A round trip that takes longer than this counts as a store error.
const CALL_TIMEOUT: Duration = Duration::from_millis(500);
/// After an error, requests do not try the store again for this long (one probe then).
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(500);

/// GCRA in microseconds on Redis's clock. KEYS[1]: the user's TAT. ARGV: interval, tolerance,
/// want. Returns {granted, remaining, retry_after_us, reset_us}.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local function available(at)
  if now + tolerance < at then return 0 end
  return math.floor((now + tolerance - at) / interval) + 1
end
local granted = math.min(want, available(tat))
tat = tat + granted * interval
if granted > 0 then
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1000)
end
local retry = 0
if granted < want then retry = math.max(1, tat - tolerance - now) end
return {granted, available(tat), retry, tat - now}
";

/// A fixed-window count on Redis's clock. KEYS[1]: the user's quota key prefix. ARGV: limit,
/// period in ms, want. Returns {granted, remaining, reset_ms}.
const QUOTA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local window = math.floor(now / period)
local key = KEYS[1] .. ':' .. string.format('%.0f', window)
local used = tonumber(redis.call('GET', key)) or 0
local granted = math.max(0, math.min(want, limit - used))
if granted > 0 then
  used = redis.call('INCRBY', key, granted)
  redis.call('PEXPIREAT', key, string.format('%.0f', (window + 1) * period + 60000))
end
return {granted, math.max(0, limit - used), (window + 1) * period - now}
";

/// What the store said about one lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leased {
    pub granted: u32,
    /// Requests still in the shared budget after this lease.
    pub remaining: u64,
    /// When nothing more could be granted: how long until something can.
    pub retry_after: Duration,
    /// How long until the budget is whole again (GCRA) or the window ends (quota).
    pub reset: Duration,
}

/// The store could not be asked (unreachable, timed out, or resting after an error).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the rate-limit store is not answering; next attempt in under {RETRY_AFTER_ERROR:?}")]
    Resting,
    #[error("the rate-limit store did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("rate-limit store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the rate-limit store answered {0:?}, not what the script returns")]
    Reply(Vec<i64>),
}

/// Counts for metrics and `/status`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub round_trips: AtomicU64,
    pub errors: AtomicU64,
    /// Incidents: times the store went from answering to not answering.
    pub outages: AtomicU64,
}

pub struct RedisStore {
    /// The URL without credentials, for logs.
    shown: Box<str>,
    url: Box<str>,
    connection: ConnectionManager,
    gcra: Script,
    quota: Script,
    down: AtomicBool,
    /// Nanoseconds after `epoch` before which no request tries the store again.
    resting_until: AtomicU64,
    epoch: Instant,
    pub stats: StoreStats,
}

impl RedisStore {
    /// Prepares the connection; nothing is sent until the first request needs the store, so a
    /// gateway starts (and serves, per `on_store_error`) while Redis is down.
    pub fn new(url: &str, shown: &str) -> Result<RedisStore, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_AFTER_ERROR);
        Ok(RedisStore {
            shown: shown.into(),
            url: url.into(),
            connection: ConnectionManager::new_lazy_with_config(client, config)?,
            gcra: Script::new(GCRA_LUA),
            quota: Script::new(QUOTA_LUA),
            down: AtomicBool::new(false),
            resting_until: AtomicU64::new(0),
            epoch: Instant::now(),
            stats: StoreStats::default(),
        })
    }

    /// Whether this store was made from `url` (a reload that keeps the URL keeps the store).
    pub fn is_for(&self, url: &str) -> bool {
        *self.url == *url
    }

    /// False from the first failed call of an incident to the next answered one.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Leases up to `want` requests of a GCRA limit (`interval`, `tolerance` in microseconds).
    pub async fn lease_rate(
        &self,
        user: &str,
        interval: u64,
        tolerance: u64,
        want: u32,
    ) -> Result<Leased, StoreError> {
        let mut call = self.gcra.prepare_invoke();
        call.key(format!("apiward:{{{user}}}:rate"))
            .arg(interval)
            .arg(tolerance)
            .arg(want);
        let reply = self.call(call).await?;
        match reply[..] {
            [granted, remaining, retry_us, reset_us] => Ok(Leased {
                granted: granted.clamp(0, i64::from(want)) as u32,
                remaining: remaining.max(0) as u64,
                retry_after: Duration::from_micros(retry_us.max(0) as u64),
                reset: Duration::from_micros(reset_us.max(0) as u64),
            }),
            _ => Err(StoreError::Reply(reply)),
        }
    }

    /// Leases up to `want` requests of a quota of `limit` per `period`.
    pub async fn lease_quota(
        &self,
        user: &str,
        limit: u64,
        period: Duration,
        want: u32,
    ) -> Result<Leased, StoreError> {
        let period_ms = period.as_millis().max(1) as u64;
        let mut call = self.quota.prepare_invoke();
        // The period is part of the key: a reload that changes it starts a new count.
        call.key(format!("apiward:{{{user}}}:quota:{period_ms}"))
            .arg(limit)
            .arg(period_ms)
            .arg(want);
        let reply = self.call(call).await?;
        match reply[..] {
            [granted, remaining, reset_ms] => {
                let reset = Duration::from_millis(reset_ms.max(0) as u64);
                Ok(Leased {
                    granted: granted.clamp(0, i64::from(want)) as u32,
                    remaining: remaining.max(0) as u64,
                    retry_after: reset,
                    reset,
                })
            }
            _ => Err(StoreError::Reply(reply)),
        }
    }

    async fn call(&self, call: redis::ScriptInvocation<'_>) -> Result<Vec<i64>, StoreError> {
        let now = self.epoch.elapsed().as_nanos() as u64;
        if self.down.load(Ordering::Relaxed) {
            // One caller per rest period probes; the others answer per on_store_error at once.
            let until = self.resting_until.load(Ordering::Relaxed);
            if now < until
                || self
                    .resting_until
                    .compare_exchange(
                        until,
                        now + RETRY_AFTER_ERROR.as_nanos() as u64,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_err()
            {
                return Err(StoreError::Resting);
            }
        }
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let mut connection = self.connection.clone();
        let result =
            match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut connection)).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) => Err(StoreError::Redis(e)),
                Err(_) => Err(StoreError::Timeout),
            };
        match &result {
            Ok(_) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(store = %self.shown, "rate-limit store reachable again: limits are shared again");
                }
            }
            Err(e) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.resting_until.store(
                    self.epoch.elapsed().as_nanos() as u64 + RETRY_AFTER_ERROR.as_nanos() as u64,
                    Ordering::Relaxed,
                );
                if !self.down.swap(true, Ordering::Relaxed) {
                    self.stats.outages.fetch_add(1, Ordering::Relaxed);
                    // Once per incident; the count of failed calls is in the metrics.
                    tracing::warn!(store = %self.shown, error = %e, "rate-limit store unreachable: limited users are served per on_store_error until it answers again");
                }
            }
        }
        result
    }
}
