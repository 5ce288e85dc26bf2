//! Recent requests in memory, for the console and `/api/v1`: a bounded ring per API user, one
//! overall ring of refusals of callers who are no user (unknown keys), and each user's allowed
//! and refused counts per hour of the last 24 hours. Never a key or a password: only the key's
//! prefix, as the request log has it.
//!
//! Memory: an entry is about 200 bytes plus its path (at most `MAX_PATH` bytes kept), so the
//! default 50 per user cost about 10-25 KB per user that has sent requests, and the default 500
//! refusals about 100-250 KB. The hourly counts are 24 × 16 bytes per user.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use http::HeaderValue;

use super::record::{LoggedPrefix, RequestRecord};
use crate::auth::address::ClientAddress;
use crate::snapshot::Snapshot;

/// A longer path is cut here (at a character boundary) in the ring; the log keeps it whole.
pub const MAX_PATH: usize = 256;

/// One finished request, as the console shows it.
#[derive(Debug, Clone)]
pub struct RecentRequest {
    pub at_unix_ms: i64,
    pub method: http::Method,
    pub path: Box<str>,
    pub status: u16,
    /// `allowed`, or the refusal or upstream error code (`user_inactive`, `upstream_timeout`).
    pub decision: &'static str,
    pub client: ClientAddress,
    pub latency: Duration,
    pub request_id: HeaderValue,
    pub key_prefix: Option<LoggedPrefix>,
}

/// Allowed and refused requests of one hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HourCount {
    /// Unix seconds / 3600.
    pub hour: i64,
    pub allowed: u32,
    pub refused: u32,
}

#[derive(Default)]
struct UserActivity {
    ring: VecDeque<RecentRequest>,
    hours: [HourCount; 24],
}

/// The rings; their sizes follow `[server] recent_requests_per_user` and `recent_refusals` at
/// every reload.
pub struct RecentRequests {
    per_user: AtomicUsize,
    refusals_kept: AtomicUsize,
    users: DashMap<Arc<str>, Mutex<UserActivity>>,
    refusals: Mutex<VecDeque<RecentRequest>>,
}

impl Default for RecentRequests {
    fn default() -> Self {
        RecentRequests {
            per_user: AtomicUsize::new(crate::config::compile::DEFAULT_RECENT_PER_USER),
            refusals_kept: AtomicUsize::new(crate::config::compile::DEFAULT_RECENT_REFUSALS),
            users: DashMap::new(),
            refusals: Mutex::new(VecDeque::new()),
        }
    }
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn push_bounded(ring: &mut VecDeque<RecentRequest>, entry: RecentRequest, keep: usize) {
    while ring.len() >= keep.max(1) {
        ring.pop_front();
    }
    if keep > 0 {
        ring.push_back(entry);
    }
}

impl RecentRequests {
    /// Takes the sizes of the snapshot now serving and forgets users it no longer has.
    pub fn follow(&self, snapshot: &Snapshot) {
        let per_user = snapshot.console.recent_requests_per_user;
        let refusals = snapshot.console.recent_refusals;
        self.per_user.store(per_user, Ordering::Relaxed);
        self.refusals_kept.store(refusals, Ordering::Relaxed);
        self.users
            .retain(|id, _| snapshot.user_index_of(id).is_some());
        for entry in self.users.iter() {
            let mut a = entry.value().lock().unwrap_or_else(|p| p.into_inner());
            while a.ring.len() > per_user {
                a.ring.pop_front();
            }
        }
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        while r.len() > refusals {
            r.pop_front();
        }
    }

    /// Remembers a finished request, ended at `at`: in its user's ring, or, refused without a
    /// user, overall. `path` is the record's path, handed over rather than copied (the request
    /// log has written its line by now); empty when the request log is off.
    pub fn record(&self, record: &RequestRecord, path: String, latency: Duration, at: SystemTime) {
        let at_unix_ms = unix_ms(at);
        let refused = record.decision != "allowed";
        let make = || {
            let mut path = path;
            if path.len() > MAX_PATH {
                let mut end = MAX_PATH;
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                path.truncate(end);
            }
            RecentRequest {
                at_unix_ms,
                method: record.method.clone(),
                // No copy: the record's path was made to its length.
                path: path.into_boxed_str(),
                status: record.status,
                decision: record.decision,
                client: record.client,
                latency,
                request_id: record.request_id.clone(),
                key_prefix: record.key_prefix,
            }
        };
        match &record.user {
            Some(user) => {
                let keep = self.per_user.load(Ordering::Relaxed);
                let slot = self.users.entry(Arc::clone(user)).or_default();
                let mut a = slot.lock().unwrap_or_else(|p| p.into_inner());
                let hour = at_unix_ms.div_euclid(3_600_000);
                let count = &mut a.hours[hour.rem_euclid(24) as usize];
                if count.hour != hour {
                    *count = HourCount {
                        hour,
                        ..HourCount::default()
                    };
                }
                if refused {
                    count.refused = count.refused.saturating_add(1);
                } else {
                    count.allowed = count.allowed.saturating_add(1);
                }
                push_bounded(&mut a.ring, make(), keep);
            }
            None if refused => {
                let keep = self.refusals_kept.load(Ordering::Relaxed);
                let entry = make();
                let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
                push_bounded(&mut r, entry, keep);
            }
            None => {}
        }
    }

    /// The user's recent requests, newest first.
    pub fn of_user(&self, id: &str) -> Vec<RecentRequest> {
        self.users.get(id).map_or_else(Vec::new, |slot| {
            let a = slot.lock().unwrap_or_else(|p| p.into_inner());
            a.ring.iter().rev().cloned().collect()
        })
    }

    /// Recent refusals of callers who are no user, newest first.
    pub fn refusals(&self) -> Vec<RecentRequest> {
        let r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        r.iter().rev().cloned().collect()
    }

    /// The user's counts for each of the last 24 hours, oldest first, the current hour last.
    pub fn hours_of_user(&self, id: &str) -> [HourCount; 24] {
        let now_hour = unix_ms(SystemTime::now()).div_euclid(3_600_000);
        let mut out = [HourCount::default(); 24];
        for (i, slot) in out.iter_mut().enumerate() {
            slot.hour = now_hour - 23 + i as i64;
        }
        if let Some(entry) = self.users.get(id) {
            let a = entry.lock().unwrap_or_else(|p| p.into_inner());
            for count in a
                .hours
                .iter()
                .filter(|c| c.hour > now_hour - 24 && c.hour <= now_hour)
            {
                let i = (count.hour - (now_hour - 23)) as usize;
                out[i] = *count;
            }
        }
        out
    }

    /// Allowed and refused requests of the user in the last 24 hours.
    pub fn last_24h(&self, id: &str) -> (u64, u64) {
        self.hours_of_user(id).iter().fold((0, 0), |(a, r), c| {
            (a + u64::from(c.allowed), r + u64::from(c.refused))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn record(user: Option<&str>, decision: &'static str, path: &str) -> RequestRecord {
        RequestRecord {
            started: Instant::now(),
            request_id: HeaderValue::from_static("r1"),
            client: ClientAddress::Ip("192.0.2.7".parse().unwrap()),
            user: user.map(Arc::from),
            key_prefix: Some(LoggedPrefix::new("aw_AbCdE")),
            presented: crate::refusal::Presented::Key,
            method: http::Method::GET,
            path: path.into(),
            route: None,
            upstream: None,
            decision,
            status: if decision == "allowed" { 200 } else { 403 },
            upstream_time: None,
            log: true,
            sample: 1.0,
            limit: None,
            limit_remaining: None,
            shadow_refusal: None,
            protocol: "h1",
            tls: None,
        }
    }

    /// Records `r` as `Telemetry::finish_at` does, handing its path over.
    fn keep(recent: &RecentRequests, mut r: RequestRecord) {
        let path = std::mem::take(&mut r.path);
        recent.record(&r, path, Duration::ZERO, SystemTime::now());
    }

    #[test]
    fn rings_are_bounded_newest_first_and_count_the_hour() {
        let recent = RecentRequests::default();
        recent.per_user.store(3, Ordering::Relaxed);
        recent.refusals_kept.store(2, Ordering::Relaxed);
        for i in 0..5 {
            keep(
                &recent,
                record(Some("a@x.org"), "allowed", &format!("/p/{i}")),
            );
        }
        keep(&recent, record(Some("a@x.org"), "user_inactive", "/p/x"));
        let of_a = recent.of_user("a@x.org");
        assert_eq!(
            of_a.iter().map(|r| &*r.path).collect::<Vec<_>>(),
            ["/p/x", "/p/4", "/p/3"]
        );
        assert_eq!(recent.last_24h("a@x.org"), (5, 1));
        assert_eq!(recent.hours_of_user("a@x.org")[23].allowed, 5);
        for i in 0..3 {
            keep(
                &recent,
                record(None, "invalid_credentials", &format!("/u/{i}")),
            );
        }
        keep(&recent, record(None, "allowed", "/not-kept"));
        let refusals = recent.refusals();
        assert_eq!(refusals.len(), 2);
        assert_eq!(&*refusals[0].path, "/u/2");
        assert_eq!(recent.of_user("nobody@x.org").len(), 0);
    }

    #[test]
    fn a_long_path_is_cut_at_a_character_boundary() {
        let recent = RecentRequests::default();
        let path = format!("/{}", "é".repeat(300));
        keep(&recent, record(Some("a@x.org"), "allowed", &path));
        let kept = &recent.of_user("a@x.org")[0].path;
        assert!(kept.len() <= MAX_PATH && path.starts_with(&**kept));
    }
}
