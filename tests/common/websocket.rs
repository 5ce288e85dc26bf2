//! WebSocket test support: an echo server on a loopback port, and a client that completes its
//! handshake through the gateway with an API key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket echo server on a loopback port, counting the connections it accepted.
pub async fn ws_echo_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    echo_server(None).await
}

/// The echo server over TLS only (`wss://`), with `config`'s certificate and ALPN.
pub async fn wss_echo_upstream(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    echo_server(Some(tokio_rustls::TlsAcceptor::from(config))).await
}

async fn echo_server(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => echo(stream).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            echo(stream).await;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// Answers the handshake on `stream`, then sends back every text and binary message.
async fn echo<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
        // A Close is answered by the library; the loop ends when the stream does.
    }
}

/// A WebSocket to `path` through the gateway at `gateway`, with `key` in `X-Api-Key`; panics
/// unless the handshake completes with 101.
pub async fn ws_connect(gateway: SocketAddr, path: &str, key: &str) -> WebSocketStream<TcpStream> {
    let mut request = format!("ws://{gateway}{path}")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("x-api-key", key.parse().expect("key header"));
    let stream = TcpStream::connect(gateway).await.expect("connect");
    let (ws, response) = tokio_tungstenite::client_async(request, stream)
        .await
        .expect("the handshake through the gateway");
    assert_eq!(response.status(), 101);
    ws
}
