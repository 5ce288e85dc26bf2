//! A minimal HTTP/1.0 client for the gateway's own admin listener (loopback or a management
//! network, no TLS, no credentials): `users list`, `health` and `top` ask it what only the running
//! gateway knows.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

/// Where to ask: `--admin` if given, else the file's `[server] admin_listen` (a wildcard address
/// is reached on loopback). `None` when neither names one.
pub fn admin_address(explicit: Option<&str>, config: &Path) -> Option<String> {
    if let Some(a) = explicit {
        return Some(a.to_string());
    }
    let snapshot = crate::config::load(config).ok()?;
    let addr = snapshot.server.admin_listen?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && addr.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        ip if addr.is_ipv6() => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Some(format!("{host}:{}", addr.port()))
}

/// `GET path` on the admin listener at `admin` (`host:port`, an `http://` prefix allowed): the
/// status code and the body. The error says why nothing usable came back.
pub fn get(admin: &str, path: &str) -> Result<(u16, String), String> {
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
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").as_bytes())
        .map_err(|e| format!("{admin}: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("{admin}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{admin}: not an HTTP response"))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{admin}: not an HTTP response"))?;
    Ok((status, body.to_string()))
}

/// `GET path`, which must answer 200.
pub fn get_ok(admin: &str, path: &str) -> Result<String, String> {
    match get(admin, path)? {
        (200, body) => Ok(body),
        (status, body) => Err(format!(
            "{admin}{path} answered {status}: {}",
            body.lines().next().unwrap_or("")
        )),
    }
}
