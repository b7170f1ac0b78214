//! Requested file names cannot leave the repository: traversal, encoded separators, NUL and
//! names the repository never holds are refused with 400 or 404 and a JSON error, and
//! nothing outside `repo/` is ever served.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{client, config, raw_request, run, start};

fn assert_json_error(body: &str, code: &str, what: &str) {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    assert_eq!(v["error"]["code"], code, "{what}: {body}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[test]
fn traversal_and_bad_names_are_refused() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        // A secret-looking file next to the store that must never be reachable.
        std::fs::write(dir.path().join("store/secret.txt"), b"TOP-SECRET").unwrap();

        // Sent byte for byte, without any client normalising the path.
        let cases: &[(&str, u16, &str)] = &[
            ("/repo/metadata/..%2F..%2Fotter.db", 400, "invalid_name"),
            (
                "/repo/metadata/..%2f..%2fkeys%2froot.key",
                400,
                "invalid_name",
            ),
            ("/repo/metadata/%2e%2e", 400, "invalid_name"),
            ("/repo/metadata/..", 400, "invalid_name"),
            ("/repo/metadata/.hidden", 400, "invalid_name"),
            ("/repo/metadata/root.json%00", 400, "invalid_name"),
            ("/repo/metadata/root.json%00.txt", 400, "invalid_name"),
            ("/repo/metadata/..%5Csecret.txt", 400, "invalid_name"),
            ("/repo/metadata/a%20b.json", 400, "invalid_name"),
            ("/repo/targets/..%2F..%2Fsecret.txt", 400, "invalid_name"),
            (
                "/repo/targets/%2e%2e%2f%2e%2e%2fsecret.txt",
                400,
                "invalid_name",
            ),
            ("/repo/metadata/../../secret.txt", 404, "not_found"),
            ("/repo/metadata/%2e%2e/%2e%2e/secret.txt", 404, "not_found"),
            ("/repo/../store/secret.txt", 404, "not_found"),
            ("/repo/metadata/snapshot.json", 404, "not_found"),
            ("/repo/metadata/otter.db", 404, "not_found"),
            ("/repo/metadata/1.timestamp.json", 404, "not_found"),
            ("/repo/metadata/7.root.json", 404, "not_found"),
            ("/repo/targets/secret.txt", 404, "not_found"),
            (
                "/repo/targets/0000000000000000000000000000000000000000000000000000000000000000.x",
                404,
                "not_found",
            ),
            ("/repo/metadata/", 404, "not_found"),
        ];
        for (path, status, code) in cases {
            let (got, body) = raw_request(srv.addr, "GET", path).await;
            assert_eq!(got, *status, "GET {path}: {body}");
            assert_json_error(&body, code, path);
            assert!(!body.contains("TOP-SECRET") && !body.contains("SQLite format"));
        }

        let (got, body) = raw_request(srv.addr, "DELETE", "/repo/metadata/root.json").await;
        assert_eq!(got, 405);
        assert_json_error(&body, "method_not_allowed", "DELETE");

        // Through a normal client too.
        let c = client();
        let r = c
            .get(srv.url("/repo/metadata/..%2F..%2Fotter.db"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_name");
        srv.stop().await;
    });
}
