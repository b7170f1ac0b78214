//! The OpenAPI document served by the real server at `GET /api/v1/openapi.json` (no token)
//! lists every route of `API_ROUTES` with its method and exactly the roles the server
//! admits, declares every path parameter, names no route the server does not answer, and
//! `docs/api.md` is the Markdown generated from it (regenerate with
//! `scripts/gen-api-docs.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::{api, client, config, run, start};
use otter_server::http::openapi::{markdown, PUBLIC_ROUTES};
use otter_server::http::{Access, API_ROUTES};

#[test]
fn the_document_lists_every_route_with_its_roles() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, _) = start(config(dir.path())).await;
        let c = client();
        let (s, doc) = api(&c, "GET", &srv.url("/api/v1/openapi.json"), None, None).await;
        assert_eq!(s, 200);
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        let paths = doc["paths"].as_object().unwrap();

        for (method, path, access) in API_ROUTES {
            let op = &doc["paths"][*path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path} is in the document");
            let a = &op["x-otter-access"];
            match access {
                Access::Roles(roles) => {
                    assert_eq!(a["kind"], "api_token", "{method} {path}");
                    let shown: BTreeSet<&str> = a["roles"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap())
                        .collect();
                    let enforced: BTreeSet<&str> = roles.iter().map(|r| r.as_str()).collect();
                    assert_eq!(shown, enforced, "{method} {path}");
                    assert_eq!(op["security"][0]["apiToken"], serde_json::json!([]));
                    assert!(op["responses"]["403"].is_object());
                }
                Access::DeviceSignature => {
                    assert_eq!(a["kind"], "device_signature", "{method} {path}")
                }
                Access::EnrollmentToken => {
                    assert_eq!(a["kind"], "enrollment_token", "{method} {path}")
                }
            }
            assert!(!op["summary"].as_str().unwrap().is_empty());
        }
        for (method, path, _) in PUBLIC_ROUTES {
            let op = &doc["paths"][*path][method.to_ascii_lowercase()];
            assert_eq!(op["x-otter-access"]["kind"], "public", "{method} {path}");
        }

        // Operation ids are unique; path parameters are declared; every listed operation
        // reaches a route of the running server (no 404 "no such resource", no 405).
        let mut ids = BTreeSet::new();
        let mut count = 0;
        for (path, methods) in paths {
            for (method, op) in methods.as_object().unwrap() {
                count += 1;
                assert!(ids.insert(op["operationId"].as_str().unwrap().to_owned()));
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .map(|a| a.iter().map(|p| p["name"].as_str().unwrap()).collect())
                    .unwrap_or_default();
                let in_template: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                    .collect();
                assert_eq!(declared, in_template, "{method} {path}");
                assert!(op["responses"].as_object().unwrap().len() >= 2);
                let concrete = path
                    .replace("{file}", "timestamp.json")
                    .replace("{pack_id}", &"ab".repeat(32))
                    .replace("{sequence}", "1")
                    .replace(['{', '}'], "");
                let (s, v) = api(
                    &c,
                    &method.to_ascii_uppercase(),
                    &srv.url(&concrete),
                    None,
                    None,
                )
                .await;
                let no_route = s == 404
                    && v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no such resource"));
                assert!(!no_route && s != 405, "{method} {path}: {s} {v}");
            }
        }
        assert_eq!(count, API_ROUTES.len() + PUBLIC_ROUTES.len());
        srv.stop().await;
    });
}

#[test]
fn docs_api_md_is_generated_from_the_document() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = markdown();
    for (method, path, _) in API_ROUTES {
        assert!(
            generated.contains(&format!("### {method} `{path}`")),
            "{method} {path}"
        );
    }
    assert!(
        on_disk == generated,
        "{} is out of date: run scripts/gen-api-docs.sh",
        path.display()
    );
}
