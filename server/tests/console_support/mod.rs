//! Console helpers for the server's tests: a client that does not follow redirects, signing
//! in through the real form (nonce cookie, token in the body), cookies and CSRF tokens
//! picked out of responses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use super::common::Running;

/// A client that shows redirects instead of following them, and keeps no cookies.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Every `Set-Cookie` header of a response.
pub fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The value of cookie `name` among `Set-Cookie` headers.
pub fn cookie(set: &[String], name: &str) -> Option<String> {
    set.iter().find_map(|c| {
        let first = c.split(';').next()?;
        let (k, v) = first.split_once('=')?;
        (k == name).then(|| v.to_owned())
    })
}

/// The value of the first `<input ... name="NAME" value="...">` in a page.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// A signed-in console session.
pub struct Session {
    /// `otter_session=ID`, for a `Cookie` header.
    pub cookie: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Where the home page sent the role.
    pub home: String,
}

/// GET with the session cookie; returns status, headers and body.
pub async fn get(
    c: &reqwest::Client,
    srv: &Running,
    path: &str,
    cookie: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = c.get(srv.url(path));
    if let Some(ck) = cookie {
        req = req.header("cookie", ck);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// POST of a urlencoded `form` with the cookie; returns status, headers and body.
pub async fn post(
    c: &reqwest::Client,
    srv: &Running,
    path: &str,
    cookie: Option<&str>,
    form: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect();
    let mut req = c
        .post(srv.url(path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.join("&"));
    if let Some(ck) = cookie {
        req = req.header("cookie", ck);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.unwrap())
}

/// Percent-encodes a form value.
pub fn urlencode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Signs in with `token` through the form; returns the response of the form post.
pub async fn post_login(c: &reqwest::Client, srv: &Running, token: &str) -> reqwest::Response {
    let r = c.get(srv.url("/console/login")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let nonce = cookie(&set_cookies(&r), "otter_login").expect("a sign-in nonce cookie");
    let page = r.text().await.unwrap();
    assert_eq!(
        hidden_value(&page, "login_csrf").as_deref(),
        Some(&nonce[..])
    );
    c.post(srv.url("/console/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("otter_login={nonce}"))
        .body(format!("token={}&login_csrf={nonce}", urlencode(token)))
        .send()
        .await
        .unwrap()
}

/// Signs in with `token`, follows the home redirect, and picks up the CSRF token.
pub async fn sign_in(c: &reqwest::Client, srv: &Running, token: &str) -> Session {
    let r = post_login(c, srv, token).await;
    assert_eq!(r.status(), 303, "sign-in redirects");
    let id = cookie(&set_cookies(&r), "otter_session").expect("a session cookie");
    let cookie = format!("otter_session={id}");
    let (s, h, _) = get(c, srv, "/console/", Some(&cookie)).await;
    assert_eq!(s, 303);
    let home = h["location"].to_str().unwrap().to_owned();
    let (s, _, page) = get(c, srv, &home, Some(&cookie)).await;
    assert_eq!(s, 200, "{home}: {page}");
    let csrf = hidden_value(&page, "csrf").expect("the page carries a CSRF token");
    Session { cookie, csrf, home }
}
