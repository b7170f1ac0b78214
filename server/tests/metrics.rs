//! `GET /metrics` on the real server over loopback: it needs an admin, operator or auditor
//! token; every line of the answer is valid Prometheus text format 0.0.4 (HELP, TYPE or a
//! sample of a declared family with a number); request counters, latency histograms, bytes
//! served from /repo, publishes, devices by installed version and failed updates move after
//! the requests that should move them. `/readyz` answers 200 like `/healthz`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::fleet::{enrolled_device, report};
use common::{api, bundle, client, config, get_ok, make_token, publish, run, start, Running};

/// Parses the exposition text strictly; returns samples keyed by `name{labels}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: BTreeSet<String> = BTreeSet::new();
    let mut samples = BTreeMap::new();
    assert!(text.ends_with('\n'), "the text ends with a newline");
    for line in text.lines() {
        assert!(!line.is_empty(), "no empty lines");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_metric_name(name), "{line}");
            assert!(!help.is_empty(), "{line}");
            assert!(
                helped.insert(name.to_owned()),
                "one HELP per family: {line}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "one TYPE per family: {line}"
            );
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "only HELP and TYPE comments: {line}"
        );
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("a number: {line}")),
        };
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').expect("labels close");
                check_labels(labels, line);
                name
            }
            None => series,
        };
        assert!(is_metric_name(name), "{line}");
        let family = families
            .keys()
            .find(|f| {
                name == f.as_str()
                    || (families[*f] == "histogram"
                        && [
                            format!("{f}_bucket"),
                            format!("{f}_sum"),
                            format!("{f}_count"),
                        ]
                        .contains(&name.to_owned()))
            })
            .unwrap_or_else(|| panic!("a sample of a declared family: {line}"));
        if families[family] == "counter" {
            assert!(value >= 0.0, "{line}");
        }
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "no duplicate series: {line}"
        );
    }
    samples
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `a="x",b="y\"z"`: label names valid, values quoted with only \\, \" and \n escapes.
fn check_labels(labels: &str, line: &str) {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
        assert!(is_metric_name(name) && !name.contains(':'), "{line}");
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => {
                    let (_, c) = chars.next().unwrap();
                    assert!(matches!(c, '\\' | '"' | 'n'), "{line}");
                }
                Some((i, '"')) => break i,
                Some(_) => {}
                None => panic!("unterminated label value: {line}"),
            }
        };
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

async fn scrape(c: &reqwest::Client, srv: &Running, token: &str) -> BTreeMap<String, f64> {
    let r = c
        .get(srv.url("/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&r.text().await.unwrap())
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

#[test]
fn metrics_parse_and_move_with_requests() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();

        // Who may read them.
        let (s, v) = api(&c, "GET", &srv.url("/metrics"), None, None).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("missing_token"))
        );
        let (_, publisher) = make_token(&c, &srv, &admin, "publisher").await;
        let (s, _) = api(&c, "GET", &srv.url("/metrics"), Some(&publisher), None).await;
        assert_eq!(s, 403);
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;

        let (s, v) = api(&c, "GET", &srv.url("/readyz"), None, None).await;
        assert_eq!((s, v["status"].as_str()), (200, Some("ok")));

        let before = scrape(&c, &srv, &auditor).await;
        assert_eq!(get(&before, "otter_devices_scrape_error"), 0.0);

        let ts = "otter_http_requests_total{method=\"GET\",route=\"/repo/metadata/{file}\",status=\"200\"}";
        let missing = "otter_http_requests_total{method=\"GET\",route=\"/repo/metadata/{file}\",status=\"404\"}";
        let latency = "otter_http_request_duration_seconds_count{method=\"GET\",route=\"/repo/metadata/{file}\"}";
        let inf = "otter_http_request_duration_seconds_bucket{method=\"GET\",route=\"/repo/metadata/{file}\",le=\"+Inf\"}";
        let served = "otter_repo_bytes_served_total{kind=\"metadata\"}";
        let targets_served = "otter_repo_bytes_served_total{kind=\"targets\"}";
        let releases = "otter_publishes_total{kind=\"release\"}";

        let mut sent = 0u64;
        for _ in 0..3 {
            sent += get_ok(&c, &srv.url("/repo/metadata/timestamp.json"))
                .await
                .len() as u64;
        }
        let (s, _) = api(
            &c,
            "GET",
            &srv.url("/repo/metadata/99.snapshot.json"),
            None,
            None,
        )
        .await;
        assert_eq!(s, 404);
        let (s, v) = publish(
            &c,
            &srv,
            &admin,
            bundle("pos-app", "1.0.0", &[("bin/app", b"app")]),
        )
        .await;
        assert_eq!(s, 201, "{v}");
        let target_name = v["release"]["target"].as_str().unwrap().to_owned();
        let target = format!(
            "/repo/targets/{}.{target_name}",
            v["release"]["sha256"].as_str().unwrap(),
        );
        let blob = get_ok(&c, &srv.url(&target)).await;

        let device = enrolled_device(&c, &srv, &admin, None).await;
        let (s, v) = report(
            &c,
            &srv,
            &device,
            &serde_json::json!({
                "installed": {"pos-app": "1.0.0"},
                "last_update": {"target": target_name, "result": "failed"},
            }),
        )
        .await;
        assert!(s < 300, "{s} {v}");

        let after = scrape(&c, &srv, &auditor).await;
        // Other tests in this binary do not run servers, but counters are process-wide:
        // compare differences, never absolute values.
        assert!(get(&after, ts) - get(&before, ts) >= 3.0, "{ts}");
        assert!(get(&after, missing) - get(&before, missing) >= 1.0);
        assert!(get(&after, latency) - get(&before, latency) >= 4.0);
        assert_eq!(
            get(&after, inf),
            get(&after, latency),
            "+Inf bucket = count"
        );
        assert!(get(&after, served) - get(&before, served) >= sent as f64);
        assert!(get(&after, targets_served) - get(&before, targets_served) >= blob.len() as f64);
        assert!(get(&after, releases) - get(&before, releases) >= 1.0);
        assert_eq!(
            get(
                &after,
                "otter_devices_installed{component=\"pos-app\",version=\"1.0.0\"}"
            ),
            1.0
        );
        assert_eq!(get(&after, "otter_devices{state=\"active\"}"), 1.0);
        // The failed update: the rollout counter and the outcome gauge from the database.
        let failures = "otter_rollout_failures_total{release=\"pos-app/1.0.0\"}";
        assert!(
            get(&after, failures) - get(&before, failures) >= 1.0,
            "{failures}"
        );
        assert_eq!(
            get(
                &after,
                "otter_update_outcomes{release=\"pos-app/1.0.0\",result=\"failed\"}"
            ),
            1.0
        );
        assert!(
            get(&after, "otter_rollouts{status=\"active\"}")
                + get(&after, "otter_rollouts{status=\"halted\"}")
                >= 1.0
        );
        // The scrape itself is counted, by route pattern (never the raw path).
        assert!(
            get(
                &after,
                "otter_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}"
            ) >= 1.0
        );
        assert!(after.keys().all(|k| !k.contains("99.snapshot")));
        let now = otter_keys::time::UtcTime::now().unix() as f64;
        for role in ["root", "targets", "snapshot", "timestamp"] {
            let series = format!("otter_metadata_expires_timestamp_seconds{{role=\"{role}\"}}");
            assert!(get(&after, &series) > now, "{series}");
        }
        srv.stop().await;
    });
}
