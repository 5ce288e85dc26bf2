//! One request's record, what its log line, metrics and recent-requests entry are made of; and
//! the request ids.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;

/// Everything known about one request by the time its response starts.
pub struct RequestRecord {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub client: crate::auth::address::ClientAddress,
    pub user: Option<Arc<str>>,
    pub key_prefix: Option<LoggedPrefix>,
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
    /// `h1` or `h2`.
    pub protocol: &'static str,
    /// The TLS version of the client's connection (`TLSv1.3`), `None` for plain TCP.
    pub tls: Option<&'static str>,
}

/// A key's prefix as a request's log line and its recent-requests entry show it, kept inline so
/// that a logged request allocates nothing for it: what `credential::key_prefix` gives is at most
/// `KEY_PREFIX_LEN` characters of at most 4 bytes, and a configured prefix (`KeyPrefix`) at most
/// 16 bytes, so both always fit.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LoggedPrefix {
    len: u8,
    bytes: [u8; LoggedPrefix::MAX],
}

impl LoggedPrefix {
    pub const MAX: usize = 4 * crate::auth::credential::KEY_PREFIX_LEN;

    /// `text`, cut at a character boundary if longer than `MAX` bytes (which no key prefix is).
    pub fn new(text: &str) -> LoggedPrefix {
        let mut end = text.len().min(LoggedPrefix::MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; LoggedPrefix::MAX];
        bytes[..end].copy_from_slice(&text.as_bytes()[..end]);
        LoggedPrefix {
            len: end as u8,
            bytes,
        }
    }

    /// The UTF-8 bytes, without checking them again (the log line writes them as they are).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl From<crate::snapshot::users::KeyPrefix> for LoggedPrefix {
    fn from(prefix: crate::snapshot::users::KeyPrefix) -> LoggedPrefix {
        let text = prefix.as_bytes();
        let mut bytes = [0u8; LoggedPrefix::MAX];
        // `KeyPrefix::MAX` (16) is less than `MAX`, and its bytes are valid UTF-8.
        let len = text.len().min(LoggedPrefix::MAX);
        bytes[..len].copy_from_slice(&text[..len]);
        LoggedPrefix {
            len: len as u8,
            bytes,
        }
    }
}

impl std::ops::Deref for LoggedPrefix {
    type Target = str;

    fn deref(&self) -> &str {
        // Built from a whole `&str` cut at a character boundary: valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl std::fmt::Debug for LoggedPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

/// Request ids: a random per-process prefix and a counter, unique without coordination.
/// Each thread takes the counter's numbers a block at a time and counts through its block on its
/// own, so that the workers of `worker_runtime = "per_worker"` do not bounce the counter's cache
/// line between their cores on every request. Ids stay unique, and increase on each thread.
pub(super) struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

/// How many numbers a thread takes at once.
const ID_BLOCK: u64 = 1024;

thread_local! {
    /// This thread's block: whose it is (the `RequestIds`' address and prefix), the next
    /// number, its end.
    static ID_BLOCK_OF_THREAD: Cell<(usize, u64, u64, u64)> = const { Cell::new((0, 0, 0, 0)) };
}

impl RequestIds {
    pub(super) fn new() -> RequestIds {
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
    pub(super) fn next(&self) -> HeaderValue {
        let n = self.number();
        let mut text = [0u8; 32];
        let len = request_id_text(self.prefix, n, &mut text);
        HeaderValue::from_bytes(&text[..len]).expect("hex digits are a valid header value")
    }

    /// The next number of this thread's block, taking a new block when it is used up or
    /// belongs to another `RequestIds` (the random prefix tells one left by an earlier gateway
    /// at the same address).
    fn number(&self) -> u64 {
        let me = std::ptr::from_ref(self) as usize;
        ID_BLOCK_OF_THREAD.with(|block| {
            let (owner, prefix, next, end) = block.get();
            let (n, end) = if owner == me && prefix == self.prefix && next < end {
                (next, end)
            } else {
                let start = self.counter.fetch_add(ID_BLOCK, Ordering::Relaxed);
                (start, start + ID_BLOCK)
            };
            block.set((me, self.prefix, n + 1, end));
            n
        })
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
    use super::{ID_BLOCK, LoggedPrefix, RequestIds, request_id_text};

    #[test]
    fn a_logged_prefix_holds_every_key_prefix_whole() {
        use crate::auth::credential::key_prefix;
        // A presented key is visible ASCII (`HeaderValue::to_str`); eight characters of four
        // bytes fit as well.
        let widest = "𝄞".repeat(20);
        for prefix in [
            key_prefix("aw_AbCdEfGhIjKlMnOp"),
            key_prefix("a"),
            "𝄞".repeat(8).as_str(),
        ] {
            assert_eq!(&*LoggedPrefix::new(prefix), prefix);
        }
        let configured = crate::snapshot::users::KeyPrefix::new("aw_0123456789abc").unwrap();
        assert_eq!(&*LoggedPrefix::from(configured), "aw_0123456789abc");
        // Longer than any key prefix: cut at a character boundary.
        let cut = LoggedPrefix::new(&widest);
        assert_eq!(cut.len(), LoggedPrefix::MAX);
        assert!(widest.starts_with(&*cut));
        let odd = format!("a{}", "é".repeat(20));
        assert!(odd.starts_with(&*LoggedPrefix::new(&odd)));
    }

    #[test]
    fn request_ids_are_unique_across_threads_and_increase_on_each() {
        let ids = std::sync::Arc::new(RequestIds::new());
        let per_thread = 3 * ID_BLOCK as usize + 7;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = std::sync::Arc::clone(&ids);
                std::thread::spawn(move || {
                    (0..per_thread).map(|_| ids.number()).collect::<Vec<u64>>()
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            let numbers = t.join().unwrap();
            assert!(
                numbers.windows(2).all(|w| w[0] < w[1]),
                "increasing on a thread"
            );
            for n in numbers {
                assert!(all.insert(n), "{n} given twice");
            }
        }
        assert_eq!(all.len(), 4 * per_thread);
        // Another gateway's ids on a thread that served this one start from its own counter.
        let other = RequestIds::new();
        assert_eq!(other.number(), 0);
        let again = ids.number();
        assert!(!all.contains(&again), "{again} given twice");
    }

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
