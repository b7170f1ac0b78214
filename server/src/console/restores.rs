//! Restore requests and repairs in the console, read from the `restore_requests` table
//! ([`crate::backups::requests`]), not from the audit log:
//!
//! - [`requests_table`]: each request with its real status (`pending`, `delivered` once the
//!   terminal fetched it, `done`, `failed`), when it was fetched and finished, and the
//!   terminal's report: the backup restored, the rows lost per table, the backups a repair
//!   refused, the error. These come from the structured outcome the terminal sent
//!   ([`crate::backups::restore_outcome`]); for reports of older agents, which sent only a
//!   message, [`parse_outcome`] reads them from its text.
//! - `GET /console/devices/{device}/repair` (admin, restorer): the confirmation page of an
//!   admin-ordered repair, with what the server knows the repair will lose.
//! - `POST /console/devices/{device}/repair` (admin, restorer; CSRF-checked; the device id
//!   typed again and a reason): orders the repair, the same request as
//!   `POST /api/v1/backups/{device}/restore-requests` with `"backup": "newest-verifying"`,
//!   stored and audited in one transaction.

use std::collections::HashMap;
use std::fmt::Write;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use rusqlite::Connection;

use super::auth::{ConsoleAuth, ConsoleError};
use super::html::{self, ago, esc, time, url_part};
use super::{RequestRestore, NAV};
use crate::audit::Actor;
use crate::backups::requests::{self, RestoreRequest, Which};
use crate::backups::restore_outcome::RestoreOutcome;
use crate::backups::verify::{last_verifications, VerificationRecord};
use crate::backups::{list_manifests, ManifestRecord};
use crate::db::unix_now;
use crate::fleet::{list_devices, DeviceFilter, DeviceInfo};
use crate::http::AppState;

/// What a request's status is for people: the table's `pending` split into `pending` (the
/// terminal has not fetched it yet) and `delivered` (it has, and has not reported yet).
pub fn display_status(r: &RestoreRequest) -> &'static str {
    match r.status.as_str() {
        "done" => "done",
        "failed" => "failed",
        _ if r.delivered_at.is_some() => "delivered",
        _ => "pending",
    }
}

/// What a terminal's report on a request says, as far as it can be read
/// (`otter-agent restore --requested` writes it; unknown texts leave fields empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The backup restored.
    pub restored: Option<u64>,
    /// Rows lost per table (live count minus backup count); `Some(empty)` when the terminal
    /// found none, `None` when the report does not say.
    pub lost: Option<Vec<(String, u64)>>,
    /// Backups a repair refused, and why (as reported).
    pub refused: Option<String>,
    /// Live and backup row counts per table, in the order of `lost` (structured reports
    /// only).
    pub counts: Option<Vec<(u64, u64)>>,
    /// Read from the terminal's structured outcome, not from its message.
    pub structured: bool,
}

impl From<&RestoreOutcome> for Outcome {
    fn from(o: &RestoreOutcome) -> Outcome {
        let refused = (!o.refused.is_empty()).then(|| {
            o.refused
                .iter()
                .map(|r| format!("#{} ({})", r.sequence, r.reason))
                .collect::<Vec<_>>()
                .join("; ")
        });
        Outcome {
            restored: o.restored_sequence,
            lost: o
                .rows_lost
                .as_ref()
                .map(|l| l.iter().map(|t| (t.table.clone(), t.rows)).collect()),
            refused,
            counts: o
                .rows_lost
                .as_ref()
                .map(|l| l.iter().map(|t| (t.live, t.backup)).collect()),
            structured: true,
        }
    }
}

/// What the console shows of `r`'s report: its structured outcome when the terminal sent
/// one, else what [`parse_outcome`] reads from the message.
pub fn outcome_of(r: &RestoreRequest) -> Outcome {
    match &r.outcome {
        Some(o) => Outcome::from(o),
        None => r.result.as_deref().map(parse_outcome).unwrap_or_default(),
    }
}

/// Reads the terminal's report message.
pub fn parse_outcome(message: &str) -> Outcome {
    let mut o = Outcome::default();
    if let Some(i) = message.find("restored backup #") {
        let digits: String = message[i + "restored backup #".len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        o.restored = digits.parse().ok();
    }
    let (body, refused) = match message.find("; refused: ") {
        Some(i) => (&message[..i], Some(&message[i + "; refused: ".len()..])),
        None => (message, None),
    };
    o.refused = refused.map(str::to_owned);
    if body.contains("no table has more rows live than in the backup") {
        o.lost = Some(Vec::new());
    } else if let Some(i) = body.find("would be lost: ") {
        // "sales: 12 rows (live 100, backup 88), items: 3 rows (live 9, backup 6)"
        let mut lost = Vec::new();
        let mut rest = &body[i + "would be lost: ".len()..];
        while let Some(colon) = rest.find(": ") {
            let table = rest[..colon].trim_start_matches(", ").to_owned();
            let after = &rest[colon + 2..];
            let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
            let Ok(n) = digits.parse::<u64>() else { break };
            lost.push((table, n));
            match after.find(')') {
                Some(close) => rest = &after[close + 1..],
                None => break,
            }
        }
        if !lost.is_empty() {
            o.lost = Some(lost);
        }
    }
    o
}

fn status_badge(status: &str) -> String {
    format!("<span class=\"badge status-{status}\">{status}</span>")
}

/// The `title` of the rows-lost cell: live and backup counts per table, when known.
fn counts_title(lost: &[(String, u64)], counts: Option<&Vec<(u64, u64)>>) -> String {
    let Some(counts) = counts.filter(|c| c.len() == lost.len() && !c.is_empty()) else {
        return String::new();
    };
    let parts: Vec<String> = lost
        .iter()
        .zip(counts)
        .map(|((t, _), (live, backup))| format!("{t}: live {live}, backup {backup}"))
        .collect();
    format!(" title=\"{}\"", esc(&parts.join("; ")))
}

fn lost_text(lost: &[(String, u64)]) -> String {
    if lost.is_empty() {
        return "none".into();
    }
    let total: u64 = lost.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = lost
        .iter()
        .map(|(t, n)| format!("{} {n}", esc(t)))
        .collect();
    format!("{total} ({})", parts.join(", "))
}

/// The requests of one device, newest first, with their status and the terminal's report.
pub fn requests_table(reqs: &[RestoreRequest]) -> String {
    if reqs.is_empty() {
        return "<p class=\"muted\" id=\"no-restore-requests\">No restore request.</p>".into();
    }
    let mut b = String::from(
        "<div class=\"scroll\"><table id=\"restore-requests\"><thead><tr><th scope=\"col\">#</th>\
         <th scope=\"col\">What</th><th scope=\"col\">Requested</th><th scope=\"col\">Reason</th>\
         <th scope=\"col\">Status</th><th scope=\"col\">Fetched by the terminal</th>\
         <th scope=\"col\">Finished</th><th scope=\"col\">Restored</th><th scope=\"col\">Rows lost</th>\
         <th scope=\"col\">Report</th></tr></thead><tbody>",
    );
    for r in reqs {
        let status = display_status(r);
        let o = outcome_of(r);
        let what = if r.repair {
            format!("repair: newest backup that verifies, from #{}", r.sequence)
        } else {
            format!("restore backup #{}", r.sequence)
        };
        let restored = match (status, o.restored) {
            (_, Some(n)) => format!("#{n}"),
            ("done", None) if !r.repair => format!("#{}", r.sequence),
            _ => "<span class=\"muted\">–</span>".into(),
        };
        let (lost, title) = match &o.lost {
            Some(l) => (lost_text(l), counts_title(l, o.counts.as_ref())),
            None => ("<span class=\"muted\">–</span>".into(), String::new()),
        };
        let source = if o.structured {
            "structured"
        } else {
            "message"
        };
        let mut report = r.result.as_deref().map(esc).unwrap_or_default();
        if status == "failed" && report.is_empty() {
            report = "failed without a message".into();
        }
        if let Some(refused) = &o.refused {
            let _ = write!(
                report,
                "<br><span class=\"muted\">refused backups: {}</span>",
                esc(refused)
            );
        }
        let _ = write!(
            b,
            "<tr data-request=\"{id}\" data-status=\"{status}\" data-outcome=\"{source}\"><td>{id}</td><td>{what}</td>\
             <td>{} <span class=\"muted\">by {}</span></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{restored}</td><td class=\"rows-lost\"{title}>{lost}</td><td class=\"wrap\">{report}</td></tr>",
            time(r.requested_at),
            esc(&r.requested_by),
            esc(&r.reason),
            status_badge(status),
            r.delivered_at.map(time).unwrap_or_else(|| "<span class=\"muted\">not yet</span>".into()),
            r.finished_at.map(time).unwrap_or_else(|| "<span class=\"muted\">not yet</span>".into()),
            id = r.id,
        );
    }
    b.push_str("</tbody></table></div>");
    b
}

/// The "Repair…" button (a GET form to the confirmation page) for roles that may order one.
pub fn repair_button(device: &str) -> String {
    format!(
        "<form method=\"get\" action=\"/console/devices/{}/repair\" class=\"inline\">\
         <button type=\"submit\" class=\"danger\" id=\"repair\">Repair…</button></form>",
        url_part(device)
    )
}

/// What the server knows before a repair: the device, its catalogued backups, their last
/// server-side verification, and its requests.
struct Preview {
    device: DeviceInfo,
    backups: Vec<ManifestRecord>,
    verifs: HashMap<u64, VerificationRecord>,
    requests: Vec<RestoreRequest>,
}

fn read_preview(c: &Connection, device: &str) -> Result<Option<Preview>, ConsoleError> {
    let found = list_devices(c, &DeviceFilter::default())
        .map_err(|e| ConsoleError::internal("reading the device", &e))?
        .into_iter()
        .find(|d| d.device_id == device);
    let Some(found) = found else {
        return Ok(None);
    };
    let backups = list_manifests(c, Some(device))
        .map_err(|e| ConsoleError::internal("reading the backups", &e))?;
    let verifs = last_verifications(c, Some(device))
        .map_err(|e| ConsoleError::internal("reading the backup verifications", &e))?
        .into_iter()
        .map(|v| (v.sequence, v))
        .collect();
    let requests = requests::list(c, device, false)
        .map_err(|e| ConsoleError::internal("reading the restore requests", &e))?;
    Ok(Some(Preview {
        device: found,
        backups,
        verifs,
        requests,
    }))
}

fn no_device(device: &str) -> ConsoleError {
    ConsoleError::NotFound(format!(
        "no device {:?} is enrolled",
        device.chars().take(64).collect::<String>()
    ))
}

/// Why a repair cannot be ordered now, if it cannot.
fn refusal(p: &Preview) -> Option<String> {
    if p.device.revoked_at.is_some() {
        return Some(
            "this device is revoked: it can no longer fetch requests, so a repair cannot reach it"
                .into(),
        );
    }
    if p.backups.is_empty() {
        return Some(
            "this device has no backup in the catalog: there is nothing to repair from".into(),
        );
    }
    if let Some(r) = p
        .requests
        .iter()
        .find(|r| r.repair && r.status == "pending")
    {
        return Some(format!(
            "repair request #{} of this device is still {}: wait for the terminal's report",
            r.id,
            display_status(r)
        ));
    }
    None
}

/// What the repair is expected to restore and lose, in HTML, from what the server knows.
fn loss_summary(p: &Preview, now: i64) -> String {
    let mut b = String::new();
    let Some(newest) = p.backups.last() else {
        return b;
    };
    let failed = |r: &ManifestRecord| p.verifs.get(&r.sequence).is_some_and(|v| !v.ok);
    // The terminal walks back from the newest; a backup the server's keyless check found
    // broken (a pack missing or altered) will fail the terminal's check too.
    let expected = p.backups.iter().rev().find(|r| !failed(r));
    let _ = write!(
        b,
        "<p>The terminal restores the newest backup that verifies completely, starting at \
         backup <strong>#{}</strong> (taken {}, {}) and walking back to older ones. The live \
         database is replaced only after a backup passes every check.</p>",
        newest.sequence,
        time(newest.created),
        ago(newest.created, now)
    );
    if let (true, Some(v)) = (failed(newest), p.verifs.get(&newest.sequence)) {
        let _ = write!(
            b,
            "<p class=\"error\">Backup #{} failed the server's last full verification ({}: {}), \
             so the terminal will most likely refuse it.</p>",
            newest.sequence,
            time(v.verified_at),
            esc(&v.problems.first().cloned().unwrap_or_default())
        );
    }
    match expected {
        Some(e) => {
            let _ = write!(
                b,
                "<p id=\"repair-loss\"><strong>What the repair will lose:</strong> everything \
                 written to the terminal's database after backup <strong>#{}</strong> was taken \
                 ({}), that is at least the last <strong>{}</strong> of sales{}.</p>",
                e.sequence,
                time(e.created),
                ago(e.created, now).trim_end_matches(" ago"),
                if p.verifs.contains_key(&e.sequence) {
                    ""
                } else {
                    " (the server has not fully verified this backup yet: if the terminal \
                     refuses it, an older one is restored and more is lost)"
                }
            );
        }
        None => b.push_str(
            "<p id=\"repair-loss\" class=\"error\">Every catalogued backup of this device failed the \
             server's last full verification: the repair will most likely find none that \
             verifies, and then leaves the live database untouched.</p>",
        ),
    }
    b.push_str(
        "<p class=\"hint\">The server holds no key to the backups, so it cannot count the rows: \
         the terminal counts them before it replaces anything and reports the rows lost per \
         table, shown with the request once it has reported.</p>",
    );
    b
}

/// `GET /console/devices/{device}/repair` (admin, restorer): what a repair would restore
/// and lose, the device's database events, and the form that orders it.
pub async fn repair_confirm(
    auth: ConsoleAuth<RequestRestore>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let device = path.into_inner();
    let d = device.clone();
    let preview = state
        .db
        .call(move |c| Ok(read_preview(c, &d)))
        .await
        .map_err(|e| ConsoleError::internal("reading the device", &e))??
        .ok_or_else(|| no_device(&device))?;
    let now = unix_now();
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>Device <code id=\"device-id\">{}</code> ({}), last seen {}.</p>",
        esc(&preview.device.device_id),
        esc(&preview.device.hardware_model),
        preview
            .device
            .last_seen
            .map_or_else(|| "never".into(), |t| ago(t, now))
    );
    let db_events: Vec<String> = preview
        .device
        .last_report
        .iter()
        .flat_map(|r| r.security_events.iter())
        .filter(|e| e.kind.contains("database") || e.kind.contains("corrupt"))
        .map(|e| {
            format!(
                "<li>{} <code>{}</code>: {}</li>",
                time(e.at),
                esc(&e.kind),
                esc(&e.detail)
            )
        })
        .collect();
    if !db_events.is_empty() {
        let _ = write!(
            b,
            "<p>Database events in the terminal's last report:</p><ul id=\"database-events\">{}</ul>",
            db_events.concat()
        );
    }
    b.push_str(&loss_summary(&preview, now));
    match refusal(&preview) {
        Some(why) => {
            let _ = write!(
                b,
                "<p class=\"error\" role=\"alert\" id=\"repair-refused\">A repair cannot be ordered: {}.</p>",
                esc(&why)
            );
        }
        None => {
            let _ = write!(
                b,
                "<section class=\"card\" aria-label=\"Order the repair\"><form method=\"post\" \
                 action=\"/console/devices/{}/repair\" class=\"controls\" id=\"repair-form\">{}\
                 <label for=\"repair-reason\">Reason</label>\
                 <input id=\"repair-reason\" name=\"reason\" maxlength=\"512\" required>\
                 <label for=\"repair-confirm\">Type the device id <code>{}</code> to confirm</label>\
                 <input id=\"repair-confirm\" name=\"confirm\" required autocomplete=\"off\">\
                 <button type=\"submit\" class=\"danger\" id=\"order-repair\">Order repair</button></form></section>",
                url_part(&device),
                html::csrf_field(&auth.session.csrf),
                esc(&device)
            );
        }
    }
    let _ = write!(
        b,
        "<h2>Restore requests</h2>{}<p><a href=\"/console/backups?device={}\">Backups of this device</a></p>",
        requests_table(&preview.requests),
        url_part(&device)
    );
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html::page(
            &format!("Repair {}", preview.device.device_id),
            "/backups",
            Some(&auth.who()),
            NAV,
            &b,
        )))
}

/// `POST /console/devices/{device}/repair` (admin, restorer; CSRF-checked): `reason`,
/// `confirm` (= the device id). Orders the repair (stored and audited as
/// `backup.restore_request` with `"repair": true`) and goes to the device's backups page.
pub async fn repair_post(
    auth: ConsoleAuth<RequestRestore>,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let form: HashMap<String, String> = auth.checked_form(&body)?;
    let device = path.into_inner();
    if form.get("confirm").map(|c| c.trim()) != Some(device.as_str()) {
        return Err(ConsoleError::BadRequest(
            "to order a repair, type the device id into the confirmation field".into(),
        ));
    }
    let r = super::rollouts::required_reason_of(&form)?;
    let (actor, d) = (Actor::token(auth.session.token_id), device.clone());
    let made = state
        .db
        .call(move |c| {
            let order = |c: &mut Connection| -> Result<RestoreRequest, ConsoleError> {
                let p = read_preview(c, &d)?.ok_or_else(|| no_device(&d))?;
                if let Some(why) = refusal(&p) {
                    return Err(if p.backups.is_empty() {
                        ConsoleError::NotFound(why)
                    } else {
                        ConsoleError::Conflict(why)
                    });
                }
                requests::create(c, &actor, &d, Which::NewestVerifying, &r, unix_now())
                    .map_err(|e| ConsoleError::internal("recording the repair request", &e))?
                    .ok_or_else(|| {
                        ConsoleError::NotFound("this device has no backup in the catalog".into())
                    })
            };
            Ok(order(c))
        })
        .await
        .map_err(|e| ConsoleError::internal("recording the repair request", &e))??;
    tracing::info!(
        device = %device,
        request = made.id,
        from = made.sequence,
        by = auth.session.token_id,
        "repair ordered from the console"
    );
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!(
                "/console/backups?device={}&repair={}",
                url_part(&device),
                made.id
            ),
        ))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(status: &str, delivered: Option<i64>, result: Option<&str>) -> RestoreRequest {
        RestoreRequest {
            id: 7,
            device_id: "till-<1>".into(),
            sequence: 4,
            header_hash: "ab".into(),
            reason: "<b>spill</b>".into(),
            requested_by: "token:2".into(),
            requested_at: 100,
            status: status.into(),
            repair: true,
            result: result.map(str::to_owned),
            finished_at: result.map(|_| 200),
            delivered_at: delivered,
            outcome: None,
        }
    }

    #[test]
    fn statuses_split_pending_into_pending_and_delivered() {
        assert_eq!(display_status(&req("pending", None, None)), "pending");
        assert_eq!(
            display_status(&req("pending", Some(150), None)),
            "delivered"
        );
        assert_eq!(display_status(&req("done", Some(150), Some("x"))), "done");
        assert_eq!(display_status(&req("failed", None, Some("x"))), "failed");
    }

    #[test]
    fn the_terminals_reports_are_read() {
        let o = parse_outcome(
            "repair: restored backup #3, the newest that verifies; rows newer than the backup \
             would be lost: items: 2 rows (live 9, backup 7), sales: 12 rows (live 100, backup 88); \
             refused: #4 (pack 1f missing)",
        );
        assert_eq!(o.restored, Some(3));
        assert_eq!(
            o.lost,
            Some(vec![("items".into(), 2), ("sales".into(), 12)])
        );
        assert_eq!(o.refused.as_deref(), Some("#4 (pack 1f missing)"));
        let o = parse_outcome("restored backup #2; no table has more rows live than in the backup");
        assert_eq!(
            (o.restored, o.lost, o.refused),
            (Some(2), Some(vec![]), None)
        );
        let o = parse_outcome("repair: no backup verifies; the live database was not touched");
        assert_eq!(o, Outcome::default());
        assert_eq!(parse_outcome("anything else"), Outcome::default());
        assert_eq!(parse_outcome("would be lost: t: x rows").lost, None);
    }

    #[test]
    fn the_table_shows_status_report_and_escapes() {
        let done = req(
            "done",
            Some(150),
            Some("repair: restored backup #3, the newest that verifies; rows newer than the backup would be lost: sales: 12 rows (live 100, backup 88)"),
        );
        let t = requests_table(&[done, req("pending", None, None)]);
        assert!(t.contains("data-status=\"done\""), "{t}");
        assert!(t.contains("data-status=\"pending\""), "{t}");
        assert!(t.contains("<td>#3</td>"), "{t}");
        assert!(
            t.contains("<td class=\"rows-lost\">12 (sales 12)</td>"),
            "{t}"
        );
        assert!(t.contains("&lt;b&gt;spill") && !t.contains("<b>"), "{t}");
        assert!(requests_table(&[]).contains("No restore request"));
    }

    #[test]
    fn a_structured_outcome_wins_over_the_message_and_is_escaped() {
        let mut r = req(
            "done",
            Some(150),
            Some("repair: restored backup #9; rows newer than the backup would be lost: sales: 99 rows (live 99, backup 0)"),
        );
        r.outcome = Some(
            serde_json::from_value(serde_json::json!({
                "restored_sequence": 3,
                "rows_lost": [
                    {"table": "items", "rows": 2, "live": 9, "backup": 7},
                    {"table": "<i>x\"", "rows": 1, "live": 1, "backup": 0}
                ],
                "refused": [{"sequence": 4, "reason": "pack <1f> missing"}]
            }))
            .unwrap(),
        );
        let t = requests_table(std::slice::from_ref(&r));
        assert!(t.contains("data-outcome=\"structured\""), "{t}");
        assert!(t.contains("<td>#3</td>") && !t.contains("#9</td>"), "{t}");
        assert!(
            t.contains(
                "<td class=\"rows-lost\" title=\"items: live 9, backup 7; &lt;i&gt;x&quot;: \
                 live 1, backup 0\">3 (items 2, &lt;i&gt;x&quot; 1)</td>"
            ),
            "{t}"
        );
        assert!(
            t.contains("refused backups: #4 (pack &lt;1f&gt; missing)"),
            "{t}"
        );
        assert!(!t.contains("<i>") && !t.contains("<1f>"), "{t}");
        // An older agent's report: read from the message.
        r.outcome = None;
        let t = requests_table(&[r]);
        assert!(t.contains("data-outcome=\"message\""), "{t}");
        assert!(t.contains("<td>#9</td>"), "{t}");
        assert!(
            t.contains("<td class=\"rows-lost\">99 (sales 99)</td>"),
            "{t}"
        );
    }
}
