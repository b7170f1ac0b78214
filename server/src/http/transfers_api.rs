//! Backup transfer routes: `GET /api/v1/devices/{id}/backups/export` (admin, restorer) streams
//! a device's stored backup, ciphertext only, as a tar; `POST|GET
//! /api/v1/devices/{id}/transfers` (admin, restorer) import a transfer written by `otter-keys
//! backup reencrypt` for a device, and list them; `GET /api/v1/device/transfers[/{id}]`
//! (signed by the device) list its transfers and stream one as a tar. All audited.

use actix_web::http::{header, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use serde_json::json;

use super::auth::{Auth, Policy};
use super::device_auth::SignedDevice;
use super::error::ApiError;
use super::AppState;
use crate::audit::Actor;
use crate::backups::transfers::{self, TransferError, TransferRecord};
use crate::db::unix_now;
use crate::tokens::TokenRole;

/// Exporting a device's backup and importing transfers: admin, restorer.
pub struct TransferBackups;
impl Policy for TransferBackups {
    const ROLES: &'static [TokenRole] = &[TokenRole::Admin, TokenRole::Restorer];
    const WHAT: &'static str = "exporting backups and importing backup transfers";
}

fn db_err(e: crate::db::DbError) -> ApiError {
    ApiError::unavailable("the database", &e)
}

fn transfer_err(e: TransferError) -> ApiError {
    match e {
        TransferError::Invalid(_) | TransferError::Io(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_transfer",
            e.to_string(),
        ),
        other => ApiError::internal("the backup transfer catalog", &other),
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "transfer_too_large",
        format!("a backup transfer may be at most {limit} bytes ([backups] max_transfer_bytes)"),
    )
}

fn device_path(id: String) -> Result<String, ApiError> {
    otter_keys::request::check_device_id(&id)
        .map_err(|_| ApiError::bad_request("invalid_device", "not a device id (32 hex digits)"))?;
    Ok(id)
}

/// Streams `files` (`(path in the tar, store key, length)`) as a tar. A file whose object is
/// missing or of another length than catalogued breaks the stream off (the client sees a
/// truncated tar, never a wrong one).
fn tar_response(state: &AppState, files: Vec<(String, String, u64)>) -> HttpResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let store = std::sync::Arc::clone(state.store.inner());
    let mtime = u64::try_from(unix_now()).unwrap_or(0);
    actix_web::rt::spawn(async move {
        let fail = |m: String| Err(std::io::Error::other(m));
        for (path, key, len) in files {
            let mut h = tar::Header::new_ustar();
            if let Err(e) = h.set_path(&path) {
                let _ = tx.send(fail(format!("{path}: {e}"))).await;
                return;
            }
            h.set_size(len);
            h.set_mode(0o600);
            h.set_mtime(mtime);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            if tx
                .send(Ok(Bytes::copy_from_slice(h.as_bytes())))
                .await
                .is_err()
            {
                return;
            }
            let got = match crate::store::object_path(&key) {
                Ok(object) => store.get(&object).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut stream = match got {
                Ok(g) => g.into_stream(),
                Err(e) => {
                    tracing::error!(key, error = e, "a file of a backup export is unreadable");
                    let _ = tx.send(fail(format!("{path}: {e}"))).await;
                    return;
                }
            };
            let mut sent = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(fail(format!("{path}: {e}"))).await;
                        return;
                    }
                };
                sent = sent.saturating_add(chunk.len() as u64);
                if sent > len || tx.send(Ok(chunk)).await.is_err() {
                    if sent > len {
                        let _ = tx
                            .send(fail(format!("{path} is longer than catalogued")))
                            .await;
                    }
                    return;
                }
            }
            if sent != len {
                let _ = tx
                    .send(fail(format!("{path} is shorter than catalogued")))
                    .await;
                return;
            }
            let pad = usize::try_from((512 - len % 512) % 512).unwrap_or(0);
            if pad > 0 && tx.send(Ok(Bytes::from(vec![0u8; pad]))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from(vec![0u8; 1024]))).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/x-tar")
        .streaming(body)
}

/// `GET /api/v1/devices/{id}/backups/export` (admin, restorer): the device's stored backup,
/// ciphertext only, as a tar laid out like `DATA_DIR/store/backups/DEVICE` (`manifests/SEQ`,
/// `packs/ID`): what `otter-keys backup reencrypt --from` reads. Audited as `backup.export`.
pub async fn export(
    auth: Auth<TransferBackups>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = device_path(path.into_inner())?;
    let actor = Actor::token(auth.caller.id);
    let d = device.clone();
    let files = state
        .db
        .call(move |c| {
            Ok(transfers::export_files(c, &d).and_then(|files| {
                let manifests = files
                    .iter()
                    .filter(|f| f.0.starts_with("manifests/"))
                    .count();
                if manifests > 0 {
                    transfers::audit(
                        c,
                        &actor,
                        "backup.export",
                        &d,
                        &json!({
                            "manifests": manifests,
                            "packs": files.len() - manifests,
                            "bytes": files.iter().map(|f| f.2).sum::<u64>(),
                        }),
                        unix_now(),
                    )?;
                }
                Ok(files)
            }))
        })
        .await
        .map_err(db_err)?
        .map_err(transfer_err)?;
    if !files.iter().any(|f| f.0.starts_with("manifests/")) {
        return Err(ApiError::not_found(format!(
            "device {device} has no backup in the catalog"
        )));
    }
    tracing::info!(
        device,
        files = files.len(),
        by = auth.caller.id,
        "backup exported"
    );
    Ok(tar_response(&state, files))
}

/// `POST /api/v1/devices/{id}/transfers` (admin, restorer): the body is a tar of a transfer
/// directory written by `otter-keys backup reencrypt` (ciphertext only). It is checked
/// without a key (layout; the source device is enrolled here with the key `transfer.json`
/// names; every manifest is signed by it, has its re-encrypted body and its packs), stored,
/// catalogued and audited (`backup.transfer_import`); 201 with `{transfer}`.
pub async fn import(
    auth: Auth<TransferBackups>,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    mut body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let device = device_path(path.into_inner())?;
    let cap = state.backups.max_transfer_bytes;
    if super::upload::declared_length(&req).is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let d = device.clone();
    let target = state
        .db
        .call(move |c| Ok(crate::fleet::device_key(c, &d)))
        .await
        .map_err(db_err)?
        .map_err(|e| ApiError::internal("reading the device", &e))?;
    match target {
        None => {
            return Err(ApiError::not_found(format!(
                "no device {device} is enrolled"
            )))
        }
        Some(k) if k.revoked_at.is_some() => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "device_revoked",
                format!("device {device} is revoked: it could not fetch the transfer"),
            ))
        }
        Some(_) => {}
    }
    let spooled = super::upload::spool_body(
        &mut body,
        state.upload_dir.clone(),
        "transfer-",
        cap,
        too_large,
        "receiving a backup transfer",
    )
    .await?;
    let work = state.upload_dir.clone();
    let max_manifest = usize::try_from(state.backups.max_manifest_bytes).unwrap_or(usize::MAX);
    let unpacked = tokio::task::spawn_blocking(move || {
        let r = transfers::unpack_checked(spooled.file.path(), &work, max_manifest);
        drop(spooled);
        r
    })
    .await
    .map_err(|e| ApiError::internal("unpacking a backup transfer", &e))?
    .map_err(|e| {
        tracing::warn!(device, error = %e, "backup transfer refused");
        transfer_err(e)
    })?;
    let source = unpacked.description.device_id.clone();
    let s = source.clone();
    let source_key = state
        .db
        .call(move |c| Ok(crate::fleet::device_key(c, &s)))
        .await
        .map_err(db_err)?
        .map_err(|e| ApiError::internal("reading the device", &e))?;
    let named =
        otter_keys::request::parse_device_public_key(&unpacked.description.device_public_key).ok();
    match source_key {
        Some(k) if Some(&k.public_key) == named.as_ref() => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_transfer",
                format!(
                    "transfer.json names a key for device {source} that is not the one it \
                     enrolled with"
                ),
            ))
        }
        None => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_transfer",
                format!("the transfer is of device {source}, which is not enrolled here"),
            ))
        }
    }
    let mut raw = [0u8; 16];
    crate::tokens::random_bytes(&mut raw)
        .map_err(|e| ApiError::internal("making a transfer id", &e))?;
    let id = hex::encode(raw);
    for (p, _) in &unpacked.files {
        state
            .store
            .put_file(&transfers::object_key(&device, &id, p), &unpacked.file(p))
            .await
            .map_err(|e| ApiError::unavailable("the object store", &e))?;
    }
    let record = TransferRecord {
        id,
        device_id: device.clone(),
        source_device_id: source,
        source_public_key: unpacked.description.device_public_key.to_ascii_lowercase(),
        manifests: unpacked.manifests as u64,
        packs: unpacked.packs as u64,
        bytes: unpacked.bytes(),
        created_by: Actor::token(auth.caller.id).id,
        created_at: unix_now(),
        fetched_at: None,
        files: unpacked.files.clone(),
    };
    drop(unpacked);
    let actor = Actor::token(auth.caller.id);
    let r = record.clone();
    state
        .db
        .call(move |c| Ok(transfers::insert(c, &actor, &r)))
        .await
        .map_err(db_err)?
        .map_err(transfer_err)?;
    tracing::info!(
        device,
        transfer = record.id,
        source = record.source_device_id,
        "backup transfer imported"
    );
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "transfer": record })))
}

/// `GET /api/v1/devices/{id}/transfers` (admin, restorer): the device's transfers, newest
/// first.
pub async fn list(
    auth: Auth<TransferBackups>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let device = device_path(path.into_inner())?;
    list_of(&state, device).await
}

/// `GET /api/v1/device/transfers` (signed by the device): its transfers, newest first.
pub async fn own_list(
    device: SignedDevice,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = device.device_id.clone();
    list_of(&state, id).await
}

/// The transfers stored for `device`, newest first, as the JSON answer.
async fn list_of(state: &AppState, device: String) -> Result<HttpResponse, ApiError> {
    let found = state
        .db
        .call(move |c| Ok(transfers::list(c, &device)))
        .await
        .map_err(db_err)?
        .map_err(transfer_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "transfers": found })))
}

/// `GET /api/v1/device/transfers/{id}` (signed by the device; `latest` for the newest): one
/// of its transfers as a tar, the layout `otter-agent restore --from-transfer` reads.
/// Audited as `backup.transfer_fetch`.
pub async fn own_fetch(
    device: SignedDevice,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let wanted = path.into_inner();
    if wanted != "latest" && !(wanted.len() == 32 && wanted.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request(
            "invalid_transfer_id",
            "give a transfer id (32 hex digits) or latest",
        ));
    }
    let id = device.device_id.clone();
    let found = state
        .db
        .call(move |c| {
            Ok(transfers::get(c, &id, &wanted).and_then(|t| {
                if let Some(t) = &t {
                    transfers::record_fetch(c, t, unix_now())?;
                }
                Ok(t)
            }))
        })
        .await
        .map_err(db_err)?
        .map_err(transfer_err)?;
    let Some(t) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "transfer_not_found",
            "no such backup transfer for this device",
        ));
    };
    tracing::info!(
        device = t.device_id,
        transfer = t.id,
        "backup transfer fetched"
    );
    let files = t
        .files
        .iter()
        .map(|(p, n)| (p.clone(), transfers::object_key(&t.device_id, &t.id, p), *n))
        .collect();
    Ok(tar_response(&state, files))
}
