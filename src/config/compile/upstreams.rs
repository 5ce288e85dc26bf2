//! `[upstreams.NAME]` and the upstream side of `[[routes]]` compiled: targets (one `url` or
//! `targets = [{ url, weight }]`), `balance`, `retries`, `health_check`, `eject`, `host`, and a
//! route's `strip_prefix`, `upstream_timeout` and `websocket`; an `https` target's TLS with the
//! upstream's `ca`, `server_name` and `protocol` (`tls.rs`).

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use toml::Spanned;

use super::checks::interned;
use super::compiler::Compiler;
use crate::config::raw::{RawEject, RawHealthCheck, RawRoute, RawUpstream};
use crate::snapshot::{
    Balance, Cluster, Eject, HealthCheck, Target, Upstream, UpstreamTarget, weighted_schedule,
};
use crate::tls::UpstreamProtocol;

/// The most targets one upstream may have.
const MAX_TARGETS: usize = 64;
/// The largest weight.
const MAX_WEIGHT: i64 = 100;

/// Passive ejection when several targets are given and `eject` is not: 5 failures in a row take
/// a target out for 10 s (Envoy's consecutive-5xx default, nginx's fail_timeout).
const DEFAULT_EJECT: Eject = Eject {
    consecutive_failures: 5,
    duration: Duration::from_secs(10),
};

impl Compiler<'_> {
    /// The upstream, or `None` after reporting why it cannot be one.
    pub(super) fn upstream(
        &mut self,
        name: &Spanned<String>,
        raw: &RawUpstream,
        tls_files: &mut Vec<std::path::PathBuf>,
    ) -> Option<Upstream> {
        let errors_before = self.errors.len();
        let named = name.get_ref();
        let entries: Vec<(&Spanned<String>, Option<&Spanned<i64>>)> = match (&raw.url, &raw.targets)
        {
            (Some(url), None) => vec![(url, None)],
            (None, Some(targets)) => {
                if targets.get_ref().is_empty() {
                    self.error(targets.span(), format!("[upstreams.{named}] targets is empty: give at least one {{ url = \"http://host:port\" }}"));
                    return None;
                }
                if targets.get_ref().len() > MAX_TARGETS {
                    self.error(
                        targets.span(),
                        format!("[upstreams.{named}] has more than {MAX_TARGETS} targets"),
                    );
                    return None;
                }
                targets
                    .get_ref()
                    .iter()
                    .map(|t| (&t.get_ref().url, t.get_ref().weight.as_ref()))
                    .collect()
            }
            (Some(url), Some(_)) => {
                self.error(url.span(), format!("[upstreams.{named}] has both url and targets: keep url for one target, or list it in targets"));
                return None;
            }
            (None, None) => {
                self.error(name.span(), format!("[upstreams.{named}] needs url = \"http://host:port\" (one target) or targets = [{{ url = \"...\" }}, ...]"));
                return None;
            }
        };
        if let [(url, None)] = entries.as_slice()
            && url.get_ref() == "builtin:echo"
        {
            return self.echo_upstream(name, raw);
        }
        let any_https = entries
            .iter()
            .any(|(url, _)| url.get_ref().starts_with("https:"));
        let tls_options = self.upstream_tls_options(self.loc.file(), raw, any_https, tls_files)?;
        let mut targets: Vec<Target> = Vec::with_capacity(entries.len());
        for (url, weight) in entries {
            if url.get_ref() == "builtin:echo" {
                self.error(url.span(), "builtin:echo is an upstream of its own: give it url = \"builtin:echo\", not a place in targets");
                continue;
            }
            let weight = match weight {
                None => 1,
                Some(w) if (1..=MAX_WEIGHT).contains(w.get_ref()) => *w.get_ref() as u32,
                Some(w) => {
                    self.error(w.span(), format!("weight must be between 1 and {MAX_WEIGHT} (leave a target out to stop using it)"));
                    1
                }
            };
            let Some((scheme, authority, base_path)) = self.http_url(url) else {
                continue;
            };
            if targets.iter().any(|t| *t.url == **url.get_ref()) {
                self.error(url.span(), format!("target {:?} is listed twice in [upstreams.{named}]: give it a weight instead", url.get_ref()));
                continue;
            }
            let tls = if scheme == Scheme::HTTPS {
                match self.target_tls(&tls_options, authority.host(), url.span()) {
                    Some(tls) => Some(tls),
                    None => continue,
                }
            } else {
                None
            };
            targets.push(Target {
                id: format!("{named} {}", url.get_ref()).into(),
                url: url.get_ref().as_str().into(),
                scheme,
                authority,
                base_path,
                weight,
                tls,
                protocol: tls_options.protocol,
            });
        }
        let balance = match &raw.balance {
            None => Balance::RoundRobin,
            Some(b) => Balance::parse(b.get_ref()).unwrap_or_else(|| {
                self.error(
                    b.span(),
                    format!(
                        "balance {:?} is not one of: round_robin, least_outstanding, hash_user{}",
                        b.get_ref(),
                        crate::suggest::did_you_mean(
                            b.get_ref(),
                            ["round_robin", "least_outstanding", "hash_user"]
                        )
                    ),
                );
                Balance::RoundRobin
            }),
        };
        let retries = match &raw.retries {
            None => 0,
            Some(r) if (0..=10).contains(r.get_ref()) => *r.get_ref() as u32,
            Some(r) => {
                self.error(r.span(), "retries is how many other targets an idempotent request may be sent to after a failure: 0 to 10");
                0
            }
        };
        let health_check = raw.health_check.as_ref().and_then(|h| self.health_check(h));
        let eject = match &raw.eject {
            Some(e) => self.eject(e),
            None if targets.len() > 1 => Some(DEFAULT_EJECT),
            None => None,
        };
        let host = raw.host.as_ref().and_then(|h| {
            let text = h.get_ref();
            match text.parse::<Authority>() {
                Ok(a) if !text.is_empty() && !text.contains('@') => {
                    Some(http::HeaderValue::from_static(interned(a.as_str())))
                }
                _ => {
                    self.error(h.span(), format!("host {text:?} is not a host name with an optional port, such as \"supporters.internal\""));
                    None
                }
            }
        });
        let max_upstream_connections = raw.max_upstream_connections.as_ref().and_then(|m| {
            match usize::try_from(*m.get_ref()) {
                Ok(n) if (1..=1_000_000).contains(&n) => Some(n),
                _ => {
                    self.error(m.span(), "max_upstream_connections is how many requests this upstream (all its targets) has in hand at once: between 1 and 1000000");
                    None
                }
            }
        });
        if self.errors.len() != errors_before || targets.is_empty() {
            return None;
        }
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        let url = targets
            .iter()
            .map(|t| &*t.url)
            .collect::<Vec<_>>()
            .join(", ");
        Some(Upstream {
            name: named.as_str().into(),
            url: url.into(),
            target: UpstreamTarget::Http(Arc::new(Cluster {
                schedule: weighted_schedule(&weights),
                plain_http1: targets
                    .iter()
                    .all(|t| t.tls.is_none() && t.protocol == UpstreamProtocol::Http1),
                targets: targets.into_boxed_slice(),
                balance,
                retries,
                health_check,
                eject,
                host,
                max_upstream_connections,
            })),
        })
    }

    fn echo_upstream(&mut self, name: &Spanned<String>, raw: &RawUpstream) -> Option<Upstream> {
        let mut ok = true;
        let spans = [
            raw.balance.as_ref().map(|v| v.span()),
            raw.retries.as_ref().map(|v| v.span()),
            raw.health_check.as_ref().map(|v| v.span()),
            raw.eject.as_ref().map(|v| v.span()),
            raw.host.as_ref().map(|v| v.span()),
            raw.max_upstream_connections.as_ref().map(|v| v.span()),
            raw.ca.as_ref().map(|v| v.span()),
            raw.server_name.as_ref().map(|v| v.span()),
            raw.protocol.as_ref().map(|v| v.span()),
        ];
        for span in spans.into_iter().flatten() {
            self.error(
                span,
                "builtin:echo has no targets to balance, check, eject or open TLS to: remove this field",
            );
            ok = false;
        }
        ok.then(|| Upstream {
            name: name.get_ref().as_str().into(),
            url: "builtin:echo".into(),
            target: UpstreamTarget::Echo,
        })
    }

    /// An `http://host:port[/base]` or `https://…` URL: its scheme, authority (interned, so that copying it for
    /// each request touches no reference count) and base path.
    fn http_url(&mut self, url: &Spanned<String>) -> Option<(Scheme, Authority, Box<str>)> {
        let text = url.get_ref();
        let hint =
            "write an http or https URL such as \"http://127.0.0.1:9000\", or \"builtin:echo\"";
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(_) => {
                self.error(url.span(), format!("{text:?} is not a valid URL: {hint}"));
                return None;
            }
        };
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => Scheme::HTTP,
            Some(s) if *s == Scheme::HTTPS => Scheme::HTTPS,
            _ => {
                self.error(url.span(), format!("{text:?} has no http scheme: {hint}"));
                return None;
            }
        };
        let Some(authority) = uri.authority().map(|a| {
            Authority::from_maybe_shared(bytes::Bytes::from_static(interned(a.as_str()).as_bytes()))
                .unwrap_or_else(|_| a.clone())
        }) else {
            self.error(url.span(), format!("{text:?} has no host: {hint}"));
            return None;
        };
        if authority.as_str().contains('@') {
            self.error(
                url.span(),
                format!("{text:?}: credentials in upstream URLs are not supported"),
            );
            return None;
        }
        if uri.query().is_some() {
            self.error(
                url.span(),
                format!("{text:?}: an upstream URL cannot have a query string"),
            );
            return None;
        }
        let base_path = uri.path().trim_end_matches('/');
        Some((scheme, authority, base_path.into()))
    }

    fn health_check(&mut self, raw: &Spanned<RawHealthCheck>) -> Option<HealthCheck> {
        let h = raw.get_ref();
        let before = self.errors.len();
        let path = h.path.get_ref();
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            self.error(
                h.path.span(),
                format!("health_check path {path:?} must be a path such as \"/healthz\""),
            );
        }
        let interval = self.duration(h.interval.as_ref(), "2s", true);
        let timeout = self.duration(h.timeout.as_ref(), "1s", true);
        if timeout > interval
            && let Some(t) = &h.timeout
        {
            self.error(
                t.span(),
                "health_check timeout must not be longer than its interval",
            );
        }
        let mut count = |v: &Option<Spanned<i64>>, field: &str| match v {
            None => 2,
            Some(n) if (1..=100).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                self.error(
                    n.span(),
                    format!("health_check {field} is a number of checks in a row: 1 to 100"),
                );
                2
            }
        };
        let unhealthy_after = count(&h.unhealthy_after, "unhealthy_after");
        let healthy_after = count(&h.healthy_after, "healthy_after");
        (self.errors.len() == before).then(|| HealthCheck {
            path: path.as_str().into(),
            interval,
            timeout,
            unhealthy_after,
            healthy_after,
        })
    }

    fn eject(&mut self, raw: &Spanned<RawEject>) -> Option<Eject> {
        let e = raw.get_ref();
        let consecutive_failures = match &e.consecutive_failures {
            None => DEFAULT_EJECT.consecutive_failures,
            // 0 turns passive ejection off.
            Some(n) if *n.get_ref() == 0 => return None,
            Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                self.error(n.span(), "eject consecutive_failures is a number of failed requests in a row: 1 to 1000 (0 turns ejection off)");
                DEFAULT_EJECT.consecutive_failures
            }
        };
        let duration = self.duration(e.duration.as_ref(), "10s", true);
        Some(Eject {
            consecutive_failures,
            duration,
        })
    }

    /// A route's `strip_prefix`, `upstream_timeout` and `websocket`.
    pub(super) fn route_options(
        &mut self,
        raw: &RawRoute,
        upstream: &Upstream,
    ) -> (bool, Option<Duration>, bool) {
        let strip = raw.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
        let timeout = raw
            .upstream_timeout
            .as_ref()
            .map(|t| self.duration(Some(t), "30s", true));
        let websocket = raw.websocket.as_ref().is_some_and(|w| *w.get_ref());
        if let (Some(w), UpstreamTarget::Echo) = (&raw.websocket, &upstream.target)
            && *w.get_ref()
        {
            self.error(
                w.span(),
                "builtin:echo does not speak WebSocket: route to an http upstream",
            );
        }
        (strip, timeout, websocket)
    }
}
