//! Alerts: every security event a device reports (integrity drift, database corruption,
//! refused metadata or targets, ...) and every reported rollback raises an alert, stored in
//! the `alerts` table, listed by the console, counted in `/metrics`
//! (`otter_security_events_total{kind}`, `otter_alerts_open`) and, when `[alerts]
//! webhook_url` is set, POSTed to a webhook as JSON signed with HMAC-SHA256
//! (`X-Otter-Signature: sha256=HEX` over `TIMESTAMP.BODY`, `X-Otter-Timestamp: TIMESTAMP`),
//! retried with backoff in a background task, never on the device's request path.
//! Deliveries still pending when the server stopped are sent again at the next start
//! (bounded: the newest [`RESUME_MAX_ALERTS`], raised within [`RESUME_MAX_AGE_SECS`]).
//! See `docs/monitoring.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::db::Db;
use crate::fleet::report::{DeviceReport, UpdateResult};

/// The alert kind raised for a reported rollback (failed health check or crash loop).
pub const KIND_ROLLBACK: &str = "rollback";
/// Most distinct kinds given their own metric label; the rest count as `other`.
const MAX_KIND_LABELS: usize = 32;
/// How far a webhook receiver should accept timestamps from its clock (documented value).
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// At start, pending deliveries of alerts raised longer ago than this are given up.
pub const RESUME_MAX_AGE_SECS: i64 = 24 * 3600;
/// At start, at most this many pending deliveries (the newest) are sent again; older ones
/// are given up.
pub const RESUME_MAX_ALERTS: usize = 1000;
/// Alerts per webhook payload when pending deliveries are sent again at start.
pub const RESUME_BATCH: usize = 100;

/// The alerts table: migration 9 of `crate::db` (`IF NOT EXISTS`: databases of builds that
/// created it on first use migrate cleanly).
pub(crate) const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS alerts(
    id INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL,
    event_at INTEGER NOT NULL,
    raised_at INTEGER NOT NULL,
    acknowledged_at INTEGER,
    webhook TEXT NOT NULL DEFAULT 'off',
    UNIQUE(device_id, kind, event_at, detail)
);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts(acknowledged_at, raised_at);";

/// `[alerts]`: the optional webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// URL that each batch of new alerts is POSTed to (http or https); unset: no webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// File whose first line is the HMAC-SHA256 key that signs webhook payloads (keep it
    /// 0600); required with `webhook_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Attempts per delivery (1 to 20), with a backoff doubling from 1 second.
    pub webhook_attempts: u32,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            webhook_secret_file: None,
            webhook_attempts: 5,
        }
    }
}

/// Why the alerts could not be set up or stored.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// The `[alerts]` settings are not usable.
    #[error("[alerts]: {0}")]
    Config(String),
    /// The database refused.
    #[error("alerts table: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// One alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    /// Its id.
    pub id: i64,
    /// The device that reported it.
    pub device_id: String,
    /// The event kind, e.g. `integrity_drift`.
    pub kind: String,
    /// Details from the device.
    pub detail: String,
    /// When the device saw it (Unix seconds, the device's clock).
    pub event_at: i64,
    /// When the server received it.
    pub raised_at: i64,
    /// When someone acknowledged it, if anyone did.
    pub acknowledged_at: Option<i64>,
    /// Webhook delivery: `off`, `pending`, `delivered`, or `failed: ...`.
    pub webhook: String,
}

/// The events of a report that raise alerts: its security events and a rollback.
pub fn events_of(report: &DeviceReport) -> Vec<(String, String, i64)> {
    let mut out: Vec<(String, String, i64)> = report
        .security_events
        .iter()
        .map(|e| (e.kind.clone(), e.detail.clone(), e.at))
        .collect();
    if let Some(u) = &report.last_update {
        if u.result == UpdateResult::RolledBack {
            out.push((
                KIND_ROLLBACK.into(),
                format!(
                    "{}: {}",
                    u.target,
                    u.message.as_deref().unwrap_or("rolled back")
                ),
                u.at.unwrap_or(0),
            ));
        }
    }
    out
}

/// Stores the alerts of `events` from `device_id`; an event already stored (a report sent
/// again) raises nothing new. Returns the new alerts.
pub fn insert(
    c: &mut Connection,
    device_id: &str,
    events: &[(String, String, i64)],
    now: i64,
    webhook: bool,
) -> Result<Vec<Alert>, AlertsError> {
    let tx = c.transaction()?;
    let mut out = Vec::new();
    let state = if webhook { "pending" } else { "off" };
    for (kind, detail, at) in events {
        let n = tx.execute(
            "INSERT OR IGNORE INTO alerts(device_id, kind, detail, event_at, raised_at, webhook)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![device_id, kind, detail, at, now, state],
        )?;
        if n == 1 {
            out.push(Alert {
                id: tx.last_insert_rowid(),
                device_id: device_id.into(),
                kind: kind.clone(),
                detail: detail.clone(),
                event_at: *at,
                raised_at: now,
                acknowledged_at: None,
                webhook: state.into(),
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

/// The newest `limit` alerts, newest first; only open ones with `open_only`.
pub fn list(c: &Connection, limit: usize, open_only: bool) -> Result<Vec<Alert>, AlertsError> {
    let mut stmt = c.prepare(
        "SELECT id, device_id, kind, detail, event_at, raised_at, acknowledged_at, webhook
         FROM alerts WHERE (?1 = 0 OR acknowledged_at IS NULL) ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![
            i64::from(open_only),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        alert_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Acknowledges alert `id` at `now`; returns whether it was open.
pub fn acknowledge(c: &Connection, id: i64, now: i64) -> Result<bool, AlertsError> {
    let n = c.execute(
        "UPDATE alerts SET acknowledged_at = ?2 WHERE id = ?1 AND acknowledged_at IS NULL",
        params![id, now],
    )?;
    Ok(n == 1)
}

/// Alerts not acknowledged yet.
pub fn open_count(c: &Connection) -> Result<u64, AlertsError> {
    let n: i64 = c.query_row(
        "SELECT count(*) FROM alerts WHERE acknowledged_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// `otter_security_events_total{kind}` (every alert ever raised, by kind; the most common
/// kinds get their own label, the rest `other`) and `otter_alerts_open`, in the text
/// exposition format.
pub fn render_metrics(c: &Connection) -> Result<String, AlertsError> {
    let mut stmt =
        c.prepare("SELECT kind, count(*) FROM alerts GROUP BY kind ORDER BY count(*) DESC, kind")?;
    let rows: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut by_kind: BTreeMap<String, i64> = BTreeMap::new();
    for (i, (kind, n)) in rows.into_iter().enumerate() {
        let label = if i < MAX_KIND_LABELS && kind != "other" {
            kind
        } else {
            "other".into()
        };
        *by_kind.entry(label).or_default() += n;
    }
    let mut s = String::from(
        "# HELP otter_security_events_total Security events reported by devices (each raised an alert), by kind.\n\
         # TYPE otter_security_events_total counter\n",
    );
    for (kind, n) in &by_kind {
        s.push_str(&format!(
            "otter_security_events_total{{kind=\"{}\"}} {n}\n",
            crate::metrics::escape_label(kind)
        ));
    }
    s.push_str(&format!(
        "# HELP otter_alerts_open Alerts not acknowledged yet.\n# TYPE otter_alerts_open gauge\notter_alerts_open {}\n",
        open_count(c)?
    ));
    Ok(s)
}

/// HMAC-SHA256 (RFC 2104) of `msg` under `key`.
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = Zeroizing::new([0x36u8; BLOCK]);
    let mut opad = Zeroizing::new([0x5cu8; BLOCK]);
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad.as_slice())
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad.as_slice())
        .chain_update(inner)
        .finalize()
        .into()
}

/// The `X-Otter-Signature` value for a payload sent at `timestamp`:
/// `sha256=` and the hex HMAC-SHA256 of `TIMESTAMP.BODY`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut msg = format!("{timestamp}.").into_bytes();
    msg.extend_from_slice(body);
    format!("sha256={}", hex::encode(hmac_sha256(secret, &msg)))
}

/// What a receiver does: the signature matches (compared in constant time) and the
/// timestamp is within `tolerance` seconds of `now` (so a captured delivery cannot be
/// replayed later).
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    timestamp: i64,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> bool {
    let want = signature(secret, timestamp, body);
    let (a, b) = (want.as_bytes(), header.trim().as_bytes());
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0;
    same && (now - timestamp).abs() <= tolerance
}

/// The webhook, when configured.
#[derive(Clone)]
struct Webhook {
    url: reqwest::Url,
    secret: Arc<Zeroizing<Vec<u8>>>,
    client: reqwest::Client,
    attempts: u32,
}

/// The alerts machinery the report handler uses (registered as app data).
#[derive(Clone, Default)]
pub struct Alerts {
    webhook: Option<Webhook>,
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL (it may carry a token) nor the secret.
        f.debug_struct("Alerts")
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Alerts {
    /// Checks `[alerts]` and reads the webhook secret.
    pub fn from_config(cfg: &AlertsConfig) -> Result<Alerts, AlertsError> {
        if !(1..=20).contains(&cfg.webhook_attempts) {
            return Err(AlertsError::Config(
                "webhook_attempts must be between 1 and 20".into(),
            ));
        }
        let Some(url) = &cfg.webhook_url else {
            if cfg.webhook_secret_file.is_some() {
                return Err(AlertsError::Config(
                    "webhook_secret_file is set but webhook_url is not".into(),
                ));
            }
            return Ok(Alerts::default());
        };
        let url = reqwest::Url::parse(url).map_err(|e| {
            AlertsError::Config(format!(
                "webhook_url is not a URL ({e}); give http(s)://HOST/PATH"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AlertsError::Config(
                "webhook_url must be an http:// or https:// URL".into(),
            ));
        }
        let path = cfg.webhook_secret_file.as_ref().ok_or_else(|| {
            AlertsError::Config(
                "webhook_url needs webhook_secret_file (the HMAC key that signs payloads)".into(),
            )
        })?;
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            AlertsError::Config(format!("webhook_secret_file {}: {e}", path.display()))
        })?);
        let secret = Zeroizing::new(text.lines().next().unwrap_or("").trim().as_bytes().to_vec());
        if secret.len() < 16 {
            return Err(AlertsError::Config(format!(
                "webhook_secret_file {}: the secret on its first line must be at least 16 characters",
                path.display()
            )));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AlertsError::Config(format!("webhook HTTP client: {e}")))?;
        Ok(Alerts {
            webhook: Some(Webhook {
                url,
                secret: Arc::new(secret),
                client,
                attempts: cfg.webhook_attempts,
            }),
        })
    }

    /// Whether a webhook is configured.
    pub fn has_webhook(&self) -> bool {
        self.webhook.is_some()
    }

    /// Stores the alerts a stored report raises, logs them and starts the webhook delivery
    /// in the background. Failures are logged: the report itself was accepted.
    pub async fn raise(&self, db: &Db, device_id: &str, report: &DeviceReport, now: i64) {
        let events = events_of(report);
        if events.is_empty() {
            return;
        }
        let id = device_id.to_owned();
        let webhook = self.webhook.is_some();
        let new = match db
            .call(move |c| Ok(insert(c, &id, &events, now, webhook)))
            .await
        {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::error!(error = %e, device = device_id, "storing alerts failed");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, device = device_id, "storing alerts failed");
                return;
            }
        };
        for a in &new {
            tracing::warn!(
                alert = a.id,
                device = a.device_id,
                kind = a.kind,
                "alert raised"
            );
        }
        if let (Some(w), false) = (&self.webhook, new.is_empty()) {
            let w = w.clone();
            let db = db.clone();
            tokio::spawn(async move { deliver(w, db, new).await });
        }
    }
}

/// At start: the alerts whose webhook delivery was still `pending` when the server stopped
/// (their delivery task died with it), oldest first, to send again: the newest
/// [`RESUME_MAX_ALERTS`] raised within [`RESUME_MAX_AGE_SECS`] of `now`. The others, and all
/// of them when `webhook` is off now, are marked `failed: ...` with the reason, so none
/// stays pending for ever.
pub fn take_pending(
    c: &mut Connection,
    now: i64,
    webhook: bool,
) -> Result<Vec<Alert>, AlertsError> {
    let tx = c.transaction()?;
    if !webhook {
        tx.execute(
            "UPDATE alerts SET webhook = 'failed: pending when the server stopped; no webhook is configured now'
             WHERE webhook = 'pending'",
            [],
        )?;
        tx.commit()?;
        return Ok(Vec::new());
    }
    tx.execute(
        "UPDATE alerts SET webhook = 'failed: pending when the server stopped; too old to send at the next start'
         WHERE webhook = 'pending' AND raised_at < ?1",
        [now.saturating_sub(RESUME_MAX_AGE_SECS)],
    )?;
    let mut taken = {
        let mut stmt = tx.prepare(
            "SELECT id, device_id, kind, detail, event_at, raised_at, acknowledged_at, webhook
             FROM alerts WHERE webhook = 'pending' ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map(
            [i64::try_from(RESUME_MAX_ALERTS).unwrap_or(i64::MAX)],
            alert_row,
        )?;
        rows.collect::<Result<Vec<_>, _>>()?
    };
    if let Some(oldest) = taken.last().map(|a| a.id) {
        tx.execute(
            "UPDATE alerts SET webhook = ?2 WHERE webhook = 'pending' AND id < ?1",
            params![
                oldest,
                format!(
                    "failed: pending when the server stopped; beyond the newest \
                     {RESUME_MAX_ALERTS} sent again"
                )
            ],
        )?;
    }
    tx.commit()?;
    taken.reverse();
    Ok(taken)
}

fn alert_row(r: &rusqlite::Row) -> rusqlite::Result<Alert> {
    Ok(Alert {
        id: r.get(0)?,
        device_id: r.get(1)?,
        kind: r.get(2)?,
        detail: r.get(3)?,
        event_at: r.get(4)?,
        raised_at: r.get(5)?,
        acknowledged_at: r.get(6)?,
        webhook: r.get(7)?,
    })
}

impl Alerts {
    /// At start, before serving: sends again, in the background and in batches of
    /// [`RESUME_BATCH`], the webhook deliveries that were pending when the server stopped
    /// (see [`take_pending`]). Failures are logged.
    pub async fn resume_pending(&self, db: &Db) {
        let webhook = self.webhook.is_some();
        let now = unix_now();
        let taken = match db.call(move |c| Ok(take_pending(c, now, webhook))).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the pending alert deliveries failed");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the pending alert deliveries failed");
                return;
            }
        };
        let Some(w) = self.webhook.clone() else {
            return;
        };
        if taken.is_empty() {
            return;
        }
        tracing::info!(
            alerts = taken.len(),
            "sending the alert webhook deliveries pending at the last stop"
        );
        let db = db.clone();
        tokio::spawn(async move {
            let mut taken = taken;
            while !taken.is_empty() {
                let rest = taken.split_off(taken.len().min(RESUME_BATCH));
                deliver(w.clone(), db.clone(), taken).await;
                taken = rest;
            }
        });
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// POSTs `alerts` to the webhook, retrying with a doubling backoff; each attempt is
/// signed afresh with its own timestamp. Records the outcome on the alerts.
async fn deliver(w: Webhook, db: Db, alerts: Vec<Alert>) {
    let ids: Vec<i64> = alerts.iter().map(|a| a.id).collect();
    let host = w.url.host_str().unwrap_or("?").to_owned();
    let mut outcome = String::from("failed: no attempt");
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=w.attempts {
        let ts = unix_now();
        let body = match serde_json::to_vec(&serde_json::json!({
            "type": "otter.alerts",
            "timestamp": ts,
            "alerts": alerts,
        })) {
            Ok(b) => b,
            Err(e) => {
                outcome = format!("failed: {e}");
                break;
            }
        };
        let sig = signature(&w.secret, ts, &body);
        let sent = w
            .client
            .post(w.url.clone())
            .header("content-type", "application/json")
            .header("x-otter-timestamp", ts.to_string())
            .header("x-otter-signature", sig)
            .body(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {
                outcome = "delivered".into();
                break;
            }
            Ok(r) => outcome = format!("failed: HTTP {} from {host}", r.status().as_u16()),
            // Without the URL: it may carry a token.
            Err(e) => {
                outcome = format!(
                    "failed: {host}: {}",
                    if e.is_timeout() {
                        "timed out"
                    } else if e.is_connect() {
                        "connection failed"
                    } else {
                        "request failed"
                    }
                )
            }
        }
        tracing::warn!(attempt, host, outcome, "alert webhook delivery failed");
        if attempt < w.attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(300));
        }
    }
    if outcome == "delivered" {
        tracing::info!(alerts = ids.len(), host, "alert webhook delivered");
    } else {
        tracing::error!(alerts = ids.len(), host, outcome, "alert webhook gave up");
    }
    let r = db
        .call(move |c| {
            for id in &ids {
                c.execute(
                    "UPDATE alerts SET webhook = ?2 WHERE id = ?1",
                    params![id, outcome],
                )?;
            }
            Ok(())
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "recording the webhook outcome failed");
    }
}

/// The alert with `id`, if any.
pub fn get(c: &Connection, id: i64) -> Result<Option<Alert>, AlertsError> {
    Ok(c.query_row(
        "SELECT id, device_id, kind, detail, event_at, raised_at, acknowledged_at, webhook
         FROM alerts WHERE id = ?1",
        [id],
        alert_row,
    )
    .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::SecurityEvent;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn signatures_verify_and_stale_or_altered_ones_do_not() {
        let s = signature(b"0123456789abcdef", 1000, b"{}");
        assert!(verify_signature(
            b"0123456789abcdef",
            &s,
            1000,
            b"{}",
            1100,
            300
        ));
        assert!(!verify_signature(
            b"0123456789abcdef",
            &s,
            1000,
            b"{ }",
            1100,
            300
        ));
        assert!(!verify_signature(
            b"0123456789abcdef",
            &s,
            1001,
            b"{}",
            1100,
            300
        ));
        assert!(!verify_signature(
            b"another-secret!!",
            &s,
            1000,
            b"{}",
            1100,
            300
        ));
        assert!(!verify_signature(
            b"0123456789abcdef",
            &s,
            1000,
            b"{}",
            2000,
            300
        ));
    }

    #[test]
    fn alerts_are_stored_once_counted_and_acknowledged() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let report = DeviceReport {
            security_events: vec![SecurityEvent {
                kind: "integrity_drift".into(),
                detail: "pos 1.0.0: changed bin/pos".into(),
                at: 5,
            }],
            last_update: Some(crate::fleet::report::UpdateOutcome {
                target: "pos-2.0.0".into(),
                result: UpdateResult::RolledBack,
                message: Some("health check failed".into()),
                at: Some(6),
            }),
            ..DeviceReport::default()
        };
        let ev = events_of(&report);
        assert_eq!(ev.len(), 2);
        let new = insert(&mut c, "dev-1", &ev, 100, false).unwrap();
        assert_eq!(new.len(), 2);
        assert!(insert(&mut c, "dev-1", &ev, 101, false).unwrap().is_empty());
        let m = render_metrics(&c).unwrap();
        assert!(
            m.contains("otter_security_events_total{kind=\"integrity_drift\"} 1\n"),
            "{m}"
        );
        assert!(
            m.contains("otter_security_events_total{kind=\"rollback\"} 1\n"),
            "{m}"
        );
        assert!(m.contains("otter_alerts_open 2\n"), "{m}");
        assert!(acknowledge(&c, new[0].id, 200).unwrap());
        assert!(!acknowledge(&c, new[0].id, 201).unwrap());
        assert_eq!(open_count(&c).unwrap(), 1);
        assert_eq!(list(&c, 10, true).unwrap().len(), 1);
        assert_eq!(list(&c, 10, false).unwrap().len(), 2);
        assert_eq!(
            get(&c, new[0].id).unwrap().unwrap().acknowledged_at,
            Some(200)
        );
    }

    #[test]
    fn pending_deliveries_are_taken_again_at_start_within_bounds() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(SCHEMA).unwrap();
        let now = 10 * RESUME_MAX_AGE_SECS;
        let ev = |i: i64| vec![("integrity_drift".to_string(), format!("file {i}"), i)];
        // One too old, RESUME_MAX_ALERTS + 2 recent, one delivered.
        let old = insert(&mut c, "d", &ev(0), now - RESUME_MAX_AGE_SECS - 1, true).unwrap();
        let mut recent = Vec::new();
        for i in 1..=(RESUME_MAX_ALERTS as i64 + 2) {
            recent.extend(insert(&mut c, "d", &ev(i), now - 60, true).unwrap());
        }
        let done = insert(&mut c, "d", &ev(-1), now - 60, true).unwrap();
        c.execute(
            "UPDATE alerts SET webhook = 'delivered' WHERE id = ?1",
            [done[0].id],
        )
        .unwrap();
        let taken = take_pending(&mut c, now, true).unwrap();
        assert_eq!(taken.len(), RESUME_MAX_ALERTS);
        // The newest, oldest first.
        let want: Vec<i64> = recent[2..].iter().map(|a| a.id).collect();
        assert_eq!(taken.iter().map(|a| a.id).collect::<Vec<_>>(), want);
        let state = |c: &Connection, id: i64| get(c, id).unwrap().unwrap().webhook;
        assert!(
            state(&c, old[0].id).contains("too old"),
            "{}",
            state(&c, old[0].id)
        );
        assert!(state(&c, recent[0].id).contains("beyond the newest"));
        assert!(state(&c, recent[1].id).contains("beyond the newest"));
        assert_eq!(state(&c, recent[2].id), "pending");
        assert_eq!(state(&c, done[0].id), "delivered");
        // Without a webhook now, nothing is sent and nothing stays pending.
        assert!(take_pending(&mut c, now, false).unwrap().is_empty());
        assert!(state(&c, recent[2].id).contains("no webhook is configured"));
        let pending: i64 = c
            .query_row(
                "SELECT count(*) FROM alerts WHERE webhook = 'pending'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pending, 0);
        assert!(take_pending(&mut c, now, true).unwrap().is_empty());
    }

    #[test]
    fn webhook_settings_are_checked() {
        assert!(!Alerts::from_config(&AlertsConfig::default())
            .unwrap()
            .has_webhook());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "short\n").unwrap();
        let cfg = |url: &str| AlertsConfig {
            webhook_url: Some(url.into()),
            webhook_secret_file: Some(secret.clone()),
            webhook_attempts: 3,
        };
        assert!(Alerts::from_config(&cfg("http://127.0.0.1:9/hook")).is_err());
        std::fs::write(&secret, "a-long-enough-secret\n").unwrap();
        assert!(Alerts::from_config(&cfg("http://127.0.0.1:9/hook"))
            .unwrap()
            .has_webhook());
        assert!(Alerts::from_config(&cfg("ftp://x/")).is_err());
        let no_secret = AlertsConfig {
            webhook_secret_file: None,
            ..cfg("http://127.0.0.1:9/hook")
        };
        assert!(Alerts::from_config(&no_secret).is_err());
    }
}
