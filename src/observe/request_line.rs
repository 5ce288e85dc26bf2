//! One request log line: a `RequestRecord` written as one JSON object straight into a byte
//! buffer, with no intermediate allocation, every string field escaped as JSON requires.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::{LoggedPrefix, RequestRecord};
use crate::auth::address::ClientAddress;

/// What a line says beyond the record: measured when the request ended.
pub struct LineFacts {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub total: Duration,
}

/// The `timestamp` field's date and time to the second, made once per second and thread.
#[derive(Default)]
pub struct ClockText {
    second: u64,
    /// `"YYYY-MM-DDTHH:MM:SS.`; `second` is 0 until the first line (and 1970 needs no cache).
    text: [u8; 21],
}

impl ClockText {
    /// Appends `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` for `now` (UTC, microseconds), the form the
    /// tracing JSON writer used before this one.
    fn write(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if second != self.second || self.text[0] == 0 {
            self.second = second;
            self.text[0] = b'"';
            self.text[1..20].copy_from_slice(&civil_text(second));
            self.text[20] = b'.';
        }
        // Fixed lengths: copied inline, no call.
        out.extend_from_slice(&self.text);
        let micros = since.subsec_micros();
        let mut end = [0u8; 8];
        end[..6].copy_from_slice(&six_digits(micros));
        end[6..].copy_from_slice(b"Z\"");
        out.extend_from_slice(&end);
    }
}

/// Writes the line for `record`, ending in `\n`. The fields, their names and their order are
/// those of the tracing JSON line this writer replaced; a field with no value is left out.
pub fn write_line(
    out: &mut Vec<u8>,
    clock: &mut ClockText,
    now: SystemTime,
    record: &RequestRecord,
    facts: &LineFacts,
) {
    // One reservation for the longest line these fields can make (each string byte escaped to
    // six), so that no push below grows the buffer.
    let strings = record.request_id.len()
        + record.user.as_ref().map_or(0, |u| u.len())
        + record.path.len()
        + record.route.as_ref().map_or(0, |r| r.len())
        + record.upstream.as_ref().map_or(0, |u| u.len());
    out.reserve(LONGEST_FIXED + 6 * (strings + LoggedPrefix::MAX));
    out.extend_from_slice(b"{\"timestamp\":");
    clock.write(now, out);
    out.extend_from_slice(b",\"request_id\":\"");
    // As `HeaderValue::to_str` would have it: visible ASCII and tabs, or nothing. Our own ids
    // (hex digits) and the kept ones of trusted proxies (visible ASCII) take the first branch.
    let id = record.request_id.as_bytes();
    if is_plain_ascii(id) {
        out.extend_from_slice(id);
    } else if id.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        escape_into(out, id);
    }
    out.extend_from_slice(b"\",\"client\":\"");
    write_client(out, record.client);
    out.push(b'"');
    if let Some(user) = &record.user {
        string_field(out, b",\"user\":\"", user.as_bytes());
    }
    if let Some(credential) = record.presented.as_log() {
        plain_field(out, b",\"credential\":\"", credential);
    }
    if let Some(prefix) = &record.key_prefix {
        string_field(out, b",\"key_prefix\":\"", prefix.as_bytes());
    }
    // A method is an HTTP token and a decision one of a fixed set of codes: neither holds a
    // character JSON escapes.
    plain_field(out, b",\"method\":\"", record.method.as_str());
    string_field(out, b",\"path\":\"", record.path.as_bytes());
    if let Some(route) = &record.route {
        string_field(out, b",\"route\":\"", route.as_bytes());
    }
    if let Some(upstream) = &record.upstream {
        string_field(out, b",\"upstream\":\"", upstream.as_bytes());
    }
    plain_field(out, b",\"decision\":\"", record.decision);
    if let Some(shadow) = record.shadow_refusal {
        plain_field(out, b",\"shadow_refusal\":\"", shadow);
    }
    if let Some(limit) = record.limit {
        plain_field(out, b",\"limit\":\"", limit);
    }
    if let Some(remaining) = record.limit_remaining {
        out.extend_from_slice(b",\"limit_remaining\":");
        write_u64(out, remaining);
    }
    out.extend_from_slice(b",\"status\":");
    write_u64(out, u64::from(record.status));
    out.extend_from_slice(b",\"bytes_in\":");
    write_u64(out, facts.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    write_u64(out, facts.bytes_out);
    if let Some(upstream) = record.upstream_time {
        out.extend_from_slice(b",\"upstream_ms\":");
        write_millis(out, upstream);
    }
    out.extend_from_slice(b",\"total_ms\":");
    write_millis(out, facts.total);
    plain_field(out, b",\"protocol\":\"", record.protocol);
    if let Some(tls) = record.tls {
        plain_field(out, b",\"tls\":\"", tls);
    }
    out.extend_from_slice(b"}\n");
}

/// More than a line holds besides its strings: the field names and punctuation, the
/// timestamp, an IPv6 client, the fixed codes (`credential` to `tls`) and six numbers of at
/// most 20 digits.
const LONGEST_FIXED: usize = 1024;

fn plain_field(out: &mut Vec<u8>, opening: &[u8], value: &str) {
    out.extend_from_slice(opening);
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

fn string_field(out: &mut Vec<u8>, opening: &[u8], value: &[u8]) {
    out.extend_from_slice(opening);
    escape_into(out, value);
    out.push(b'"');
}

/// Which bytes JSON does not allow raw inside a string: the control characters, `"` and `\`.
const NEEDS_ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Appends `text` as the inside of a JSON string. `text` is UTF-8 or visible ASCII, so every
/// other byte, multi-byte characters included, may stand as it is. A string with nothing to
/// escape (nearly every one: a line is mostly such strings) is checked eight bytes at a time
/// and copied whole.
pub fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    if !any_needs_escape(text) {
        out.extend_from_slice(text);
        return;
    }
    let mut run = 0;
    for (i, &b) in text.iter().enumerate() {
        if NEEDS_ESCAPE[usize::from(b)] {
            out.extend_from_slice(&text[run..i]);
            escape_byte(out, b);
            run = i + 1;
        }
    }
    out.extend_from_slice(&text[run..]);
}

/// Whether any byte of `text` needs escaping: whole words, the last one overlapping the one
/// before it, so that no byte is looked at alone unless `text` is shorter than a word.
fn any_needs_escape(text: &[u8]) -> bool {
    if text.len() < 8 {
        return text.iter().any(|&b| NEEDS_ESCAPE[usize::from(b)]);
    }
    let mut words = text.chunks_exact(8);
    let mut found = false;
    for word in &mut words {
        found |= needs_escape_in(word_of(word));
    }
    if !words.remainder().is_empty() {
        found |= needs_escape_in(word_of(&text[text.len() - 8..]));
    }
    found
}

/// Whether every byte of `text` is visible ASCII or a space, and none is `"` or `\`: what can
/// be copied into a JSON string as it is, and what `HeaderValue::to_str` accepts.
fn is_plain_ascii(text: &[u8]) -> bool {
    if text.len() < 8 {
        return text
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && !NEEDS_ESCAPE[usize::from(b)]);
    }
    let mut words = text.chunks_exact(8);
    let mut found = false;
    for word in &mut words {
        found |= not_plain_in(word_of(word));
    }
    if !words.remainder().is_empty() {
        found |= not_plain_in(word_of(&text[text.len() - 8..]));
    }
    !found
}

fn word_of(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether one of the eight bytes is zero (exact as a whole, the classic bit trick).
fn has_zero(w: u64) -> bool {
    w.wrapping_sub(ONES) & !w & HIGH != 0
}

/// Whether any of the eight bytes is a control character, `"` or `\` (the classic "has a
/// byte less than n" and "has a zero byte" bit tricks; exact, not just likely).
fn needs_escape_in(word: u64) -> bool {
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    below_space != 0
        || has_zero(word ^ (ONES * u64::from(b'"')))
        || has_zero(word ^ (ONES * u64::from(b'\\')))
}

/// `needs_escape_in`, or a byte of 0x7f or above (DEL, or not ASCII).
fn not_plain_in(word: u64) -> bool {
    needs_escape_in(word) || word & HIGH != 0 || has_zero(word ^ (ONES * 0x7f))
}

fn escape_byte(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        _ => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
    }
}

fn write_client(out: &mut Vec<u8>, client: ClientAddress) {
    match client {
        ClientAddress::Ip(IpAddr::V4(v4)) => {
            // At most 15 bytes: written whole into a word-sized array, then cut to length.
            let mut text = [0u8; 16];
            let mut at = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[at] = b'.';
                    at += 1;
                }
                let (digits, len) = small_digits(octet);
                text[at..at + 3].copy_from_slice(&digits);
                at += len;
            }
            push_cut(out, &text, at);
        }
        // Rare enough for the formatting machinery; an address needs no escaping.
        ClientAddress::Ip(IpAddr::V6(v6)) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
        ClientAddress::Unreadable => out.extend_from_slice(b"unreadable"),
    }
}

/// Appends the first `len` bytes of `bytes`: the whole array (a fixed length, copied inline)
/// and then the surplus cut off again, cheaper than a copy of a length known only now.
fn push_cut<const N: usize>(out: &mut Vec<u8>, bytes: &[u8; N], len: usize) {
    let end = out.len() + len.min(N);
    out.extend_from_slice(bytes);
    out.truncate(end);
}

/// `n` in decimal, left-aligned in three bytes, and how many of them it takes.
fn small_digits(n: u8) -> ([u8; 3], usize) {
    let n = u64::from(n);
    if n < 10 {
        ([b'0' + n as u8, 0, 0], 1)
    } else if n < 100 {
        let [a, b] = pair(n);
        ([a, b, 0], 2)
    } else {
        let [a, b] = pair(n);
        ([b'0' + (n / 100) as u8, a, b], 3)
    }
}

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

fn pair(n: u64) -> [u8; 2] {
    let at = 2 * (n % 100) as usize;
    [PAIRS[at], PAIRS[at + 1]]
}

/// `n` in decimal, two digits per step.
pub fn write_u64(out: &mut Vec<u8>, n: u64) {
    if n < 10 {
        out.push(b'0' + n as u8);
        return;
    }
    if n < 100 {
        out.extend_from_slice(&pair(n));
        return;
    }
    if n < 1000 {
        let [a, b] = pair(n);
        out.extend_from_slice(&[b'0' + (n / 100) as u8, a, b]);
        return;
    }
    // Right-aligned in 20 digits, then the leading ones left out.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    while rest >= 100 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&pair(rest));
        rest /= 100;
    }
    if rest >= 10 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&pair(rest));
    } else {
        at -= 1;
        digits[at] = b'0' + rest as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// `n` (below 10^6) in exactly six digits.
fn six_digits(n: u32) -> [u8; 6] {
    let n = u64::from(n);
    let [a, b] = pair(n / 10_000);
    let [c, d] = pair(n / 100);
    let [e, f] = pair(n);
    [a, b, c, d, e, f]
}

/// Milliseconds with three decimals (microsecond resolution), as a JSON number.
fn write_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    write_u64(out, micros / 1000);
    let fraction = micros % 1000;
    let [a, b] = pair(fraction);
    out.extend_from_slice(&[b'.', b'0' + (fraction / 100) as u8, a, b]);
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of Unix seconds (Howard Hinnant's civil-from-days); the year
/// modulo 10,000.
fn civil_text(unix: u64) -> [u8; 19] {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = (yoe + era * 400 + i64::from(month <= 2)).max(0) as u64;
    let mut text = *b"0000-00-00T00:00:00";
    text[0..2].copy_from_slice(&pair(year / 100));
    text[2..4].copy_from_slice(&pair(year));
    text[5..7].copy_from_slice(&pair(month as u64));
    text[8..10].copy_from_slice(&pair(day as u64));
    text[11..13].copy_from_slice(&pair(secs / 3600));
    text[14..16].copy_from_slice(&pair(secs / 60 % 60));
    text[17..19].copy_from_slice(&pair(secs % 60));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(text: &str) -> String {
        let mut out = Vec::new();
        escape_into(&mut out, text.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_string_reads_back_as_itself() {
        let mut all_bytes = String::new();
        for c in (0u8..0x80).map(char::from) {
            all_bytes.push(c);
        }
        for text in [
            "",
            "/plain/path",
            "a\"quote",
            "back\\slash",
            "line\nbreak\r\t",
            "\u{0}\u{1f}\u{7f}",
            "é日本\u{2028}",
            all_bytes.as_str(),
        ] {
            let json = format!("\"{}\"", escaped(text));
            let back: String =
                serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(back, text);
        }
    }

    #[test]
    fn the_eight_byte_check_agrees_with_the_table_for_every_byte_in_every_place() {
        for b in 0..=255u8 {
            for place in 0..8 {
                let mut bytes = [b'a'; 8];
                bytes[place] = b;
                let word = u64::from_le_bytes(bytes);
                assert_eq!(
                    needs_escape_in(word),
                    NEEDS_ESCAPE[usize::from(b)],
                    "byte {b} at {place}"
                );
            }
        }
        // Bytes next to each other do not hide or fake one another (the borrow of the trick).
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let word = u64::from_le_bytes([a, b, b'x', b'x', b'x', b'x', b'x', b'x']);
                let expected = NEEDS_ESCAPE[usize::from(a)] || NEEDS_ESCAPE[usize::from(b)];
                assert_eq!(needs_escape_in(word), expected, "bytes {a} {b}");
            }
        }
    }

    #[test]
    fn whole_strings_are_judged_as_byte_by_byte_would_for_every_length_and_place() {
        for len in 0..20 {
            for place in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[place] = b;
                    assert_eq!(any_needs_escape(&text), NEEDS_ESCAPE[usize::from(b)]);
                    let plain = (0x20..0x7f).contains(&b) && !NEEDS_ESCAPE[usize::from(b)];
                    assert_eq!(is_plain_ascii(&text), plain, "byte {b} at {place} of {len}");
                }
            }
            assert!(!any_needs_escape(&vec![b'a'; len]) && is_plain_ascii(&vec![b'a'; len]));
        }
    }

    #[test]
    fn numbers_and_times_are_written_as_format_would() {
        let powers = (0..20).flat_map(|p| {
            let ten = 10u64.pow(p);
            [ten - 1, ten, ten + 1]
        });
        for n in (0..100_000).chain(powers).chain([u64::MAX]) {
            let mut out = Vec::new();
            write_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
        for n in (0..1_000_000).step_by(7).chain([999_999]) {
            assert_eq!(six_digits(n), format!("{n:06}").as_bytes());
        }
        for octet in 0..=255u8 {
            let (digits, len) = small_digits(octet);
            assert_eq!(&digits[..len], octet.to_string().as_bytes());
        }
        let mut out = Vec::new();
        write_millis(&mut out, Duration::from_micros(12_003_045));
        assert_eq!(out, b"12003.045");
        let mut out = Vec::new();
        write_millis(&mut out, Duration::from_nanos(999));
        assert_eq!(out, b"0.000");
        for micros in [1_000, 1_001, 1_010, 1_100, 999_999_999] {
            let mut out = Vec::new();
            write_millis(&mut out, Duration::from_micros(micros));
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("{}.{:03}", micros / 1000, micros % 1000)
            );
        }
        for (unix, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_764_608_196, "2025-12-01T16:56:36"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            assert_eq!(civil_text(unix), text.as_bytes());
        }
    }

    #[test]
    fn the_timestamp_has_microseconds_and_a_zone() {
        let mut clock = ClockText::default();
        let mut out = Vec::new();
        clock.write(UNIX_EPOCH + Duration::from_micros(1_000_000_042), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"1970-01-01T00:16:40.000042Z\""
        );
    }

    fn full_record() -> RequestRecord {
        RequestRecord {
            started: std::time::Instant::now(),
            request_id: http::HeaderValue::from_static("0123456789abcdef00000001"),
            client: ClientAddress::Ip("192.0.2.7".parse().unwrap()),
            user: Some(std::sync::Arc::from("a\"b@x.org")),
            key_prefix: Some(super::super::LoggedPrefix::new("aw_AbCdE")),
            presented: crate::refusal::Presented::Key,
            method: http::Method::GET,
            path: "/p/é\\\u{1}/a-path-longer-than-a-word".into(),
            route: Some(std::sync::Arc::from("/p")),
            upstream: Some(std::sync::Arc::from("items")),
            decision: "allowed",
            status: 200,
            upstream_time: Some(Duration::from_micros(1_500)),
            log: true,
            sample: 1.0,
            limit: Some("admitted"),
            limit_remaining: Some(12_345),
            shadow_refusal: Some("forbidden"),
            protocol: "h1",
            tls: Some("TLSv1.3"),
        }
    }

    fn line_of(
        record: &RequestRecord,
        clock: &mut ClockText,
        at: SystemTime,
        facts: &LineFacts,
    ) -> String {
        let mut out = Vec::new();
        write_line(&mut out, clock, at, record, facts);
        let text = String::from_utf8(out).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(json.is_object() && text.ends_with("}\n") && text.matches('\n').count() == 1);
        text
    }

    #[test]
    fn a_line_has_every_field_in_order_escaped() {
        let at = UNIX_EPOCH + Duration::from_micros(1_764_608_196_000_042);
        let facts = LineFacts {
            bytes_in: 0,
            bytes_out: 1_234_567,
            total: Duration::from_micros(12_003_045),
        };
        let mut clock = ClockText::default();
        assert_eq!(
            line_of(&full_record(), &mut clock, at, &facts),
            concat!(
                r#"{"timestamp":"2025-12-01T16:56:36.000042Z","request_id":"0123456789abcdef00000001","#,
                r#""client":"192.0.2.7","user":"a\"b@x.org","credential":"key","key_prefix":"aw_AbCdE","#,
                r#""method":"GET","path":"/p/é\\\u0001/a-path-longer-than-a-word","route":"/p","#,
                r#""upstream":"items","decision":"allowed","shadow_refusal":"forbidden","limit":"admitted","#,
                r#""limit_remaining":12345,"status":200,"bytes_in":0,"bytes_out":1234567,"#,
                r#""upstream_ms":1.500,"total_ms":12003.045,"protocol":"h1","tls":"TLSv1.3"}"#,
                "\n"
            )
        );
        // Without the optional fields; a trusted proxy's id with a quote; other clients; the
        // clock's cache across seconds.
        let mut bare = full_record();
        bare.request_id = http::HeaderValue::from_static("proxy-\"id\"");
        bare.client = ClientAddress::Ip("10.0.0.255".parse().unwrap());
        bare.user = None;
        bare.key_prefix = None;
        bare.presented = crate::refusal::Presented::Nothing;
        bare.method = http::Method::POST;
        bare.path = "/".into();
        bare.route = None;
        bare.upstream = None;
        bare.decision = "missing_credentials";
        bare.status = 401;
        bare.upstream_time = None;
        bare.limit = None;
        bare.limit_remaining = None;
        bare.shadow_refusal = None;
        bare.protocol = "h2";
        bare.tls = None;
        let facts = LineFacts {
            bytes_in: 99,
            bytes_out: 1_000,
            total: Duration::from_nanos(999),
        };
        assert_eq!(
            line_of(&bare, &mut clock, at + Duration::from_secs(1), &facts),
            concat!(
                r#"{"timestamp":"2025-12-01T16:56:37.000042Z","request_id":"proxy-\"id\"","client":"10.0.0.255","#,
                r#""method":"POST","path":"/","decision":"missing_credentials","status":401,"bytes_in":99,"#,
                r#""bytes_out":1000,"total_ms":0.000,"protocol":"h2"}"#,
                "\n"
            )
        );
        bare.client = ClientAddress::Ip("2001:db8::1".parse().unwrap());
        bare.request_id = http::HeaderValue::from_bytes(b"bad\xff").unwrap();
        let text = line_of(&bare, &mut clock, at - Duration::from_micros(43), &facts);
        assert!(
            text.starts_with(r#"{"timestamp":"2025-12-01T16:56:35.999999Z","request_id":"","client":"2001:db8::1","#),
            "{text}"
        );
        bare.client = ClientAddress::Unreadable;
        bare.request_id = http::HeaderValue::from_static("tab\there");
        let text = line_of(&bare, &mut clock, UNIX_EPOCH, &facts);
        assert!(
            text.starts_with(r#"{"timestamp":"1970-01-01T00:00:00.000000Z","request_id":"tab\there","client":"unreadable","#),
            "{text}"
        );
    }
}
