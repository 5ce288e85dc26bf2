//! HTTP/2 upstreams (`protocol = "h2"`): one multiplexed connection per upstream address, over
//! TLS with ALPN `h2` or as h2c with prior knowledge, opened on first use and again after it
//! closes. Its connection task is hyper's own: HTTP/2 multiplexes streams of many requests.

use std::sync::{Arc, Mutex};

use http::uri::Authority;
use http::{Request, Response};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::client::{
    RequestBody, SendError, UpstreamBody, UpstreamError, connect_stream, pool_key,
};
use crate::proxy::upstream::Limits;
use crate::tls::UpstreamTls;

/// The open HTTP/2 connection of each upstream address.
#[derive(Default)]
pub struct H2Pool {
    connections: Mutex<Vec<(Authority, http2::SendRequest<RequestBody>)>>,
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
        connections.retain(|(_, sender)| !sender.is_closed());
        connections
            .iter()
            .find(|(k, _)| k.as_str() == key.as_str())
            .map(|(_, sender)| sender.clone())
    }

    fn keep(&self, key: &Authority, sender: http2::SendRequest<RequestBody>) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        connections.retain(|(k, _)| k.as_str() != key.as_str());
        connections.push((key.clone(), sender));
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
