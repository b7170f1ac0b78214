//! A release's page in the console: its signed target (hashes, length, targets version),
//! its rollout (status, percent, groups, what is signed, reported outcomes), a chart of the
//! signed percent and the reported outcomes over time, and the rollout controls (percent,
//! pause, resume, abort) for the roles [`ManageRollouts`] admits. The controls post to
//! [`rollout_post`], which calls the same [`crate::rollout::change`] as the API.

use std::fmt::Write;

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;

use super::auth::{ConsoleAuth, ConsoleError};
use super::html::{self, bytes, esc, time, url_part};
use super::NAV;
use crate::audit::Actor;
use crate::db::unix_now;
use crate::http::auth::Policy;
use crate::http::rollouts_api::{split_groups, ManageRollouts, ReadRollouts};
use crate::http::AppState;
use crate::rollout::{self, Change, RolloutError, RolloutInfo, Status};

/// Longest reason accepted from the console.
pub const MAX_REASON: usize = 512;

fn rollout_err(e: RolloutError) -> ConsoleError {
    match e {
        RolloutError::NotFound(m) => ConsoleError::NotFound(m),
        RolloutError::Conflict(m) => ConsoleError::Conflict(m),
        RolloutError::Invalid(m) => ConsoleError::BadRequest(m),
        other => ConsoleError::internal("the rollout change", &other),
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Active => "active",
        Status::Paused => "paused",
        Status::Halted => "halted",
        Status::Aborted => "aborted",
    }
}

/// A status badge.
pub fn status_badge(s: Status) -> String {
    let class = match s {
        Status::Active => "health-ok",
        Status::Paused => "health-degraded",
        Status::Halted | Status::Aborted => "health-failing",
    };
    format!(
        "<span class=\"badge {class} rollout-status\">{}</span>",
        status_name(s)
    )
}

/// The link to a release's page.
pub fn release_href(name: &str, version: &str) -> String {
    format!("/console/releases/{}/{}", url_part(name), url_part(version))
}

/// A signed delta that rebuilds a release's target: its target name, base, length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaInfo {
    /// The delta's own target name.
    pub name: String,
    /// The full target it starts from.
    pub base: String,
    /// Its length in bytes.
    pub length: u64,
}

/// What the newest signed targets metadata says about a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    /// The targets version.
    pub version: i64,
    /// The target's entry, pretty-printed JSON.
    pub entry: String,
    /// The signed deltas whose `custom.delta.target` is this target.
    pub deltas: Vec<DeltaInfo>,
}

/// The entry of `target` in the newest signed targets metadata and the deltas that rebuild
/// it; `None` when the target is not (or no longer) in it.
pub fn signed_entry(conn: &Connection, target: &str) -> rusqlite::Result<Option<SignedEntry>> {
    let row: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT version, content FROM metadata_versions WHERE role = 'targets'
             ORDER BY version DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((version, content)) = row else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_slice(&content).unwrap_or_default();
    let targets = &v["signed"]["targets"];
    let entry = &targets[target];
    if entry.is_null() {
        return Ok(None);
    }
    let mut deltas: Vec<DeltaInfo> = targets
        .as_object()
        .map(|all| {
            all.iter()
                .filter(|(_, t)| t["custom"]["delta"]["target"] == target)
                .map(|(name, t)| DeltaInfo {
                    name: name.clone(),
                    base: t["custom"]["delta"]["base"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    length: t["length"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    deltas.sort_by(|a, b| a.base.cmp(&b.base));
    Ok(serde_json::to_string_pretty(entry)
        .ok()
        .map(|text| SignedEntry {
            version,
            entry: text,
            deltas,
        }))
}

/// One point of the chart: time, signed percent, successes and failures reported so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Unix seconds.
    pub at: i64,
    /// The signed percent from then on.
    pub percent: u8,
    /// Devices that reported a success by then.
    pub success: u64,
    /// Devices that reported a failure or a rollback by then.
    pub failures: u64,
}

/// The history of a release's rollout: the signed percent after each audited change
/// (publish and rollout entries of `release:NAME/VERSION`), and each device's reported
/// outcome, merged into cumulative points in time order. Reads the audit log and the
/// outcome table directly, read-only.
pub fn history(conn: &Connection, name: &str, version: &str) -> rusqlite::Result<Vec<Point>> {
    let subject = format!("release:{name}/{version}");
    let mut changes: Vec<(i64, u8)> = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT at, details FROM audit_log WHERE subject = ?1 ORDER BY seq LIMIT 10000",
        )?;
        let rows = stmt.query_map([&subject], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (at, details) = row?;
            let v: serde_json::Value = serde_json::from_str(&details).unwrap_or_default();
            let signed = v.get("signed").or_else(|| v.get("rollout"));
            if let Some(p) = signed.and_then(|s| s["percent"].as_u64()) {
                changes.push((at, u8::try_from(p.min(100)).unwrap_or(100)));
            }
        }
    }
    let mut outcomes: Vec<(i64, bool)> = Vec::new();
    {
        let mut stmt = conn.prepare(
            "SELECT o.reported_at, o.result FROM update_outcomes o
             JOIN releases r ON r.id = o.release_id
             WHERE r.name = ?1 AND r.version = ?2 ORDER BY o.reported_at LIMIT 100000",
        )?;
        let rows = stmt.query_map([name, version], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (at, result) = row?;
            outcomes.push((at, result == "success"));
        }
    }
    let mut events: Vec<(i64, Option<u8>, Option<bool>)> = changes
        .into_iter()
        .map(|(at, p)| (at, Some(p), None))
        .chain(outcomes.into_iter().map(|(at, ok)| (at, None, Some(ok))))
        .collect();
    events.sort_by_key(|e| e.0);
    let mut points = Vec::with_capacity(events.len());
    let mut cur = Point {
        at: 0,
        percent: 0,
        success: 0,
        failures: 0,
    };
    for (at, p, ok) in events {
        cur.at = at;
        if let Some(p) = p {
            cur.percent = p;
        }
        match ok {
            Some(true) => cur.success += 1,
            Some(false) => cur.failures += 1,
            None => {}
        }
        points.push(cur);
    }
    Ok(points)
}

/// A chart series: label, colour, y of a point.
type Series<'a> = (&'static str, &'static str, Box<dyn Fn(&Point) -> f64 + 'a>);

/// An inline SVG step chart of `points` up to `now`: the signed percent (left axis) and the
/// cumulative successes and failures (right axis, devices). Presentation attributes only,
/// so the CSP needs no inline style.
pub fn chart(points: &[Point], now: i64) -> String {
    let (w, h) = (720.0_f64, 260.0_f64);
    let (left, right, top, bottom) = (48.0, 56.0, 16.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let Some(first) = points.first() else {
        return "<p class=\"muted\">No history yet.</p>".into();
    };
    let t0 = first.at;
    let t1 = now.max(points.last().map_or(t0, |p| p.at)).max(t0 + 60);
    let devices = points
        .iter()
        .map(|p| p.success.max(p.failures))
        .max()
        .unwrap_or(0)
        .max(1);
    let x = |t: i64| left + pw * ((t - t0) as f64) / ((t1 - t0) as f64);
    let y_pct = |p: u8| top + ph * (1.0 - f64::from(p) / 100.0);
    let y_dev = |n: u64| top + ph * (1.0 - (n as f64) / (devices as f64));
    let step = |f: &dyn Fn(&Point) -> f64| {
        let mut s = String::new();
        let mut prev: Option<f64> = None;
        for p in points {
            let (px, py) = (x(p.at), f(p));
            if let Some(v) = prev {
                let _ = write!(s, "{px:.1},{v:.1} ");
            }
            let _ = write!(s, "{px:.1},{py:.1} ");
            prev = Some(py);
        }
        if let Some(v) = prev {
            let _ = write!(s, "{:.1},{v:.1}", x(t1));
        }
        s
    };
    let mut svg = format!(
        "<figure><svg class=\"chart\" id=\"rollout-chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-labelledby=\"chart-title\" xmlns=\"http://www.w3.org/2000/svg\">\
         <title id=\"chart-title\">Signed rollout percent and reported update outcomes over time</title>"
    );
    for pct in [0u8, 25, 50, 75, 100] {
        let yy = y_pct(pct);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#d9dee4\" stroke-width=\"1\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5d6875\">{pct}%</text>",
            left + pw,
            left - 6.0,
            yy + 4.0
        );
    }
    for n in [0, devices / 2, devices] {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#5d6875\">{n}</text>",
            left + pw + 6.0,
            y_dev(n) + 4.0
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{left}\" y=\"{:.1}\" font-size=\"11\" fill=\"#5d6875\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5d6875\">{}</text>",
        h - bottom + 16.0,
        esc(&otter_keys::time::UtcTime::from_unix(t0).to_string()),
        left + pw,
        h - bottom + 16.0,
        esc(&otter_keys::time::UtcTime::from_unix(t1).to_string()),
    );
    let series: [Series; 3] = [
        (
            "signed percent",
            "#0b5cad",
            Box::new(|p: &Point| y_pct(p.percent)),
        ),
        (
            "successes",
            "#1d7a3a",
            Box::new(|p: &Point| y_dev(p.success)),
        ),
        (
            "failures and rollbacks",
            "#b3261e",
            Box::new(|p: &Point| y_dev(p.failures)),
        ),
    ];
    for (i, (label, color, f)) in series.iter().enumerate() {
        let _ = write!(
            svg,
            "<polyline class=\"series\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2.5\"{} points=\"{}\"/>",
            if i == 0 { " stroke-dasharray=\"6 3\"" } else { "" },
            step(f.as_ref())
        );
        let lx = left + 170.0 * (i as f64);
        let _ = write!(
            svg,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"14\" height=\"4\" fill=\"{color}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"#1d232b\">{label}</text>",
            h - 12.0,
            lx + 20.0,
            h - 7.0
        );
    }
    svg.push_str("</svg><figcaption class=\"hint\">Left axis: the percent the signed targets metadata offers; right axis: devices that reported the update's outcome.</figcaption></figure>");
    svg
}

fn controls(r: &RolloutInfo, csrf: &str) -> String {
    let action = format!("{}/rollout", release_href(&r.name, &r.version));
    let form = |name: &str, inner: &str| {
        format!(
            "<form method=\"post\" action=\"{}\" class=\"controls\" id=\"rollout-{name}\">{}\
             <input type=\"hidden\" name=\"action\" value=\"{name}\">{inner}</form>",
            esc(&action),
            html::csrf_field(csrf)
        )
    };
    let mut b = String::from("<section class=\"rollout-controls card\" aria-label=\"Rollout controls\"><h2>Rollout controls</h2>");
    if r.status == Status::Aborted {
        b.push_str(
            "<p class=\"muted\">This rollout was aborted; it cannot be changed.</p></section>",
        );
        return b;
    }
    b.push_str(&form(
        "percent",
        &format!(
            "<label for=\"percent\">Percent</label><input type=\"number\" id=\"percent\" name=\"percent\" \
             min=\"0\" max=\"100\" value=\"{}\" required>\
             <label><input type=\"checkbox\" name=\"force\" value=\"1\"> allow lowering</label>\
             <button type=\"submit\" id=\"set-percent\">Set percent</button>",
            r.percent
        ),
    ));
    if r.status == Status::Active {
        b.push_str(&form(
            "pause",
            "<label for=\"pause-reason\">Reason</label><input id=\"pause-reason\" name=\"reason\" maxlength=\"512\">\
             <button type=\"submit\" id=\"pause\">Pause</button>",
        ));
    } else {
        b.push_str(&form(
            "resume",
            "<button type=\"submit\" id=\"resume\">Resume</button>",
        ));
    }
    b.push_str(&form(
        "abort",
        &format!(
            "<label for=\"abort-reason\">Reason</label><input id=\"abort-reason\" name=\"reason\" maxlength=\"512\">\
             <label for=\"abort-confirm\">Type the version <code>{}</code> to confirm</label>\
             <input id=\"abort-confirm\" name=\"confirm\" required autocomplete=\"off\">\
             <button type=\"submit\" class=\"danger\" id=\"abort\">Abort for good</button>",
            esc(&r.version)
        ),
    ));
    b.push_str("</section>");
    b
}

/// Query of a release's page: what the last change did, for the notice.
#[derive(Debug, Default, Deserialize)]
pub struct DoneQuery {
    /// The control that was used.
    pub done: Option<String>,
}

/// `GET /console/releases/{name}/{version}` (admin, publisher, operator, auditor): the
/// release, its rollout, the chart, and the controls for admin and operator.
pub async fn release(
    auth: ConsoleAuth<ReadRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<DoneQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let (name, version) = path.into_inner();
    let (n, v) = (name.clone(), version.clone());
    let (info, points, entry) = state
        .db
        .call(move |c| {
            let info = rollout::show(c, &n, &v);
            let points = history(c, &n, &v);
            let entry = match &info {
                Ok(i) => signed_entry(c, &i.target),
                Err(_) => Ok(None),
            };
            Ok((info, points, entry))
        })
        .await
        .map_err(|e| ConsoleError::internal("reading the rollout", &e))?;
    let r = info.map_err(rollout_err)?;
    let entry = entry.map_err(|e| ConsoleError::internal("reading the signed targets", &e))?;
    let points = points.map_err(|e| ConsoleError::internal("reading the rollout history", &e))?;
    let releases = state
        .repo
        .list_releases()
        .await
        .map_err(|e| ConsoleError::internal("reading the releases", &e))?;
    let rel = releases
        .iter()
        .find(|x| x.name == name && x.version == version);
    let mut b = String::new();
    if let Some(done) = query.done.as_deref() {
        let said = match done {
            "percent" => Some("The percent was set."),
            "pause" => Some("The rollout was paused: the signed targets now offer it to nobody."),
            "resume" => Some("The rollout was resumed."),
            "abort" => Some("The rollout was aborted."),
            "unchanged" => Some("Nothing changed: the rollout was already so."),
            _ => None,
        };
        if let Some(s) = said {
            let _ = write!(b, "<p class=\"notice\" role=\"status\">{s}</p>");
        }
    }
    let _ = write!(
        b,
        "<dl class=\"facts\"><dt>Target</dt><dd><code>{}</code></dd><dt>Channel</dt><dd>{}</dd>\
         <dt>Hardware</dt><dd>{}</dd><dt>Rollout</dt><dd>{} <span id=\"rollout-percent\">{}%</span>{}</dd>\
         <dt>Signed now</dt><dd><code id=\"rollout-signed\">{}</code></dd>\
         <dt>Last change</dt><dd>{} by {}{}</dd>\
         <dt>Outcomes</dt><dd>{} succeeded, {} failed, {} rolled back <span class=\"muted\">(since {})</span></dd>",
        esc(&r.target),
        esc(&r.channel),
        esc(&r.hardware.join(", ")),
        status_badge(r.status),
        r.percent,
        if r.groups.is_empty() {
            String::new()
        } else {
            format!(" and groups {}", esc(&r.groups.join(", ")))
        },
        esc(&r.signed.to_string()),
        time(r.updated_at),
        esc(&r.updated_by),
        r.reason
            .as_deref()
            .map(|x| format!(": {}", esc(x)))
            .unwrap_or_default(),
        r.outcomes.success,
        r.outcomes.failed,
        r.outcomes.rolled_back,
        time(r.outcomes.since),
    );
    if let Some(rel) = rel {
        let _ = write!(
            b,
            "<dt>Size</dt><dd>{}</dd><dt>SHA-256</dt><dd><code class=\"wrap\">{}</code></dd>\
             <dt>Published</dt><dd>{} (targets version {})</dd>",
            bytes(rel.length),
            esc(&rel.sha256),
            time(rel.published_at),
            rel.targets_version
        );
    }
    if r.yanked {
        b.push_str("<dt>Yanked</dt><dd><span class=\"badge revoked\">yanked</span></dd>");
    }
    b.push_str("</dl>");
    match &entry {
        Some(e) => {
            let _ = write!(
                b,
                "<details><summary>Signed entry in targets version {} (hashes, length, custom fields)</summary>\
                 <pre id=\"signed-entry\"><code>{}</code></pre></details>",
                e.version,
                esc(&e.entry)
            );
            if e.deltas.is_empty() {
                b.push_str("<p class=\"muted\">No signed delta rebuilds this release.</p>");
            } else {
                b.push_str("<h2>Deltas</h2><table id=\"deltas\"><thead><tr><th scope=\"col\">From</th><th scope=\"col\">Delta target</th><th scope=\"col\">Size</th></tr></thead><tbody>");
                for d in &e.deltas {
                    let _ = write!(
                        b,
                        "<tr><td><code>{}</code></td><td><code>{}</code></td><td>{}</td></tr>",
                        esc(&d.base),
                        esc(&d.name),
                        bytes(d.length)
                    );
                }
                b.push_str("</tbody></table>");
            }
        }
        None => b.push_str("<p class=\"muted\">Not in the current signed targets metadata.</p>"),
    }
    b.push_str("<h2>Progress</h2>");
    b.push_str(&chart(&points, unix_now()));
    if auth.may(ManageRollouts::ROLES) && !r.yanked {
        b.push_str(&controls(&r, &auth.session.csrf));
    }
    let title = format!("{} {}", r.name, r.version);
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(html::page(&title, "/releases", Some(&auth.who()), NAV, &b)))
}

fn reason_of(
    form: &std::collections::HashMap<String, String>,
) -> Result<Option<String>, ConsoleError> {
    let r = form.get("reason").map(|s| s.trim()).unwrap_or("");
    if r.chars().count() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(ConsoleError::BadRequest(format!(
            "a reason is at most {MAX_REASON} characters, without control characters"
        )));
    }
    Ok((!r.is_empty()).then(|| r.to_owned()))
}

/// The form's required `reason`: 1 to [`MAX_REASON`] characters, no control characters.
pub(super) fn required_reason_of(
    form: &std::collections::HashMap<String, String>,
) -> Result<String, ConsoleError> {
    let r = form.get("reason").map(|s| s.trim()).unwrap_or("");
    if r.is_empty() || r.chars().count() > MAX_REASON || r.chars().any(char::is_control) {
        return Err(ConsoleError::BadRequest(format!(
            "give a reason of 1 to {MAX_REASON} characters, without control characters"
        )));
    }
    Ok(r.to_owned())
}

/// `POST /console/releases/{name}/{version}/rollout` (admin, operator; CSRF-checked):
/// `action` = `percent` (with `percent`, optional `force`), `pause` (optional `reason`),
/// `resume`, `abort` (optional `reason`, `confirm` = the version), or `groups` (`groups`,
/// comma-separated). Calls [`rollout::change`] as the token's actor, then shows the page.
pub async fn rollout_post(
    auth: ConsoleAuth<ManageRollouts>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let form = auth.checked_form(&body)?;
    let (name, version) = path.into_inner();
    let action = form.get("action").map(String::as_str).unwrap_or("");
    let change = match action {
        "percent" => {
            let percent: u64 = form
                .get("percent")
                .and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| ConsoleError::BadRequest("give a percent from 0 to 100".into()))?;
            Change::SetPercent {
                percent,
                force: form.get("force").is_some_and(|f| f == "1"),
            }
        }
        "groups" => Change::SetGroups(split_groups(form.get("groups").map_or("", String::as_str))),
        "pause" => Change::Pause {
            reason: reason_of(&form)?,
        },
        "resume" => Change::Resume,
        "abort" => {
            if form.get("confirm").map(|c| c.trim()) != Some(version.as_str()) {
                return Err(ConsoleError::BadRequest(format!(
                    "to abort, type the version {version:?} into the confirmation field"
                )));
            }
            Change::Abort {
                reason: reason_of(&form)?,
            }
        }
        other => {
            return Err(ConsoleError::BadRequest(format!(
                "unknown rollout action {:?}",
                other.chars().take(32).collect::<String>()
            )))
        }
    };
    let changed = rollout::change(
        &state.repo,
        &state.db,
        &name,
        &version,
        change,
        &Actor::token(auth.session.token_id),
    )
    .await
    .map_err(rollout_err)?;
    tracing::info!(
        release = %name,
        version = %version,
        action,
        changed = changed.changed,
        by = auth.session.token_id,
        "rollout changed from the console"
    );
    let done = if changed.changed { action } else { "unchanged" };
    Ok(HttpResponse::SeeOther()
        .insert_header((
            header::LOCATION,
            format!("{}?done={done}", release_href(&name, &version)),
        ))
        .finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_steps_through_the_history() {
        let pts = [
            Point {
                at: 1000,
                percent: 10,
                success: 0,
                failures: 0,
            },
            Point {
                at: 1600,
                percent: 10,
                success: 3,
                failures: 1,
            },
            Point {
                at: 2200,
                percent: 0,
                success: 3,
                failures: 1,
            },
        ];
        let svg = chart(&pts, 4000);
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("<title id=\"chart-title\">"));
        assert!(
            !svg.contains("style="),
            "no inline style: the CSP forbids it"
        );
        assert!(chart(&[], 0).contains("No history"));
    }
}
