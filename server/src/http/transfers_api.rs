//! Backup transfer routes: `GET /api/v1/devices/{id}/backups/export` (admin, restorer) streams
//! a device's stored backup, ciphertext only, as a tar; `POST|GET
//! /api/v1/devices/{id}/transfers` (admin, restorer) import a transfer written by `otter-keys
//! backup reencrypt` for a device, and list them; `DELETE
//! /api/v1/devices/{id}/transfers/{transfer}` (admin, restorer) removes one; `GET
//! /api/v1/device/transfers[/{id}]` (signed by the device) list its ready transfers and
//! stream one as a tar. All audited.

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
use crate::backups::transfers::{self, TransferError, TransferRecord, TransferState};
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
        TransferError::Withdrawn(_) => {
            ApiError::new(StatusCode::CONFLICT, "transfer_deleted", e.to_string())
        }
        TransferError::Remove {
            ref transfer,
            failed,
            ..
        } => {
            // The store's words (paths, keys) go to the log only.
            tracing::error!(error = %e, "removing a backup transfer's objects failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "removing {failed} object(s) of backup transfer {transfer} from the object \
                     store failed (the server log says why); the device no longer sees it: \
                     repeat the DELETE once the store works"
                ),
            )
        }
        other => ApiError::internal("the backup transfer catalog", &other),
    }
}

/// Checks a transfer id (32 hex digits, as the server makes them).
fn transfer_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_transfer_id",
        "give a transfer id (32 hex digits, see GET /api/v1/devices/{id}/transfers)",
    ))
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
    let record = TransferRecord {
        id: hex::encode(raw),
        device_id: device.clone(),
        source_device_id: source,
        source_public_key: unpacked.description.device_public_key.to_ascii_lowercase(),
        manifests: unpacked.manifests as u64,
        packs: unpacked.packs as u64,
        bytes: unpacked.bytes(),
        created_by: Actor::token(auth.caller.id).id,
        created_at: unix_now(),
        fetched_at: None,
        state: TransferState::Importing,
        files: unpacked.files.clone(),
    };
    // In a task of its own: a client that disconnects does not cut the storing and
    // cataloguing (or the clean-up of a failure) off half-way.
    let (st, r, actor) = (state.clone(), record.clone(), Actor::token(auth.caller.id));
    actix_web::rt::spawn(async move { store_transfer(&st, unpacked, &r, actor).await })
        .await
        .map_err(|e| ApiError::internal("importing a backup transfer", &e))??;
    tracing::info!(
        device,
        transfer = record.id,
        source = record.source_device_id,
        "backup transfer imported"
    );
    let record = TransferRecord {
        state: TransferState::Ready,
        ..record
    };
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "transfer": record })))
}

/// Catalogues `t` as importing, writes its files to the store, then makes it ready and
/// audits the import. On any failure, removes what it wrote ([`abandon_import`]).
async fn store_transfer(
    state: &AppState,
    unpacked: transfers::Unpacked,
    t: &TransferRecord,
    actor: Actor,
) -> Result<(), ApiError> {
    let r = t.clone();
    state
        .db
        .call(move |c| Ok(transfers::insert_importing(c, &r)))
        .await
        .map_err(db_err)?
        .map_err(transfer_err)?;
    for (p, _) in &unpacked.files {
        let key = transfers::object_key(&t.device_id, &t.id, p);
        if let Err(e) = state.store.put_file(&key, &unpacked.file(p)).await {
            drop(unpacked);
            abandon_import(state, t, &e).await;
            return Err(ApiError::unavailable("the object store", &e));
        }
    }
    drop(unpacked);
    let r = t.clone();
    let ready = state
        .db
        .call(move |c| Ok(transfers::mark_ready(c, &actor, &r, unix_now())))
        .await;
    let err = match ready {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => {
            abandon_import(state, t, &e).await;
            transfer_err(e)
        }
        Err(e) => {
            abandon_import(state, t, &e).await;
            db_err(e)
        }
    };
    Err(err)
}

/// Best effort after a failed import: removes the objects it wrote, then its row. When
/// objects remain, the row stays, marked `deleting` (hidden from the device), so that
/// `DELETE /api/v1/devices/{id}/transfers/{transfer}` can finish the job; all logged.
async fn abandon_import(state: &AppState, t: &TransferRecord, why: &dyn std::fmt::Display) {
    tracing::warn!(
        device = t.device_id,
        transfer = t.id,
        error = %why,
        "backup transfer import failed; removing what it stored"
    );
    match transfers::discard(&state.db, &state.store, t).await {
        Ok(()) => tracing::info!(
            device = t.device_id,
            transfer = t.id,
            "the failed backup transfer import left nothing behind"
        ),
        Err(e @ transfers::DiscardError::Objects(_)) => tracing::error!(
            device = t.device_id,
            transfer = t.id,
            error = %e,
            "objects of a failed backup transfer import remain; delete the transfer \
             (otter-server backups delete-transfer) once the object store works"
        ),
        Err(e) => tracing::error!(
            device = t.device_id,
            transfer = t.id,
            error = %e,
            "removing the catalog row of a failed backup transfer import failed; its objects \
             are gone, the row stays hidden from the device: delete the transfer"
        ),
    }
}

/// `DELETE /api/v1/devices/{id}/transfers/{transfer}` (admin, restorer): marks the transfer
/// deleting (the device no longer sees it) and audits `backup.transfer_delete`, removes its
/// objects from the store, then its row; 200 with `{deleted}`, 404 `transfer_not_found` for
/// an unknown one. When the store fails part-way (503) the transfer stays listed as
/// `deleting` and the same request finishes the job.
pub async fn delete(
    auth: Auth<TransferBackups>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (device, id) = path.into_inner();
    let device = device_path(device)?;
    transfer_id(&id)?;
    let actor = Actor::token(auth.caller.id);
    let (d, i) = (device.clone(), id.clone());
    let found = state
        .db
        .call(move |c| Ok(transfers::begin_delete(c, &actor, &d, &i, unix_now())))
        .await
        .map_err(db_err)?
        .map_err(transfer_err)?;
    let Some(t) = found else {
        return Err(transfer_not_found(format!(
            "device {device} has no backup transfer {id}"
        )));
    };
    // In a task of its own, like the import: a disconnect does not cut it off.
    let (st, r) = (state.clone(), t.clone());
    actix_web::rt::spawn(async move {
        transfers::discard(&st.db, &st.store, &r)
            .await
            .map_err(|e| match e {
                transfers::DiscardError::Objects(e) | transfers::DiscardError::Catalog(e) => {
                    transfer_err(e)
                }
                transfers::DiscardError::Db(e) => db_err(e),
            })
    })
    .await
    .map_err(|e| ApiError::internal("deleting a backup transfer", &e))??;
    tracing::info!(
        device,
        transfer = t.id,
        by = auth.caller.id,
        "backup transfer deleted"
    );
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "deleted": {
            "id": t.id,
            "device_id": t.device_id,
            "source_device_id": t.source_device_id,
            "manifests": t.manifests,
            "packs": t.packs,
            "bytes": t.bytes,
            "created_at": t.created_at,
            "fetched_at": t.fetched_at,
        }})))
}

/// `GET /api/v1/devices/{id}/transfers` (admin, restorer): the device's transfers, newest
/// first, also those being imported or deleted (`state`).
pub async fn list(
    auth: Auth<TransferBackups>,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let device = device_path(path.into_inner())?;
    list_of(&state, device, false).await
}

/// `GET /api/v1/device/transfers` (signed by the device): its ready transfers, newest first.
pub async fn own_list(
    device: SignedDevice,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = device.device_id.clone();
    list_of(&state, id, true).await
}

/// The transfers stored for `device` (only ready ones with `ready_only`), newest first, as
/// the JSON answer.
async fn list_of(
    state: &AppState,
    device: String,
    ready_only: bool,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .db
        .call(move |c| {
            Ok(if ready_only {
                transfers::list(c, &device)
            } else {
                transfers::list_all(c, &device)
            })
        })
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
        return Err(transfer_not_found(
            "no such backup transfer for this device".into(),
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

/// `404 transfer_not_found`.
fn transfer_not_found(message: String) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "transfer_not_found", message)
}
