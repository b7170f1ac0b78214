//! Who is signed in to the console and what they may do: the [`ConsoleAuth`] extractor and
//! the CSRF check of posted forms. The extractor finds the session from its cookie, checks
//! that the API token behind it is still valid with the same role (so a revocation ends its
//! console sessions at once, as it does for the API), then applies the route's
//! [`Policy`], the very one the API uses.
//!
//! Answers: no or expired session, a redirect to the sign-in page (GET) or 401 (POST); a role
//! the policy does not admit, 403; a POST without the session's CSRF token, 403 before
//! anything changes.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use rusqlite::OptionalExtension;

use super::html::{self, esc};
use super::session::{cookie_value, secrets_match, set_cookie, Session, SESSION_COOKIE};
use super::ConsoleState;
use crate::http::auth::{Policy, ReadDevices};
use crate::http::AppState;
use crate::tokens::TokenRole;

/// Why a console request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No valid session on a page: go and sign in.
    #[error("sign in first")]
    SignInRedirect,
    /// No valid session on a form post.
    #[error("your console session ended or never began: sign in again")]
    SignIn,
    /// The role may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The form did not carry the session's CSRF token.
    #[error("the form is stale or was not sent by this console (CSRF check failed): reload the page and try again")]
    Csrf,
    /// Bad input.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// Not possible in the current state.
    #[error("{0}")]
    Conflict(String),
    /// Something behind the console failed; the detail is in the log.
    #[error("{0} failed; the server log has the details")]
    Internal(String),
}

impl ConsoleError {
    /// Logs `detail` and returns an error that names only `what`.
    pub fn internal(what: &str, detail: &dyn std::fmt::Display) -> ConsoleError {
        tracing::error!(error = %detail, "console: {what}");
        ConsoleError::Internal(what.to_owned())
    }
}

impl ResponseError for ConsoleError {
    fn status_code(&self) -> StatusCode {
        match self {
            ConsoleError::SignInRedirect => StatusCode::SEE_OTHER,
            ConsoleError::SignIn => StatusCode::UNAUTHORIZED,
            ConsoleError::Forbidden(_) | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ConsoleError::NotFound(_) => StatusCode::NOT_FOUND,
            ConsoleError::Conflict(_) => StatusCode::CONFLICT,
            ConsoleError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let ConsoleError::SignInRedirect = self {
            return HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/console/login"))
                .finish();
        }
        let mut body = format!(
            "<p class=\"error\" role=\"alert\">{}</p>",
            esc(&self.to_string())
        );
        if matches!(self, ConsoleError::SignIn) {
            body.push_str("<p><a href=\"/console/login\">Sign in</a></p>");
        } else {
            body.push_str("<p><a href=\"/console/\">Back to the console</a></p>");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(html::page(title, "", None, &[], &body))
    }
}

/// A signed-in person whose role `P` admits.
pub struct ConsoleAuth<P: Policy> {
    /// The session (token id, role, label, CSRF token).
    pub session: Session,
    /// The session id, to end it at sign-out.
    session_id: zeroize::Zeroizing<String>,
    /// Open (unacknowledged) alerts, for roles that read devices.
    alerts: u64,
    _policy: PhantomData<P>,
}

impl<P: Policy> ConsoleAuth<P> {
    /// The frame's view of who is signed in.
    pub fn who(&self) -> html::Who<'_> {
        html::Who {
            label: &self.session.label,
            role: self.session.role,
            csrf: &self.session.csrf,
            alerts: self.alerts,
        }
    }

    /// The session id (for sign-out only).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// Whether the signed-in role is one of `roles` (to show or hide controls; the route of
    /// the control checks again).
    pub fn may(&self, roles: &[TokenRole]) -> bool {
        roles.contains(&self.session.role)
    }

    /// Parses a posted urlencoded form after checking its `csrf` field against the session's
    /// token in constant time; a missing or wrong token is [`ConsoleError::Csrf`].
    pub fn checked_form(&self, body: &[u8]) -> Result<HashMap<String, String>, ConsoleError> {
        let text = std::str::from_utf8(body).map_err(|_| ConsoleError::Csrf)?;
        let form = web::Query::<HashMap<String, String>>::from_query(text)
            .map_err(|_| ConsoleError::Csrf)?
            .into_inner();
        let presented = form.get("csrf").map(String::as_str).unwrap_or("");
        if !secrets_match(presented, &self.session.csrf) {
            tracing::warn!(
                token_id = self.session.token_id,
                "console form refused: CSRF token missing or wrong"
            );
            return Err(ConsoleError::Csrf);
        }
        Ok(form)
    }
}

/// Whether the session cookie should be marked `Secure` for this request.
pub fn secure_request(req: &HttpRequest, state: &ConsoleState) -> bool {
    state.config.secure_cookies
        || req.app_config().secure()
        || req.connection_info().scheme() == "https"
}

/// The cookie that deletes the session cookie.
pub fn clear_session_cookie(secure: bool) -> String {
    set_cookie(SESSION_COOKIE, "", secure, Some(0))
}

fn no_session(req: &HttpRequest) -> ConsoleError {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        ConsoleError::SignInRedirect
    } else {
        ConsoleError::SignIn
    }
}

/// How many alerts are open (not acknowledged): the number on the Security entry, the same
/// as `otter_alerts_open`; 0 if it cannot be told.
fn alert_count(conn: &rusqlite::Connection) -> u64 {
    crate::alerts::open_count(conn).unwrap_or(0)
}

/// The role and revocation time of token `id`, `None` if it is gone.
fn token_state(
    conn: &rusqlite::Connection,
    id: i64,
) -> rusqlite::Result<Option<(String, Option<i64>)>> {
    conn.query_row(
        "SELECT role, revoked_at FROM api_tokens WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

async fn authenticate<P: Policy>(req: HttpRequest) -> Result<ConsoleAuth<P>, ConsoleError> {
    let console = req
        .app_data::<web::Data<ConsoleState>>()
        .ok_or_else(|| ConsoleError::internal("the console", &"no console state registered"))?;
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ConsoleError::internal("the console", &"no application state"))?;
    let cookies = req
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(id) = cookie_value(cookies, SESSION_COOKIE).filter(|v| !v.is_empty()) else {
        return Err(no_session(&req));
    };
    let session_id = zeroize::Zeroizing::new(id.to_owned());
    let Some(session) = console.sessions.touch(&session_id) else {
        return Err(no_session(&req));
    };
    let (token_id, role) = (session.token_id, session.role);
    let found = state
        .db
        .call(move |c| {
            let alerts = if ReadDevices::ROLES.contains(&role) {
                alert_count(c)
            } else {
                0
            };
            Ok(token_state(c, token_id).map(|t| (t, alerts)))
        })
        .await
        .map_err(|e| ConsoleError::internal("reading the token database", &e))?
        .map_err(|e| ConsoleError::internal("reading the token database", &e))?;
    let (found, alerts) = found;
    let still_valid = matches!(&found, Some((role, None)) if role == session.role.as_str());
    if !still_valid {
        tracing::info!(
            token_id,
            "console sessions ended: their token was revoked or changed"
        );
        console.sessions.remove_token(token_id);
        return Err(no_session(&req));
    }
    if !P::ROLES.contains(&session.role) {
        let roles: Vec<&str> = P::ROLES.iter().map(|r| r.as_str()).collect();
        return Err(ConsoleError::Forbidden(format!(
            "{} needs the role {}; you are signed in as {}",
            P::WHAT,
            roles.join(" or "),
            session.role
        )));
    }
    Ok(ConsoleAuth {
        session,
        session_id,
        alerts,
        _policy: PhantomData,
    })
}

impl<P: Policy> FromRequest for ConsoleAuth<P> {
    type Error = ConsoleError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ConsoleError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate::<P>(req.clone()))
    }
}
