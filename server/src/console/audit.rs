//! The console's audit and security pages, and restore requests:
//!
//! - `GET /console/audit` (admin, auditor): the hash-chained audit log, newest first, with
//!   the result of walking the whole chain ([`crate::audit::verify`]).
//! - `GET /console/security` (admin, operator, auditor): the security events of every
//!   device's last report, newest first: the alerts to look at.
//! - `POST /console/backups/{device}/restore` (admin, restorer; CSRF-checked; the device id
//!   typed again to confirm): records a restore request for one catalogued backup as an
//!   audit entry `backup.restore_request` and a stored request that the device picks up
//!   (`otter-agent run` with `[restore] allow_remote_requests`, or `restore --requested`).

use std::collections::HashMap;
use std::fmt::Write;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rusqlite::Connection;
use serde::Deserialize;

use super::auth::{ConsoleAuth, ConsoleError};
use super::html::{self, esc, time, url_part};
use super::{AckAlerts, RequestRestore, NAV};
use crate::audit::{self, Actor};
use crate::db::unix_now;
use crate::fleet::{list_devices, DeviceFilter};
use crate::http::audit_api::ReadAudit;
use crate::http::auth::ReadDevices;
use crate::http::AppState;

/// Entries shown on one audit page.
pub const PAGE: u32 = 100;

fn page<P: crate::http::auth::Policy>(
    auth: &ConsoleAuth<P>,
    title: &str,
    current: &str,
    body: &str,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html::page(title, current, Some(&auth.who()), NAV, body))
}

/// Query of the audit page.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    /// Show entries up to this sequence number (older pages).
    pub before: Option<i64>,
}

/// `GET /console/audit[?before=SEQ]` (admin, auditor): chain status and entries.
pub async fn audit_log(
    auth: ConsoleAuth<ReadAudit>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    let q = web::Query::<AuditQuery>::from_query(req.query_string())
        .map_err(|e| ConsoleError::BadRequest(format!("the query is malformed: {e}")))?
        .into_inner();
    let (verification, entries) = state
        .db
        .call(move |c| {
            let v = audit::verify(c, None);
            let head = audit::head(c).map(|h| h.seq).unwrap_or(0);
            let upto = q.before.map_or(head, |b| b.saturating_sub(1)).min(head);
            let after = upto.saturating_sub(i64::from(PAGE));
            let entries = audit::list(c, after, PAGE);
            Ok((v, entries))
        })
        .await
        .map_err(|e| ConsoleError::internal("reading the audit log", &e))?;
    let v = verification.map_err(|e| ConsoleError::internal("verifying the audit log", &e))?;
    let entries = entries.map_err(|e| ConsoleError::internal("reading the audit log", &e))?;
    let mut b = String::new();
    match &v.broken {
        None => {
            let _ = write!(
                b,
                "<p class=\"card\" id=\"chain-status\"><span class=\"badge health-ok\">chain intact</span> \
                 {} entries verified from the first; head <code>{}</code></p>",
                v.verified,
                esc(&v.head.to_string())
            );
        }
        Some(br) => {
            let _ = write!(
                b,
                "<p class=\"card error\" id=\"chain-status\" role=\"alert\"><span class=\"badge health-failing\">chain broken</span> \
                 at entry {}: {} ({} entries verified before it)</p>",
                br.seq,
                esc(&br.reason),
                v.verified
            );
        }
    }
    b.push_str("<p class=\"hint\">Record the head elsewhere from time to time: <code>otter-server audit verify --anchor SEQ:HASH</code> then also detects a truncated tail.</p>");
    if entries.is_empty() {
        b.push_str("<p class=\"empty\">The audit log is empty.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table id=\"audit\"><thead><tr><th scope=\"col\">#</th><th scope=\"col\">When</th>\
             <th scope=\"col\">Who</th><th scope=\"col\">Action</th><th scope=\"col\">Subject</th>\
             <th scope=\"col\">Details</th></tr></thead><tbody>",
        );
        for e in entries.iter().rev() {
            let who = match &e.actor_name {
                Some(n) => format!(
                    "{} <span class=\"muted\">({})</span>",
                    esc(n),
                    esc(&e.actor)
                ),
                None => esc(&e.actor),
            };
            let details: String = e.details.chars().take(400).collect();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{who}</td><td><code>{}</code></td><td>{}</td><td><code class=\"wrap\">{}</code></td></tr>",
                e.seq,
                time(e.at),
                esc(&e.action),
                esc(&e.subject),
                esc(&details)
            );
        }
        b.push_str("</tbody></table></div>");
        if let Some(oldest) = entries.first().filter(|e| e.seq > 1) {
            let _ = write!(
                b,
                "<p><a href=\"/console/audit?before={}\">Older entries</a></p>",
                oldest.seq
            );
        }
    }
    Ok(page(&auth, "Audit log", "/audit", &b))
}

/// `GET /console/security` (admin, operator, auditor): every device's reported security
/// events, newest first.
pub async fn security(
    auth: ConsoleAuth<ReadDevices>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let devices = state
        .db
        .call(|c| Ok(list_devices(c, &DeviceFilter::default())))
        .await
        .map_err(|e| ConsoleError::internal("reading the device list", &e))?
        .map_err(|e| ConsoleError::internal("reading the device list", &e))?;
    let mut events: Vec<(i64, &str, &str, &str)> = Vec::new();
    for d in &devices {
        if let Some(r) = &d.last_report {
            for e in &r.security_events {
                events.push((e.at, &d.device_id, &e.kind, &e.detail));
            }
        }
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut b = String::new();
    let ack_csrf = <AckAlerts as crate::http::auth::Policy>::ROLES
        .contains(&auth.session.role)
        .then(|| auth.session.csrf.as_str().to_owned());
    alerts_section(&state, &mut b, ack_csrf.as_deref()).await?;
    let _ = write!(
        b,
        "<p class=\"count\">{} security events in the devices' last reports.</p>",
        events.len()
    );
    if events.is_empty() {
        b.push_str("<p class=\"empty\">No security event reported.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table id=\"security-events\"><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Device</th>\
             <th scope=\"col\">Kind</th><th scope=\"col\">Detail</th></tr></thead><tbody>",
        );
        for (at, dev, kind, detail) in events.iter().take(1000) {
            let _ = write!(
                b,
                "<tr class=\"alert\"><td>{}</td><td><a href=\"/console/devices/{}\">{}</a></td>\
                 <td><span class=\"badge alert\">{}</span></td><td>{}</td></tr>",
                time(*at),
                url_part(dev),
                esc(dev),
                esc(kind),
                esc(detail)
            );
        }
        b.push_str("</tbody></table></div>");
    }
    Ok(page(&auth, "Security events", "/security", &b))
}

/// The alerts raised from security events and rollbacks ([`crate::alerts`]), newest first.
async fn alerts_section(
    state: &AppState,
    b: &mut String,
    ack_csrf: Option<&str>,
) -> Result<(), ConsoleError> {
    let (alerts, open) = state
        .db
        .call(|c| {
            Ok(crate::alerts::list(c, 500, false)
                .and_then(|l| Ok((l, crate::alerts::open_count(c)?))))
        })
        .await
        .map_err(|e| ConsoleError::internal("reading the alerts", &e))?
        .map_err(|e| ConsoleError::internal("reading the alerts", &e))?;
    let _ = write!(
        b,
        "<h2>Alerts</h2><p class=\"count\" id=\"alerts-open\">{open} open alerts.</p>"
    );
    if alerts.is_empty() {
        b.push_str("<p class=\"empty\">No alert raised.</p>");
        return Ok(());
    }
    b.push_str(
        "<div class=\"scroll\"><table id=\"alerts\"><thead><tr><th scope=\"col\">Alert</th>\
         <th scope=\"col\">Raised</th><th scope=\"col\">Device</th><th scope=\"col\">Kind</th>\
         <th scope=\"col\">Detail</th><th scope=\"col\">Webhook</th><th scope=\"col\">State</th></tr></thead><tbody>",
    );
    for a in &alerts {
        let _ = write!(
            b,
            "<tr class=\"alert\" data-alert=\"{}\"><td>#{}</td><td>{}</td><td><a href=\"/console/devices/{}\">{}</a></td>\
             <td><span class=\"badge alert\">{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            a.id,
            a.id,
            time(a.raised_at),
            url_part(&a.device_id),
            esc(&a.device_id),
            esc(&a.kind),
            esc(&a.detail),
            esc(&a.webhook),
            match (a.acknowledged_at, ack_csrf) {
                (Some(t), _) => format!("acknowledged {}", time(t)),
                (None, Some(csrf)) => format!(
                    "open <form method=\"post\" action=\"/console/alerts/{}/ack\" class=\"inline\">{}\
                     <button type=\"submit\" id=\"ack-{}\">Acknowledge</button></form>",
                    a.id,
                    html::csrf_field(csrf),
                    a.id
                ),
                (None, None) => "open".into(),
            }
        );
    }
    b.push_str("</tbody></table></div><h2>Events in the last reports</h2>");
    Ok(())
}

/// `POST /console/alerts/{id}/ack` (admin, operator; CSRF-checked): acknowledges an open
/// alert, audited (`alert.acknowledge`) in the same transaction.
pub async fn acknowledge_alert(
    auth: ConsoleAuth<AckAlerts>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let _form: HashMap<String, String> = auth.checked_form(&body)?;
    let id: i64 = path
        .trim()
        .parse()
        .map_err(|_| ConsoleError::BadRequest("an alert is named by its number".into()))?;
    let actor = Actor::token(auth.session.token_id);
    let done = state
        .db
        .call(move |c| {
            let run = |c: &mut Connection| -> Result<bool, String> {
                let tx = c.transaction().map_err(|e| e.to_string())?;
                let Some(a) = crate::alerts::get(&tx, id).map_err(|e| e.to_string())? else {
                    return Ok(false);
                };
                let now = unix_now();
                if !crate::alerts::acknowledge(&tx, id, now).map_err(|e| e.to_string())? {
                    return Ok(false);
                }
                audit::append(
                    &tx,
                    &actor,
                    "alert.acknowledge",
                    &format!("alert:{id}"),
                    &serde_json::json!({"device": a.device_id, "kind": a.kind}),
                    now,
                )
                .map_err(|e| e.to_string())?;
                tx.commit().map_err(|e| e.to_string())?;
                Ok(true)
            };
            Ok(run(c))
        })
        .await
        .map_err(|e| ConsoleError::internal("acknowledging the alert", &e))?
        .map_err(|e| {
            ConsoleError::internal("acknowledging the alert", &std::io::Error::other(e))
        })?;
    if !done {
        return Err(ConsoleError::NotFound(format!("no open alert #{id}")));
    }
    tracing::info!(
        alert = id,
        by = auth.session.token_id,
        "alert acknowledged from the console"
    );
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/security"))
        .finish())
}

/// The restore request form for one device's backups.
pub fn restore_form(device: &str, latest: u64, csrf: &str) -> String {
    format!(
        "<section class=\"card restore-request\" aria-label=\"Request a restore\"><h2>Request a restore</h2>\
         <form method=\"post\" action=\"/console/backups/{}/restore\" class=\"controls\" id=\"restore-form\">{}\
         <label for=\"restore-sequence\">Backup #</label>\
         <input type=\"number\" id=\"restore-sequence\" name=\"sequence\" min=\"1\" value=\"{latest}\" required>\
         <label for=\"restore-reason\">Reason</label><input id=\"restore-reason\" name=\"reason\" maxlength=\"512\" required>\
         <label for=\"restore-confirm\">Type the device id <code>{}</code> to confirm</label>\
         <input id=\"restore-confirm\" name=\"confirm\" required autocomplete=\"off\">\
         <button type=\"submit\" class=\"danger\" id=\"request-restore\">Request restore</button></form></section>",
        url_part(device),
        html::csrf_field(csrf),
        esc(device)
    )
}

fn record_request(
    conn: &mut Connection,
    actor: &Actor,
    device: &str,
    sequence: u64,
    reason: &str,
) -> Result<Option<i64>, ConsoleError> {
    // The same request as `POST /api/v1/backups/{device}/restore-requests`: stored for the
    // device to pick up, audited in the same transaction.
    let made = crate::backups::requests::create(
        conn,
        actor,
        device,
        crate::backups::requests::Which::Sequence(sequence),
        reason,
        unix_now(),
    )
    .map_err(|e| ConsoleError::internal("recording the restore request", &e))?;
    Ok(made.map(|r| r.id))
}

/// `POST /console/backups/{device}/restore` (admin, restorer; CSRF-checked): `sequence`,
/// `reason`, `confirm` (= the device id). Stores the request for the device to pick up,
/// audited in the same transaction.
pub async fn request_restore(
    auth: ConsoleAuth<RequestRestore>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let form: HashMap<String, String> = auth.checked_form(&body)?;
    let device = path.into_inner();
    if form.get("confirm").map(|c| c.trim()) != Some(device.as_str()) {
        return Err(ConsoleError::BadRequest(
            "to request a restore, type the device id into the confirmation field".into(),
        ));
    }
    let sequence: u64 = form
        .get("sequence")
        .and_then(|s| s.trim().parse().ok())
        .filter(|s| *s >= 1)
        .ok_or_else(|| {
            ConsoleError::BadRequest("give the number of a backup (1 or more)".into())
        })?;
    let r = super::rollouts::required_reason_of(&form)?;
    let (actor, d) = (Actor::token(auth.session.token_id), device.clone());
    let recorded = state
        .db
        .call(move |c| Ok(record_request(c, &actor, &d, sequence, &r)))
        .await
        .map_err(|e| ConsoleError::internal("recording the restore request", &e))??;
    let Some(entry) = recorded else {
        return Err(ConsoleError::NotFound(format!(
            "device {:?} has no backup #{sequence}",
            device.chars().take(64).collect::<String>()
        )));
    };
    tracing::info!(
        device = %device,
        sequence,
        request = entry,
        by = auth.session.token_id,
        "restore requested from the console"
    );
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!(
                "/console/backups?device={}&requested={sequence}",
                url_part(&device)
            ),
        ))
        .finish())
}
