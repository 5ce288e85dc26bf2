//! TOML text → `RawConfig`. A large file is parsed on every core: it is cut before `[users."…"]`
//! headers, the pieces are parsed at once, and the users are merged back with their spans moved
//! to where they stand in the whole file. Whenever the pieces could mean anything other than the
//! whole (a parse error, a table spread over two pieces, anything but users after the first
//! piece), the whole file is parsed in one go instead, so results and errors are always exactly
//! those of one sequential parse.

use std::ops::Range;

use toml::Spanned;

use super::raw::{RawAddresses, RawClientCertificate, RawConfig, RawKey, RawRateLimit, RawUser};

/// Below this size one parse is fast enough and splitting costs more than it saves.
const PARALLEL_THRESHOLD: usize = 2 * 1024 * 1024;

/// Parses the whole text; the error is toml's own, with its span in the whole text.
pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
    let pieces = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(8);
    if text.len() >= PARALLEL_THRESHOLD
        && pieces > 1
        && let Some(raw) = parse_in_pieces(text, pieces)
    {
        return Ok(raw);
    }
    toml::from_str(text)
}

fn parse_in_pieces(text: &str, pieces: usize) -> Option<RawConfig> {
    let cuts = cut_points(text, pieces);
    if cuts.len() < 2 {
        return None;
    }
    let mut bounds: Vec<Range<usize>> = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in &cuts {
        bounds.push(start..cut);
        start = cut;
    }
    bounds.push(start..text.len());

    let parsed: Vec<Option<RawConfig>> = std::thread::scope(|scope| {
        let handles: Vec<_> = bounds
            .iter()
            .map(|r| {
                let piece = &text[r.clone()];
                scope.spawn(move || toml::from_str::<RawConfig>(piece).ok())
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });

    let mut pieces = parsed.into_iter();
    let mut whole = pieces.next()??;
    for (piece, range) in pieces.zip(bounds.iter().skip(1)) {
        let piece = piece?;
        // Only users may follow the first cut; anything else is left to the sequential parse.
        if !piece.upstreams.is_empty()
            || !piece.routes.is_empty()
            || !piece.groups.is_empty()
            || piece.server.is_some()
            || piece.rate_limits.is_some()
        {
            return None;
        }
        for (id, user) in piece.users {
            let id = shift(id, range.start);
            let user = shift_user(user, range.start);
            if whole.users.insert(id, user).is_some() {
                // The same table in two pieces: TOML rules decide, so the whole file must be parsed.
                return None;
            }
        }
    }
    Some(whole)
}

/// Byte offsets of line starts of the form `[users.`, chosen to cut the text into about `pieces`
/// equal parts.
fn cut_points(text: &str, pieces: usize) -> Vec<usize> {
    let target = text.len() / pieces;
    let mut cuts = Vec::with_capacity(pieces - 1);
    let mut next_at = target;
    while cuts.len() + 1 < pieces && next_at < text.len() {
        let Some(found) = find_user_header(text, next_at) else {
            break;
        };
        cuts.push(found);
        next_at = found + target;
    }
    cuts
}

fn find_user_header(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while let Some(nl) = bytes[i..].iter().position(|&b| b == b'\n') {
        let line = i + nl + 1;
        if bytes[line..].starts_with(b"[users.") {
            return Some(line);
        }
        i = line;
    }
    None
}

pub(super) fn shift<T>(s: Spanned<T>, by: usize) -> Spanned<T> {
    let span = s.span();
    Spanned::new(span.start + by..span.end + by, s.into_inner())
}

fn shift_opt<T>(s: Option<Spanned<T>>, by: usize) -> Option<Spanned<T>> {
    s.map(|s| shift(s, by))
}

pub(super) fn shift_user(user: Spanned<RawUser>, by: usize) -> Spanned<RawUser> {
    let span = user.span();
    let u = user.into_inner();
    let moved = RawUser {
        display_name: u.display_name,
        first_name: u.first_name,
        last_name: u.last_name,
        description: u.description,
        status: shift(u.status, by),
        group: shift(u.group, by),
        remote_addresses: shift_opt::<RawAddresses>(u.remote_addresses, by),
        keys: u.keys.into_iter().map(|k| shift_key(k, by)).collect(),
        password_hash: shift_opt(u.password_hash, by),
        client_certificates: u
            .client_certificates
            .into_iter()
            .map(|c| shift_certificate(c, by))
            .collect(),
        rate_limit: u.rate_limit.map(|r| shift_rate_limit(r, by)),
    };
    Spanned::new(span.start + by..span.end + by, moved)
}

fn shift_rate_limit(limit: Spanned<RawRateLimit>, by: usize) -> Spanned<RawRateLimit> {
    let span = limit.span();
    let l = limit.into_inner();
    let moved = RawRateLimit {
        requests: shift(l.requests, by),
        per: shift(l.per, by),
        burst: shift_opt(l.burst, by),
    };
    Spanned::new(span.start + by..span.end + by, moved)
}

fn shift_key(key: Spanned<RawKey>, by: usize) -> Spanned<RawKey> {
    let span = key.span();
    let k = key.into_inner();
    let moved = RawKey {
        sha256: shift(k.sha256, by),
        prefix: shift_opt(k.prefix, by),
        created: shift_opt(k.created, by),
        expires: shift_opt(k.expires, by),
    };
    Spanned::new(span.start + by..span.end + by, moved)
}

fn shift_certificate(
    cert: Spanned<RawClientCertificate>,
    by: usize,
) -> Spanned<RawClientCertificate> {
    let span = cert.span();
    let c = cert.into_inner();
    let moved = RawClientCertificate {
        sha256: shift(c.sha256, by),
        created: shift_opt(c.created, by),
    };
    Spanned::new(span.start + by..span.end + by, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_file(users: usize) -> String {
        let mut text = String::from(
            "[server]\nlisten = \"127.0.0.1:8080\"\n\n[upstreams.a]\nurl = \"builtin:echo\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"a\"\n\n[groups.g]\nallow = []\n\n",
        );
        for i in 0..users {
            text.push_str(&format!(
                "[users.\"u{i}@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"192.0.2.{}\"\nkeys = [{{ sha256 = \"{:064x}\", created = 2026-01-01T00:00:00Z }}]\n\n",
                i % 250,
                i
            ));
        }
        text
    }

    #[test]
    fn pieces_give_exactly_the_sequential_result() {
        let text = big_file(20_000);
        let parallel = parse_in_pieces(&text, 4).expect("a plain file splits");
        let sequential: RawConfig = toml::from_str(&text).unwrap();
        assert_eq!(parallel.users.len(), sequential.users.len());
        for ((pk, pv), (sk, sv)) in parallel.users.iter().zip(sequential.users.iter()) {
            assert_eq!(pk.get_ref(), sk.get_ref());
            assert_eq!(pk.span(), sk.span());
            assert_eq!(pv.span(), sv.span());
            assert_eq!(pv.get_ref().status.span(), sv.get_ref().status.span());
            assert_eq!(
                pv.get_ref().keys[0].get_ref().sha256.span(),
                sv.get_ref().keys[0].get_ref().sha256.span()
            );
            assert_eq!(
                pv.get_ref().keys[0]
                    .get_ref()
                    .created
                    .as_ref()
                    .map(Spanned::span),
                sv.get_ref().keys[0]
                    .get_ref()
                    .created
                    .as_ref()
                    .map(Spanned::span)
            );
        }
    }

    #[test]
    fn anything_that_spans_pieces_falls_back_to_one_parse() {
        let text = big_file(20_000);
        // A user table defined twice, far apart: an error the whole-file parse must report.
        let dup = format!(
            "{text}[users.\"u1@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\n"
        );
        assert!(parse_in_pieces(&dup, 4).is_none());
        assert!(parse(&dup).is_err());
        // A group after the users is valid TOML, but only the whole-file parse handles it.
        let late_group = format!("{text}[groups.late]\nallow = []\n");
        assert!(parse_in_pieces(&late_group, 4).is_none());
        assert!(parse(&late_group).unwrap().groups.len() == 2);
        // A keys array appended to an earlier user from a later piece.
        let appended = format!(
            "{text}[[users.\"u1@example.org\".keys]]\nsha256 = \"{:064x}\"\n",
            999_999
        );
        assert!(parse_in_pieces(&appended, 4).is_none());
    }

    #[test]
    fn an_error_in_a_piece_is_reported_at_its_place_in_the_whole_file() {
        let text = big_file(20_000).replacen(
            "status = \"active\"\ngroup = \"g\"\nremote_addresses = \"192.0.2.7\"",
            "status = \"active\"\ngroup = \"g\"\nremote_addresses = 192.0.2.7",
            1,
        );
        let err = parse(&text).unwrap_err();
        let at = text.find("remote_addresses = 192.0.2.7").unwrap();
        let span = err.span().unwrap();
        assert!(span.start >= at && span.start < at + 40, "{span:?} vs {at}");
    }
}
