//! The console's handlers: sign-in and sign-out, fleet, one device, releases, backups. Each
//! names its policy in its signature (`ConsoleAuth<ReadDevices>`), reads through the same
//! core functions as the API, on the blocking pool, and renders escaped HTML.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::auth::{clear_session_cookie, secure_request, ConsoleAuth, ConsoleError};
use super::html::{self, ago, bytes, esc, time, time_or_never, url_part};
use super::session::{
    cookie_value, random_hex, secrets_match, set_cookie, LOGIN_COOKIE, SESSION_COOKIE,
};
use super::{AnyRole, ConsoleState, CSS, NAV};
use std::collections::HashMap;

use crate::backups::verify::{last_verifications, VerificationRecord};
use crate::backups::{list_manifests, ManifestRecord};
use crate::db::unix_now;
use crate::fleet::report::Health;
use crate::fleet::{list_devices, DeviceFilter, DeviceInfo};
use crate::http::auth::Policy;
use crate::http::auth::{ReadBackups, ReadDevices, ReadReleases};
use crate::http::AppState;
use crate::tokens::lookup_token;

/// Most devices listed on one page.
pub const MAX_LISTED: usize = 500;

fn html_ok(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body)
}

fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

fn console_state(req: &HttpRequest) -> Result<web::Data<ConsoleState>, ConsoleError> {
    req.app_data::<web::Data<ConsoleState>>()
        .cloned()
        .ok_or_else(|| ConsoleError::internal("the console", &"no console state registered"))
}

fn page<P: crate::http::auth::Policy>(
    auth: &ConsoleAuth<P>,
    title: &str,
    current: &str,
    body: &str,
) -> HttpResponse {
    html_ok(html::page(title, current, Some(&auth.who()), NAV, body))
}

/// `GET /console/static/console.css`: the embedded stylesheet.
pub async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(CSS)
}

/// Unknown console paths: 404.
pub async fn not_found() -> Result<HttpResponse, ConsoleError> {
    Err(ConsoleError::NotFound(
        "there is no such console page".into(),
    ))
}

/// `GET /console/`: the first section the role may open.
pub async fn home(auth: ConsoleAuth<AnyRole>) -> HttpResponse {
    let to = NAV
        .iter()
        .find(|n| auth.may(n.roles))
        .map_or("/console/login".to_owned(), |n| {
            format!("/console{}", n.path)
        });
    see_other(&to)
}

fn login_page(
    req: &HttpRequest,
    console: &ConsoleState,
    status: actix_web::http::StatusCode,
    message: Option<&str>,
) -> Result<HttpResponse, ConsoleError> {
    let nonce = random_hex().map_err(|e| ConsoleError::internal("making a sign-in form", &e))?;
    let mut body = String::new();
    if let Some(m) = message {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(m));
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/console/login\" class=\"card login\" autocomplete=\"off\">\
         <input type=\"hidden\" name=\"login_csrf\" value=\"{}\">\
         <label for=\"token\">API token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" required autofocus \
          autocomplete=\"off\" spellcheck=\"false\" inputmode=\"text\">\
         <p class=\"hint\">The token is exchanged for a session cookie; it is not kept in \
          the browser. Sessions end after {} minutes without use.</p>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>",
        esc(&nonce),
        console.config.idle_timeout_secs.div_ceil(60)
    );
    let secure = secure_request(req, console);
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, &nonce, secure, Some(3600)),
        ))
        .body(html::page("Sign in", "", None, &[], &body)))
}

/// `GET /console/login`: the sign-in form, with a fresh double-submit nonce in a cookie and
/// in the form.
pub async fn login_form(req: HttpRequest) -> Result<HttpResponse, ConsoleError> {
    let console = console_state(&req)?;
    login_page(&req, &console, actix_web::http::StatusCode::OK, None)
}

/// The sign-in form's fields.
#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    login_csrf: String,
}

/// `POST /console/login`: checks the form's nonce against its cookie, verifies the token as
/// the API does, and starts a session. The token is never logged or echoed.
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    let console = console_state(&req)?;
    let text = std::str::from_utf8(&body).map_err(|_| ConsoleError::Csrf)?;
    let form = web::Query::<LoginForm>::from_query(text)
        .map_err(|_| ConsoleError::BadRequest("the sign-in form is malformed".into()))?
        .into_inner();
    let cookies = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let expected = cookie_value(cookies, LOGIN_COOKIE).unwrap_or("");
    if expected.is_empty() || !secrets_match(&form.login_csrf, expected) {
        tracing::warn!("console sign-in refused: the form's nonce does not match its cookie");
        return Err(ConsoleError::Csrf);
    }
    let token = zeroize::Zeroizing::new(form.token);
    let found = state
        .db
        .call(move |c| Ok(lookup_token(c, token.trim())))
        .await
        .map_err(|e| ConsoleError::internal("reading the token database", &e))?
        .map_err(|e| ConsoleError::internal("reading the token database", &e))?;
    let Some(info) = found.filter(|t| t.revoked_at.is_none()) else {
        tracing::warn!("console sign-in refused: unknown or revoked token");
        return login_page(
            &req,
            &console,
            actix_web::http::StatusCode::UNAUTHORIZED,
            Some("That API token is unknown or revoked. Ask an admin for a new one."),
        );
    };
    let (id, _) = console
        .sessions
        .create(info.id, info.role, &info.label)
        .map_err(|e| ConsoleError::internal("starting a session", &e))?;
    tracing::info!(token_id = info.id, role = %info.role, "console sign-in");
    let secure = secure_request(&req, &console);
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/"))
        .append_header((
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, &id, secure, None),
        ))
        .append_header((
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, "", secure, Some(0)),
        ))
        .finish())
}

/// `POST /console/logout` (CSRF-checked): ends the session and deletes its cookie.
pub async fn logout(
    auth: ConsoleAuth<AnyRole>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ConsoleError> {
    auth.checked_form(&body)?;
    let console = console_state(&req)?;
    console.sessions.remove(auth.session_id());
    tracing::info!(token_id = auth.session.token_id, "console sign-out");
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/console/login"))
        .insert_header((
            header::SET_COOKIE,
            clear_session_cookie(secure_request(&req, &console)),
        ))
        .finish())
}

/// The health a device last reported.
fn health_of(d: &DeviceInfo) -> Health {
    d.last_report.as_ref().map(|r| r.health).unwrap_or_default()
}

fn health_name(h: Health) -> &'static str {
    match h {
        Health::Unknown => "unknown",
        Health::Ok => "ok",
        Health::Degraded => "degraded",
        Health::Failing => "failing",
    }
}

fn health_badge(d: &DeviceInfo) -> String {
    if d.revoked_at.is_some() {
        return "<span class=\"badge revoked\">revoked</span>".into();
    }
    let h = health_name(health_of(d));
    format!("<span class=\"badge health-{h}\">{h}</span>")
}

fn installed_list(d: &DeviceInfo) -> String {
    if d.installed.is_empty() {
        return "<span class=\"muted\">nothing reported</span>".into();
    }
    d.installed
        .iter()
        .map(|(n, v)| format!("<code>{}&nbsp;{}</code>", esc(n), esc(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Query of the fleet page; every member optional.
#[derive(Debug, Default, Deserialize)]
pub struct FleetQuery {
    /// Only this hardware model.
    pub model: Option<String>,
    /// Only this group.
    pub group: Option<String>,
    /// Only devices with this installed version of some component.
    pub version: Option<String>,
    /// Only this health (`ok`, `degraded`, `failing`, `unknown`, `revoked`).
    pub health: Option<String>,
    /// Free text: device id, model, group or component name.
    pub q: Option<String>,
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn select(name: &str, label: &str, options: &BTreeSet<String>, chosen: Option<&str>) -> String {
    let mut s = format!(
        "<label for=\"f-{name}\">{label}</label><select id=\"f-{name}\" name=\"{name}\"><option value=\"\">any</option>"
    );
    for o in options {
        let sel = if Some(o.as_str()) == chosen {
            " selected"
        } else {
            ""
        };
        let _ = write!(s, "<option{sel} value=\"{0}\">{0}</option>", esc(o));
    }
    s.push_str("</select>");
    s
}

fn device_matches(d: &DeviceInfo, q: &FleetQuery) -> bool {
    if nonempty(&q.model).is_some_and(|m| d.hardware_model != m) {
        return false;
    }
    if nonempty(&q.group).is_some_and(|g| d.group.as_deref() != Some(g)) {
        return false;
    }
    if nonempty(&q.version).is_some_and(|v| !d.installed.values().any(|iv| iv == v)) {
        return false;
    }
    if let Some(h) = nonempty(&q.health) {
        let actual = if d.revoked_at.is_some() {
            "revoked"
        } else {
            health_name(health_of(d))
        };
        if actual != h {
            return false;
        }
    }
    if let Some(text) = nonempty(&q.q) {
        let t = text.to_lowercase();
        let hay = [
            d.device_id.as_str(),
            d.hardware_model.as_str(),
            d.group.as_deref().unwrap_or(""),
        ];
        if !hay.iter().any(|h| h.to_lowercase().contains(&t))
            && !d.installed.keys().any(|k| k.to_lowercase().contains(&t))
        {
            return false;
        }
    }
    true
}

/// `GET /console/fleet[?model=&group=&version=&health=&q=]` (admin, operator, auditor):
/// devices with model, group, installed versions, last seen and health; filters and search.
pub async fn fleet(
    auth: ConsoleAuth<ReadDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    let q = web::Query::<FleetQuery>::from_query(req.query_string())
        .map_err(|e| ConsoleError::BadRequest(format!("the filter is malformed: {e}")))?
        .into_inner();
    let all = state
        .db
        .call(|c| Ok(list_devices(c, &DeviceFilter::default())))
        .await
        .map_err(|e| ConsoleError::internal("reading the device list", &e))?
        .map_err(|e| ConsoleError::internal("reading the device list", &e))?;
    let now = unix_now();
    let models: BTreeSet<String> = all.iter().map(|d| d.hardware_model.clone()).collect();
    let groups: BTreeSet<String> = all.iter().filter_map(|d| d.group.clone()).collect();
    let healths: BTreeSet<String> = ["ok", "degraded", "failing", "unknown", "revoked"]
        .into_iter()
        .map(String::from)
        .collect();
    let shown: Vec<&DeviceInfo> = all.iter().filter(|d| device_matches(d, &q)).collect();

    let mut by_health: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &all {
        let h = if d.revoked_at.is_some() {
            "revoked"
        } else {
            health_name(health_of(d))
        };
        *by_health.entry(h).or_default() += 1;
    }
    let mut b = String::new();
    b.push_str("<section class=\"summary\" aria-label=\"Fleet summary\">");
    let _ = write!(
        b,
        "<div class=\"stat\"><span class=\"num\">{}</span> enrolled</div>",
        all.len()
    );
    for (h, n) in &by_health {
        let _ = write!(
            b,
            "<div class=\"stat\"><a href=\"/console/fleet?health={h}\"><span class=\"num\">{n}</span> <span class=\"badge health-{h}\">{h}</span></a></div>"
        );
    }
    b.push_str("</section>");
    let mut by_model: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_version: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for d in &all {
        *by_model.entry(d.hardware_model.as_str()).or_default() += 1;
        for (c, v) in &d.installed {
            *by_version.entry((c.as_str(), v.as_str())).or_default() += 1;
        }
    }
    if !all.is_empty() {
        b.push_str(
            "<section class=\"summary\" aria-label=\"Devices by model and installed version\">",
        );
        for (m, n) in &by_model {
            let _ = write!(
                b,
                "<div class=\"stat\"><a href=\"/console/fleet?model={}\"><span class=\"num\">{n}</span> {}</a></div>",
                url_part(m),
                esc(m)
            );
        }
        for ((c, v), n) in by_version.iter().take(24) {
            let _ = write!(
                b,
                "<div class=\"stat\"><a href=\"/console/fleet?version={}\"><span class=\"num\">{n}</span> <code>{}&nbsp;{}</code></a></div>",
                url_part(v),
                esc(c),
                esc(v)
            );
        }
        b.push_str("</section>");
    }

    b.push_str("<form method=\"get\" action=\"/console/fleet\" class=\"filters\" role=\"search\">");
    b.push_str(&select("model", "Model", &models, nonempty(&q.model)));
    b.push_str(&select("group", "Group", &groups, nonempty(&q.group)));
    b.push_str(&select("health", "Health", &healths, nonempty(&q.health)));
    let _ = write!(
        b,
        "<label for=\"f-version\">Version</label><input id=\"f-version\" name=\"version\" value=\"{}\" size=\"10\">\
         <label for=\"f-q\">Search</label><input id=\"f-q\" type=\"search\" name=\"q\" value=\"{}\" placeholder=\"device, model, group, component\">\
         <button type=\"submit\">Filter</button> <a href=\"/console/fleet\">Clear</a></form>",
        esc(nonempty(&q.version).unwrap_or("")),
        esc(nonempty(&q.q).unwrap_or(""))
    );

    let _ = write!(
        b,
        "<p class=\"count\">{} of {} devices match.</p>",
        shown.len(),
        all.len()
    );
    if shown.is_empty() {
        b.push_str("<p class=\"empty\">No device matches. Enroll terminals with <code>otter-server enroll-token create</code> and <code>otter-agent enroll</code>.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table id=\"devices\"><thead><tr><th scope=\"col\">Device</th><th scope=\"col\">Model</th>\
             <th scope=\"col\">Group</th><th scope=\"col\">Installed</th><th scope=\"col\">Last seen</th>\
             <th scope=\"col\">Health</th><th scope=\"col\">Security events</th></tr></thead><tbody>",
        );
        for d in shown.iter().take(MAX_LISTED) {
            let events = d
                .last_report
                .as_ref()
                .map_or(0, |r| r.security_events.len());
            let seen = d.last_seen.map_or_else(
                || "<span class=\"muted\">never</span>".to_owned(),
                |t| format!("{} <span class=\"muted\">({})</span>", time(t), ago(t, now)),
            );
            let _ = write!(
                b,
                "<tr><td><a href=\"/console/devices/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{seen}</td><td>{}</td><td>{}</td></tr>",
                url_part(&d.device_id),
                esc(&d.device_id),
                esc(&d.hardware_model),
                d.group.as_deref().map_or_else(|| "<span class=\"muted\">none</span>".into(), esc),
                installed_list(d),
                health_badge(d),
                if events > 0 {
                    format!("<span class=\"badge alert\">{events}</span>")
                } else {
                    "0".into()
                }
            );
        }
        b.push_str("</tbody></table></div>");
        if shown.len() > MAX_LISTED {
            let _ = write!(
                b,
                "<p class=\"hint\">Showing the first {MAX_LISTED}; narrow the filter to see the others.</p>"
            );
        }
    }
    Ok(page(&auth, "Fleet", "/fleet", &b))
}

/// The last full verification of each backup, by (device, sequence).
pub type Verifications = HashMap<(String, u64), VerificationRecord>;

/// Reads the last verifications (`device`'s only when given) and the pruned sequences per
/// device: what the backups pages show beside the catalog.
fn backup_checks(
    conn: &rusqlite::Connection,
    device: Option<&str>,
) -> Result<(Verifications, HashMap<String, Vec<u64>>), ConsoleError> {
    let verifs = last_verifications(conn, device)
        .map_err(|e| ConsoleError::internal("reading the backup verifications", &e))?
        .into_iter()
        .map(|v| ((v.device_id.clone(), v.sequence), v))
        .collect();
    let mut pruned: HashMap<String, Vec<u64>> = HashMap::new();
    let rows = conn
        .prepare(
            "SELECT device_id, sequence FROM backup_pruned_manifests
             WHERE ?1 IS NULL OR device_id = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_map([device], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| ConsoleError::internal("reading the pruned backups", &e))?;
    for (d, s) in rows {
        pruned
            .entry(d)
            .or_default()
            .push(u64::try_from(s).unwrap_or(0));
    }
    Ok((verifs, pruned))
}

fn verification_cell(v: Option<&VerificationRecord>) -> String {
    match v {
        None => "<span class=\"muted\">not yet</span>".into(),
        Some(v) if v.ok => format!("<span class=\"badge health-ok\">ok</span> {}", time(v.verified_at)),
        Some(v) => format!(
            "<span class=\"badge health-failing\">{} problems</span> {} <span class=\"muted\">{}</span>",
            v.problems.len(),
            time(v.verified_at),
            esc(&v.problems.first().cloned().unwrap_or_default())
        ),
    }
}

fn backups_table(records: &[ManifestRecord], with_device: bool, verifs: &Verifications) -> String {
    let mut b = String::from("<div class=\"scroll\"><table class=\"backups\"><thead><tr>");
    if with_device {
        b.push_str("<th scope=\"col\">Device</th>");
    }
    b.push_str(
        "<th scope=\"col\">#</th><th scope=\"col\">Taken</th><th scope=\"col\">Received and checked</th>\
         <th scope=\"col\">Packs</th><th scope=\"col\">Size</th><th scope=\"col\">New</th>\
         <th scope=\"col\">Header hash</th><th scope=\"col\">Last full verification</th></tr></thead><tbody>",
    );
    for r in records.iter().rev() {
        b.push_str("<tr>");
        if with_device {
            let _ = write!(
                b,
                "<td><a href=\"/console/devices/{}\">{}</a></td>",
                url_part(&r.device_id),
                esc(&r.device_id)
            );
        }
        let _ = write!(
            b,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code title=\"{}\">{}…</code></td><td>{}</td></tr>",
            r.sequence,
            time(r.created),
            time(r.received_at),
            r.pack_count,
            bytes(r.total_pack_bytes),
            bytes(r.new_pack_bytes),
            esc(&r.header_hash),
            esc(&r.header_hash.chars().take(16).collect::<String>()),
            verification_cell(verifs.get(&(r.device_id.clone(), r.sequence)))
        );
    }
    b.push_str("</tbody></table></div>");
    b
}

/// Whether a device's backups, kept (`records`) and pruned by retention (`pruned`), hold
/// every sequence number from 1 to the newest (the server checked each link, signature and
/// pack on receipt; pruned ones stay in the chain through their successors' signed links).
pub fn chain_complete(records: &[ManifestRecord], pruned: &[u64]) -> bool {
    let mut seqs: Vec<u64> = records
        .iter()
        .map(|r| r.sequence)
        .chain(pruned.iter().copied())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.iter()
        .enumerate()
        .all(|(i, s)| u64::try_from(i + 1).is_ok_and(|n| n == *s))
}

/// `GET /console/devices/{device}` (admin, operator, auditor): one device: identity,
/// installed versions, last update, health, security events, backups.
pub async fn device(
    auth: ConsoleAuth<ReadDevices>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ConsoleError> {
    let id = path.into_inner();
    let wanted = id.clone();
    let (found, backups, checks, requests) = state
        .db
        .call(move |c| {
            let devices = list_devices(c, &DeviceFilter::default());
            let backups = list_manifests(c, Some(&wanted));
            let checks = backup_checks(c, Some(&wanted));
            let requests = crate::backups::requests::list(c, &wanted, false);
            Ok((devices, backups, checks, requests))
        })
        .await
        .map_err(|e| ConsoleError::internal("reading the device", &e))?;
    let (verifs, pruned) = checks?;
    let requests =
        requests.map_err(|e| ConsoleError::internal("reading the restore requests", &e))?;
    let devices = found.map_err(|e| ConsoleError::internal("reading the device", &e))?;
    let backups = backups.map_err(|e| ConsoleError::internal("reading the backups", &e))?;
    let Some(d) = devices.into_iter().find(|d| d.device_id == id) else {
        return Err(ConsoleError::NotFound(format!(
            "no device {:?} is enrolled",
            id.chars().take(64).collect::<String>()
        )));
    };
    let now = unix_now();
    let mut b = String::new();
    let _ = write!(
        b,
        "<dl class=\"facts\"><dt>Device id</dt><dd><code id=\"device-id\">{}</code></dd>\
         <dt>Model</dt><dd>{}</dd><dt>Group</dt><dd>{}</dd><dt>Health</dt><dd>{}</dd>\
         <dt>Enrolled</dt><dd>{}</dd><dt>Last seen</dt><dd>{}{}</dd>\
         <dt>Last report</dt><dd>{}</dd><dt>Agent</dt><dd>{}</dd>\
         <dt>Identity key</dt><dd><code class=\"wrap\">{}</code></dd>\
         <dt>Backup recipient</dt><dd><code class=\"wrap\">{}</code></dd>",
        esc(&d.device_id),
        esc(&d.hardware_model),
        d.group
            .as_deref()
            .map_or_else(|| "<span class=\"muted\">none</span>".into(), esc),
        health_badge(&d),
        time(d.enrolled_at),
        time_or_never(d.last_seen),
        d.last_seen
            .map(|t| format!(" <span class=\"muted\">({})</span>", ago(t, now)))
            .unwrap_or_default(),
        time_or_never(d.last_report_at),
        d.last_report
            .as_ref()
            .and_then(|r| r.agent_version.as_deref())
            .map_or_else(|| "<span class=\"muted\">unknown</span>".into(), esc),
        esc(&d.public_key),
        d.backup_recipient.as_deref().map_or_else(
            || "<span class=\"muted\">none: write-only backups</span>".into(),
            esc
        ),
    );
    if let Some(t) = d.revoked_at {
        let _ = write!(b, "<dt>Revoked</dt><dd>{}</dd>", time(t));
    }
    b.push_str("</dl>");

    b.push_str("<h2>Installed</h2>");
    if d.installed.is_empty() {
        b.push_str("<p class=\"muted\">Nothing reported yet.</p>");
    } else {
        b.push_str("<table><thead><tr><th scope=\"col\">Component</th><th scope=\"col\">Version</th></tr></thead><tbody>");
        for (n, v) in &d.installed {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", esc(n), esc(v));
        }
        b.push_str("</tbody></table>");
    }

    b.push_str("<h2>Last update</h2>");
    match d.last_report.as_ref().and_then(|r| r.last_update.as_ref()) {
        None => b.push_str("<p class=\"muted\">No update attempt reported.</p>"),
        Some(u) => {
            let result = serde_json::to_value(u.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let _ = write!(
                b,
                "<p><code>{}</code>: <span class=\"badge result-{}\">{}</span> {} {}</p>",
                esc(&u.target),
                esc(&result),
                esc(&result),
                u.at.map(time).unwrap_or_default(),
                u.message.as_deref().map(esc).unwrap_or_default()
            );
        }
    }

    b.push_str("<h2>Security events</h2>");
    let events = d
        .last_report
        .as_ref()
        .map(|r| r.security_events.as_slice())
        .unwrap_or(&[]);
    if events.is_empty() {
        b.push_str("<p class=\"muted\">None in the last report.</p>");
    } else {
        b.push_str("<table id=\"security-events\"><thead><tr><th scope=\"col\">When</th><th scope=\"col\">Kind</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
        for e in events {
            let _ = write!(
                b,
                "<tr class=\"alert\"><td>{}</td><td><span class=\"badge alert\">{}</span></td><td>{}</td></tr>",
                time(e.at),
                esc(&e.kind),
                esc(&e.detail)
            );
        }
        b.push_str("</tbody></table>");
    }

    let _ = write!(
        b,
        "<h2>Backups</h2><p><a href=\"/console/backups?device={}\">Backups page of this device</a> (restore requests)</p>",
        url_part(&d.device_id)
    );
    if backups.is_empty() {
        b.push_str("<p class=\"muted\">No backup received.</p>");
    } else {
        let _ = write!(
            b,
            "<p>Chain: {} · {} backups</p>",
            if chain_complete(
                &backups,
                pruned.get(&d.device_id).map_or(&[], Vec::as_slice)
            ) {
                "<span class=\"badge health-ok\">unbroken</span>"
            } else {
                "<span class=\"badge health-failing\">gap</span>"
            },
            backups.len()
        );
        b.push_str(&backups_table(&backups, false, &verifs));
    }
    b.push_str("<h2>Restore requests and repairs</h2>");
    if auth.may(super::RequestRestore::ROLES) && d.revoked_at.is_none() && !backups.is_empty() {
        let _ = write!(
            b,
            "<p>Database damaged? {} restores the newest backup that verifies, and shows first what it will lose.</p>",
            super::restores::repair_button(&d.device_id)
        );
    }
    b.push_str(&super::restores::requests_table(&requests));
    Ok(page(
        &auth,
        &format!("Device {}", d.device_id),
        "/fleet",
        &b,
    ))
}

/// `GET /console/releases` (admin, publisher, operator, auditor): every release, newest
/// first, with its target, hashes and targets version.
pub async fn releases(
    auth: ConsoleAuth<ReadReleases>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ConsoleError> {
    let releases = state
        .repo
        .list_releases()
        .await
        .map_err(|e| ConsoleError::internal("reading the releases", &e))?;
    let rollouts = state
        .db
        .call(|c| Ok(crate::rollout::list(c, true)))
        .await
        .map_err(|e| ConsoleError::internal("reading the rollouts", &e))?
        .map_err(|e| ConsoleError::internal("reading the rollouts", &e))?;
    let rollout_of = |name: &str, version: &str| {
        rollouts
            .iter()
            .find(|r| r.name == name && r.version == version)
    };
    let mut b = String::new();
    if releases.is_empty() {
        b.push_str("<p class=\"empty\">No release published yet: <code>otter-server publish BUNDLE</code>.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table id=\"releases\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Version</th>\
             <th scope=\"col\">Kind</th><th scope=\"col\">Channel</th><th scope=\"col\">Hardware</th>\
             <th scope=\"col\">Size</th><th scope=\"col\">SHA-256</th><th scope=\"col\">Published</th>\
             <th scope=\"col\">Targets v.</th><th scope=\"col\">State</th><th scope=\"col\">Rollout</th></tr></thead><tbody>",
        );
        for r in &releases {
            let _ = write!(
                b,
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td><code title=\"{}\">{}…</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                super::rollouts::release_href(&r.name, &r.version),
                esc(&r.name),
                esc(&r.version),
                esc(&r.kind),
                esc(&r.channel),
                esc(&r.hardware.join(", ")),
                bytes(r.length),
                esc(&r.sha256),
                esc(&r.sha256.chars().take(16).collect::<String>()),
                time(r.published_at),
                r.targets_version,
                r.yanked_at.map_or_else(
                    || "<span class=\"badge health-ok\">published</span>".to_owned(),
                    |t| format!("<span class=\"badge revoked\">yanked</span> {}", time(t))
                ),
                rollout_of(&r.name, &r.version).map_or_else(
                    || "<span class=\"muted\">none</span>".to_owned(),
                    |ro| format!(
                        "{} {}%{}",
                        super::rollouts::status_badge(ro.status),
                        ro.percent,
                        if ro.groups.is_empty() {
                            String::new()
                        } else {
                            format!(" + {}", esc(&ro.groups.join(", ")))
                        }
                    )
                ),
            );
        }
        b.push_str("</tbody></table></div>");
    }
    Ok(page(&auth, "Releases", "/releases", &b))
}

/// Query of the backups page.
#[derive(Debug, Default, Deserialize)]
pub struct BackupsQuery {
    /// Only this device.
    pub device: Option<String>,
    /// A restore of this backup was just requested.
    pub requested: Option<u64>,
    /// This repair request was just ordered.
    pub repair: Option<i64>,
}

/// `GET /console/backups[?device=D]` (admin, operator, auditor, restorer): per device, the
/// chain status, count, sizes and the last server-side check; one device's backups.
pub async fn backups(
    auth: ConsoleAuth<ReadBackups>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ConsoleError> {
    let q = web::Query::<BackupsQuery>::from_query(req.query_string())
        .map_err(|e| ConsoleError::BadRequest(format!("the filter is malformed: {e}")))?
        .into_inner();
    let device = nonempty(&q.device).map(str::to_owned);
    let d = device.clone();
    let (records, requests, checks) = state
        .db
        .call(move |c| {
            let records = list_manifests(c, d.as_deref());
            let requests = match d.as_deref() {
                Some(dev) => crate::backups::requests::list(c, dev, false),
                None => Ok(Vec::new()),
            };
            let checks = backup_checks(c, d.as_deref());
            Ok((records, requests, checks))
        })
        .await
        .map_err(|e| ConsoleError::internal("reading the backup catalog", &e))?;
    let records = records.map_err(|e| ConsoleError::internal("reading the backup catalog", &e))?;
    let requests =
        requests.map_err(|e| ConsoleError::internal("reading the restore requests", &e))?;
    let (verifs, pruned) = checks?;
    let mut per_device: BTreeMap<&str, Vec<ManifestRecord>> = BTreeMap::new();
    for r in &records {
        per_device
            .entry(r.device_id.as_str())
            .or_default()
            .push(r.clone());
    }
    let mut b = String::new();
    if per_device.is_empty() {
        b.push_str("<p class=\"empty\">No backup received yet.</p>");
    } else {
        b.push_str(
            "<div class=\"scroll\"><table id=\"backup-devices\"><thead><tr><th scope=\"col\">Device</th><th scope=\"col\">Backups</th>\
             <th scope=\"col\">Chain</th><th scope=\"col\">Latest size</th><th scope=\"col\">Stored (new bytes, all)</th>\
             <th scope=\"col\">Latest received</th><th scope=\"col\">Last full verification</th></tr></thead><tbody>",
        );
        for (dev, rs) in &per_device {
            let stored: u64 = rs.iter().map(|r| r.new_pack_bytes).sum();
            let latest = rs.last();
            let _ = write!(
                b,
                "<tr><td><a href=\"/console/backups?device={}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                url_part(dev),
                esc(dev),
                rs.len(),
                if chain_complete(rs, pruned.get(*dev).map_or(&[], Vec::as_slice)) {
                    "<span class=\"badge health-ok\">unbroken</span>"
                } else {
                    "<span class=\"badge health-failing\">gap</span>"
                },
                latest.map(|r| bytes(r.total_pack_bytes)).unwrap_or_default(),
                bytes(stored),
                latest.map(|r| time(r.received_at)).unwrap_or_default(),
                {
                    let mine: Vec<&VerificationRecord> = verifs
                        .values()
                        .filter(|v| v.device_id == *dev)
                        .collect();
                    let newest = mine.iter().map(|v| v.verified_at).max();
                    match newest {
                        None => "<span class=\"muted\">not yet</span>".to_owned(),
                        Some(t) => {
                            let bad = mine.iter().filter(|v| !v.ok).count();
                            if bad == 0 {
                                format!("<span class=\"badge health-ok\">ok</span> {}", time(t))
                            } else {
                                format!("<span class=\"badge health-failing\">{bad} failed</span> {}", time(t))
                            }
                        }
                    }
                },
            );
        }
        b.push_str("</tbody></table></div>");
    }
    if let Some(dev) = &device {
        if let Some(n) = q.requested {
            let _ = write!(
                b,
                "<p class=\"notice\" role=\"status\">A restore of backup #{n} was requested and recorded in the audit log.</p>"
            );
        }
        if let Some(id) = q.repair {
            let _ = write!(
                b,
                "<p class=\"notice\" role=\"status\" id=\"repair-ordered\">Repair request #{id} was ordered and recorded in the audit log: the terminal restores the newest backup that verifies and reports the rows lost.</p>"
            );
        }
        let _ = write!(b, "<h2>Backups of <code>{}</code></h2>", esc(dev));
        b.push_str(&backups_table(&records, false, &verifs));
        b.push_str("<h2>Restore requests</h2>");
        b.push_str(&super::restores::requests_table(&requests));
        if let Some(latest) = records.last() {
            if auth.may(super::RequestRestore::ROLES) {
                let _ = write!(
                    b,
                    "<p>Database damaged? {} restores the newest backup that verifies, and shows first what it will lose.</p>",
                    super::restores::repair_button(dev)
                );
                b.push_str(&super::audit::restore_form(
                    dev,
                    latest.sequence,
                    &auth.session.csrf,
                ));
            }
        }
    }
    Ok(page(&auth, "Backups", "/backups", &b))
}
