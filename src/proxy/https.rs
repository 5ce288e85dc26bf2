//! The TLS listener's first steps, before any HTTP: a first byte that is not a TLS handshake gets
//! a plain-text 400 ("this port speaks HTTPS"), and the handshake must finish within
//! `header_read_timeout`; each outcome is counted. The listener then serves the TLS stream with
//! the same transports as a TCP one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::observe::metrics::Metrics;
use crate::tls::{ClientSession, ServerTls};

/// The first byte of every TLS record that starts a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 23\r\nconnection: close\r\n\r\nthis port speaks HTTPS\n";

/// A handshake that finished: the TLS stream, what it agreed, and whether ALPN chose HTTP/2.
pub(super) struct Handshaken {
    pub stream: TlsStream<TcpStream>,
    pub session: ClientSession,
    pub h2: bool,
}

/// Answers a plaintext request, or completes the TLS handshake within `timeout`; counts either.
pub(super) async fn accept(
    stream: TcpStream,
    peer: SocketAddr,
    tls: &ServerTls,
    timeout: Duration,
    metrics: &Metrics,
) -> Option<Handshaken> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(0) | Err(_)) => {
            metrics.tls_handshake_failure("closed");
            return None;
        }
        Err(_) => {
            metrics.tls_handshake_failure("timeout");
            return None;
        }
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        metrics.tls_handshake_failure("plaintext");
        answer_plaintext(stream).await;
        return None;
    }
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            let reason = failure_reason(&e);
            tracing::debug!(%peer, error = %e, reason, "TLS handshake failed");
            metrics.tls_handshake_failure(reason);
            return None;
        }
        Err(_) => {
            metrics.tls_handshake_failure("timeout");
            return None;
        }
    };
    let connection = stream.get_ref().1;
    let session = ClientSession::of(connection);
    let h2 = connection.alpn_protocol() == Some(b"h2");
    // A resumed session skips the certificate and its signature: the benchmarks count both kinds.
    let kind = match connection.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        _ => "full",
    };
    metrics.tls_handshake(session.version, if h2 { "h2" } else { "h1" }, kind);
    Some(Handshaken {
        stream,
        session,
        h2,
    })
}

/// A plain HTTP request on the TLS port: read what it sent (so that closing does not reset the
/// connection under the answer), answer 400, close.
async fn answer_plaintext(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut sink)).await;
    let _ = stream.write_all(PLAINTEXT_ANSWER).await;
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
}

/// The `reason` label of a failed handshake.
fn failure_reason(e: &std::io::Error) -> &'static str {
    use rustls::Error as E;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<E>()) {
        Some(E::InvalidCertificate(_) | E::NoCertificatesPresented) => "client_certificate",
        Some(E::NoApplicationProtocol) => "no_application_protocol",
        Some(E::PeerIncompatible(_)) => "incompatible",
        Some(E::AlertReceived(_)) => "alert_received",
        Some(
            E::InvalidMessage(_) | E::PeerMisbehaved(_) | E::InappropriateHandshakeMessage { .. },
        ) => "protocol_error",
        Some(_) => "other",
        None => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "closed",
            _ => "other",
        },
    }
}
