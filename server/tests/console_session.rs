//! The console's sign-in, sessions and CSRF against the real server on loopback: an API
//! token posted in the sign-in form becomes an HttpOnly, SameSite=Strict session cookie;
//! posts without the session's CSRF token are refused with 403 and change nothing; sign-out
//! ends the session; a revoked token ends its sessions at once; idle sessions expire; pages
//! carry the security headers; device-supplied text is escaped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod console_support;

use common::fleet::{enrolled_device, report};
use common::{api, config, make_token, run, start};
use console_support::{client, cookie, get, post, post_login, set_cookies, sign_in, urlencode};

#[test]
fn sign_in_sign_out_and_csrf() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();

        // Pages need a session: a GET is sent to the sign-in page.
        let (s, h, _) = get(&c, &srv, "/console/fleet", None).await;
        assert_eq!(s, 303);
        assert_eq!(h["location"], "/console/login");

        // The sign-in page: security headers, a nonce cookie, no script.
        let r = c.get(srv.url("/console/login")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let csp = r.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(r.headers()["x-frame-options"], "DENY");
        assert_eq!(r.headers()["cache-control"], "no-store");
        let login_cookie = set_cookies(&r).join("\n");
        assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
        let page = r.text().await.unwrap();
        assert!(page.contains("type=\"password\"") && !page.contains("<script"));

        // A sign-in post without the nonce cookie is refused.
        let r = c
            .post(srv.url("/console/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={admin}&login_csrf=x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
        assert!(cookie(&set_cookies(&r), "otter_session").is_none());

        // A wrong token: 401, the form again, no session, the token not echoed.
        let wrong = "ab".repeat(32);
        let r = post_login(&c, &srv, &wrong).await;
        assert_eq!(r.status(), 401);
        assert!(cookie(&set_cookies(&r), "otter_session").is_none());
        assert!(!r.text().await.unwrap().contains(&wrong));

        // The right token: a strict session cookie, not Secure over plain HTTP.
        let r = post_login(&c, &srv, &admin).await;
        assert_eq!(r.status(), 303);
        assert_eq!(r.headers()["location"], "/console/");
        let set = set_cookies(&r);
        let session_line = set
            .iter()
            .find(|l| l.starts_with("otter_session="))
            .unwrap();
        for attr in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
            assert!(session_line.contains(attr), "{session_line}");
        }
        assert!(!session_line.contains("Secure"), "{session_line}");
        assert!(
            !session_line.contains(&admin[..]),
            "the token is not the session id"
        );
        assert!(r.headers().get("location").unwrap().to_str().unwrap().len() < 20);

        // Behind a TLS proxy the cookie is Secure.
        let r = c.get(srv.url("/console/login")).send().await.unwrap();
        let nonce = cookie(&set_cookies(&r), "otter_login").unwrap();
        let r = c
            .post(srv.url("/console/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("otter_login={nonce}"))
            .header("x-forwarded-proto", "https")
            .body(format!("token={admin}&login_csrf={nonce}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303);
        assert!(set_cookies(&r)
            .iter()
            .any(|l| l.starts_with("otter_session=") && l.contains("; Secure")));

        let s = sign_in(&c, &srv, &admin).await;
        assert_eq!(s.home, "/console/fleet");
        let (st, h, page) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
        assert_eq!(st, 200);
        assert_eq!(h["cache-control"], "no-store");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'"));
        assert!(page.contains("id=\"sign-out\"") && page.contains("admin"));
        assert!(
            !page.contains(&admin[..]),
            "the token never appears in a page"
        );

        // Sign-out without, or with a wrong, CSRF token: 403, and the session lives on.
        for form in [
            vec![],
            vec![("csrf", "0".repeat(64))],
            vec![("csrf", String::new())],
        ] {
            let f: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (st, _, body) = post(&c, &srv, "/console/logout", Some(&s.cookie), &f).await;
            assert_eq!(st, 403, "{body}");
            assert!(body.contains("CSRF"));
            let (st, _, _) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
            assert_eq!(st, 200, "a refused post changes nothing");
        }
        // Another session's CSRF token does not do either.
        let other = sign_in(&c, &srv, &admin).await;
        assert_ne!(other.csrf, s.csrf);
        let (st, _, _) = post(
            &c,
            &srv,
            "/console/logout",
            Some(&s.cookie),
            &[("csrf", &other.csrf)],
        )
        .await;
        assert_eq!(st, 403);

        // Forms are small: an oversized post is refused before it is read.
        let big = "x".repeat(20_000);
        let (st, _, _) = post(
            &c,
            &srv,
            "/console/logout",
            Some(&s.cookie),
            &[("csrf", &s.csrf), ("pad", &big)],
        )
        .await;
        assert_eq!(st, 413);
        let (st, _, _) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
        assert_eq!(st, 200);

        // A post without a session at all: 401.
        let (st, _, _) = post(&c, &srv, "/console/logout", None, &[("csrf", &s.csrf)]).await;
        assert_eq!(st, 401);

        // Sign-out with the token: the cookie is deleted and the session is gone.
        let (st, h, _) = post(
            &c,
            &srv,
            "/console/logout",
            Some(&s.cookie),
            &[("csrf", &s.csrf)],
        )
        .await;
        assert_eq!(st, 303);
        assert_eq!(h["location"], "/console/login");
        let cleared: Vec<_> = h
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert!(cleared
            .iter()
            .any(|l| l.starts_with("otter_session=;") && l.contains("Max-Age=0")));
        let (st, h, _) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
        assert_eq!(
            (st, h["location"].to_str().unwrap()),
            (303, "/console/login")
        );
        // The other session is untouched.
        let (st, _, _) = get(&c, &srv, "/console/fleet", Some(&other.cookie)).await;
        assert_eq!(st, 200);

        // Unknown console paths: an HTML 404 with the same headers.
        let (st, h, _) = get(&c, &srv, "/console/nothing", Some(&other.cookie)).await;
        assert_eq!(st, 404);
        assert_eq!(h["x-frame-options"], "DENY");
        srv.stop().await;
    });
}

#[test]
fn a_revoked_token_ends_its_sessions_and_roles_are_enforced() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let api_client = common::client();
        let (id, auditor) = make_token(&api_client, &srv, &admin, "auditor").await;
        let (_, restorer) = make_token(&api_client, &srv, &admin, "restorer").await;
        let c = client();

        let s = sign_in(&c, &srv, &auditor).await;
        let (st, _, page) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
        assert_eq!(st, 200);
        assert!(page.contains("auditor"));

        // A restorer sees backups only; the fleet is refused with 403 and is not in its menu.
        let r = sign_in(&c, &srv, &restorer).await;
        assert_eq!(r.home, "/console/backups");
        let (st, _, page) = get(&c, &srv, "/console/backups", Some(&r.cookie)).await;
        assert_eq!(st, 200);
        assert!(!page.contains("href=\"/console/fleet\""));
        let (st, _, body) = get(&c, &srv, "/console/fleet", Some(&r.cookie)).await;
        assert_eq!(st, 403);
        assert!(body.contains("restorer"), "{body}");

        let (st, _) = api(
            &api_client,
            "DELETE",
            &srv.url(&format!("/api/v1/tokens/{id}")),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(st, 200);
        let (st, h, _) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
        assert_eq!(
            (st, h["location"].to_str().unwrap()),
            (303, "/console/login")
        );
        // And the revoked token cannot sign in again.
        let r = post_login(&c, &srv, &auditor).await;
        assert_eq!(r.status(), 401);
        srv.stop().await;
    });
}

#[test]
fn idle_sessions_expire() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.console.idle_timeout_secs = 1;
        cfg.console.absolute_timeout_secs = 3;
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let c = client();
        let s = sign_in(&c, &srv, &admin).await;
        // Used more often than the idle limit: alive...
        for _ in 0..3 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let (st, _, _) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
            assert_eq!(st, 200);
        }
        // ... until left alone longer than it.
        tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
        let (st, _, _) = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await;
        assert_eq!(st, 303);

        // The absolute limit ends even a busy session.
        let s = sign_in(&c, &srv, &admin).await;
        let start = std::time::Instant::now();
        let mut last = 200;
        while start.elapsed() < std::time::Duration::from_millis(3500) {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            last = get(&c, &srv, "/console/fleet", Some(&s.cookie)).await.0;
        }
        assert_eq!(last, 303);
        srv.stop().await;
    });
}

#[test]
fn fleet_filters_and_device_pages_escape_what_devices_send() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let api_client = common::client();
        let a = enrolled_device(&api_client, &srv, &admin, Some("lane-1")).await;
        let b = enrolled_device(&api_client, &srv, &admin, Some("lane-2")).await;
        let hostile = "<script>alert(1)</script>\"><img src=x>";
        let (st, v) = report(
            &api_client,
            &srv,
            &a,
            &serde_json::json!({
                "installed": {"firmware": "1.2.3"},
                "health": "degraded",
                "security_events": [{"kind": "file_changed", "detail": hostile, "at": 1_700_000_000}],
            }),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let (st, _) = report(
            &api_client,
            &srv,
            &b,
            &serde_json::json!({"installed": {"firmware": "1.2.4"}, "health": "ok"}),
        )
        .await;
        assert_eq!(st, 200);

        let c = client();
        let s = sign_in(&c, &srv, &admin).await;
        let fleet = |q: String| {
            let (c, srv, cookie) = (&c, &srv, s.cookie.clone());
            async move {
                let (st, _, page) = get(c, srv, &format!("/console/fleet{q}"), Some(&cookie)).await;
                assert_eq!(st, 200, "{q}");
                page
            }
        };
        let all = fleet(String::new()).await;
        assert!(all.contains(&a.id) && all.contains(&b.id));
        assert!(all.contains("2 of 2 devices match"));
        for (q, only) in [
            ("?group=lane-1", &a.id),
            ("?version=1.2.4", &b.id),
            ("?health=degraded", &a.id),
            (&format!("?q={}", urlencode(&b.id[..8])) as &str, &b.id),
        ] {
            let page = fleet(q.to_owned()).await;
            assert!(page.contains("1 of 2 devices match"), "{q}");
            assert!(page.contains(&only[..]), "{q}");
        }
        let none = fleet("?model=pos-z".into()).await;
        assert!(none.contains("0 of 2 devices match"));

        let (st, _, page) = get(
            &c,
            &srv,
            &format!("/console/devices/{}", a.id),
            Some(&s.cookie),
        )
        .await;
        assert_eq!(st, 200);
        assert!(page.contains("file_changed") && page.contains("1.2.3") && page.contains("lane-1"));
        assert!(!page.contains("<script>alert") && !page.contains("<img src=x"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x&gt;"));
        let (st, _, page) = get(&c, &srv, "/console/security", Some(&s.cookie)).await;
        assert_eq!(st, 200);
        assert!(!page.contains("<script>alert") && page.contains("&lt;script&gt;alert(1)"));
        let (st, _, _) = get(&c, &srv, "/console/devices/nope", Some(&s.cookie)).await;
        assert_eq!(st, 404);
        srv.stop().await;
    });
}
