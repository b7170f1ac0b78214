//! The fleet endpoints: `POST /api/v1/enrollment-tokens` (admin, operator), `GET` (admin,
//! operator, auditor) and `DELETE /api/v1/enrollment-tokens/{id}` (admin), `POST
//! /api/v1/enroll` (a terminal with an enrollment token), `POST /api/v1/device/report`
//! (signed by a device) and `GET /api/v1/devices` (admin, operator, auditor). The same
//! operations as `otter-server enroll-token create` and `otter-server devices list`.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, ManageEnrollment, ReadDevices};
use super::device_auth::SignedDevice;
use super::error::ApiError;
use super::AppState;
use crate::db::unix_now;
use crate::fleet::{
    create_enrollment_token, enroll_with as enroll_device, list_devices as list, store_report,
    DeviceFilter, DeviceReport, EnrollRequest, FleetError, DEFAULT_TOKEN_TTL_SECS,
};

fn fleet_err(e: FleetError) -> ApiError {
    let msg = e.to_string();
    match e {
        FleetError::InvalidGroup(_) => ApiError::bad_request("invalid_group", msg),
        FleetError::InvalidModel(_) => ApiError::bad_request("invalid_hardware_model", msg),
        FleetError::InvalidExpiry(_) => ApiError::bad_request("invalid_expiry", msg),
        FleetError::InvalidPublicKey(_) => ApiError::bad_request("invalid_public_key", msg),
        FleetError::InvalidRecipient(_) => ApiError::bad_request("invalid_backup_recipient", msg),
        FleetError::InvalidReport(_) => ApiError::bad_request("invalid_report", msg),
        FleetError::TokenUnknown => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_enrollment_token", msg)
        }
        FleetError::TokenUsed => {
            ApiError::new(StatusCode::UNAUTHORIZED, "enrollment_token_used", msg)
        }
        FleetError::TokenExpired { .. } => {
            ApiError::new(StatusCode::UNAUTHORIZED, "enrollment_token_expired", msg)
        }
        FleetError::TokenRevoked { .. } => {
            ApiError::new(StatusCode::UNAUTHORIZED, "enrollment_token_revoked", msg)
        }
        FleetError::EnrollmentTokenNotFound(_) => ApiError::not_found(msg),
        FleetError::EnrollmentTokenUsed { .. } => {
            ApiError::new(StatusCode::CONFLICT, "enrollment_token_used", msg)
        }
        FleetError::KeyAlreadyEnrolled(_) => {
            ApiError::new(StatusCode::CONFLICT, "device_exists", msg)
        }
        FleetError::DeviceNotFound(_) => ApiError::not_found(msg),
        other => ApiError::internal("the fleet operation", &other),
    }
}

fn db_err(e: crate::db::DbError) -> ApiError {
    ApiError::unavailable("the database", &e)
}

/// Body of `POST /api/v1/enrollment-tokens` (every member optional; an empty body is `{}`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEnrollmentToken {
    /// The group devices enrolled with the token join.
    #[serde(default)]
    pub group: Option<String>,
    /// Lifetime in seconds [default: one day].
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
}

/// `POST /api/v1/enrollment-tokens` (admin, operator): 201 with `{id, token, group,
/// expires_at}`; the token is shown this once.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn create_token(
    auth: Auth<ManageEnrollment>,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let body: CreateEnrollmentToken = if body.iter().all(u8::is_ascii_whitespace) {
        CreateEnrollmentToken::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("the body must be {{\"group\": GROUP, \"expires_in_secs\": SECONDS}} (both optional): {e}"),
            )
        })?
    };
    let ttl = body.expires_in_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    let caller = auth.caller.id;
    let (info, token) = state
        .db
        .call(move |c| {
            let tx = c.transaction()?;
            let now = unix_now();
            let made = create_enrollment_token(&tx, body.group.as_deref(), ttl, Some(caller), now)
                .and_then(|(info, token)| {
                    crate::audit::append(
                        &tx,
                        &crate::audit::Actor::token(caller),
                        "enrollment_token.create",
                        &format!("enrollment_token:{}", info.id),
                        &json!({"group": info.group, "expires_at": info.expires_at}),
                        now,
                    )?;
                    Ok((info, token))
                });
            if made.is_ok() {
                tx.commit()?;
            }
            Ok(made)
        })
        .await
        .map_err(db_err)?
        .map_err(fleet_err)?;
    tracing::info!(enrollment_token_id = info.id, group = ?info.group, by = caller, "enrollment token created");
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "id": info.id,
            "token": token.expose_dangerous(),
            "group": info.group,
            "expires_at": info.expires_at,
        })))
}

/// Listing enrollment tokens (never a token): admin, operator (who create them) and auditor.
pub struct ReadEnrollment;
impl super::auth::Policy for ReadEnrollment {
    const ROLES: &'static [crate::tokens::TokenRole] = &[
        crate::tokens::TokenRole::Admin,
        crate::tokens::TokenRole::Operator,
        crate::tokens::TokenRole::Auditor,
    ];
    const WHAT: &'static str = "listing enrollment tokens";
}

/// Revoking enrollment tokens: admin only.
pub struct RevokeEnrollment;
impl super::auth::Policy for RevokeEnrollment {
    const ROLES: &'static [crate::tokens::TokenRole] = &[crate::tokens::TokenRole::Admin];
    const WHAT: &'static str = "revoking enrollment tokens";
}

/// `GET /api/v1/enrollment-tokens` (admin, operator, auditor): `{enrollment_tokens: [...]}`,
/// the newest 1000, newest first, each with `state` (`unused`, `used`, `expired`,
/// `revoked`); never a token or its hash. The same list as `otter-server enroll-token list`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list_tokens(
    auth: Auth<ReadEnrollment>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let tokens = state
        .db
        .call(|c| Ok(crate::fleet::list_enrollment_tokens(c)))
        .await
        .map_err(db_err)?
        .map_err(fleet_err)?;
    let now = unix_now();
    let listed: Vec<serde_json::Value> = tokens.iter().map(|t| token_json(t, now)).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "enrollment_tokens": listed })))
}

fn token_json(t: &crate::fleet::EnrollmentTokenInfo, now: i64) -> serde_json::Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    v["state"] = json!(t.state(now));
    v
}

/// `DELETE /api/v1/enrollment-tokens/{id}` (admin): revokes an unused enrollment token (an
/// enrollment with it is refused from then on); 200 with its record. Revoking twice keeps
/// the first time and audits once (`enrollment_token.revoke`); a used token is 409 (revoke
/// the device instead), an unknown id 404. The same as `otter-server enroll-token revoke`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn revoke_token(
    auth: Auth<RevokeEnrollment>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id: i64 = id.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_enrollment_token_id",
            "an enrollment token is named by its id, an integer (see GET /api/v1/enrollment-tokens)",
        )
    })?;
    let caller = auth.caller.id;
    let (info, newly) = state
        .db
        .call(move |c| {
            let tx = c.transaction()?;
            let now = unix_now();
            let revoked =
                crate::fleet::revoke_enrollment_token(&tx, id, now).and_then(|(info, newly)| {
                    if newly {
                        crate::audit::append(
                            &tx,
                            &crate::audit::Actor::token(caller),
                            "enrollment_token.revoke",
                            &format!("enrollment_token:{id}"),
                            &json!({"group": info.group, "expires_at": info.expires_at}),
                            now,
                        )?;
                    }
                    Ok((info, newly))
                });
            if revoked.is_ok() {
                tx.commit()?;
            }
            Ok(revoked)
        })
        .await
        .map_err(db_err)?
        .map_err(fleet_err)?;
    if newly {
        tracing::info!(
            enrollment_token_id = id,
            by = caller,
            "enrollment token revoked"
        );
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(token_json(&info, unix_now())))
}

/// `POST /api/v1/enroll` (no API token; the enrollment token is in the body): registers the
/// device and answers 201 with `{device_id, group, hardware_model, enrolled_at,
/// metadata_url, targets_url, recovery_recipient}` (`recovery_recipient` is the fleet's
/// backup recovery key, `null` when `[backups] recovery_recipient` is unset), and
/// `backups_write_only` (the device's group or the fleet is write-only: encrypt backups to the
/// recovery key alone and keep no backup identity).
#[tracing::instrument(skip_all)]
pub async fn enroll(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let request: EnrollRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body must be {{\"token\", \"public_key\", \"backup_recipient\", \"hardware_model\"}}: {e}"),
        )
    })?;
    request.validate().map_err(fleet_err)?;
    let backups = state.backups.clone();
    let enrolled = state
        .db
        .call(move |c| {
            Ok(enroll_device(c, &request, unix_now(), |g| {
                backups.write_only_for(g)
            }))
        })
        .await
        .map_err(db_err)?
        .map_err(|e| {
            tracing::warn!(error = %e, "enrollment refused");
            fleet_err(e)
        })?;
    tracing::info!(
        device = enrolled.device_id,
        model = enrolled.hardware_model,
        group = ?enrolled.group,
        "device enrolled"
    );
    let info = req.connection_info();
    let base = format!("{}://{}", info.scheme(), info.host());
    Ok(HttpResponse::build(StatusCode::CREATED)
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({
            "device_id": enrolled.device_id,
            "group": enrolled.group,
            "hardware_model": enrolled.hardware_model,
            "enrolled_at": enrolled.enrolled_at,
            "metadata_url": format!("{base}/repo/metadata/"),
            "targets_url": format!("{base}/repo/targets/"),
            "recovery_recipient": state.backups.recovery_recipient.as_deref().map(str::trim),
            "backups_write_only": enrolled.backups_write_only,
        })))
}

/// `POST /api/v1/device/report` (signed by the device): stores the report as the device's
/// last; 200 with `{device_id, received_at}`.
#[tracing::instrument(skip_all, fields(device = device.device_id))]
pub async fn report(
    device: SignedDevice,
    state: web::Data<AppState>,
    alerts: Option<web::Data<crate::alerts::Alerts>>,
) -> Result<HttpResponse, ApiError> {
    let report: DeviceReport = serde_json::from_slice(&device.body).map_err(|e| {
        ApiError::bad_request("invalid_report", format!("the report is not valid: {e}"))
    })?;
    report
        .validate()
        .map_err(|m| ApiError::bad_request("invalid_report", m))?;
    for e in &report.security_events {
        tracing::warn!(
            device = device.device_id,
            kind = e.kind,
            at = e.at,
            "device security event"
        );
    }
    let now = unix_now();
    let id = device.device_id.clone();
    let outcome = report.last_update.clone();
    let raised = alerts.is_some().then(|| report.clone());
    state
        .db
        .call(move |c| Ok(store_report(c, &id, &report, now)))
        .await
        .map_err(db_err)?
        .map_err(fleet_err)?;
    // Security events and rollbacks raise alerts (stored; the webhook goes in the background).
    if let (Some(a), Some(r)) = (&alerts, &raised) {
        a.raise(&state.db, &device.device_id, r, now).await;
    }
    if let Some(outcome) = outcome {
        // The report is stored; a failure here is the server's, not the device's.
        if let Err(e) = crate::rollout::after_report(
            &state.repo,
            &state.db,
            &state.rollouts,
            &device.device_id,
            outcome,
        )
        .await
        {
            tracing::error!(error = %e, device = device.device_id, "evaluating the rollout after a report failed");
        }
    }
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "device_id": device.device_id, "received_at": now })))
}

/// Query of `GET /api/v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Only this group.
    pub group: Option<String>,
    /// Only this hardware model.
    pub model: Option<String>,
    /// Only devices that last reported a component at this version: `V` (any component)
    /// or `NAME=V`.
    pub version: Option<String>,
    /// Only devices whose id, model or group contains this text (case-insensitive).
    pub search: Option<String>,
}

impl DeviceQuery {
    /// Whether `d` passes the `version` and `search` filters (group and model are applied
    /// in SQL).
    pub fn keeps(&self, d: &crate::fleet::DeviceInfo) -> bool {
        let version_ok = match self.version.as_deref() {
            None => true,
            Some(v) => match v.split_once('=') {
                Some((name, ver)) => d.installed.get(name).is_some_and(|x| x == ver),
                None => d.installed.values().any(|x| x == v),
            },
        };
        let search_ok = match self.search.as_deref() {
            None => true,
            Some(text) => {
                let text = text.to_lowercase();
                [
                    Some(d.device_id.as_str()),
                    Some(d.hardware_model.as_str()),
                    d.group.as_deref(),
                ]
                .into_iter()
                .flatten()
                .any(|f| f.to_lowercase().contains(&text))
            }
        };
        version_ok && search_ok
    }
}

/// `GET /api/v1/devices[?group=G][&model=M][&version=[NAME=]V][&search=TEXT]` (admin,
/// operator, auditor): `{devices: [...]}` with keys, group, model, last seen, installed
/// versions and the last report.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list_devices(
    auth: Auth<ReadDevices>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let q = web::Query::<DeviceQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("the query may hold group, model, version and search only: {e}"),
        )
    })?;
    let filter = DeviceFilter {
        group: q.group.clone(),
        model: q.model.clone(),
    };
    let devices = state
        .db
        .call(move |c| Ok(list(c, &filter)))
        .await
        .map_err(db_err)?
        .map_err(fleet_err)?;
    let devices: Vec<_> = devices.into_iter().filter(|d| q.keeps(d)).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({ "devices": devices })))
}

/// Revoking a device: admin only.
pub struct RevokeDevices;
impl super::auth::Policy for RevokeDevices {
    const ROLES: &'static [crate::tokens::TokenRole] = &[crate::tokens::TokenRole::Admin];
    const WHAT: &'static str = "revoking devices";
}

/// `DELETE /api/v1/devices/{id}` (admin): revokes the device (its signed requests are
/// refused from now on); 200 with its record. Revoking twice keeps the first time and
/// audits once. The same operation as `otter-server devices revoke`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn revoke_device(
    auth: Auth<RevokeDevices>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device_id = id.into_inner();
    let caller = auth.caller.id;
    let info = state
        .db
        .call(move |c| {
            let tx = c.transaction()?;
            let now = unix_now();
            let revoked = crate::fleet::device_key(&tx, &device_id).and_then(|key| {
                let was_valid = key.is_some_and(|k| k.revoked_at.is_none());
                let d = crate::fleet::revoke_device(&tx, &device_id, now)?;
                if was_valid {
                    crate::audit::append(
                        &tx,
                        &crate::audit::Actor::token(caller),
                        "device.revoke",
                        &format!("device:{}", d.device_id),
                        &json!({"hardware_model": d.hardware_model, "group": d.group}),
                        now,
                    )?;
                }
                Ok(d)
            });
            if revoked.is_ok() {
                tx.commit()?;
            }
            Ok(revoked)
        })
        .await
        .map_err(db_err)?
        .map_err(fleet_err)?;
    tracing::info!(device = info.device_id, by = caller, "device revoked");
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(info))
}
