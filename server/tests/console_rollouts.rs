//! Rollout controls in the console, against the real server on loopback: an operator
//! pauses, resumes, sets the percent and aborts (typed confirmation) a release's rollout
//! from the release page, and the API then shows the same signed state the agents see; a
//! post without the CSRF token, an auditor's post, and an abort without the confirmation are
//! refused and change nothing; an auditor sees no controls; the progress chart is drawn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod console_support;

use common::{api, bundle, config, make_token, publish, run, start, Running};
use console_support::{client, get, post, sign_in};

async fn rollout(c: &reqwest::Client, srv: &Running, admin: &str) -> serde_json::Value {
    let (s, v) = api(
        c,
        "GET",
        &srv.url("/api/v1/rollouts/pos-app/2.0.0"),
        Some(admin),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["rollout"].clone()
}

#[test]
fn an_operator_drives_a_rollout_from_the_console() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let api_client = common::client();
        let (s, v) = publish(
            &api_client,
            &srv,
            &admin,
            bundle("pos-app", "2.0.0", &[("bin/app", b"app 2")]),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (_, operator) = make_token(&api_client, &srv, &admin, "operator").await;
        let (_, auditor) = make_token(&api_client, &srv, &admin, "auditor").await;
        let c = client();
        let page = "/console/releases/pos-app/2.0.0";
        let action = "/console/releases/pos-app/2.0.0/rollout";

        // The releases list links to the release page.
        let op = sign_in(&c, &srv, &operator).await;
        let (st, _, list) = get(&c, &srv, "/console/releases", Some(&op.cookie)).await;
        assert_eq!(st, 200);
        assert!(list.contains("href=\"/console/releases/pos-app/2.0.0\""));

        let before = rollout(&api_client, &srv, &admin).await;
        assert_eq!(before["status"], "active", "{before}");
        let (st, _, html) = get(&c, &srv, page, Some(&op.cookie)).await;
        assert_eq!(st, 200);
        assert!(html.contains("class=\"rollout-controls"));
        assert!(html.contains("id=\"rollout-chart\"") && html.contains("<polyline"));
        // The signed targets entry: hashes, length, the rollout as agents see it.
        let entry_at = html.find("id=\"signed-entry\"").expect("the signed entry");
        let entry = &html[entry_at..];
        assert!(entry.contains("sha256") && entry.contains("length") && entry.contains("rollout"));
        assert!(html.contains(&format!("action=\"{action}\"")));

        // Without the CSRF token: 403 and the rollout is as it was.
        let (st, _, _) = post(&c, &srv, action, Some(&op.cookie), &[("action", "pause")]).await;
        assert_eq!(st, 403);
        assert_eq!(rollout(&api_client, &srv, &admin).await, before);

        // An auditor sees no controls and may not post, even with its own CSRF token.
        let au = sign_in(&c, &srv, &auditor).await;
        let (st, _, html) = get(&c, &srv, page, Some(&au.cookie)).await;
        assert_eq!(st, 200);
        assert!(!html.contains("rollout-controls") && !html.contains(action));
        let (st, _, body) = post(
            &c,
            &srv,
            action,
            Some(&au.cookie),
            &[("csrf", &au.csrf), ("action", "pause")],
        )
        .await;
        assert_eq!(st, 403, "{body}");
        assert_eq!(rollout(&api_client, &srv, &admin).await, before);

        // Pause: the signed rollout offers the release to nobody.
        let (st, h, _) = post(
            &c,
            &srv,
            action,
            Some(&op.cookie),
            &[
                ("csrf", &op.csrf),
                ("action", "pause"),
                ("reason", "till the lunch rush ends"),
            ],
        )
        .await;
        assert_eq!(st, 303);
        assert_eq!(h["location"], format!("{page}?done=pause"));
        let r = rollout(&api_client, &srv, &admin).await;
        assert_eq!(r["status"], "paused", "{r}");
        assert_eq!(r["signed"]["percent"], 0, "{r}");
        assert_eq!(r["reason"], "till the lunch rush ends");
        let (_, _, html) = get(&c, &srv, &format!("{page}?done=pause"), Some(&op.cookie)).await;
        assert!(html.contains("was paused") && html.contains("id=\"resume\""));

        // The change is audited as the operator's token.
        let (st, log) = api(
            &api_client,
            "GET",
            &srv.url("/api/v1/audit"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(st, 200);
        let last = log["entries"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(last["action"], "rollout.pause", "{last}");
        assert_eq!(last["subject"], "release:pos-app/2.0.0");

        // Resume, then set the percent.
        let (st, _, _) = post(
            &c,
            &srv,
            action,
            Some(&op.cookie),
            &[("csrf", &op.csrf), ("action", "resume")],
        )
        .await;
        assert_eq!(st, 303);
        assert_eq!(rollout(&api_client, &srv, &admin).await["status"], "active");
        let pct = before["percent"].as_u64().unwrap();
        let lower = pct.saturating_sub(1).to_string();
        // Lowering needs the "allow lowering" box; without it the change is refused (409/400).
        if pct > 0 {
            let (st, _, body) = post(
                &c,
                &srv,
                action,
                Some(&op.cookie),
                &[
                    ("csrf", &op.csrf),
                    ("action", "percent"),
                    ("percent", &lower),
                ],
            )
            .await;
            assert!(st == 409 || st == 400, "{st} {body}");
            assert_eq!(rollout(&api_client, &srv, &admin).await["percent"], pct);
        }
        let (st, _, body) = post(
            &c,
            &srv,
            action,
            Some(&op.cookie),
            &[
                ("csrf", &op.csrf),
                ("action", "percent"),
                ("percent", "40"),
                ("force", "1"),
            ],
        )
        .await;
        assert_eq!(st, 303, "{body}");
        let r = rollout(&api_client, &srv, &admin).await;
        assert_eq!(
            (r["percent"].as_u64(), r["signed"]["percent"].as_u64()),
            (Some(40), Some(40))
        );

        // Abort needs the version typed in.
        let (st, _, body) = post(
            &c,
            &srv,
            action,
            Some(&op.cookie),
            &[("csrf", &op.csrf), ("action", "abort"), ("confirm", "2.0")],
        )
        .await;
        assert_eq!(st, 400, "{body}");
        assert!(body.contains("type the version"));
        assert_eq!(rollout(&api_client, &srv, &admin).await["status"], "active");
        let (st, _, _) = post(
            &c,
            &srv,
            action,
            Some(&op.cookie),
            &[
                ("csrf", &op.csrf),
                ("action", "abort"),
                ("confirm", "2.0.0"),
            ],
        )
        .await;
        assert_eq!(st, 303);
        let r = rollout(&api_client, &srv, &admin).await;
        assert_eq!(
            (r["status"].as_str(), r["signed"]["percent"].as_u64()),
            (Some("aborted"), Some(0))
        );
        let (_, _, html) = get(&c, &srv, page, Some(&op.cookie)).await;
        assert!(html.contains("was aborted") || html.contains("cannot be changed"));
        assert!(!html.contains("id=\"pause\""));

        // A newer version is published with a delta from 2.0.0: its page lists it.
        let (s, v) = publish(
            &api_client,
            &srv,
            &admin,
            bundle("pos-app", "2.1.0", &[("bin/app", b"app 2.1")]),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let (st, _, html) = get(
            &c,
            &srv,
            "/console/releases/pos-app/2.1.0",
            Some(&op.cookie),
        )
        .await;
        assert_eq!(st, 200);
        let deltas = &html[html.find("id=\"deltas\"").expect("a deltas table")..];
        assert!(deltas.contains("pos-app-2.0.0"), "{deltas}");

        // Unknown releases: 404 on the page and on the controls.
        let (st, _, _) = get(
            &c,
            &srv,
            "/console/releases/nothing/1.0.0",
            Some(&op.cookie),
        )
        .await;
        assert_eq!(st, 404);
        srv.stop().await;
    });
}
