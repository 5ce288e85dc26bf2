//! Properties, checked on generated input in every `cargo test` (stable; issue #18 beside the
//! fuzz targets): path normalisation is idempotent and never climbs above the root; what is
//! checked is what is forwarded, through the real gateway on both paths; an address list
//! parses, prints and parses to the same set; the engine's request-head reading never reads past
//! a head and serves no request httparse would frame differently. Case counts are moderate so
//! the suite stays fast; a failure prints the smallest input proptest found.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use apiward::auth::address::SourceWhitelist;
use apiward::auth::path::{BadPath, normalise};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use common::*;

/// One path segment: the ones that make normalisation work (dots, their escapes, empty ones,
/// escapes of separators and of plain letters) and plain names.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_string()),
        Just("..".to_string()),
        Just(String::new()),
        Just("%2e".to_string()),
        Just("%2E%2e".to_string()),
        Just(".%2e".to_string()),
        Just("%2f".to_string()),
        Just("%41".to_string()),
        Just("%7E".to_string()),
        Just("supporters".to_string()),
        Just("pages".to_string()),
        Just("admin".to_string()),
        Just("...".to_string()),
        "[a-z0-9_~-]{1,4}",
        "[a-z]{1,2}%[0-9A-F]{2}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..7), any::<bool>()).prop_map(|(segs, trailing)| {
        let mut p = format!("/{}", segs.join("/"));
        if trailing {
            p.push('/');
        }
        p
    })
}

/// Whether resolving `path`'s dot segments (`%2e` read as `.`) climbs above the root.
fn climbs_above_root(path: &str) -> bool {
    let mut depth: i64 = 0;
    for seg in path.split('/').skip(1) {
        let seg = seg.replace("%2e", ".").replace("%2E", ".");
        match seg.as_str() {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn is_normal(p: &str) -> bool {
    p.starts_with('/')
        && !p.contains("//")
        && !p.split('/').any(|s| s == "." || s == "..")
        && !p.contains('\\')
        && !p.contains('\0')
}

proptest! {
    #![proptest_config(Config::with_cases(512))]

    #[test]
    fn normalising_is_idempotent_and_never_climbs_above_the_root(p in path()) {
        match normalise(&p) {
            Ok(n) => {
                prop_assert!(is_normal(&n), "{p:?} became {n:?}");
                prop_assert!(!climbs_above_root(&p), "{p:?} climbs, yet became {n:?}");
                let again = normalise(&n);
                prop_assert_eq!(again.as_deref(), Ok(&*n), "normalising {:?} twice", p);
            }
            Err(BadPath::ClimbsAboveRoot) => prop_assert!(climbs_above_root(&p), "{p:?}"),
            Err(_) => {}
        }
        if climbs_above_root(&p) {
            prop_assert!(normalise(&p).is_err(), "{p:?} climbs above the root");
        }
    }

    #[test]
    fn normalising_any_text_gives_a_normal_path_or_a_refusal(p in "/\\PC{0,24}") {
        if let Ok(n) = normalise(&p) {
            prop_assert!(is_normal(&n), "{p:?} became {n:?}");
            let again = normalise(&n);
            prop_assert_eq!(again.as_deref(), Ok(&*n));
        }
    }
}

/// One whitelist entry as an operator writes it: an address, or an aligned block of either family.
fn entry() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u32>().prop_map(|a| Ipv4Addr::from(a).to_string()),
        (any::<u32>(), 0u32..=32).prop_map(|(a, len)| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", Ipv4Addr::from(a & mask))
        }),
        any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        (any::<u128>(), 0u32..=128).prop_map(|(a, len)| {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            format!("{}/{len}", Ipv6Addr::from(a & mask))
        }),
    ]
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn an_address_list_parses_prints_and_parses_to_the_same_set(
        entries in prop::collection::vec(entry(), 1..8),
    ) {
        let text = entries.join("~");
        let list = SourceWhitelist::parse_tilde(&text)
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let printed = list.to_string();
        let again = SourceWhitelist::parse_tilde(&printed)
            .map_err(|e| TestCaseError::fail(format!("{printed:?} (printed from {text:?}): {e}")))?;
        prop_assert_eq!(again.entries(), list.entries(), "{} printed as {}", text, printed);
        // The same set: every written address (or block's network) is admitted by both.
        for e in &entries {
            let ip: IpAddr = e.split('/').next().unwrap_or_default().parse().unwrap();
            prop_assert!(list.allows(ip) && again.allows(ip), "{ip} in {text:?}");
        }
    }

    #[test]
    fn whatever_address_text_parses_prints_as_a_list_that_parses_the_same(
        text in "[0-9a-f:./~* ]{0,40}",
    ) {
        if let Ok(list) = SourceWhitelist::parse_tilde(&text) {
            let printed = list.to_string();
            let again = SourceWhitelist::parse_tilde(&printed)
                .map_err(|e| TestCaseError::fail(format!("{printed:?} (from {text:?}): {e}")))?;
            prop_assert_eq!(again.entries(), list.entries());
        }
    }
}

/// A header line: the usual ones, and each thing two parsers can frame differently.
fn header_line() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("host: api.example.org".to_string()),
        Just("Host: other.example.org".to_string()),
        Just("x-api-key: aw_abc".to_string()),
        Just("content-length: 0".to_string()),
        Just("content-length: 5".to_string()),
        Just("Content-Length: 0, 0".to_string()),
        Just("content-length : 0".to_string()),
        Just("transfer-encoding: chunked".to_string()),
        Just("Transfer-Encoding: gzip, chunked".to_string()),
        Just("x_forwarded_for: 1.2.3.4".to_string()),
        Just("x-folded: a\r\n b".to_string()),
        Just("connection: close".to_string()),
        Just("expect: 100-continue".to_string()),
        Just(" leading: space".to_string()),
        Just("no-colon".to_string()),
        "[a-z-]{1,8}: [ -~]{0,12}",
    ]
}

fn request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just("GET"),
            Just("POST"),
            Just("HEAD"),
            Just("PUT"),
            Just("get")
        ],
        prop_oneof![
            Just("/supporters/1".to_string()),
            Just("http://api.example.org/x".to_string()),
            Just("*".to_string()),
            "/[a-z0-9%./]{0,12}",
        ],
        prop_oneof![
            Just("HTTP/1.1"),
            Just("HTTP/1.0"),
            Just("HTTP/2.0"),
            Just("HTTP/1.1 ")
        ],
        prop::collection::vec(header_line(), 0..6),
        prop_oneof![Just("\r\n"), Just("\n")],
        prop_oneof![
            Just(Vec::new()),
            Just(b"hello".to_vec()),
            Just(b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n".to_vec()),
        ],
        0usize..4,
    )
        .prop_map(|(method, target, version, lines, eol, after, cut)| {
            let mut head = format!("{method} {target} {version}{eol}");
            for line in lines {
                head.push_str(&line);
                head.push_str(eol);
            }
            head.push_str(eol);
            let mut bytes = head.into_bytes();
            // Now and then the head is cut short: partial heads are read as partial.
            if cut == 0 {
                let keep = bytes.len() * 2 / 3;
                bytes.truncate(keep);
            }
            bytes.extend_from_slice(&after);
            bytes
        })
}

proptest! {
    #![proptest_config(Config::with_cases(1024))]

    /// `fuzzing::request_head` panics when a head the engine serves ends elsewhere than
    /// httparse says, keeps a range past it, or is one httparse and hyper could frame apart
    /// (not HTTP/1.1 with one Host, a Transfer-Encoding, a Content-Length but 0, a `_` name).
    #[test]
    fn the_engine_never_reads_past_a_head_nor_serves_one_framed_differently(head in request_head()) {
        apiward::fuzzing::request_head(&head);
    }

    /// And it does serve the plain ones: the property above is not met by refusing everything.
    #[test]
    fn a_plain_get_is_served_by_the_engine(
        path in "/[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}",
        key in "aw_[A-Za-z0-9]{10,40}",
    ) {
        let head = format!("GET {path} HTTP/1.1\r\nhost: api.example.org\r\nx-api-key: {key}\r\n\r\n");
        prop_assert!(apiward::fuzzing::request_head(head.as_bytes()), "{head:?}");
    }
}

/// Through the gateway, on each path: a request admitted is forwarded with the very path its
/// permission was checked on (the normalised one), and a path the group does not allow never
/// reaches the upstream by any spelling.
#[test]
fn what_is_checked_is_what_is_forwarded_on_both_paths() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let k = TestKey::new("properties");
    let (upstream, fast, hyper) = runtime.block_on(async {
        let upstream = echo_upstream().await;
        let toml = one_user_config(&upstream.url(), "crm@example.org", &k);
        let fast = TestGateway::start(&toml).await;
        let hyper = TestGateway::start(&with_server_setting(&toml, "fast_path = false")).await;
        (upstream, fast, hyper)
    });
    let mut runner = TestRunner::new(Config::with_cases(96));
    let (admitted, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    runner
        .run(&path(), |p| {
            for gw in [&fast, &hyper] {
                let head = format!(
                    "GET {p} HTTP/1.1\r\nhost: api.example.org\r\nx-api-key: {}\r\nconnection: close\r\n\r\n",
                    k.key
                );
                let answer = runtime.block_on(raw(gw.addr, head.as_bytes()));
                let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
                let doc: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                let checked = normalise(&p).ok();
                if status == 200 {
                    let checked = checked.as_deref().unwrap_or("(refused by normalise)");
                    prop_assert_eq!(doc["path"].as_str(), Some(checked), "{:?}", p);
                    // The group allows /supporters/** and /pages/* only.
                    let allowed = checked == "/supporters"
                        || checked.starts_with("/supporters/")
                        || (checked.starts_with("/pages/")
                            && checked.matches('/').count() == 2
                            && checked.len() > "/pages/".len());
                    prop_assert!(allowed, "{p:?} reached the upstream as {checked:?}");
                    admitted.set(admitted.get() + 1);
                } else {
                    refused.set(refused.get() + 1);
                    prop_assert!(doc["path"].is_null(), "{p:?} answered {status} with {body}");
                    prop_assert!(doc["error"].is_string(), "{p:?} answered {status} with {body}");
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    // Both outcomes were met, or the property said nothing.
    assert!(
        admitted.get() > 0 && refused.get() > 0,
        "{} admitted, {} refused",
        admitted.get(),
        refused.get()
    );
    runtime.block_on(async {
        fast.shutdown().await;
        hyper.shutdown().await;
    });
    drop(upstream);
}
