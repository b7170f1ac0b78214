//! Prometheus metrics of the server, kept in process-wide counters and rendered in the text
//! exposition format 0.0.4 by `GET /metrics` ([`crate::http::metrics`]).
//!
//! What is counted: HTTP requests by method, route pattern and status, with a latency
//! histogram; bytes of `/repo/` files served; publishes (releases, yanks, delegated role
//! uploads, delegations declared); backup bytes received; rollout failures (other modules
//! call [`record_rollout_failure`]). Devices by installed version, the last update outcome
//! of each device for each release, and rollouts by status are read from the database at
//! scrape time, so they survive restarts. Labels only ever hold route patterns, methods, statuses and names the
//! server accepted, never a raw request path, so their number stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Most distinct label values a free-form label (a release name) may take; later ones are
/// counted under `other`.
const MAX_LABEL_VALUES: usize = 1000;

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Tables {
    /// (method, route, status) -> requests.
    requests: BTreeMap<(String, String, u16), u64>,
    /// (method, route) -> latency.
    latency: BTreeMap<(String, String), Histogram>,
    /// kind -> publishes.
    publishes: BTreeMap<&'static str, u64>,
    /// release -> rollout failures.
    rollout_failures: BTreeMap<String, u64>,
}

/// The process-wide metrics.
struct Registry {
    started: Instant,
    tables: Mutex<Tables>,
    repo_metadata_bytes: AtomicU64,
    repo_targets_bytes: AtomicU64,
    backup_bytes: AtomicU64,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Registry {
        started: Instant::now(),
        tables: Mutex::new(Tables::default()),
        repo_metadata_bytes: AtomicU64::new(0),
        repo_targets_bytes: AtomicU64::new(0),
        backup_bytes: AtomicU64::new(0),
    })
}

fn tables() -> MutexGuard<'static, Tables> {
    // A panic while holding the lock leaves counters that are still meaningful.
    registry()
        .tables
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What kind of publication [`record_publish`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishKind {
    /// A release bundle was published.
    Release,
    /// A release was yanked.
    Yank,
    /// A delegated role's metadata was accepted.
    DelegatedRole,
    /// A delegation was declared, changed or removed in the top-level targets.
    Delegation,
}

impl PublishKind {
    fn label(self) -> &'static str {
        match self {
            PublishKind::Release => "release",
            PublishKind::Yank => "yank",
            PublishKind::DelegatedRole => "delegated_role",
            PublishKind::Delegation => "delegation",
        }
    }
}

/// Counts one publication of `kind`.
pub fn record_publish(kind: PublishKind) {
    *tables().publishes.entry(kind.label()).or_insert(0) += 1;
}

/// Counts one failed update of `release` reported during a rollout (a failed or rolled back
/// update). `release` should be a release or target name the server knows.
pub fn record_rollout_failure(release: &str) {
    let mut t = tables();
    let key = if t.rollout_failures.contains_key(release)
        || t.rollout_failures.len() < MAX_LABEL_VALUES
    {
        release.to_owned()
    } else {
        "other".to_owned()
    };
    *t.rollout_failures.entry(key).or_insert(0) += 1;
}

/// Counts `bytes` of encrypted backup data received (packs and manifests).
pub fn record_backup_bytes(bytes: u64) {
    registry().backup_bytes.fetch_add(bytes, Ordering::Relaxed);
}

/// Counts one answered request.
pub fn record_request(method: &str, route: &str, status: u16, seconds: f64) {
    let mut t = tables();
    *t.requests
        .entry((method.to_owned(), route.to_owned(), status))
        .or_insert(0) += 1;
    let h = t
        .latency
        .entry((method.to_owned(), route.to_owned()))
        .or_default();
    h.count += 1;
    h.sum += seconds;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        if seconds <= *bound {
            h.buckets[i] += 1;
        }
    }
}

/// Middleware: counts every request by route pattern and status with its latency, bytes of
/// repository files served, publications and backup bytes received (from the route and the
/// status, so handlers need not know about metrics).
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let request_length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.call(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    record_request(&method, &route, status, seconds);
    if let Ok(r) = &res {
        let ok = r.status().is_success();
        if ok && method == "GET" {
            if let BodySize::Sized(n) = r.response().body().size() {
                if route.starts_with("/repo/metadata/") {
                    registry()
                        .repo_metadata_bytes
                        .fetch_add(n, Ordering::Relaxed);
                } else if route.starts_with("/repo/targets/") {
                    registry()
                        .repo_targets_bytes
                        .fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        if ok {
            match (method.as_str(), route.as_str()) {
                ("POST", "/api/v1/releases") => record_publish(PublishKind::Release),
                ("DELETE", "/api/v1/releases/{name}/{version}") => {
                    record_publish(PublishKind::Yank)
                }
                ("PUT", "/api/v1/device/backups/packs/{pack_id}")
                | ("POST", "/api/v1/device/backups/manifests") => {
                    record_backup_bytes(request_length)
                }
                _ => {}
            }
        }
    }
    res
}

/// Devices and rollouts counted from the database at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Enrolled, unrevoked devices.
    pub active: u64,
    /// Revoked devices.
    pub revoked: u64,
    /// (component, version) -> active devices reporting it installed; the most common
    /// pairs only (devices choose these strings, so their number is capped).
    pub installed: BTreeMap<(String, String), u64>,
    /// (release as `NAME/VERSION`, result) -> devices whose last reported outcome it is.
    pub outcomes: BTreeMap<(String, String), u64>,
    /// Rollout status -> releases in it.
    pub rollouts: BTreeMap<String, u64>,
}

/// Reads [`DeviceCounts`] from the devices table (their last reports), the update outcomes
/// and the rollouts.
pub fn device_counts(conn: &rusqlite::Connection) -> Result<DeviceCounts, rusqlite::Error> {
    let mut out = DeviceCounts::default();
    let mut stmt = conn.prepare(
        "SELECT r.name || '/' || r.version, o.result, COUNT(*)
         FROM update_outcomes o JOIN releases r ON r.id = o.release_id
         GROUP BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (release, result, n) = row?;
        out.outcomes
            .insert((release, result), u64::try_from(n).unwrap_or(0));
    }
    let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM rollouts GROUP BY status")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (status, n) = row?;
        out.rollouts.insert(status, u64::try_from(n).unwrap_or(0));
    }
    let (active, revoked): (i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(revoked_at IS NULL), 0), COALESCE(SUM(revoked_at IS NOT NULL), 0)
         FROM devices",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    out.active = u64::try_from(active).unwrap_or(0);
    out.revoked = u64::try_from(revoked).unwrap_or(0);
    let mut stmt = conn.prepare(
        "SELECT j.key, j.value, COUNT(*) FROM devices, json_each(devices.last_report, '$.installed') AS j
         WHERE devices.revoked_at IS NULL AND json_valid(devices.last_report)
         GROUP BY j.key, j.value ORDER BY COUNT(*) DESC, j.key, j.value LIMIT ?1",
    )?;
    let cap = i64::try_from(MAX_LABEL_VALUES).unwrap_or(i64::MAX);
    let rows = stmt.query_map([cap], |r| {
        let version: rusqlite::types::Value = r.get(1)?;
        let version = match version {
            rusqlite::types::Value::Text(s) => s,
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Real(f) => f.to_string(),
            _ => String::new(),
        };
        Ok((r.get::<_, String>(0)?, version, r.get::<_, i64>(2)?))
    })?;
    for row in rows {
        let (component, version, n) = row?;
        out.installed
            .insert((component, version), u64::try_from(n).unwrap_or(0));
    }
    Ok(out)
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

/// Renders every metric in the text exposition format 0.0.4; `devices` comes from
/// [`device_counts`] (absent when the database could not be read: the device metrics are
/// left out and `otter_devices_scrape_error` is 1).
pub fn render(devices: Option<&DeviceCounts>) -> String {
    let r = registry();
    let mut o = String::new();
    let t = tables();

    let _ = writeln!(
        o,
        "# HELP otter_build_info The running otter-server's version.\n\
         # TYPE otter_build_info gauge\n\
         otter_build_info{{version=\"{}\"}} 1",
        escape_label(env!("CARGO_PKG_VERSION"))
    );
    let _ = writeln!(
        o,
        "# HELP otter_uptime_seconds Seconds since the metrics were first used in this process.\n\
         # TYPE otter_uptime_seconds gauge\n\
         otter_uptime_seconds {}",
        float(r.started.elapsed().as_secs_f64())
    );

    let _ = writeln!(
        o,
        "# HELP otter_http_requests_total HTTP requests answered, by method, route pattern and status.\n\
         # TYPE otter_http_requests_total counter"
    );
    for ((method, route, status), n) in &t.requests {
        let _ = writeln!(
            o,
            "otter_http_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
            escape_label(method),
            escape_label(route)
        );
    }

    let _ = writeln!(
        o,
        "# HELP otter_http_request_duration_seconds Time to answer HTTP requests (until the response head), by method and route pattern.\n\
         # TYPE otter_http_request_duration_seconds histogram"
    );
    for ((method, route), h) in &t.latency {
        let labels = format!(
            "method=\"{}\",route=\"{}\"",
            escape_label(method),
            escape_label(route)
        );
        for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
            let _ = writeln!(
                o,
                "otter_http_request_duration_seconds_bucket{{{labels},le=\"{}\"}} {n}",
                float(*bound)
            );
        }
        let _ = writeln!(
            o,
            "otter_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(
            o,
            "otter_http_request_duration_seconds_sum{{{labels}}} {}",
            float(h.sum)
        );
        let _ = writeln!(
            o,
            "otter_http_request_duration_seconds_count{{{labels}}} {}",
            h.count
        );
    }

    let _ = writeln!(
        o,
        "# HELP otter_repo_bytes_served_total Bytes of repository files sent in full or partial GET responses, by kind.\n\
         # TYPE otter_repo_bytes_served_total counter\n\
         otter_repo_bytes_served_total{{kind=\"metadata\"}} {}\n\
         otter_repo_bytes_served_total{{kind=\"targets\"}} {}",
        r.repo_metadata_bytes.load(Ordering::Relaxed),
        r.repo_targets_bytes.load(Ordering::Relaxed)
    );

    let _ = writeln!(
        o,
        "# HELP otter_publishes_total Changes published to the repository, by kind.\n\
         # TYPE otter_publishes_total counter"
    );
    for kind in [
        PublishKind::Release,
        PublishKind::Yank,
        PublishKind::DelegatedRole,
        PublishKind::Delegation,
    ] {
        let n = t.publishes.get(kind.label()).copied().unwrap_or(0);
        let _ = writeln!(o, "otter_publishes_total{{kind=\"{}\"}} {n}", kind.label());
    }

    let _ = writeln!(
        o,
        "# HELP otter_rollout_failures_total Failed or rolled back updates reported during rollouts, by release.\n\
         # TYPE otter_rollout_failures_total counter"
    );
    for (release, n) in &t.rollout_failures {
        let _ = writeln!(
            o,
            "otter_rollout_failures_total{{release=\"{}\"}} {n}",
            escape_label(release)
        );
    }

    let _ = writeln!(
        o,
        "# HELP otter_backup_bytes_received_total Bytes of encrypted backup packs and manifests accepted from devices.\n\
         # TYPE otter_backup_bytes_received_total counter\n\
         otter_backup_bytes_received_total {}",
        r.backup_bytes.load(Ordering::Relaxed)
    );
    drop(t);

    let _ = writeln!(
        o,
        "# HELP otter_devices_scrape_error 1 when the device counts could not be read from the database.\n\
         # TYPE otter_devices_scrape_error gauge\n\
         otter_devices_scrape_error {}",
        u8::from(devices.is_none())
    );
    if let Some(d) = devices {
        let _ = writeln!(
            o,
            "# HELP otter_devices Enrolled devices, by state.\n\
             # TYPE otter_devices gauge\n\
             otter_devices{{state=\"active\"}} {}\n\
             otter_devices{{state=\"revoked\"}} {}",
            d.active, d.revoked
        );
        let _ = writeln!(
            o,
            "# HELP otter_devices_installed Active devices whose last report lists a component at a version.\n\
             # TYPE otter_devices_installed gauge"
        );
        for ((component, version), n) in &d.installed {
            let _ = writeln!(
                o,
                "otter_devices_installed{{component=\"{}\",version=\"{}\"}} {n}",
                escape_label(component),
                escape_label(version)
            );
        }
        let _ = writeln!(
            o,
            "# HELP otter_update_outcomes Devices whose last reported update of a release ended with a result.\n\
             # TYPE otter_update_outcomes gauge"
        );
        for ((release, result), n) in &d.outcomes {
            let _ = writeln!(
                o,
                "otter_update_outcomes{{release=\"{}\",result=\"{}\"}} {n}",
                escape_label(release),
                escape_label(result)
            );
        }
        let _ = writeln!(
            o,
            "# HELP otter_rollouts Releases by rollout status.\n\
             # TYPE otter_rollouts gauge"
        );
        for (status, n) in &d.rollouts {
            let _ = writeln!(
                o,
                "otter_rollouts{{status=\"{}\"}} {n}",
                escape_label(status)
            );
        }
    }
    o
}

/// Renders `otter_metadata_expires_timestamp_seconds{role}` for the served metadata (from
/// [`crate::repo::Repository::expiries`]).
pub fn render_expiries(expiries: &[(String, i64)]) -> String {
    let mut o = String::from(
        "# HELP otter_metadata_expires_timestamp_seconds When the served metadata of a role expires (Unix seconds); delegated roles included.\n\
         # TYPE otter_metadata_expires_timestamp_seconds gauge\n",
    );
    for (role, at) in expiries {
        let _ = writeln!(
            o,
            "otter_metadata_expires_timestamp_seconds{{role=\"{}\"}} {at}",
            escape_label(role)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn histograms_are_cumulative() {
        record_request("GET", "/unit-test", 200, 0.03);
        record_request("GET", "/unit-test", 200, 20.0);
        let text = render(None);
        let bucket = |le: &str| {
            let prefix = format!(
                "otter_http_request_duration_seconds_bucket{{method=\"GET\",route=\"/unit-test\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert_eq!(bucket("0.01"), 0);
        assert_eq!(bucket("0.05"), 1);
        assert_eq!(bucket("10"), 1);
        assert_eq!(bucket("+Inf"), 2);
        assert!(text.contains("otter_devices_scrape_error 1"));
    }

    #[test]
    fn installed_versions_are_counted_from_reports() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE devices (device_id TEXT, revoked_at INTEGER, last_report TEXT);
             CREATE TABLE releases (id INTEGER PRIMARY KEY, name TEXT, version TEXT);
             CREATE TABLE update_outcomes (release_id INTEGER, device_id TEXT, result TEXT);
             CREATE TABLE rollouts (release_id INTEGER, status TEXT);
             INSERT INTO releases VALUES (1, 'pos', '1.2.0');
             INSERT INTO update_outcomes VALUES (1, 'a', 'failed'), (1, 'b', 'failed'), (1, 'c', 'success');
             INSERT INTO rollouts VALUES (1, 'halted');
             INSERT INTO devices VALUES ('a', NULL, '{\"installed\":{\"pos\":\"1.2.0\",\"drv\":\"3\"}}');
             INSERT INTO devices VALUES ('b', NULL, '{\"installed\":{\"pos\":\"1.2.0\"}}');
             INSERT INTO devices VALUES ('c', 5, '{\"installed\":{\"pos\":\"1.1.0\"}}');
             INSERT INTO devices VALUES ('d', NULL, NULL);
             INSERT INTO devices VALUES ('e', NULL, 'not json');",
        )
        .unwrap();
        let d = device_counts(&c).unwrap();
        assert_eq!(d.active, 4);
        assert_eq!(d.revoked, 1);
        assert_eq!(d.installed[&("pos".into(), "1.2.0".into())], 2);
        assert_eq!(d.installed[&("drv".into(), "3".into())], 1);
        assert!(!d.installed.contains_key(&("pos".into(), "1.1.0".into())));
        assert_eq!(d.outcomes[&("pos/1.2.0".into(), "failed".into())], 2);
        assert_eq!(d.outcomes[&("pos/1.2.0".into(), "success".into())], 1);
        assert_eq!(d.rollouts["halted"], 1);
        let text = render(Some(&d));
        assert!(text.contains("otter_update_outcomes{release=\"pos/1.2.0\",result=\"failed\"} 2\n"));
        assert!(text.contains("otter_rollouts{status=\"halted\"} 1\n"));
    }
}
