//! The HTTP layer: routes, shared state, request logging. Handlers parse, call and map
//! errors to [`error::ApiError`]; the logic lives in the modules they call.

pub mod audit_api;
pub mod auth;
pub mod backups_admin;
pub mod backups_api;
pub mod conditional;
pub mod delegations_api;
pub mod device_auth;
pub mod error;
pub mod files;
pub mod fleet_api;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod releases;
pub mod restore_requests;
pub mod rollouts_api;
pub mod root_api;
pub mod tokens_api;
pub mod transfers_api;
pub mod upload;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, Handler, Responder};

use crate::config::PublishingConfig;
use crate::db::Db;
use crate::repo::Repository;
use crate::store::Store;

/// What every handler can reach.
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The object store.
    pub store: Store,
    /// The repository.
    pub repo: Arc<Repository>,
    /// Upload limits.
    pub publishing: PublishingConfig,
    /// Where uploads are spooled.
    pub upload_dir: std::path::PathBuf,
    /// Backup limits.
    pub backups: crate::config::BackupsConfig,
    /// When rollouts halt by themselves.
    pub rollouts: crate::rollout::RolloutsConfig,
    /// The key that countersigns accepted backup manifests.
    pub receipt_key: Arc<otter_keys::crypto::SigningKey>,
    /// Held while a backup manifest is checked and catalogued.
    pub backup_lock: tokio::sync::Mutex<()>,
}

/// Who may call an API route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A bearer API token whose role is one of these.
    Roles(&'static [crate::tokens::TokenRole]),
    /// A request signed by an enrolled, unrevoked device (see [`device_auth`]); API tokens
    /// do not stand in for it.
    DeviceSignature,
    /// Anyone presenting a valid enrollment token in the body.
    EnrollmentToken,
}

/// Every API route with its method, path pattern and who is admitted: the table the
/// authorization test walks.
pub const API_ROUTES: &[(&str, &str, Access)] = {
    use auth::Policy;
    &[
        (
            "GET",
            "/metrics",
            Access::Roles(metrics::ReadMetrics::ROLES),
        ),
        (
            "GET",
            "/api/v1/delegations",
            Access::Roles(delegations_api::ReadDelegations::ROLES),
        ),
        (
            "POST",
            "/api/v1/delegations",
            Access::Roles(delegations_api::ManageDelegations::ROLES),
        ),
        (
            "PUT",
            "/api/v1/delegations/{name}",
            Access::Roles(delegations_api::UploadDelegated::ROLES),
        ),
        (
            "DELETE",
            "/api/v1/delegations/{name}",
            Access::Roles(delegations_api::ManageDelegations::ROLES),
        ),
        (
            "PUT",
            "/api/v1/delegations/{name}/targets/{target}",
            Access::Roles(delegations_api::UploadDelegated::ROLES),
        ),
        (
            "POST",
            "/api/v1/tokens",
            Access::Roles(auth::ManageTokens::ROLES),
        ),
        (
            "GET",
            "/api/v1/tokens",
            Access::Roles(auth::ReadTokens::ROLES),
        ),
        (
            "DELETE",
            "/api/v1/tokens/{id}",
            Access::Roles(auth::ManageTokens::ROLES),
        ),
        (
            "POST",
            "/api/v1/releases",
            Access::Roles(auth::Publish::ROLES),
        ),
        (
            "GET",
            "/api/v1/releases",
            Access::Roles(auth::ReadReleases::ROLES),
        ),
        (
            "DELETE",
            "/api/v1/releases/{name}/{version}",
            Access::Roles(auth::Publish::ROLES),
        ),
        (
            "POST",
            "/api/v1/enrollment-tokens",
            Access::Roles(auth::ManageEnrollment::ROLES),
        ),
        (
            "GET",
            "/api/v1/enrollment-tokens",
            Access::Roles(fleet_api::ReadEnrollment::ROLES),
        ),
        (
            "DELETE",
            "/api/v1/enrollment-tokens/{id}",
            Access::Roles(fleet_api::RevokeEnrollment::ROLES),
        ),
        (
            "GET",
            "/api/v1/devices",
            Access::Roles(auth::ReadDevices::ROLES),
        ),
        (
            "DELETE",
            "/api/v1/devices/{id}",
            Access::Roles(fleet_api::RevokeDevices::ROLES),
        ),
        (
            "GET",
            "/api/v1/rollouts",
            Access::Roles(rollouts_api::ReadRollouts::ROLES),
        ),
        (
            "GET",
            "/api/v1/rollouts/{name}/{version}",
            Access::Roles(rollouts_api::ReadRollouts::ROLES),
        ),
        (
            "POST",
            "/api/v1/rollouts/{name}/{version}/percent",
            Access::Roles(rollouts_api::ManageRollouts::ROLES),
        ),
        (
            "POST",
            "/api/v1/rollouts/{name}/{version}/groups",
            Access::Roles(rollouts_api::ManageRollouts::ROLES),
        ),
        (
            "POST",
            "/api/v1/rollouts/{name}/{version}/pause",
            Access::Roles(rollouts_api::ManageRollouts::ROLES),
        ),
        (
            "POST",
            "/api/v1/rollouts/{name}/{version}/resume",
            Access::Roles(rollouts_api::ManageRollouts::ROLES),
        ),
        (
            "POST",
            "/api/v1/rollouts/{name}/{version}/abort",
            Access::Roles(rollouts_api::ManageRollouts::ROLES),
        ),
        (
            "PUT",
            "/api/v1/root",
            Access::Roles(root_api::RotateRoot::ROLES),
        ),
        (
            "GET",
            "/api/v1/audit",
            Access::Roles(audit_api::ReadAudit::ROLES),
        ),
        (
            "GET",
            "/api/v1/audit/verify",
            Access::Roles(audit_api::ReadAudit::ROLES),
        ),
        ("POST", "/api/v1/enroll", Access::EnrollmentToken),
        ("POST", "/api/v1/device/report", Access::DeviceSignature),
        (
            "PUT",
            "/api/v1/device/backups/packs/{pack_id}",
            Access::DeviceSignature,
        ),
        (
            "HEAD",
            "/api/v1/device/backups/packs/{pack_id}",
            Access::DeviceSignature,
        ),
        (
            "GET",
            "/api/v1/device/backups/packs/{pack_id}",
            Access::DeviceSignature,
        ),
        (
            "POST",
            "/api/v1/device/backups/manifests",
            Access::DeviceSignature,
        ),
        (
            "GET",
            "/api/v1/device/backups/manifests",
            Access::DeviceSignature,
        ),
        (
            "GET",
            "/api/v1/device/backups/manifests/{sequence}",
            Access::DeviceSignature,
        ),
        (
            "GET",
            "/api/v1/backups",
            Access::Roles(auth::ReadBackups::ROLES),
        ),
        (
            "GET",
            "/api/v1/backups/{device}/{sequence}",
            Access::Roles(auth::ReadBackups::ROLES),
        ),
        (
            "POST",
            "/api/v1/backups/{device}/restore-requests",
            Access::Roles(crate::console::RequestRestore::ROLES),
        ),
        (
            "GET",
            "/api/v1/backups/{device}/restore-requests",
            Access::Roles(crate::console::RequestRestore::ROLES),
        ),
        (
            "GET",
            "/api/v1/device/restore-requests",
            Access::DeviceSignature,
        ),
        (
            "POST",
            "/api/v1/device/restore-requests/{id}",
            Access::DeviceSignature,
        ),
        (
            "GET",
            "/api/v1/devices/{id}/backups/export",
            Access::Roles(transfers_api::TransferBackups::ROLES),
        ),
        (
            "POST",
            "/api/v1/devices/{id}/transfers",
            Access::Roles(transfers_api::TransferBackups::ROLES),
        ),
        (
            "GET",
            "/api/v1/devices/{id}/transfers",
            Access::Roles(transfers_api::TransferBackups::ROLES),
        ),
        (
            "DELETE",
            "/api/v1/devices/{id}/transfers/{transfer}",
            Access::Roles(transfers_api::TransferBackups::ROLES),
        ),
        ("GET", "/api/v1/device/transfers", Access::DeviceSignature),
        (
            "GET",
            "/api/v1/device/transfers/{id}",
            Access::DeviceSignature,
        ),
        (
            "POST",
            "/api/v1/backup-maintenance/prune",
            Access::Roles(backups_admin::PruneBackups::ROLES),
        ),
        (
            "POST",
            "/api/v1/backup-maintenance/verify",
            Access::Roles(backups_admin::VerifyBackups::ROLES),
        ),
    ]
};

/// Registers every route, and JSON errors for unknown paths and methods, with the default
/// backup manifest cap.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let max = crate::config::BackupsConfig::default().max_manifest_bytes;
    configure_with_manifest_cap(cfg, max);
}

/// [`configure`], reading backup manifests of up to `max_manifest_bytes` into memory.
pub fn configure_with_manifest_cap(cfg: &mut web::ServiceConfig, max_manifest_bytes: u64) {
    let manifest_cap = usize::try_from(max_manifest_bytes).unwrap_or(usize::MAX);
    // First: the router tries resources in order, and each `{...}` pattern it passes costs
    // a regex match; repository files are most of the traffic.
    cfg.service(get_head("/repo/metadata/{file}", files::metadata))
        .service(get_head("/repo/targets/{file}", files::target));
    cfg.configure(crate::console::configure);
    cfg.service(
        web::resource("/api/v1/device/backups/packs/{pack_id}")
            .route(web::put().to(backups_api::put_pack))
            .route(web::head().to(backups_api::head_pack))
            .route(web::get().to(backups_api::get_pack))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/device/backups/manifests")
            .app_data(web::PayloadConfig::default().limit(manifest_cap))
            .route(web::post().to(backups_api::post_manifest))
            .route(web::get().to(backups_api::own_manifests))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/device/backups/manifests/{sequence}")
            .route(web::get().to(backups_api::own_manifest))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/backups")
            .route(web::get().to(backups_api::list))
            .default_service(web::to(error::method_not_allowed)),
    )
    // Before `/api/v1/backups/{device}/{sequence}`, which would take `restore-requests`.
    .service(
        web::resource("/api/v1/backups/{device}/restore-requests")
            .route(web::post().to(restore_requests::create))
            .route(web::get().to(restore_requests::list))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/device/restore-requests")
            .route(web::get().to(restore_requests::pending))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/device/restore-requests/{id}")
            .route(web::post().to(restore_requests::finish))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/backups/{device}/{sequence}")
            .route(web::get().to(backups_api::show))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/devices/{id}/backups/export")
            .route(web::get().to(transfers_api::export))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/devices/{id}/transfers")
            .route(web::post().to(transfers_api::import))
            .route(web::get().to(transfers_api::list))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/devices/{id}/transfers/{transfer}")
            .route(web::delete().to(transfers_api::delete))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/device/transfers")
            .route(web::get().to(transfers_api::own_list))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/device/transfers/{id}")
            .route(web::get().to(transfers_api::own_fetch))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/backup-maintenance/prune")
            .route(web::post().to(backups_admin::prune))
            .default_service(web::to(error::method_not_allowed)),
    )
    .service(
        web::resource("/api/v1/backup-maintenance/verify")
            .route(web::post().to(backups_admin::verify))
            .default_service(web::to(error::method_not_allowed)),
    );
    cfg.app_data(web::PayloadConfig::default().limit(64 * 1024))
        .service(
            web::resource("/api/v1/tokens")
                .route(web::post().to(tokens_api::create))
                .route(web::get().to(tokens_api::list))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/tokens/{id}")
                .route(web::delete().to(tokens_api::revoke))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/releases")
                .route(web::post().to(releases::publish))
                .route(web::get().to(releases::list))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/releases/{name}/{version}")
                .route(web::delete().to(releases::yank))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts")
                .route(web::get().to(rollouts_api::list))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts/{name}/{version}")
                .route(web::get().to(rollouts_api::show))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts/{name}/{version}/percent")
                .route(web::post().to(rollouts_api::set_percent))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts/{name}/{version}/groups")
                .route(web::post().to(rollouts_api::set_groups))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts/{name}/{version}/pause")
                .route(web::post().to(rollouts_api::pause))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts/{name}/{version}/resume")
                .route(web::post().to(rollouts_api::resume))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/rollouts/{name}/{version}/abort")
                .route(web::post().to(rollouts_api::abort))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/audit")
                .route(web::get().to(audit_api::list))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/root")
                .route(web::put().to(root_api::put_root))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/audit/verify")
                .route(web::get().to(audit_api::verify))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/enrollment-tokens")
                .route(web::post().to(fleet_api::create_token))
                .route(web::get().to(fleet_api::list_tokens))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/enrollment-tokens/{id}")
                .route(web::delete().to(fleet_api::revoke_token))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/enroll")
                .route(web::post().to(fleet_api::enroll))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/device/report")
                .route(web::post().to(fleet_api::report))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/devices")
                .route(web::get().to(fleet_api::list_devices))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/devices/{id}")
                .route(web::delete().to(fleet_api::revoke_device))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/healthz")
                .route(web::get().to(health::healthz))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/readyz")
                .route(web::get().to(health::readyz))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/metrics")
                .route(web::get().to(metrics::metrics))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/openapi.json")
                .route(web::get().to(openapi::serve))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/delegations")
                .route(web::get().to(delegations_api::list))
                .route(web::post().to(delegations_api::declare))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/delegations/{name}")
                .route(web::put().to(delegations_api::upload_metadata))
                .route(web::delete().to(delegations_api::remove))
                .default_service(web::to(error::method_not_allowed)),
        )
        .service(
            web::resource("/api/v1/delegations/{name}/targets/{target}")
                .route(web::put().to(delegations_api::upload_target))
                .default_service(web::to(error::method_not_allowed)),
        )
        .default_service(web::to(error::no_route));
}

/// A resource answering GET and HEAD with `handler`, and 405 in JSON to anything else.
fn get_head<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(error::method_not_allowed))
}

/// Logs one line per request: method, path, status, duration. Never headers or bodies.
/// Repository files answered with success (2xx, 304), the bulk of the traffic (every
/// terminal polls `timestamp.json`), are logged at debug level, so the info log stays
/// readable and serving them stays cheap; `/metrics` counts them.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    // Shares the request's buffer: no copy unless a line is written.
    let uri = req.uri().clone();
    let res = next.call(req).await;
    log_done(&res, &method, short(uri.path()), start);
    res
}

/// At most the first 256 bytes of `path` (on a character boundary).
fn short(path: &str) -> &str {
    let mut end = path.len().min(256);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

fn log_done<B>(
    res: &Result<ServiceResponse<B>, actix_web::Error>,
    method: &Method,
    path: &str,
    start: Instant,
) {
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    match res {
        Ok(r)
            if (r.status().is_success() || r.status() == StatusCode::NOT_MODIFIED)
                && path.starts_with("/repo/") =>
        {
            tracing::debug!(
                target: "otter_server::http",
                %method,
                path,
                status = r.status().as_u16(),
                ms,
                "request"
            )
        }
        Ok(r) => tracing::info!(
            target: "otter_server::http",
            %method,
            path,
            status = r.status().as_u16(),
            ms,
            "request"
        ),
        Err(e) => {
            tracing::warn!(target: "otter_server::http", %method, path, error = %e, ms, "request failed")
        }
    }
}
