//! HTTP/2 upstreams (`protocol = "h2"`): one multiplexed connection per upstream address, over
//! TLS with ALPN `h2` or as h2c with prior knowledge, opened on first use and again after it
//! closes. Its connection task is hyper's own: HTTP/2 multiplexes streams of many requests.
//!
//! The pool holds one sending half per connection; the connection closes (GOAWAY) once that
//! half and every request's are gone and its streams have ended. The sweep lets go of a
//! connection no request has used for `upstream_keepalive_timeout`, and of one to an address no
//! current target has (a target a reload removed): its requests in flight finish on it, then it
//! closes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::uri::Authority;
use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::client::{
    RequestBody, SendError, UpstreamBody, UpstreamError, connect_stream, pool_key,
};
use crate::proxy::upstream::Limits;
use crate::tls::UpstreamTls;

/// The open HTTP/2 connection of each upstream address, with when a request last took it.
#[derive(Default)]
pub struct H2Pool {
    connections: Mutex<Vec<Shared>>,
}

struct Shared {
    key: Authority,
    sender: http2::SendRequest<RequestBody>,
    used: Instant,
}

impl H2Pool {
    /// Sends `request` (absolute URI, version HTTP/2) to `authority`. A request that was not
    /// sent (no connection, or the connection refused the stream before it began) comes back
    /// with the error, so that it may go to another target.
    pub async fn send(
        &self,
        authority: &Authority,
        tls: Option<&Arc<UpstreamTls>>,
        limits: Limits,
        request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let key = match tls {
            Some(tls) => pool_key(authority, tls),
            None => authority.clone(),
        };
        let mut sender = match self.open(&key) {
            Some(sender) => sender,
            None => match self.connect(&key, tls, limits).await {
                Ok(sender) => {
                    self.keep(&key, sender.clone());
                    sender
                }
                Err(e) => return Err((e, Some(request))),
            },
        };
        if let Err(e) = sender.ready().await {
            return Err((UpstreamError::Http(e), Some(request)));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response.map(UpstreamBody::unpooled)),
            Err(mut failed) => {
                let unsent = failed.take_message();
                Err((UpstreamError::Http(failed.into_error()), unsent))
            }
        }
    }

    fn open(&self, key: &Authority) -> Option<http2::SendRequest<RequestBody>> {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|c| !c.sender.is_closed());
        let shared = connections
            .iter_mut()
            .find(|c| c.key.as_str() == key.as_str())?;
        shared.used = Instant::now();
        Some(shared.sender.clone())
    }

    fn keep(&self, key: &Authority, sender: http2::SendRequest<RequestBody>) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|c| c.key.as_str() != key.as_str());
        connections.push(Shared {
            key: key.clone(),
            sender,
            used: Instant::now(),
        });
    }

    /// Lets go of the connections that have closed, those no request took for `idle`, and those
    /// to an address `serves` rejects; each closes once its streams in flight have ended.
    pub fn sweep(&self, serves: impl Fn(&Authority) -> bool, idle: Duration) {
        let now = Instant::now();
        let mut released = Vec::new();
        {
            let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
            let mut i = 0;
            while i < connections.len() {
                let c = &connections[i];
                if c.sender.is_closed()
                    || !serves(&c.key)
                    || now.saturating_duration_since(c.used) >= idle
                {
                    released.push(connections.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        drop(released);
    }

    async fn connect(
        &self,
        key: &Authority,
        tls: Option<&Arc<UpstreamTls>>,
        limits: Limits,
    ) -> Result<http2::SendRequest<RequestBody>, UpstreamError> {
        let stream = connect_stream(key, tls, limits.connect_timeout).await?;
        if tls.is_some() && stream.alpn() != Some(b"h2") {
            return Err(UpstreamError::Connect {
                authority: key.clone(),
                source: std::io::Error::other(
                    "the upstream did not agree to HTTP/2 (ALPN h2): remove protocol = \"h2\" or enable HTTP/2 on it",
                ),
            });
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await?;
        let address = key.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %address, error = %e, "HTTP/2 upstream connection ended");
            }
        });
        Ok(sender)
    }
}
