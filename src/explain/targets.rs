//! Where `explain` says an allowed request goes: each target's URL with the path the upstream
//! receives (after `strip_prefix`), and with several targets how one is chosen.

use crate::snapshot::{Balance, Route, Upstream, UpstreamTarget};

/// Where an allowed request goes: each target's URL (with its base path), then the path (after
/// `strip_prefix`) and query; with several targets, how they are chosen.
pub(super) fn forwarded_to(
    upstream: &Upstream,
    route: &Route,
    path: &str,
    query: Option<&str>,
    user: Option<&str>,
) -> String {
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    let path = if route.strip_prefix {
        let rest = path.get(route.prefix.len()..).unwrap_or("");
        if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        }
    } else {
        path.to_string()
    };
    let cluster = match &upstream.target {
        UpstreamTarget::Echo => return format!("{} {path}{query}", upstream.url),
        UpstreamTarget::Http(cluster) => cluster,
    };
    let url = |i: usize| {
        let t = &cluster.targets[i];
        format!("{}://{}{}{path}{query}", t.scheme, t.authority, t.base_path)
    };
    if cluster.targets.len() == 1 {
        return url(0);
    }
    let order = crate::upstream::preview(cluster, user);
    let retries = match cluster.retries {
        0 => "no retries".to_string(),
        n => format!(
            "{n} retr{} of idempotent requests to another target",
            if n == 1 { "y" } else { "ies" }
        ),
    };
    match (cluster.balance, user) {
        (Balance::HashUser, Some(user)) => format!(
            "{} ({user}'s own target under hash_user; while it is out: {}; {retries})",
            url(order[0]),
            order[1..]
                .iter()
                .map(|&i| url(i))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (balance, _) => format!(
            "one of {} ({} over the healthy targets; {retries})",
            order
                .iter()
                .map(|&i| format!("{} (weight {})", url(i), cluster.targets[i].weight))
                .collect::<Vec<_>>()
                .join(", "),
            balance.as_str()
        ),
    }
}
