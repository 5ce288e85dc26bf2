//! `apiward top`: what the running gateway is doing, from its admin listener, without
//! Prometheus: requests per second, refusals by error code, the busiest users and upstream
//! errors, refreshed in place like `varnishstat` (or printed once, for scripts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use crate::observe::names;

/// How many users the "busiest" list shows.
const BUSIEST: usize = 10;

/// One reading of the counters that matter here.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Requests by (user, decision).
    pub requests: BTreeMap<(String, String), f64>,
    /// Upstream errors by (upstream, kind).
    pub upstream_errors: BTreeMap<(String, String), f64>,
    pub open_connections: f64,
}

impl Sample {
    /// Reads the Prometheus text of `/metrics`.
    pub fn parse(metrics: &str) -> Sample {
        let mut sample = Sample::default();
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            match name {
                names::REQUESTS => {
                    *sample
                        .requests
                        .entry((label("user"), label("decision")))
                        .or_default() += value;
                }
                names::UPSTREAM_ERRORS => {
                    *sample
                        .upstream_errors
                        .entry((label("upstream"), label("kind")))
                        .or_default() += value;
                }
                names::OPEN_CONNECTIONS => sample.open_connections = value,
                _ => {}
            }
        }
        sample
    }

    fn total(&self) -> f64 {
        self.requests.values().sum()
    }
}

/// `k="v",k2="v2"` with Prometheus escapes (`\\`, `\"`, `\n`).
fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Two readings `elapsed` apart, and the gateway's /status, rendered as the screen shows them.
pub fn render(
    admin: &str,
    status: &serde_json::Value,
    before: &Sample,
    after: &Sample,
    elapsed: Duration,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = |a: f64, b: f64| ((b - a).max(0.0)) / secs;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "apiward {} at {admin}: config generation {}, {} users, {} keys, up {}, {} open connections",
        status["version"].as_str().unwrap_or("?"),
        status["config_generation"],
        status["users"],
        status["keys"],
        uptime(status["uptime_seconds"].as_u64().unwrap_or(0)),
        after.open_connections
    );
    if let Some(e) = status["last_reload_error"]["message"].as_str() {
        let _ = writeln!(
            out,
            "last reload refused: {}",
            e.lines().next().unwrap_or("")
        );
    }

    let sum_by = |s: &Sample, pick: &dyn Fn(&(String, String)) -> Option<String>| {
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        for (k, v) in &s.requests {
            if let Some(key) = pick(k) {
                *m.entry(key).or_default() += v;
            }
        }
        m
    };
    let allowed = |k: &(String, String)| (k.1 == "allowed").then(|| "allowed".to_string());
    let refused_code = |k: &(String, String)| (k.1 != "allowed").then(|| k.1.clone());
    let by_user = |k: &(String, String)| Some(k.0.clone());
    let value = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);

    let (a0, a1) = (sum_by(before, &allowed), sum_by(after, &allowed));
    let _ = writeln!(
        out,
        "\nrequests/s {:>9.1}   allowed/s {:>9.1}   refused/s {:>9.1}   (total {}, allowed {})",
        rate(before.total(), after.total()),
        rate(value(&a0, "allowed"), value(&a1, "allowed")),
        rate(
            before.total() - value(&a0, "allowed"),
            after.total() - value(&a1, "allowed")
        ),
        after.total(),
        value(&a1, "allowed"),
    );

    let (r0, r1) = (sum_by(before, &refused_code), sum_by(after, &refused_code));
    out.push_str("\nrefusals by code          /s      total\n");
    if r1.is_empty() {
        out.push_str("  (none)\n");
    }
    let mut codes: Vec<(&String, f64, f64)> = r1
        .iter()
        .map(|(code, total)| (code, rate(value(&r0, code), *total), *total))
        .collect();
    codes.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    for (code, per_s, total) in codes {
        let _ = writeln!(out, "  {code:<22} {per_s:>6.1} {total:>10}");
    }

    let (u0, u1) = (sum_by(before, &by_user), sum_by(after, &by_user));
    out.push_str("\nbusiest users             /s      total\n");
    let mut users: Vec<(&String, f64, f64)> = u1
        .iter()
        .filter(|(user, _)| user.as_str() != names::NONE)
        .map(|(user, total)| (user, rate(value(&u0, user), *total), *total))
        .collect();
    users.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.2.total_cmp(&a.2)));
    if users.is_empty() {
        out.push_str("  (none)\n");
    }
    for (user, per_s, total) in users.into_iter().take(BUSIEST) {
        let _ = writeln!(out, "  {user:<22} {per_s:>6.1} {total:>10}");
    }

    if !after.upstream_errors.is_empty() {
        out.push_str("\nupstream errors           /s      total\n");
        for ((upstream, kind), total) in &after.upstream_errors {
            let earlier = before
                .upstream_errors
                .get(&(upstream.clone(), kind.clone()))
                .copied()
                .unwrap_or(0.0);
            let name = format!("{upstream} {kind}");
            let _ = writeln!(
                out,
                "  {name:<22} {:>6.1} {total:>10}",
                rate(earlier, *total)
            );
        }
    }
    out
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

fn read(admin: &str) -> Result<(Sample, serde_json::Value), String> {
    let metrics = super::admin_client::get_ok(admin, "/metrics")?;
    let status = super::admin_client::get_ok(admin, "/status")?;
    let status: serde_json::Value =
        serde_json::from_str(&status).map_err(|e| format!("{admin}/status: {e}"))?;
    Ok((Sample::parse(&metrics), status))
}

/// Runs `apiward top`: refreshes every `interval` until interrupted, or prints one screen (the
/// rates over one interval) with `once`.
pub fn run(admin: &str, interval: Duration, once: bool) -> Result<(), String> {
    let clear = !once && std::io::stdout().is_terminal();
    let (mut before, _) = read(admin)?;
    let mut at = Instant::now();
    loop {
        std::thread::sleep(interval);
        let (after, status) = read(admin)?;
        let now = Instant::now();
        let screen = render(admin, &status, &before, &after, now - at);
        if clear {
            print!("\x1b[H\x1b[2J");
        }
        super::print_listing(&screen);
        if once {
            return Ok(());
        }
        before = after;
        at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_text_is_read_into_requests_by_user_and_decision() {
        let text = "# TYPE apiward_requests_total counter\n\
            apiward_requests_total{user=\"a@x\",route=\"/\",decision=\"allowed\",status_class=\"2xx\"} 5\n\
            apiward_requests_total{user=\"a@x\",route=\"/p/\",decision=\"allowed\",status_class=\"2xx\"} 2\n\
            apiward_requests_total{user=\"none\",route=\"none\",decision=\"invalid_credentials\",status_class=\"4xx\"} 3\n\
            apiward_upstream_errors_total{upstream=\"api\",kind=\"connect\"} 4\n\
            apiward_open_connections 7\n";
        let s = Sample::parse(text);
        assert_eq!(s.requests[&("a@x".into(), "allowed".into())], 7.0);
        assert_eq!(
            s.requests[&("none".into(), "invalid_credentials".into())],
            3.0
        );
        assert_eq!(s.upstream_errors[&("api".into(), "connect".into())], 4.0);
        assert_eq!(s.open_connections, 7.0);
        assert_eq!(s.total(), 10.0);
    }

    #[test]
    fn escaped_label_values_are_read_back() {
        let l = labels("user=\"a\\\"b\\\\c\",route=\"/x\"");
        assert_eq!(l["user"], "a\"b\\c");
        assert_eq!(l["route"], "/x");
    }

    #[test]
    fn rates_are_the_difference_over_the_interval() {
        let before = Sample::parse(
            "apiward_requests_total{user=\"a@x\",route=\"/\",decision=\"allowed\",status_class=\"2xx\"} 10\n",
        );
        let after = Sample::parse(
            "apiward_requests_total{user=\"a@x\",route=\"/\",decision=\"allowed\",status_class=\"2xx\"} 30\n\
             apiward_requests_total{user=\"a@x\",route=\"/\",decision=\"forbidden\",status_class=\"4xx\"} 4\n",
        );
        let status = serde_json::json!({"version": "0.1.0", "config_generation": 2, "users": 1, "keys": 1, "uptime_seconds": 3700});
        let screen = render(
            "127.0.0.1:9901",
            &status,
            &before,
            &after,
            Duration::from_secs(2),
        );
        assert!(
            screen.contains("config generation 2, 1 users, 1 keys, up 1h01m"),
            "{screen}"
        );
        assert!(screen.contains("requests/s      12.0   allowed/s      10.0   refused/s       2.0   (total 34, allowed 30)"), "{screen}");
        assert!(
            screen.contains("  forbidden                 2.0          4"),
            "{screen}"
        );
        assert!(
            screen.contains("  a@x                      12.0         34"),
            "{screen}"
        );
    }
}
