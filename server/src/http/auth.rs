//! Who may call what: the `Authorization: Bearer TOKEN` extractor and the role policies of
//! the API. A handler names its policy in its signature (`Auth<Publish>`), so a route cannot
//! forget to check; the token is looked up on every request, so a revocation takes effect
//! at once, even one made by `otter-server token revoke` while the server runs.
//!
//! Answers: no or malformed header, 401 `missing_token`; unknown or revoked token, 401
//! `invalid_token`; a role the policy does not admit, 403 `forbidden`.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::tokens::{lookup_token, TokenInfo, TokenRole};

/// A set of roles admitted to a group of endpoints.
pub trait Policy: 'static {
    /// The roles admitted.
    const ROLES: &'static [TokenRole];
    /// What the endpoints do, for the 403 message.
    const WHAT: &'static str;
}

/// Token management: admin only.
pub struct ManageTokens;
impl Policy for ManageTokens {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin];
    const WHAT: &'static str = "managing API tokens";
}

/// Reading the token list (never a token): admin and auditor.
pub struct ReadTokens;
impl Policy for ReadTokens {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Auditor];
    const WHAT: &'static str = "listing API tokens";
}

/// Publishing and yanking releases: admin and publisher.
pub struct Publish;
impl Policy for Publish {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Publisher];
    const WHAT: &'static str = "publishing or yanking releases";
}

/// Reading the release list: everyone who works with releases or audits them.
pub struct ReadReleases;
impl Policy for ReadReleases {
    const ROLES: &'static [TokenRole] = &[
        TokenRole::Admin,
        TokenRole::Publisher,
        TokenRole::Operator,
        TokenRole::Auditor,
    ];
    const WHAT: &'static str = "listing releases";
}

/// Creating enrollment tokens: admin and operator.
pub struct ManageEnrollment;
impl Policy for ManageEnrollment {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Operator];
    const WHAT: &'static str = "creating enrollment tokens";
}

/// Reading the device inventory: admin, operator and auditor.
pub struct ReadDevices;
impl Policy for ReadDevices {
    const ROLES: &'static [TokenRole] =
        &[TokenRole::Admin, TokenRole::Operator, TokenRole::Auditor];
    const WHAT: &'static str = "listing devices";
}

/// Reading the backup catalog: admin, operator, auditor and restorer.
pub struct ReadBackups;
impl Policy for ReadBackups {
    const ROLES: &'static [TokenRole] = &[
        TokenRole::Admin,
        TokenRole::Operator,
        TokenRole::Auditor,
        TokenRole::Restorer,
    ];
    const WHAT: &'static str = "reading the backup catalog";
}

/// An authenticated caller whose role `P` admits.
pub struct Auth<P: Policy> {
    /// The token's record (id, role, label; never the token).
    pub caller: TokenInfo,
    _policy: PhantomData<P>,
}

fn unauthenticated(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(req: &HttpRequest) -> Result<String, ApiError> {
    let value = req.headers().get(header::AUTHORIZATION).ok_or_else(|| {
        unauthenticated(
            "missing_token",
            "this endpoint needs an API token: send Authorization: Bearer TOKEN",
        )
    })?;
    let text = value.to_str().unwrap_or("");
    let (scheme, token) = text.trim().split_once(' ').unwrap_or(("", ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(unauthenticated(
            "missing_token",
            "the Authorization header must be \"Bearer TOKEN\"",
        ));
    }
    Ok(token.trim().to_owned())
}

async fn authenticate<P: Policy>(req: HttpRequest) -> Result<Auth<P>, ApiError> {
    let token = bearer(&req)?;
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("authentication", &"no application state"))?;
    let found = state
        .db
        .call(move |c| Ok(lookup_token(c, &token)))
        .await
        .map_err(|e| ApiError::unavailable("the token database", &e))?
        .map_err(|e| ApiError::unavailable("the token database", &e))?;
    let invalid = || {
        unauthenticated(
            "invalid_token",
            "the API token is unknown or revoked; ask an admin for a new one",
        )
    };
    let caller = found.ok_or_else(invalid)?;
    if caller.revoked_at.is_some() {
        return Err(invalid());
    }
    if !P::ROLES.contains(&caller.role) {
        let roles: Vec<&str> = P::ROLES.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} needs the role {}; this token (id {}) has the role {}",
                P::WHAT,
                roles.join(" or "),
                caller.id,
                caller.role
            ),
        ));
    }
    tracing::debug!(token_id = caller.id, role = %caller.role, "authenticated");
    Ok(Auth {
        caller,
        _policy: PhantomData,
    })
}

impl<P: Policy> FromRequest for Auth<P> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        Box::pin(authenticate::<P>(req.clone()))
    }
}
