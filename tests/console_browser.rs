//! The console in a real headless Chromium driven through WebDriver (Debian's `chromium` and
//! `chromium-driver`; `bash .ci/run` installs them): sign in, add a user and read its key from
//! the page, use it on the public listener, disable, rotate and delete from the page; a form
//! without the CSRF token and a cross-site form post are refused; markup in an id is shown as
//! text. Screenshots of the list and of a user's page are saved under
//! `target/console-screenshots/` (docs/console.md shows copies).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};

const PASSWORD: &str = "Console-pass-42";
const CHROMIUM: [&str; 2] = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
const DRIVER: [&str; 2] = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"];

/// chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(candidates: &[&str], what: &str) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{what} is not installed (looked for {candidates:?}): the browser tests need it; \
                 `apt-get install chromium chromium-driver`, or run `bash .ci/run`, which installs them"
            )
        })
}

async fn start_driver() -> (Driver, Client) {
    let chromium = installed(&CHROMIUM, "chromium");
    let chromedriver = installed(&DRIVER, "chromedriver");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
    let profile = tempfile::tempdir().expect("profile dir");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let status = format!("{}/status", driver.url);
    let up = eventually(|| {
        let status = status.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(1), async {
                let req = http::Request::get(&status)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                client().request(req).await.is_ok()
            })
            .await
            .unwrap_or(false)
        }
    })
    .await;
    assert!(up, "chromedriver did not start on port {port}");
    let args = serde_json::json!([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        format!("--user-data-dir={}", driver._profile.path().display()),
    ]);
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), "chrome".into());
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium.display().to_string(), "args": args }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("chromedriver would not start chromium: {e}"));
    (driver, browser)
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(screenshots_dir().join(name), png).expect("write screenshot");
}

/// Finds the element (it must be there) and clicks it.
async fn click(browser: &Client, locator: Locator<'_>) {
    browser
        .find(locator)
        .await
        .unwrap_or_else(|e| panic!("no {locator:?} to click: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {locator:?}: {e}"));
}

/// The text of the first `css` element, waiting for it while a navigation ends.
async fn text_of(browser: &Client, css: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        match browser.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) => return t,
                Err(err) => last = err.to_string(),
            },
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {css} on the page: {last}")
}

/// Waits until the text of `css` contains `needle` (the answer to a form post has arrived).
async fn expect_text(browser: &Client, css: &str, needle: &str) {
    let arrived = eventually(|| async {
        match browser.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.is_ok_and(|t| t.contains(needle)),
            Err(_) => false,
        }
    })
    .await;
    assert!(arrived, "expected {needle:?} in {css}");
}

/// Waits until the page's heading satisfies `ok` (a form post's answer may still be loading).
async fn expect_heading(browser: &Client, ok: impl Fn(&str) -> bool, what: &str) {
    let arrived = eventually(|| async { heading_now(browser).await.is_some_and(|h| ok(&h)) }).await;
    assert!(
        arrived,
        "expected the heading {what}, the page has {:?}",
        heading_now(browser).await
    );
}

/// The page's heading now, if it has one (a navigation may be under way).
async fn heading_now(browser: &Client) -> Option<String> {
    browser
        .find(Locator::Css("h1"))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

async fn public(gw: &TestGateway, key: &str) -> Reply {
    get(&gw.url("/supporters/1"), &[("x-api-key", key)]).await
}

fn console_config(upstream: &str) -> String {
    let hash = apiward::auth::password::hash_password(PASSWORD).expect("hash");
    let quiet = TestKey::new("quiet");
    let users = user(
        "<script>alert(1)</script>@evil.example",
        "active",
        "manage-supporters",
        "127.0.0.1",
        &[&quiet],
    )
    .replacen(
        "status = \"active\"",
        "display_name = \"<img src=x onerror=alert(2)>\"\nstatus = \"active\"",
        1,
    );
    format!(
        "{}\n[admins.\"ops@example.org\"]\npassword_hash = \"{hash}\"\n",
        with_admin(&config(upstream, &users))
    )
}

/// A page on another origin that posts a form to the console as soon as it loads.
async fn attacker_page(admin: SocketAddr, id: &str) -> Upstream {
    let page = format!(
        "<!doctype html><form id=f method=post action=\"http://{admin}/users/{id}/status\">\
         <input name=status value=inactive></form><script>document.getElementById('f').submit()</script>"
    );
    upstream_with(move |_| {
        let page = page.clone();
        async move {
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(page)));
            r.headers_mut()
                .insert("content-type", http::HeaderValue::from_static("text/html"));
            r
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_a_user_from_the_console_in_a_real_browser() {
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&console_config(&upstream.url())).await;
    let admin = gw.gateway().admin_addr().expect("admin listener");
    let (_driver, browser) = start_driver().await;
    let base = format!("http://{admin}");

    // Not signed in: the login form, nothing else.
    browser.goto(&format!("{base}/users/new")).await.unwrap();
    expect_heading(
        &browser,
        |h| h == "Sign in to apiward",
        "Sign in to apiward",
    )
    .await;
    let form = browser
        .form(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    form.set_by_name("id", "ops@example.org").await.unwrap();
    form.set_by_name("password", "wrong-password-1")
        .await
        .unwrap();
    form.submit().await.unwrap();
    assert!(
        text_of(&browser, ".error")
            .await
            .contains("Wrong admin id or password")
    );
    let form = browser
        .form(Locator::Css("form[action='/login']"))
        .await
        .unwrap();
    form.set_by_name("id", "ops@example.org").await.unwrap();
    form.set_by_name("password", PASSWORD).await.unwrap();
    form.submit().await.unwrap();
    expect_heading(&browser, |h| h == "API users", "API users").await;

    // Markup in the file is shown as text, never run.
    let shown = text_of(&browser, "td.id a").await;
    assert_eq!(shown, "<script>alert(1)</script>@evil.example");
    assert!(
        browser
            .source()
            .await
            .unwrap()
            .contains("&lt;img src=x onerror=alert(2)&gt;")
    );
    let scripts = browser
        .execute("return document.scripts.length", vec![])
        .await
        .unwrap();
    assert_eq!(scripts, serde_json::json!(1), "only /assets/console.js");

    // Add a user; its key is on the page, once.
    click(&browser, Locator::LinkText("Add API user")).await;
    let form = browser
        .form(Locator::Css("form[action='/users']"))
        .await
        .unwrap();
    form.set_by_name("id", "crm-sync@example.org")
        .await
        .unwrap();
    form.set_by_name("display_name", "CRM nightly sync")
        .await
        .unwrap();
    form.set_by_name("description", "Pushes supporters every night")
        .await
        .unwrap();
    form.set_by_name("remote_addresses", "127.0.0.1")
        .await
        .unwrap();
    browser
        .find(Locator::Css("#group"))
        .await
        .unwrap()
        .select_by_value("manage-supporters")
        .await
        .unwrap();
    form.submit().await.unwrap();
    expect_heading(
        &browser,
        |h| h == "New key for crm-sync@example.org",
        "New key for crm-sync@example.org",
    )
    .await;
    let key = text_of(&browser, "#new-key").await;
    assert!(key.starts_with("aw_") && key.len() == 46, "{key}");
    assert!(
        browser
            .find(Locator::Css("button[data-copy='new-key']"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap(),
        "the copy button is shown once the script runs"
    );
    assert_eq!(public(&gw, &key).await.status, 200);
    for _ in 0..3 {
        public(&gw, "aw_not-a-key-at-all").await;
    }

    // Disable from the page: the next call is refused.
    browser
        .goto(&format!("{base}/users/crm-sync@example.org"))
        .await
        .unwrap();
    click(&browser, Locator::Css("form[action$='/status'] button")).await;
    expect_text(&browser, ".notice", "set to inactive").await;
    let refused = public(&gw, &key).await;
    assert_eq!(
        (refused.status.as_u16(), refused.error_code().as_str()),
        (403, "user_inactive")
    );
    click(&browser, Locator::Css("form[action$='/status'] button")).await;
    expect_text(&browser, ".notice", "set to active").await;
    for _ in 0..4 {
        assert_eq!(public(&gw, &key).await.status, 200);
    }

    // A form without this session's CSRF token is refused, even from the console's own origin.
    browser
        .execute(
            "const f = document.createElement('form'); f.method = 'post'; \
             f.action = '/users/crm-sync@example.org/status'; \
             const s = document.createElement('input'); s.name = 'status'; s.value = 'inactive'; \
             f.appendChild(s); document.body.appendChild(f); f.submit();",
            vec![],
        )
        .await
        .unwrap();
    let refused_page =
        eventually(|| async { heading_now(&browser).await.as_deref() == Some("Refused") }).await;
    assert!(
        refused_page,
        "the form without a CSRF token was answered with the Refused page"
    );
    assert_eq!(public(&gw, &key).await.status, 200, "still active");
    // And a page on another site posting to the console gets nowhere either.
    let attacker = attacker_page(admin, "crm-sync@example.org").await;
    browser.goto(&attacker.url()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        public(&gw, &key).await.status,
        200,
        "the cross-site post changed nothing"
    );

    // The user's page, with its keys, chart and recent requests.
    browser
        .goto(&format!("{base}/users/crm-sync@example.org"))
        .await
        .unwrap();
    assert!(
        text_of(&browser, "dl.details")
            .await
            .contains("CRM nightly sync")
    );
    let recent = browser.source().await.unwrap();
    assert!(
        recent.contains("/supporters/1") && recent.contains("user_inactive"),
        "the recent-requests table"
    );
    assert!(!recent.contains(&key), "the key is never shown again");
    browser.set_window_size(1280, 1400).await.unwrap();
    screenshot(&browser, "console-user.png").await;
    browser.set_window_size(1280, 900).await.unwrap();

    // Rotate with a grace period: both keys work, then the old one is revoked.
    browser
        .find(Locator::Css("#grace"))
        .await
        .unwrap()
        .select_by_value("1h")
        .await
        .unwrap();
    click(&browser, Locator::Css("form[action$='/rotate'] button")).await;
    let new_key = text_of(&browser, "#new-key").await;
    assert_ne!(new_key, key);
    assert!(
        text_of(&browser, ".notice")
            .await
            .contains("keeps working until")
    );
    assert_eq!(public(&gw, &key).await.status, 200);
    assert_eq!(public(&gw, &new_key).await.status, 200);
    browser
        .goto(&format!(
            "{base}/users/crm-sync@example.org/keys/{}/revoke",
            &key[..8]
        ))
        .await
        .unwrap();
    assert!(text_of(&browser, ".error").await.contains("fails at once"));
    click(&browser, Locator::Css("button.danger")).await;
    expect_text(&browser, ".notice", "was revoked").await;
    assert_eq!(public(&gw, &key).await.status, 401);
    assert_eq!(public(&gw, &new_key).await.status, 200);

    // The list, sorted and filtered.
    browser
        .goto(&format!("{base}/?sort=requests"))
        .await
        .unwrap();
    let first = text_of(&browser, "td.id a").await;
    assert_eq!(first, "crm-sync@example.org", "the busiest first");
    screenshot(&browser, "console-list.png").await;
    browser.set_window_size(390, 844).await.unwrap();
    screenshot(&browser, "console-list-phone.png").await;
    browser.set_window_size(1280, 900).await.unwrap();
    browser.goto(&format!("{base}/?q=evil")).await.unwrap();
    assert_eq!(
        browser
            .find_all(Locator::Css("td.id a"))
            .await
            .unwrap()
            .len(),
        1
    );
    browser.goto(&format!("{base}/groups")).await.unwrap();
    assert!(text_of(&browser, "main").await.contains("/supporters/**"));

    // Delete, after the confirmation.
    browser
        .goto(&format!("{base}/users/crm-sync@example.org"))
        .await
        .unwrap();
    click(&browser, Locator::LinkText("Delete")).await;
    expect_heading(
        &browser,
        |h| h.starts_with("Delete API user"),
        "Delete API user ...",
    )
    .await;
    click(&browser, Locator::Css("button.danger")).await;
    expect_heading(&browser, |h| h == "API users", "API users").await;
    assert_eq!(public(&gw, &new_key).await.status, 401);
    assert!(
        !std::fs::read_to_string(&gw.config_path)
            .unwrap()
            .contains("crm-sync@example.org")
    );

    browser.close().await.unwrap();
    gw.shutdown().await;
}
