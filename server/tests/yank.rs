//! Yanking a release publishes a new targets version without it (snapshot and timestamp
//! follow); other releases stay; the yanked version can never be published again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{api, bundle, client, config, fetch_and_verify, make_token, publish, run, start};

#[test]
fn a_yanked_release_leaves_the_signed_targets() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let (_, publisher) = make_token(&c, &srv, &admin, "publisher").await;
        for v in ["1.0.0", "1.1.0"] {
            let (s, body) = publish(
                &c,
                &srv,
                &publisher,
                bundle("pinpad", v, &[("p", v.as_bytes())]),
            )
            .await;
            assert_eq!(s, 201, "{body}");
        }
        let before = fetch_and_verify(&c, &srv).await;
        // Two releases and the delta between them (docs/deltas.md); the yank drops both.
        let names: Vec<&String> = before.targets.signed().targets.keys().collect();
        assert_eq!(
            names,
            [
                "pinpad-1.0.0.tar.zst",
                "pinpad-1.1.0.from-1.0.0.delta",
                "pinpad-1.1.0.tar.zst"
            ]
        );

        let url = srv.url("/api/v1/releases/pinpad/1.0.0");
        let (s, v) = api(&c, "DELETE", &url, Some(&publisher), None).await;
        assert_eq!(s, 200, "{v}");
        let after = fetch_and_verify(&c, &srv).await;
        assert_eq!(
            after.targets.signed().version,
            before.targets.signed().version + 1
        );
        assert_eq!(
            after.snapshot.signed().version,
            before.snapshot.signed().version + 1
        );
        assert_eq!(
            after.timestamp.signed().version,
            before.timestamp.signed().version + 1
        );
        let names: Vec<&String> = after.targets.signed().targets.keys().collect();
        assert_eq!(names, ["pinpad-1.1.0.tar.zst"]);

        let (s, v) = api(&c, "DELETE", &url, Some(&publisher), None).await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
        let (s, v) = api(
            &c,
            "DELETE",
            &srv.url("/api/v1/releases/pinpad/9.9.9"),
            Some(&publisher),
            None,
        )
        .await;
        assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
        let (s, v) = publish(
            &c,
            &srv,
            &publisher,
            bundle("pinpad", "1.0.0", &[("p", b"again")]),
        )
        .await;
        assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
        assert_eq!(
            fetch_and_verify(&c, &srv).await.targets.signed().version,
            after.targets.signed().version
        );

        let (_, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/releases"),
            Some(&publisher),
            None,
        )
        .await;
        let list = v["releases"].as_array().unwrap();
        let yanked = list.iter().find(|r| r["version"] == "1.0.0").unwrap();
        assert!(yanked["yanked_at"].is_i64());
        let kept = list.iter().find(|r| r["version"] == "1.1.0").unwrap();
        assert!(kept["yanked_at"].is_null());
        srv.stop().await;
    });
}
