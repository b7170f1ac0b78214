//! The web console under `/console`: server-rendered HTML pages over the same data and the
//! same role policies as the API ([`crate::http::auth`]), for people who would rather look
//! than read JSON. No separate front-end server and no JavaScript: the stylesheet is embedded
//! in the binary, charts are inline SVG drawn here.
//!
//! - [`session`]: sign-in exchanges an API token (posted in a form, never in a URL) for a
//!   random session id in an HttpOnly, SameSite=Strict cookie; sessions live in a bounded
//!   in-memory map with idle and absolute expiry and do not survive a restart.
//! - [`auth`]: the [`auth::ConsoleAuth`] extractor (session, token still valid, role admitted
//!   by the route's [`crate::http::auth::Policy`]) and the CSRF check every POST passes first.
//! - [`html`]: escaping and the page frame.
//! - [`audit`]: the audit log with its chain status, security events, restore requests.
//! - [`pages`]: the handlers.
//! - [`rollouts`]: a release's page, its rollout chart and controls.
//! - [`restores`]: restore requests with their status and the terminals' reports, and
//!   admin-ordered repairs.
//!
//! Every console response carries a strict Content-Security-Policy (no inline script or
//! style, no framing) and `Cache-Control: no-store` (pages hold fleet data).

pub mod audit;
pub mod auth;
pub mod html;
pub mod pages;
pub mod restores;
pub mod rollouts;
pub mod session;

use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{self, Next};
use actix_web::web;
use serde::{Deserialize, Serialize};

use crate::http::audit_api::ReadAudit;
use crate::http::auth::{Policy, ReadBackups, ReadDevices, ReadReleases};
use crate::http::rollouts_api::{ManageRollouts, ReadRollouts};
use crate::http::Access;
use crate::tokens::TokenRole;

/// The `[console]` configuration table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// A session unused for this many seconds ends (default 30 minutes).
    pub idle_timeout_secs: u64,
    /// A session ends this many seconds after sign-in, used or not (default 12 hours).
    pub absolute_timeout_secs: u64,
    /// Most sessions held at once; the least recently used is dropped to make room.
    pub max_sessions: usize,
    /// Always mark the session cookie `Secure`, e.g. behind a TLS-terminating proxy that does
    /// not send `X-Forwarded-Proto: https`. Requests that arrive over TLS, or say so through
    /// `Forwarded`/`X-Forwarded-Proto`, get `Secure` anyway.
    pub secure_cookies: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            idle_timeout_secs: 30 * 60,
            absolute_timeout_secs: 12 * 3600,
            max_sessions: 10_000,
            secure_cookies: false,
        }
    }
}

impl ConsoleConfig {
    /// Checks the values: timeouts of at least one second, idle at most absolute, at least
    /// one session.
    pub fn validate(&self) -> Result<(), String> {
        if self.idle_timeout_secs == 0
            || self.absolute_timeout_secs == 0
            || self.idle_timeout_secs > self.absolute_timeout_secs
            || self.absolute_timeout_secs > 366 * 86_400
        {
            return Err(format!(
                "console.idle_timeout_secs = {} and console.absolute_timeout_secs = {}: both \
                 must be at least 1, idle at most absolute, absolute at most a year",
                self.idle_timeout_secs, self.absolute_timeout_secs
            ));
        }
        if self.max_sessions == 0 {
            return Err("console.max_sessions = 0: give at least 1".into());
        }
        Ok(())
    }
}

/// What the console handlers share: the configuration and the sessions.
pub struct ConsoleState {
    /// The configuration.
    pub config: ConsoleConfig,
    /// The signed-in sessions.
    pub sessions: session::SessionStore,
}

impl ConsoleState {
    /// A state with no sessions.
    pub fn new(config: ConsoleConfig) -> ConsoleState {
        let limits = session::Limits {
            idle: Duration::from_secs(config.idle_timeout_secs),
            absolute: Duration::from_secs(config.absolute_timeout_secs),
            max_sessions: config.max_sessions,
        };
        ConsoleState {
            config,
            sessions: session::SessionStore::new(limits),
        }
    }
}

/// Who may use the restore request form: admin and restorer.
pub struct RequestRestore;
impl Policy for RequestRestore {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Restorer];
    const WHAT: &'static str = "requesting a restore";
}

/// Acknowledging alerts ([`crate::alerts`]): admin, operator.
pub struct AckAlerts;
impl Policy for AckAlerts {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Operator];
    const WHAT: &'static str = "acknowledging alerts";
}

/// Any signed-in role (sign-out, the home redirect).
pub struct AnyRole;
impl Policy for AnyRole {
    const ROLES: &'static [TokenRole] = &TokenRole::ALL;
    const WHAT: &'static str = "the console";
}

/// Every console route that needs a session, with who is admitted: the authorization matrix
/// walks it beside [`crate::http::API_ROUTES`]. The sign-in page, its form and the stylesheet
/// are public and not listed.
pub const CONSOLE_ROUTES: &[(&str, &str, Access)] = &[
    ("GET", "/console/", Access::Roles(AnyRole::ROLES)),
    ("POST", "/console/logout", Access::Roles(AnyRole::ROLES)),
    ("GET", "/console/fleet", Access::Roles(ReadDevices::ROLES)),
    (
        "GET",
        "/console/devices/{device}",
        Access::Roles(ReadDevices::ROLES),
    ),
    (
        "GET",
        "/console/devices/{device}/repair",
        Access::Roles(RequestRestore::ROLES),
    ),
    (
        "POST",
        "/console/devices/{device}/repair",
        Access::Roles(RequestRestore::ROLES),
    ),
    (
        "GET",
        "/console/releases",
        Access::Roles(ReadReleases::ROLES),
    ),
    (
        "GET",
        "/console/releases/{name}/{version}",
        Access::Roles(ReadRollouts::ROLES),
    ),
    (
        "POST",
        "/console/releases/{name}/{version}/rollout",
        Access::Roles(ManageRollouts::ROLES),
    ),
    ("GET", "/console/backups", Access::Roles(ReadBackups::ROLES)),
    (
        "POST",
        "/console/backups/{device}/restore",
        Access::Roles(RequestRestore::ROLES),
    ),
    (
        "GET",
        "/console/security",
        Access::Roles(ReadDevices::ROLES),
    ),
    (
        "POST",
        "/console/alerts/{id}/ack",
        Access::Roles(AckAlerts::ROLES),
    ),
    ("GET", "/console/audit", Access::Roles(ReadAudit::ROLES)),
];

/// The public console routes: sign-in page and form, stylesheet.
pub const CONSOLE_PUBLIC_ROUTES: &[(&str, &str)] = &[
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/console/static/console.css"),
];

/// The sections in the navigation, with the roles that see them (the same as the routes').
pub const NAV: &[html::Nav] = &[
    html::Nav {
        path: "/fleet",
        label: "Fleet",
        roles: ReadDevices::ROLES,
    },
    html::Nav {
        path: "/releases",
        label: "Releases",
        roles: ReadReleases::ROLES,
    },
    html::Nav {
        path: "/backups",
        label: "Backups",
        roles: ReadBackups::ROLES,
    },
    html::Nav {
        path: "/security",
        label: "Security",
        roles: ReadDevices::ROLES,
    },
    html::Nav {
        path: "/audit",
        label: "Audit log",
        roles: ReadAudit::ROLES,
    },
];

/// The stylesheet, embedded.
pub const CSS: &str = include_str!("assets/console.css");

/// The Content-Security-Policy of every console response: nothing but this origin's
/// stylesheet and images, no script at all, forms only to this origin, no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers to every console response (errors included).
pub async fn security_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(res)
}

/// Mounts the console under `/console`. The [`ConsoleState`] must be registered as app data
/// (`web::Data<ConsoleState>`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/console")
            .wrap(middleware::from_fn(security_headers))
            .app_data(web::PayloadConfig::default().limit(16 * 1024))
            .route("", web::get().to(pages::home))
            .route("/", web::get().to(pages::home))
            .route("/login", web::get().to(pages::login_form))
            .route("/login", web::post().to(pages::login))
            .route("/logout", web::post().to(pages::logout))
            .route("/static/console.css", web::get().to(pages::css))
            .route("/fleet", web::get().to(pages::fleet))
            .route("/devices/{device}", web::get().to(pages::device))
            .route(
                "/devices/{device}/repair",
                web::get().to(restores::repair_confirm),
            )
            .route(
                "/devices/{device}/repair",
                web::post().to(restores::repair_post),
            )
            .route("/releases", web::get().to(pages::releases))
            .route(
                "/releases/{name}/{version}",
                web::get().to(rollouts::release),
            )
            .route(
                "/releases/{name}/{version}/rollout",
                web::post().to(rollouts::rollout_post),
            )
            .route("/backups", web::get().to(pages::backups))
            .route(
                "/backups/{device}/restore",
                web::post().to(audit::request_restore),
            )
            .route("/security", web::get().to(audit::security))
            .route("/alerts/{id}/ack", web::post().to(audit::acknowledge_alert))
            .route("/audit", web::get().to(audit::audit_log))
            .default_service(web::to(pages::not_found)),
    );
}
