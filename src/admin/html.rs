//! HTML for the console: escaping, the page frame with its security headers, the 24-hour chart
//! drawn as SVG on the server, and the stylesheet and script embedded in the binary (the page
//! loads nothing from anywhere else).

use std::fmt::Write as _;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::context::AdminResponse;
use crate::observe::recent::HourCount;

pub const CSS: &str = include_str!("assets/console.css");
pub const JS: &str = include_str!("assets/console.js");

/// Nothing inline, nothing from elsewhere: scripts and styles only from this listener's
/// `/assets/`, no framing, forms only to this origin.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Text made safe for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment percent-encoded (a user id in a link).
pub fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What goes around every page.
pub struct Frame<'a> {
    pub title: &'a str,
    /// The signed-in admin, for the header (none on the login page).
    pub admin: Option<&'a str>,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: Option<&'a str>,
    pub read_only: bool,
}

pub fn page(status: StatusCode, frame: &Frame<'_>, body: &str) -> AdminResponse {
    let mut html = String::with_capacity(body.len() + 2048);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · apiward</title><link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script src=\"/assets/console.js\" defer></script></head><body>",
        esc(frame.title)
    );
    html.push_str("<header class=\"top\"><a class=\"brand\" href=\"/\">apiward</a>");
    if let Some(admin) = frame.admin {
        html.push_str(
            "<nav aria-label=\"Main\"><a href=\"/\">API users</a><a href=\"/groups\">Groups</a>\
             <a href=\"/refusals\">Refusals</a></nav>",
        );
        let _ = write!(
            html,
            "<form method=\"post\" action=\"/logout\" class=\"signout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <span class=\"who\">{}</span> <button type=\"submit\">Sign out</button></form>",
            esc(frame.csrf.unwrap_or("")),
            esc(admin)
        );
    }
    html.push_str("</header><main>");
    if frame.read_only {
        html.push_str(
            "<p class=\"banner\" role=\"status\">The configuration file is read-only (a ConfigMap mount?): \
             the console only shows it. Change the ConfigMap instead.</p>",
        );
    }
    html.push_str(body);
    html.push_str("</main></body></html>\n");
    let mut r = Response::new(Full::new(Bytes::from(html)));
    *r.status_mut() = status;
    security_headers(&mut r, "text/html; charset=utf-8");
    r
}

pub fn security_headers(r: &mut AdminResponse, content_type: &'static str) {
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

pub fn asset(body: &'static str, content_type: &'static str) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    security_headers(&mut r, content_type);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    r
}

/// A 303 to `location` (after a form post), with extra `Set-Cookie` if given.
pub fn see_other(location: &str, cookie: Option<&str>) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
        r.headers_mut().insert(http::header::SET_COOKIE, c);
    }
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The last 24 hours of a user, allowed (below) and refused (stacked on top) per hour, as an
/// inline SVG; `large` for the user's page, small for the list.
pub fn chart(hours: &[HourCount; 24], large: bool) -> String {
    let (w, h) = if large { (480.0, 120.0) } else { (96.0, 26.0) };
    let max = hours
        .iter()
        .map(|c| c.allowed + c.refused)
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let allowed: u64 = hours.iter().map(|c| u64::from(c.allowed)).sum();
    let refused: u64 = hours.iter().map(|c| u64::from(c.refused)).sum();
    let bar = w / 24.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart{}\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" role=\"img\" \
         aria-label=\"Last 24 hours: {allowed} allowed, {refused} refused\">\
         <title>Last 24 hours: {allowed} allowed, {refused} refused</title>\
         <rect class=\"bg\" x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\"/>",
        if large { " large" } else { "" }
    );
    for (i, c) in hours.iter().enumerate() {
        let x = i as f64 * bar + bar * 0.1;
        let bw = bar * 0.8;
        let ah = f64::from(c.allowed) / max * (h - 2.0);
        let rh = f64::from(c.refused) / max * (h - 2.0);
        let hour = (c.hour.rem_euclid(24)) as u32;
        if c.allowed > 0 {
            let _ = write!(
                svg,
                "<rect class=\"a\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{ah:.1}\"><title>{hour:02}:00 UTC: {} allowed</title></rect>",
                h - ah,
                c.allowed
            );
        }
        if c.refused > 0 {
            let _ = write!(
                svg,
                "<rect class=\"r\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{rh:.1}\"><title>{hour:02}:00 UTC: {} refused</title></rect>",
                h - ah - rh,
                c.refused
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_segments_encoded() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(seg("a b/<c>@x.org"), "a%20b%2F%3Cc%3E@x.org");
    }

    #[test]
    fn the_chart_has_a_bar_per_busy_hour_and_says_its_totals() {
        let mut hours = [HourCount::default(); 24];
        hours[23] = HourCount {
            hour: 100,
            allowed: 3,
            refused: 1,
        };
        let svg = chart(&hours, true);
        assert!(svg.contains("3 allowed, 1 refused"), "{svg}");
        assert_eq!(svg.matches("class=\"a\"").count(), 1);
        assert_eq!(svg.matches("class=\"r\"").count(), 1);
        assert!(
            !svg.contains("style="),
            "no inline style: the CSP forbids it"
        );
    }
}
