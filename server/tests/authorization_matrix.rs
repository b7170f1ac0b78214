//! Every API endpoint against every role, anonymous access, a malformed, an unknown and a
//! revoked token: exactly the roles the route's policy names get past authorization; the
//! others get 401 (`missing_token`, `invalid_token`) or 403 (`forbidden`), in JSON. Device
//! routes need a device signature and no API token of any role stands in for it; the
//! enrollment route needs an enrollment token in the body, and an API token does not help.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod console_support;

use common::{api, client, config, make_token, run, start};
use otter_server::http::{Access, API_ROUTES};
use otter_server::tokens::TokenRole;

/// A request that passes authorization for an admitted role (whatever the handler then
/// answers) for each route, by method and pattern.
fn concrete(method: &str, pattern: &str) -> (String, Option<Vec<u8>>) {
    let body = match (method, pattern) {
        ("POST", "/api/v1/tokens") => Some(br#"{"role":"auditor","label":"matrix"}"#.to_vec()),
        ("POST", "/api/v1/releases") => Some(b"not a bundle".to_vec()),
        ("POST", "/api/v1/enrollment-tokens") => Some(br#"{"group":"matrix"}"#.to_vec()),
        ("POST", "/api/v1/enroll") => Some(
            serde_json::to_vec(&serde_json::json!({
                "token": "0".repeat(64),
                "public_key": hex::encode(
                    otter_keys::crypto::SigningKey::from_seed(&[5; 32]).public_bytes()
                ),
                "backup_recipient": otter_keys::age::x25519::Identity::generate()
                    .to_public()
                    .to_string(),
                "hardware_model": "pos-a",
            }))
            .unwrap(),
        ),
        ("POST", "/api/v1/device/report") => Some(b"{}".to_vec()),
        _ => None,
    };
    let path = pattern
        .replace("{pack_id}", &"ab".repeat(32))
        .replace("{device}", "nothing")
        .replace("{sequence}", "1")
        .replace("{id}", "999999")
        .replace("{name}", "nothing")
        .replace("{version}", "1.0.0");
    (path, body)
}

#[test]
fn each_route_admits_exactly_its_roles() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let mut tokens = Vec::new();
        for role in TokenRole::ALL {
            let (_, t) = make_token(&c, &srv, &admin, role.as_str()).await;
            tokens.push((role, t));
        }
        let (revoked_id, revoked) = make_token(&c, &srv, &admin, "admin").await;
        let (s, _) = api(
            &c,
            "DELETE",
            &srv.url(&format!("/api/v1/tokens/{revoked_id}")),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200);

        assert!(!API_ROUTES.is_empty());
        for (method, pattern, access) in API_ROUTES {
            let (path, body) = concrete(method, pattern);
            let url = srv.url(&path);
            let what = format!("{method} {pattern}");
            let admitted = match access {
                Access::Roles(roles) => *roles,
                Access::DeviceSignature | Access::EnrollmentToken => {
                    // Anonymous, and every role's token: the same refusal, never admitted.
                    let (expect_status, expect_code) = if *access == Access::DeviceSignature {
                        (401, "missing_signature")
                    } else {
                        (401, "invalid_enrollment_token")
                    };
                    let mut callers: Vec<Option<&str>> = vec![None, Some(&admin[..])];
                    callers.extend(tokens.iter().map(|(_, t)| Some(&t[..])));
                    for caller in callers {
                        let (s, v) = api(&c, method, &url, caller, body.clone()).await;
                        if *method == "HEAD" {
                            // No body to carry the code.
                            assert_eq!(s, expect_status, "{what} with {caller:.8?}");
                            continue;
                        }
                        assert_eq!(
                            (s, v["error"]["code"].as_str()),
                            (expect_status, Some(expect_code)),
                            "{what} with {caller:.8?}: {v}"
                        );
                    }
                    continue;
                }
            };

            // Anonymous, malformed, unknown and revoked tokens: 401 with a stable code.
            let r = c
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    &url,
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{what} anonymous");
            assert!(r.headers().contains_key("www-authenticate"), "{what}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert_eq!(v["error"]["code"], "missing_token", "{what}");
            for (bad, code) in [
                ("not-a-token", "invalid_token"),
                (&"0".repeat(64)[..], "invalid_token"),
                (&revoked[..], "invalid_token"),
            ] {
                let (s, v) = api(&c, method, &url, Some(bad), body.clone()).await;
                assert_eq!(
                    (s, v["error"]["code"].as_str()),
                    (401, Some(code)),
                    "{what} with {bad:.8}"
                );
            }
            let r = c
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    &url,
                )
                .header("Authorization", format!("Basic {admin}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{what} with a Basic scheme");

            for (role, token) in &tokens {
                let (s, v) = api(&c, method, &url, Some(token), body.clone()).await;
                if admitted.contains(role) {
                    assert!(
                        s != 401 && s != 403,
                        "{what}: role {role} must be admitted, got {s} {v}"
                    );
                    assert!(s < 500, "{what}: role {role} got {s} {v}");
                } else {
                    assert_eq!(s, 403, "{what}: role {role} must be refused, got {v}");
                    assert_eq!(v["error"]["code"], "forbidden", "{what}");
                    assert!(v["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(role.as_str()));
                }
            }
        }
        // Admin is admitted everywhere; restorer only to the backup catalog, exports and
        // transfers.
        for (_, pattern, access) in API_ROUTES {
            if let Access::Roles(admitted) = access {
                assert!(admitted.contains(&TokenRole::Admin));
                assert_eq!(
                    admitted.contains(&TokenRole::Restorer),
                    pattern.starts_with("/api/v1/backups")
                        || *pattern == "/api/v1/devices/{id}/backups/export"
                        || *pattern == "/api/v1/devices/{id}/transfers"
                        || *pattern == "/api/v1/devices/{id}/transfers/{transfer}",
                    "{pattern}"
                );
            }
        }
        // Backup exports and transfers: admins and restorers; devices fetch their own.
        let transferring = Access::Roles(&[TokenRole::Admin, TokenRole::Restorer]);
        for route in [
            ("GET", "/api/v1/devices/{id}/backups/export", transferring),
            ("POST", "/api/v1/devices/{id}/transfers", transferring),
            ("GET", "/api/v1/devices/{id}/transfers", transferring),
            (
                "DELETE",
                "/api/v1/devices/{id}/transfers/{transfer}",
                transferring,
            ),
            ("GET", "/api/v1/device/transfers", Access::DeviceSignature),
            (
                "GET",
                "/api/v1/device/transfers/{id}",
                Access::DeviceSignature,
            ),
        ] {
            assert!(API_ROUTES.contains(&route), "{route:?} is in the table");
        }
        // Enrollment tokens: listed by those who create or audit them, revoked by admins.
        for route in [
            (
                "GET",
                "/api/v1/enrollment-tokens",
                Access::Roles(&[TokenRole::Admin, TokenRole::Operator, TokenRole::Auditor]),
            ),
            (
                "DELETE",
                "/api/v1/enrollment-tokens/{id}",
                Access::Roles(&[TokenRole::Admin]),
            ),
        ] {
            assert!(API_ROUTES.contains(&route), "{route:?} is in the table");
        }
        for route in [
            ("POST", "/api/v1/enroll", Access::EnrollmentToken),
            ("POST", "/api/v1/device/report", Access::DeviceSignature),
            (
                "PUT",
                "/api/v1/device/backups/packs/{pack_id}",
                Access::DeviceSignature,
            ),
            (
                "POST",
                "/api/v1/device/backups/manifests",
                Access::DeviceSignature,
            ),
        ] {
            assert!(API_ROUTES.contains(&route), "{route:?} is in the table");
        }
        // Repository files and health stay public.
        for path in [
            "/repo/metadata/1.root.json",
            "/repo/metadata/timestamp.json",
            "/healthz",
        ] {
            let (s, _) = api(&c, "GET", &srv.url(path), None, None).await;
            assert_eq!(s, 200, "{path}");
        }
        srv.stop().await;
    });
}

/// The console's routes against every role: each role signs in through the console's form,
/// and exactly the roles of the route's policy (the API's policies) get past authorization;
/// the others get 403. Without a session, pages redirect to the sign-in form and posts get
/// 401. Posts carry the session's CSRF token, so only authorization is being tested.
#[test]
fn each_console_route_admits_exactly_its_roles() {
    use otter_server::console::{CONSOLE_PUBLIC_ROUTES, CONSOLE_ROUTES};
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let cc = console_support::client();
        assert!(!CONSOLE_ROUTES.is_empty());
        // Ordering a repair: the restore request roles, confirmation page and form alike.
        for method in ["GET", "POST"] {
            let route = (
                method,
                "/console/devices/{device}/repair",
                Access::Roles(&[TokenRole::Admin, TokenRole::Restorer]),
            );
            assert!(CONSOLE_ROUTES.contains(&route), "{route:?} is in the table");
        }
        for role in TokenRole::ALL {
            let (_, t) = make_token(&c, &srv, &admin, role.as_str()).await;
            for (method, pattern, access) in CONSOLE_ROUTES {
                let Access::Roles(admitted) = access else {
                    panic!("{method} {pattern}: console routes are for people with roles");
                };
                assert!(admitted.contains(&TokenRole::Admin), "{pattern}");
                // A fresh session per request: sign-out ends one.
                let s = console_support::sign_in(&cc, &srv, &t).await;
                let path = pattern
                    .replace("{device}", "nothing")
                    .replace("{name}", "nothing")
                    .replace("{version}", "1.0.0");
                let what = format!("{method} {pattern} as {role}");
                let (st, _, body) = match *method {
                    "GET" => console_support::get(&cc, &srv, &path, Some(&s.cookie)).await,
                    "POST" => {
                        console_support::post(
                            &cc,
                            &srv,
                            &path,
                            Some(&s.cookie),
                            &[("csrf", &s.csrf)],
                        )
                        .await
                    }
                    other => panic!("{what}: unexpected method {other}"),
                };
                if admitted.contains(&role) {
                    assert!(
                        st != 401 && st != 403 && st < 500,
                        "{what}: got {st} {body}"
                    );
                } else {
                    assert_eq!(st, 403, "{what}: must be refused, got {body}");
                    assert!(body.contains(role.as_str()), "{what}: {body}");
                }
                // Anonymous: GET pages send to the sign-in form, posts are refused.
                let (st, h, _) = match *method {
                    "GET" => console_support::get(&cc, &srv, &path, None).await,
                    _ => console_support::post(&cc, &srv, &path, None, &[("csrf", &s.csrf)]).await,
                };
                if *method == "GET" {
                    assert_eq!(
                        (st, h["location"].to_str().unwrap()),
                        (303, "/console/login"),
                        "{what}"
                    );
                } else {
                    assert_eq!(st, 401, "{what} anonymous");
                }
            }
        }
        for (method, path) in CONSOLE_PUBLIC_ROUTES {
            if *method == "GET" {
                let (st, _, _) = console_support::get(&cc, &srv, path, None).await;
                assert_eq!(st, 200, "{path} is public");
            }
        }
        srv.stop().await;
    });
}
