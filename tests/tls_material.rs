//! TLS material as the configuration loads it: certificates chosen by SNI, broken pairs refused
//! with their file and reason, PEM changes reloading, client certificates asked for but not
//! required, and verified upstream connections, each over a real handshake on loopback.

mod common;

use std::path::Path;
use std::sync::Arc;

use apiward::config::reload::{ConfigStore, ReloadOutcome};
use apiward::tls::{UpstreamProtocol, UpstreamTls};
use common::tls::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A configuration with `[server.tls]` over the given table body, and nothing else but one route.
fn tls_config(tls: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[server.tls]
{tls}

[upstreams.echo]
url = "builtin:echo"

[[routes]]
prefix = "/"
upstream = "echo"
"#
    )
}

const TWO_NAMES: &str = r#"certificates = [
  { cert = "certs/api.pem", key = "certs/api.key" },
  { cert = "certs/eu.pem", key = "certs/eu.key" },
]"#;

struct Site {
    dir: tempfile::TempDir,
    ca: TestCa,
    api: TestCert,
    eu: TestCert,
}

/// A configuration directory with two pairs: api.example.org and *.eu.example.org.
fn site() -> Site {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("certs")).expect("certs dir");
    let ca = TestCa::new("apiward test CA");
    let api = ca.server_cert(&["api.example.org"]);
    let eu = ca.server_cert(&["*.eu.example.org", "eu.example.org"]);
    api.write(&dir.path().join("certs"), "api");
    eu.write(&dir.path().join("certs"), "eu");
    std::fs::write(dir.path().join("apiward.toml"), tls_config(TWO_NAMES)).expect("write config");
    Site { dir, ca, api, eu }
}

/// Accepts TLS connections with whatever `[server.tls]` the store serves at each accept, and
/// answers each with one line naming the client certificate's fingerprint, if any.
async fn serve(store: Arc<ConfigStore>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = store
                .load()
                .tls
                .as_ref()
                .expect("tls configured")
                .acceptor();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let client = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| apiward::tls::fingerprint(c).to_hex());
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let line = format!("client={}\n", client.as_deref().unwrap_or("none"));
                    if tls.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

async fn ask(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    stream.write_all(b"?").await.expect("write");
    let mut buf = [0u8; 128];
    let n = stream.read(&mut buf).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

fn open(dir: &Path) -> Arc<ConfigStore> {
    ConfigStore::open(&dir.join("apiward.toml")).unwrap_or_else(|e| panic!("config: {e}"))
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni_exact_then_wildcard_then_the_first() {
    let site = site();
    let addr = serve(open(site.dir.path())).await;
    let client = client_config(&site.ca, &[], None);
    for (sni, expected, why) in [
        ("api.example.org", &site.api, "exact name"),
        ("API.Example.org", &site.api, "names are case-insensitive"),
        ("a.eu.example.org", &site.eu, "wildcard"),
        ("eu.example.org", &site.eu, "exact name of the second pair"),
    ] {
        let stream = connect(addr, sni, Arc::clone(&client))
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(peer_certificate(&stream), expected.der, "{sni}: {why}");
    }
    // Without SNI (an IP address sends none), the first pair is the default.
    let stream = connect_looking_only(addr, "127.0.0.1").await;
    assert_eq!(peer_certificate(&stream), site.api.der);
    // A name no certificate carries gets the default too (as nginx's default server does),
    // and a wildcard covers one label only.
    for sni in ["unknown.example.com", "a.b.eu.example.org"] {
        let stream = connect_looking_only(addr, sni).await;
        assert_eq!(peer_certificate(&stream), site.api.der, "{sni}");
    }
}

#[test]
fn a_broken_pair_is_refused_with_its_file_and_reason() {
    let site = site();
    let certs = site.dir.path().join("certs");
    let config = site.dir.path().join("apiward.toml");

    // The key of another certificate.
    std::fs::copy(certs.join("eu.key"), certs.join("api.key")).expect("copy key");
    let errors = apiward::config::load(&config)
        .expect_err("mismatched key")
        .to_string();
    assert!(errors.contains("api.key"), "{errors}");
    assert!(
        errors.contains("does not belong to the certificate"),
        "{errors}"
    );
    assert!(
        errors.contains("apiward.toml:7:"),
        "the pair's line: {errors}"
    );

    // Not a certificate at all.
    std::fs::write(certs.join("eu.pem"), "hello\n").expect("write");
    let errors = apiward::config::load(&config)
        .expect_err("no PEM")
        .to_string();
    assert!(
        errors.contains("eu.pem: no \"BEGIN CERTIFICATE\""),
        "{errors}"
    );

    // A file that is not there.
    std::fs::remove_file(certs.join("eu.pem")).expect("remove");
    let errors = apiward::config::load(&config)
        .expect_err("missing")
        .to_string();
    assert!(errors.contains("eu.pem: cannot read"), "{errors}");
}

#[test]
fn tls_settings_are_checked() {
    let site = site();
    let config = site.dir.path().join("apiward.toml");
    for (body, expected) in [
        (
            format!("{TWO_NAMES}\nmin_version = \"1.1\""),
            "min_version \"1.1\" is not",
        ),
        (
            format!("{TWO_NAMES}\nalpn = [\"h3\"]"),
            "alpn \"h3\" is not a protocol",
        ),
        (format!("{TWO_NAMES}\nalpn = []"), "alpn is empty"),
        ("certificates = []".to_string(), "certificates is empty"),
        (
            format!("{TWO_NAMES}\nclient_ca = \"nope.pem\""),
            "client_ca is refused",
        ),
        (
            format!("{TWO_NAMES}\nciphers = \"all\""),
            "unknown field `ciphers`",
        ),
    ] {
        std::fs::write(&config, tls_config(&body)).expect("write");
        let errors = apiward::config::load(&config)
            .expect_err(expected)
            .to_string();
        assert!(errors.contains(expected), "{expected}: {errors}");
    }
}

#[tokio::test]
async fn a_renewed_certificate_is_served_after_reload_and_a_broken_one_is_not() {
    let site = site();
    let store = open(site.dir.path());
    let addr = serve(Arc::clone(&store)).await;
    // A new client each time: a resumed session would show the certificate of its first handshake.
    let client = || client_config(&site.ca, &[], None);
    let mut open_before = connect(addr, "api.example.org", client())
        .await
        .expect("handshake");
    assert_eq!(ask(&mut open_before).await, "client=none");

    // A broken pair: the reload is refused and the last good certificate keeps serving.
    let certs = site.dir.path().join("certs");
    std::fs::copy(certs.join("eu.key"), certs.join("api.key")).expect("copy key");
    match store.reload() {
        ReloadOutcome::Refused(errors) => {
            assert!(errors.to_string().contains("api.key"), "{errors}")
        }
        other => panic!("a broken pair must be refused, got {other:?}"),
    }
    let stream = connect(addr, "api.example.org", client())
        .await
        .expect("handshake");
    assert_eq!(peer_certificate(&stream), site.api.der);

    // A renewed pair under the same file names: the configuration text is unchanged, yet the
    // reload applies, because the PEM files changed.
    let renewed = site.ca.server_cert(&["api.example.org"]);
    renewed.write(&certs, "api");
    assert!(
        matches!(store.reload(), ReloadOutcome::Applied { .. }),
        "a renewed certificate reloads"
    );
    let stream = connect(addr, "api.example.org", client())
        .await
        .expect("handshake");
    assert_eq!(peer_certificate(&stream), renewed.der);
    assert!(matches!(store.reload(), ReloadOutcome::Unchanged));

    // The connection opened before both reloads still works.
    assert_eq!(ask(&mut open_before).await, "client=none");
}

#[tokio::test]
async fn client_ca_asks_for_a_certificate_without_requiring_one() {
    let site = site();
    let clients = TestCa::new("client CA");
    clients.write(&site.dir.path().join("certs"), "clients-ca");
    std::fs::write(
        site.dir.path().join("apiward.toml"),
        tls_config(&format!(
            "{TWO_NAMES}\nclient_ca = \"certs/clients-ca.pem\""
        )),
    )
    .expect("write");
    let addr = serve(open(site.dir.path())).await;

    let mut without = connect(addr, "api.example.org", client_config(&site.ca, &[], None))
        .await
        .expect("no certificate is fine");
    assert_eq!(ask(&mut without).await, "client=none");

    let device = clients.client_cert("edge-device");
    let mut with = connect(
        addr,
        "api.example.org",
        client_config(&site.ca, &[], Some(&device)),
    )
    .await
    .expect("a certificate of the client CA");
    assert_eq!(ask(&mut with).await, format!("client={}", device.sha256()));

    // Signed by another CA: the handshake fails (with TLS 1.3 the client learns it on its first read).
    let stranger = TestCa::new("someone else").client_cert("stranger");
    let refused = match connect(
        addr,
        "api.example.org",
        client_config(&site.ca, &[], Some(&stranger)),
    )
    .await
    {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"?").await;
            let mut buf = [0u8; 16];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(
        refused,
        "a certificate that does not chain to client_ca fails the handshake"
    );
}

#[tokio::test]
async fn min_version_1_3_refuses_a_tls_1_2_client() {
    let site = site();
    std::fs::write(
        site.dir.path().join("apiward.toml"),
        tls_config(&format!("{TWO_NAMES}\nmin_version = \"1.3\"")),
    )
    .expect("write");
    let addr = serve(open(site.dir.path())).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(site.ca.der.clone()).expect("root");
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    assert!(
        connect(addr, "api.example.org", Arc::new(tls12))
            .await
            .is_err()
    );
    let stream = connect(addr, "api.example.org", client_config(&site.ca, &[], None))
        .await
        .expect("TLS 1.3");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn sessions_resume() {
    let site = site();
    let addr = serve(open(site.dir.path())).await;
    let client = client_config(&site.ca, &[], None);
    let mut first = connect(addr, "api.example.org", Arc::clone(&client))
        .await
        .expect("handshake");
    // TLS 1.3 tickets arrive after the handshake: read once so the client stores them.
    assert_eq!(ask(&mut first).await, "client=none");
    let second = connect(addr, "api.example.org", client)
        .await
        .expect("handshake");
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[tokio::test]
async fn an_upstream_connection_is_verified_against_its_own_ca() {
    let internal = TestCa::new("internal CA");
    let dir = tempfile::tempdir().expect("dir");
    let billing = internal.server_cert(&["billing.internal"]);
    let (cert, key) = billing.write(dir.path(), "billing");
    let pair = apiward::tls::load_pair(&cert, &key).expect("pair");
    let server = apiward::tls::ServerTls::new(
        vec![pair],
        apiward::tls::ServerTlsOptions {
            min_version: Default::default(),
            alpn: vec![b"http/1.1".to_vec()],
            client_ca: None,
        },
        Vec::new(),
    )
    .expect("server");
    let acceptor = server.acceptor();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let _ = s.write_all(b"hello").await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    let ca_file = internal.write(dir.path(), "internal-ca");
    let roots = || {
        Some(std::sync::Arc::new(
            apiward::tls::load_roots(&ca_file).expect("roots"),
        ))
    };
    let tcp = || async { tokio::net::TcpStream::connect(addr).await.expect("connect") };

    let good = UpstreamTls::new(roots(), "billing.internal", UpstreamProtocol::Http1).expect("tls");
    let mut s = good.connect(tcp().await).await.expect("verified");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    assert_eq!(text, "hello");

    let wrong_name =
        UpstreamTls::new(roots(), "other.internal", UpstreamProtocol::Http1).expect("tls");
    assert!(
        wrong_name.connect(tcp().await).await.is_err(),
        "the name is verified"
    );

    let system = UpstreamTls::new(None, "billing.internal", UpstreamProtocol::Http1).expect("tls");
    assert!(
        system.connect(tcp().await).await.is_err(),
        "the system store does not trust a private CA"
    );
}

#[test]
fn check_lists_the_certificates_and_warns_of_one_about_to_expire() {
    let site = site();
    let soon = site.ca.server_cert_valid_for(&["api.example.org"], 3);
    soon.write(&site.dir.path().join("certs"), "api");
    let out = common::run_apiward(&site.dir.path().join("apiward.toml"), &["check"], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("certificate for *.eu.example.org, eu.example.org"),
        "{stdout}"
    );
    assert!(
        stderr.contains("api.pem (api.example.org) expires at"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("eu.pem"),
        "a certificate valid for a year is not warned of: {stderr}"
    );

    let expired = site.ca.server_cert_valid_for(&["api.example.org"], -2);
    expired.write(&site.dir.path().join("certs"), "api");
    let out = common::run_apiward(&site.dir.path().join("apiward.toml"), &["check"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("expired at"), "{stderr}");
}

#[test]
fn users_add_certificate_records_the_fingerprint_and_explain_uses_it() {
    let site = site();
    let config = site.dir.path().join("apiward.toml");
    let mut text = std::fs::read_to_string(&config).expect("read");
    text += "\n[groups.g]\nallow = [{ path = \"/**\", verbs = [\"view\"] }]\n\n\
             [users.\"edge-device@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\n";
    std::fs::write(&config, text).expect("write");
    let clients = TestCa::new("client CA");
    let device = clients.client_cert("edge-device");
    let cert_file = site.dir.path().join("device.pem");
    std::fs::write(&cert_file, &device.cert_pem).expect("write cert");
    let cert_arg = cert_file.display().to_string();

    let out = common::run_apiward(
        &config,
        &[
            "users",
            "add-certificate",
            "edge-device@example.org",
            "--cert",
            &cert_arg,
        ],
        "",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot = apiward::config::load(&config).expect("still valid");
    let user = snapshot
        .user_of_certificate(&device.der)
        .map(|i| &*snapshot.user(i).id);
    assert_eq!(user, Some("edge-device@example.org"));
    assert!(
        std::fs::read_to_string(&config)
            .expect("read")
            .contains(&device.sha256())
    );

    // Recording it again changes nothing.
    let before = std::fs::read_to_string(&config).expect("read");
    let out = common::run_apiward(
        &config,
        &[
            "users",
            "add-certificate",
            "edge-device@example.org",
            "--cert",
            &cert_arg,
        ],
        "",
    );
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&config).expect("read"), before);

    let out = common::run_apiward(
        &config,
        &["explain", "--cert", &cert_arg, "--path", "/x"],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("client certificate → user edge-device@example.org"),
        "{stdout}"
    );
    assert!(stdout.contains("200 allowed"), "{stdout}");

    let stranger = clients.client_cert("stranger");
    std::fs::write(&cert_file, &stranger.cert_pem).expect("write cert");
    let out = common::run_apiward(
        &config,
        &["explain", "--cert", &cert_arg, "--path", "/x"],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("401 invalid_credentials"), "{stdout}");

    let out = common::run_apiward(
        &config,
        &[
            "users",
            "add-certificate",
            "nobody@example.org",
            "--cert",
            &cert_arg,
        ],
        "",
    );
    assert!(!out.status.success(), "an unknown user is an error");
}
