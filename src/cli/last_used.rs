//! Asks a running gateway's admin listener (`GET /keys`) when each key was last used, for
//! `apiward users list`. Last use lives in the gateway's memory, not in the file.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Last use (Unix seconds) by key digest (hex), and by `password:<user id>` for passwords, as
/// the gateway reports it.
pub type LastUse = HashMap<String, i64>;

/// The `LastUse` entry of a user's password.
pub fn password_entry(id: &str) -> String {
    format!("password:{id}")
}

/// Where to ask: `--admin` if given, else the file's `[server] admin_listen`.
pub fn admin_address(explicit: Option<&str>, config: &std::path::Path) -> Option<String> {
    if let Some(a) = explicit {
        return Some(a.to_string());
    }
    let snapshot = crate::config::load(config).ok()?;
    let addr = snapshot.server.admin_listen?;
    // A wildcard listen address is reached on loopback.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        ip if addr.is_ipv6() => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Some(format!("{host}:{}", addr.port()))
}

/// Fetches `/keys`; the error says why the last use is unknown.
pub fn fetch(admin: &str) -> Result<LastUse, String> {
    let target = admin
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addr: SocketAddr = target
        .to_socket_addrs()
        .map_err(|e| format!("{admin}: {e}"))?
        .next()
        .ok_or_else(|| format!("{admin}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("the gateway's admin listener at {admin} is not reachable ({e})"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    stream
        .write_all(format!("GET /keys HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
        .map_err(|e| format!("{admin}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("{admin}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin}: not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!(
            "{admin}/keys answered {}",
            head.lines().next().unwrap_or("")
        ));
    }
    let doc: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{admin}/keys: {e}"))?;
    let mut last_use = LastUse::new();
    let parse = |at: &str| {
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp())
    };
    for key in doc["keys"].as_array().into_iter().flatten() {
        let (Some(digest), Some(at)) = (key["sha256"].as_str(), key["last_used"].as_str()) else {
            continue;
        };
        if let Some(t) = parse(at) {
            last_use.insert(digest.to_string(), t);
        }
    }
    for password in doc["passwords"].as_array().into_iter().flatten() {
        let (Some(user), Some(at)) = (password["user"].as_str(), password["last_used"].as_str())
        else {
            continue;
        };
        if let Some(t) = parse(at) {
            last_use.insert(password_entry(user), t);
        }
    }
    Ok(last_use)
}
