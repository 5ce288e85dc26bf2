//! `[server.tls]`, the TLS options of an upstream and the users' `client_certificates`: PEM files
//! are read here, relative to the configuration file's directory, so that a broken pair refuses
//! the whole file (with the pair's file and reason) and the last good snapshot keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use super::Compiler;
use crate::config::raw::{RawServerTls, RawUpstream, RawUser};
use crate::snapshot::KeyDigest;
use crate::tls::{self, MinVersion, ServerTls, ServerTlsOptions, UpstreamProtocol, UpstreamTls};

/// An upstream's TLS settings, shared by its `https` targets.
pub(super) struct UpstreamTlsOptions {
    ca: Option<Arc<rustls::RootCertStore>>,
    server_name: Option<(String, std::ops::Range<usize>)>,
    pub protocol: UpstreamProtocol,
}

/// A path of the file, relative to the file's own directory unless absolute.
pub fn relative_to(config_file: &Path, path: &str) -> PathBuf {
    match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => PathBuf::from(path),
    }
}

impl Compiler<'_> {
    pub(super) fn server_tls(
        &mut self,
        file: &Path,
        raw: &Spanned<RawServerTls>,
        files: &mut Vec<PathBuf>,
    ) -> Option<Arc<ServerTls>> {
        let errors_before = self.errors.len();
        let t = raw.get_ref();
        if t.certificates.get_ref().is_empty() {
            self.error(
                t.certificates.span(),
                "[server.tls] certificates is empty: list at least one { cert = \"….pem\", key = \"….key\" } (the first is the default)",
            );
        }
        let mut pairs = Vec::with_capacity(t.certificates.get_ref().len());
        for pair in t.certificates.get_ref() {
            let cert = relative_to(file, pair.cert.get_ref());
            let key = relative_to(file, pair.key.get_ref());
            files.push(cert.clone());
            files.push(key.clone());
            match tls::load_pair(&cert, &key) {
                Ok(p) => pairs.push(p),
                Err(e) => {
                    let span = match &e {
                        tls::TlsError::Key { .. } | tls::TlsError::KeyMismatch { .. } => {
                            pair.key.span()
                        }
                        tls::TlsError::Read { path, .. } if *path == key => pair.key.span(),
                        _ => pair.cert.span(),
                    };
                    self.error(
                        span,
                        format!("this certificate pair is refused: {e}; the certificates loaded before keep serving"),
                    );
                }
            }
        }
        let min_version = match &t.min_version {
            None => MinVersion::default(),
            Some(v) => MinVersion::parse(v.get_ref()).unwrap_or_else(|| {
                self.error(
                    v.span(),
                    format!(
                        "min_version {:?} is not \"1.2\" or \"1.3\" (TLS older than 1.2 is never offered)",
                        v.get_ref()
                    ),
                );
                MinVersion::default()
            }),
        };
        let alpn = match &t.alpn {
            None => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(list.span(), "alpn is empty: use [\"h2\", \"http/1.1\"] (the default) or [\"http/1.1\"] to turn HTTP/2 off");
                }
                let mut ids = Vec::new();
                for id in list.get_ref() {
                    match id.get_ref().as_str() {
                        p @ ("h2" | "http/1.1") if !ids.contains(&p.as_bytes().to_vec()) => {
                            ids.push(p.as_bytes().to_vec())
                        }
                        "h2" | "http/1.1" => self.error(id.span(), "this protocol is listed twice"),
                        other => self.error(
                            id.span(),
                            format!("alpn {other:?} is not a protocol apiward speaks: use \"h2\" and/or \"http/1.1\""),
                        ),
                    }
                }
                ids
            }
        };
        let client_ca = t.client_ca.as_ref().and_then(|ca| {
            let path = relative_to(file, ca.get_ref());
            files.push(path.clone());
            match tls::load_roots(&path) {
                Ok(roots) => Some(roots),
                Err(e) => {
                    self.error(ca.span(), format!("client_ca is refused: {e}"));
                    None
                }
            }
        });
        if t.client_ca.is_some() && client_ca.is_none() || self.errors.len() != errors_before {
            return None;
        }
        let options = ServerTlsOptions {
            min_version,
            alpn,
            client_ca,
        };
        match ServerTls::new(pairs, options, files.clone()) {
            Ok(server) => Some(Arc::new(server)),
            Err(e) => {
                self.error(raw.span(), format!("[server.tls] cannot be used: {e}"));
                None
            }
        }
    }

    /// An upstream's `protocol`, `ca` and `server_name`, checked once for all its targets;
    /// `None` after an error. `any_https`: whether one of its targets is `https` (`ca` and
    /// `server_name` would otherwise be silently ignored, so they are errors).
    pub(super) fn upstream_tls_options(
        &mut self,
        file: &Path,
        up: &RawUpstream,
        any_https: bool,
        files: &mut Vec<PathBuf>,
    ) -> Option<UpstreamTlsOptions> {
        let errors_before = self.errors.len();
        let protocol = match &up.protocol {
            None => UpstreamProtocol::default(),
            Some(p) => UpstreamProtocol::parse(p.get_ref()).unwrap_or_else(|| {
                self.error(
                    p.span(),
                    format!(
                        "protocol {:?} is not \"http/1.1\" (the default) or \"h2\"",
                        p.get_ref()
                    ),
                );
                UpstreamProtocol::default()
            }),
        };
        if !any_https {
            for field in [&up.ca, &up.server_name].into_iter().flatten() {
                self.error(
                    field.span(),
                    "ca and server_name apply to https targets only: write the url as \"https://…\" or remove this",
                );
            }
        }
        let ca = match &up.ca {
            Some(ca) if any_https => {
                let path = relative_to(file, ca.get_ref());
                files.push(path.clone());
                match tls::load_roots(&path) {
                    Ok(roots) => Some(Arc::new(roots)),
                    Err(e) => {
                        self.error(ca.span(), format!("ca is refused: {e}"));
                        None
                    }
                }
            }
            _ => None,
        };
        (self.errors.len() == errors_before).then(|| UpstreamTlsOptions {
            ca,
            server_name: up
                .server_name
                .as_ref()
                .map(|n| (n.get_ref().clone(), n.span())),
            protocol,
        })
    }

    /// How to open TLS to one `https` target whose URL host is `host` (`url_span` is where its
    /// URL is, for an error about the name).
    pub(super) fn target_tls(
        &mut self,
        options: &UpstreamTlsOptions,
        host: &str,
        url_span: std::ops::Range<usize>,
    ) -> Option<Arc<UpstreamTls>> {
        let (name, span) = match &options.server_name {
            Some((name, span)) => (name.as_str(), span.clone()),
            None => (host.trim_start_matches('[').trim_end_matches(']'), url_span),
        };
        match UpstreamTls::new(options.ca.clone(), name, options.protocol) {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                self.error(span, e.to_string());
                None
            }
        }
    }

    /// A user's `client_certificates`: each fingerprint with the span of its `sha256`. Whether
    /// one is also another user's is for `incremental::assemble`, which has every user.
    pub(super) fn client_certificates(
        &mut self,
        user: &RawUser,
    ) -> Vec<(KeyDigest, std::ops::Range<usize>)> {
        let mut certificates = Vec::with_capacity(user.client_certificates.len());
        for cert in &user.client_certificates {
            let c = cert.get_ref();
            if let Some(created) = &c.created {
                let _ = self.datetime(created);
            }
            match parse_fingerprint(c.sha256.get_ref()) {
                Ok(digest) if certificates.iter().any(|(d, _)| *d == digest) => self.error(
                    c.sha256.span(),
                    "this certificate is listed twice for this user: keep one",
                ),
                Ok(digest) => certificates.push((digest, c.sha256.span())),
                Err(msg) => self.error(c.sha256.span(), msg),
            }
        }
        certificates
    }
}

/// The hex SHA-256 of a certificate's DER, as `sha256sum` or `openssl x509 -fingerprint -sha256`
/// write it (colons and either case accepted).
pub fn parse_fingerprint(text: &str) -> Result<KeyDigest, String> {
    let hint = "sha256 is the certificate's SHA-256 fingerprint, 64 hex digits (`apiward users add-certificate ID --cert FILE` records it)";
    let hex_digits: String = text.chars().filter(|c| *c != ':').collect();
    if hex_digits.len() != 64 {
        return Err(format!(
            "the fingerprint has {} hex digits, not 64: {hint}",
            hex_digits.len()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex_digits, &mut out)
        .map_err(|_| format!("the fingerprint is not hexadecimal: {hint}"))?;
    Ok(KeyDigest(out))
}
