//! One request log line: a `RequestRecord` written as one JSON object straight into a byte
//! buffer, with no intermediate allocation, every string field escaped as JSON requires.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::record::RequestRecord;
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
    /// `YYYY-MM-DDTHH:MM:SS`; empty until the first line.
    text: Vec<u8>,
}

impl ClockText {
    /// Appends `"YYYY-MM-DDTHH:MM:SS.ffffffZ"` for `now` (UTC, microseconds), the form the
    /// tracing JSON writer used before this one.
    fn write(&mut self, now: SystemTime, out: &mut Vec<u8>) {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since.as_secs();
        if self.text.is_empty() || second != self.second {
            self.second = second;
            self.text.clear();
            civil_text(second, &mut self.text);
        }
        out.push(b'"');
        out.extend_from_slice(&self.text);
        out.push(b'.');
        write_padded(out, u64::from(since.subsec_micros()), 6);
        out.extend_from_slice(b"Z\"");
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
    out.extend_from_slice(b"{\"timestamp\":");
    clock.write(now, out);
    out.extend_from_slice(b",\"request_id\":\"");
    // As `HeaderValue::to_str` would have it: visible ASCII and tabs, or nothing.
    let id = record.request_id.as_bytes();
    if id.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        escape_into(out, id);
    }
    out.extend_from_slice(b"\",\"client\":\"");
    write_client(out, record.client);
    out.push(b'"');
    if let Some(user) = &record.user {
        string_field(out, b",\"user\":\"", user);
    }
    if let Some(credential) = record.presented.as_log() {
        plain_field(out, b",\"credential\":\"", credential);
    }
    if let Some(prefix) = &record.key_prefix {
        out.extend_from_slice(b",\"key_prefix\":\"");
        escape_into(out, prefix.as_bytes());
        out.push(b'"');
    }
    // A method is an HTTP token and a decision one of a fixed set of codes: neither holds a
    // character JSON escapes.
    plain_field(out, b",\"method\":\"", record.method.as_str());
    string_field(out, b",\"path\":\"", &record.path);
    if let Some(route) = &record.route {
        string_field(out, b",\"route\":\"", route);
    }
    if let Some(upstream) = &record.upstream {
        string_field(out, b",\"upstream\":\"", upstream);
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

fn plain_field(out: &mut Vec<u8>, opening: &[u8], value: &str) {
    out.extend_from_slice(opening);
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

fn string_field(out: &mut Vec<u8>, opening: &[u8], value: &str) {
    out.extend_from_slice(opening);
    escape_into(out, value.as_bytes());
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
/// other byte, multi-byte characters included, may stand as it is. Eight bytes are looked at
/// at once, and runs without an escape are copied whole: a line is mostly such runs.
pub fn escape_into(out: &mut Vec<u8>, text: &[u8]) {
    let mut run = 0;
    let mut i = 0;
    while i < text.len() {
        if let Some(word) = text.get(i..i + 8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            if !needs_escape_in(u64::from_le_bytes(bytes)) {
                i += 8;
                continue;
            }
        }
        let end = (i + 8).min(text.len());
        while i < end {
            let b = text[i];
            if NEEDS_ESCAPE[usize::from(b)] {
                out.extend_from_slice(&text[run..i]);
                escape_byte(out, b);
                run = i + 1;
            }
            i += 1;
        }
    }
    out.extend_from_slice(&text[run..]);
}

/// Whether any of the eight bytes is a control character, `"` or `\` (the classic "has a
/// byte less than n" and "has a zero byte" bit tricks; exact, not just likely).
fn needs_escape_in(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let zero_in = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    (below_space | zero_in(quote) | zero_in(backslash)) != 0
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
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_u64(out, u64::from(octet));
            }
        }
        // Rare enough for the formatting machinery; an address needs no escaping.
        ClientAddress::Ip(IpAddr::V6(v6)) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
        ClientAddress::Unreadable => out.extend_from_slice(b"unreadable"),
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

/// `n` (below 10^width) in exactly `width` decimal digits, `width` at most 20.
fn write_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = n;
    while rest > 0 && at >= 2 {
        at -= 2;
        digits[at..at + 2].copy_from_slice(&pair(rest));
        rest /= 100;
    }
    out.extend_from_slice(&digits[digits.len() - width..]);
}

/// Milliseconds with three decimals (microsecond resolution), as a JSON number.
fn write_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    write_u64(out, micros / 1000);
    out.push(b'.');
    write_padded(out, micros % 1000, 3);
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of Unix seconds (Howard Hinnant's civil-from-days).
fn civil_text(unix: u64, out: &mut Vec<u8>) {
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
    let year = yoe + era * 400 + i64::from(month <= 2);
    write_padded(out, year.max(0) as u64, 4);
    out.push(b'-');
    write_padded(out, month as u64, 2);
    out.push(b'-');
    write_padded(out, day as u64, 2);
    out.push(b'T');
    write_padded(out, secs / 3600, 2);
    out.push(b':');
    write_padded(out, secs / 60 % 60, 2);
    out.push(b':');
    write_padded(out, secs % 60, 2);
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
        for (n, width) in [
            (0, 6),
            (42, 6),
            (999_999, 6),
            (7, 3),
            (120, 3),
            (2026, 4),
            (5, 2),
        ] {
            let mut out = Vec::new();
            write_padded(&mut out, n, width);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{n:0width$}"));
        }
        let mut out = Vec::new();
        write_millis(&mut out, Duration::from_micros(12_003_045));
        assert_eq!(out, b"12003.045");
        let mut out = Vec::new();
        write_millis(&mut out, Duration::from_nanos(999));
        assert_eq!(out, b"0.000");
        for (unix, text) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_764_608_196, "2025-12-01T16:56:36"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            let mut out = Vec::new();
            civil_text(unix, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
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
}
