//! The backup endpoints. Terminals (signed device requests) upload encrypted packs and
//! then the signed manifest that names them; the server checks both without any key that
//! decrypts (see [`crate::backups`]) and answers the manifest with its countersignature.
//! People with a token read the catalog.
//!
//! - `PUT /api/v1/device/backups/packs/{pack_id}`: the body is the pack's ciphertext,
//!   streamed to a spool file under the cap (`backups.max_pack_bytes`); the signed
//!   `Content-Digest` must be the pack id's, which is checked before the body is read, and
//!   the body's SHA-256 must be the pack id. 201 when stored, 200 when it was already.
//! - `HEAD /api/v1/device/backups/packs/{pack_id}`: 200 (with `Otter-Pack-Length`) when
//!   the device's pack is stored, else 404, so an agent resumes.
//! - `GET /api/v1/device/backups/packs/{pack_id}`: the stored ciphertext of one of the
//!   device's own packs that one of its catalogued manifests references (a restore), with
//!   one byte range (`Range`, 206). Another device's pack, or a pack no manifest names yet,
//!   is `backup_pack_not_found` (404): a device reads back only its own backups.
//! - `POST /api/v1/device/backups/manifests`: the body is a serialized `SignedManifest`;
//!   201 with `{countersignature, device_id, sequence, header_hash, receipt_public_key}`,
//!   200 with the same receipt when the same manifest comes again.
//! - `GET /api/v1/device/backups/manifests`: `{sequences, receipts: [{sequence,
//!   header_hash, countersignature}], receipt_public_key, pruned: [{sequence, header,
//!   header_hash, countersignature, pruned_at}]}` for the device's own manifests (`pruned`:
//!   those retention removed, whose headers link the chain across the gaps);
//!   `GET /api/v1/device/backups/manifests/{sequence}`: one of them, as stored.
//! - `GET /api/v1/backups[?device=D]` and `GET /api/v1/backups/{device}/{sequence}`
//!   (admin, operator, auditor, restorer).
//!
//! Refusals change nothing: `invalid_pack_id`, `backup_pack_too_large` (413),
//! `backup_quota_exceeded` (413), `backup_pack_being_collected` (503),
//! `backup_pack_hash_mismatch`, `backup_pack_empty`, `backup_manifest_malformed`,
//! `backup_manifest_too_large` (413), `backup_wrong_device` (403),
//! `backup_signature_invalid`, `backup_chain_broken` (409), `backup_sequence_conflict`
//! (409), `backup_pack_missing` (422).

use std::str::FromStr;
use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use otter_keys::envelope::{PackId, SignedManifest};
use otter_keys::request::base64_encode;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Auth, ReadBackups};
use super::conditional::{parse_range, select, Selection};
use super::device_auth::{authenticate_before_body, SignedDevice};
use super::error::ApiError;
use super::upload::{declared_length, spool_body};
use super::AppState;
use crate::backups::{
    check_received, insert_manifest, list_manifests, manifest_key, pack_key, pack_length,
    record_pack, referenced_pack_length, show_manifest, BackupError, ManifestRecord, Received,
};
use crate::db::unix_now;

fn backup_err(e: BackupError) -> ApiError {
    let msg = e.to_string();
    match e {
        BackupError::Malformed(_) => ApiError::bad_request("backup_manifest_malformed", msg),
        BackupError::WrongDevice { .. } => {
            ApiError::new(StatusCode::FORBIDDEN, "backup_wrong_device", msg)
        }
        BackupError::Signature(_) => ApiError::bad_request("backup_signature_invalid", msg),
        BackupError::Chain(_) => ApiError::new(StatusCode::CONFLICT, "backup_chain_broken", msg),
        BackupError::SequenceConflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, "backup_sequence_conflict", msg)
        }
        BackupError::PackMissing { .. } => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "backup_pack_missing", msg)
        }
        other => ApiError::internal("the backup catalog", &other),
    }
}

fn db_err(e: crate::db::DbError) -> ApiError {
    ApiError::unavailable("the database", &e)
}

fn parse_pack_id(text: &str) -> Result<PackId, ApiError> {
    PackId::from_str(text).map_err(|_| {
        ApiError::bad_request(
            "invalid_pack_id",
            "a pack id is the SHA-256 of the pack's ciphertext: 64 lower-case hex digits",
        )
    })
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "backup_pack_too_large",
        format!(
            "the pack is larger than the server's cap of {limit} bytes (backups.max_pack_bytes)"
        ),
    )
}

/// `PUT /api/v1/device/backups/packs/{pack_id}` (signed by the device).
#[tracing::instrument(skip_all)]
pub async fn put_pack(
    req: HttpRequest,
    path: web::Path<String>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let pack = parse_pack_id(&path.into_inner())?;
    let digest = format!("sha-256=:{}:", base64_encode(pack.as_bytes()));
    let device = authenticate_before_body(&req, &digest).await?;
    let cap = state.backups.max_pack_bytes;
    if declared_length(&req).is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let spooled = match spool_body(
        &mut body,
        state.upload_dir.clone(),
        "pack-",
        cap,
        too_large,
        "spooling a pack",
    )
    .await
    {
        Ok(s) => s,
        Err(f) => {
            tracing::warn!(device, %pack, code = f.code(), "pack refused");
            return Err(f);
        }
    };
    if spooled.length == 0 {
        return Err(ApiError::bad_request(
            "backup_pack_empty",
            "the pack is empty; a pack always holds at least one chunk",
        ));
    }
    if PackId::from_bytes(spooled.sha256) != pack {
        tracing::warn!(device, %pack, "pack does not hash to its id");
        return Err(ApiError::bad_request(
            "backup_pack_hash_mismatch",
            format!(
                "the body's SHA-256 is {}, not the pack id {pack}: the pack was damaged in transit, or named wrongly",
                hex::encode(spooled.sha256)
            ),
        ));
    }
    let (id, length) = (device.clone(), spooled.length);
    let known = state
        .db
        .call(move |c| Ok(pack_length(c, &id, &pack)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    if known != Some(length) {
        // Quota, and no re-upload of a pack a prune is deleting (backups_admin.rs).
        super::backups_admin::admit_pack(&state, &device, pack, length).await?;
        state
            .store
            .put_file(&pack_key(&device, &pack), spooled.file.path())
            .await
            .map_err(|e| ApiError::unavailable("the object store", &e))?;
    }
    drop(spooled);
    let (id, now) = (device.clone(), unix_now());
    let new = state
        .db
        .call(move |c| Ok(record_pack(c, &id, &pack, length, now)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    tracing::info!(device, %pack, length, new, "backup pack received");
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "pack_id": pack.to_string(), "length": length, "new": new })))
}

/// `HEAD /api/v1/device/backups/packs/{pack_id}` (signed by the device, empty body).
#[tracing::instrument(skip_all, fields(device = device.device_id))]
pub async fn head_pack(
    device: SignedDevice,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let pack = parse_pack_id(&path.into_inner())?;
    let id = device.device_id.clone();
    let known = state
        .db
        .call(move |c| Ok(pack_length(c, &id, &pack)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    Ok(match known {
        Some(len) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header(("Otter-Pack-Length", len.to_string()))
            .finish(),
        None => HttpResponse::NotFound()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
    })
}

/// `GET /api/v1/device/backups/packs/{pack_id}` (signed by the device, empty body): the
/// ciphertext of one of the device's own packs that a catalogued manifest references, whole
/// or one byte range. The stored bytes are sent as they are: the agent checks them against
/// the pack id and the signed manifest, so the server is not trusted with them.
#[tracing::instrument(skip_all, fields(device = device.device_id))]
pub async fn get_pack(
    device: SignedDevice,
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    use actix_web::body::SizedStream;
    use object_store::{GetOptions, GetRange, ObjectStoreExt};

    let pack = parse_pack_id(&path.into_inner())?;
    let id = device.device_id.clone();
    let known = state
        .db
        .call(move |c| Ok(referenced_pack_length(c, &id, &pack)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "backup_pack_not_found",
            format!("this device has no backed-up pack {pack}"),
        )
    };
    if known.is_none() {
        tracing::warn!(%pack, "pack read refused: not one of this device's backed-up packs");
        return Err(not_found());
    }
    let key = pack_key(&device.device_id, &pack);
    if let Some(local) = state.store.local_file(&key) {
        // A local store: the file itself, opened once, in large reads.
        let Some((file, meta)) = super::files::open_local(local).await? else {
            tracing::error!(%pack, "a catalogued pack is missing from the object store");
            return Err(not_found());
        };
        let size = meta.len();
        let Some((mut res, start, end)) = pack_response(&req, &pack, size) else {
            return Ok(unsatisfiable(size));
        };
        return Ok(res.body(super::files::local_body(file, start, end - start).await?));
    }
    let object = crate::store::object_path(&key)
        .map_err(|e| ApiError::internal("building an object key", &e))?;
    let store = state.store.inner();
    let meta = match store.head(&object).await {
        Ok(m) => m,
        Err(object_store::Error::NotFound { .. }) => {
            tracing::error!(%pack, "a catalogued pack is missing from the object store");
            return Err(not_found());
        }
        Err(e) => return Err(ApiError::unavailable("the object store", &e)),
    };
    let size = meta.size;
    let Some((mut res, start, end)) = pack_response(&req, &pack, size) else {
        return Ok(unsatisfiable(size));
    };
    let opts = GetOptions {
        if_match: meta.e_tag.clone(),
        range: (start > 0 || end < size).then_some(GetRange::Bounded(start..end)),
        ..GetOptions::default()
    };
    let got = match store.get_opts(&object, opts).await {
        Ok(g) if g.range == (start..end) => g,
        Ok(_) | Err(object_store::Error::Precondition { .. }) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the pack changed while it was read; retry",
            ))
        }
        Err(object_store::Error::NotFound { .. }) => return Err(not_found()),
        Err(e) => return Err(ApiError::unavailable("the object store", &e)),
    };
    Ok(res.body(SizedStream::new(end - start, got.into_stream())))
}

/// The response head for a pack of `size` bytes and the byte range it carries (the whole
/// pack, or the one range asked for), or `None` when the range asked for is past its end.
fn pack_response(
    req: &HttpRequest,
    pack: &PackId,
    size: u64,
) -> Option<(actix_web::HttpResponseBuilder, u64, u64)> {
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range);
    let (status, start, end) = match select(range, size) {
        Selection::Full => (StatusCode::OK, 0, size),
        Selection::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        Selection::Unsatisfiable => return None,
    };
    tracing::info!(%pack, start, end, size, "backup pack read back");
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CONTENT_TYPE, "application/octet-stream"));
    if status == StatusCode::PARTIAL_CONTENT {
        res.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        ));
    }
    Some((res, start, end))
}

/// `416 Range Not Satisfiable` for a pack of `size` bytes.
fn unsatisfiable(size: u64) -> HttpResponse {
    HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
        .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "error": {
            "code": "range_not_satisfiable",
            "message": format!("the pack is {size} bytes long"),
        }}))
}

/// `POST /api/v1/device/backups/manifests` (signed by the device).
#[tracing::instrument(skip_all, fields(device = device.device_id))]
pub async fn post_manifest(
    device: SignedDevice,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let max = usize::try_from(state.backups.max_manifest_bytes).unwrap_or(usize::MAX);
    if device.body.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "backup_manifest_too_large",
            format!("the manifest is larger than the server's cap of {max} bytes (backups.max_manifest_bytes)"),
        ));
    }
    let manifest = SignedManifest::from_bytes(&device.body, max)
        .map_err(|e| backup_err(BackupError::Malformed(e)))?;
    let sender = device.device_id.clone();
    if manifest.header.device_id != sender {
        tracing::warn!(device = sender, "manifest of another device refused");
        return Err(backup_err(BackupError::WrongDevice {
            manifest: manifest.header.device_id.chars().take(64).collect(),
            sender,
        }));
    }
    let header_hash = manifest
        .header_hash()
        .map_err(|e| backup_err(BackupError::Malformed(e)))?;
    let manifest = Arc::new(manifest);
    // One manifest at a time: the checks, the store write and the catalog row must see the
    // same chain.
    let _guard = state.backup_lock.lock().await;
    let (id, m) = (sender.clone(), Arc::clone(&manifest));
    let received = state
        .db
        .call(move |c| Ok(check_received(c, &id, &m)))
        .await
        .map_err(db_err)?
        .map_err(|e| {
            tracing::warn!(device = sender, error = %e, "backup manifest refused");
            backup_err(e)
        })?;
    let header = &manifest.header;
    let (total, new) = match received {
        Received::Duplicate(cs) => {
            return Ok(receipt(
                StatusCode::OK,
                &state,
                &sender,
                header.sequence,
                &header_hash,
                &cs,
            ));
        }
        Received::New {
            total_pack_bytes,
            new_pack_bytes,
        } => (total_pack_bytes, new_pack_bytes),
    };
    let countersignature = manifest
        .countersign(&state.receipt_key)
        .map_err(|e| ApiError::internal("countersigning a manifest", &e))?;
    state
        .store
        .put(
            &manifest_key(&sender, header.sequence),
            device.body.to_vec(),
        )
        .await
        .map_err(|e| ApiError::unavailable("the object store", &e))?;
    let record = ManifestRecord {
        device_id: sender.clone(),
        sequence: header.sequence,
        header_hash: header_hash.clone(),
        created: header.created.unix(),
        pack_count: header.packs.len() as u64,
        total_pack_bytes: total,
        new_pack_bytes: new,
        body_length: header.body_length,
        manifest_length: device.body.len() as u64,
        received_at: unix_now(),
        countersignature: countersignature.clone(),
    };
    let m = Arc::clone(&manifest);
    state
        .db
        .call(move |c| Ok(insert_manifest(c, &m.header, &record)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    tracing::info!(
        device = sender,
        sequence = header.sequence,
        total,
        new,
        "backup manifest accepted"
    );
    Ok(receipt(
        StatusCode::CREATED,
        &state,
        &sender,
        header.sequence,
        &header_hash,
        &countersignature,
    ))
}

fn receipt(
    status: StatusCode,
    state: &AppState,
    device: &str,
    sequence: u64,
    header_hash: &str,
    cs: &otter_keys::envelope::Countersignature,
) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "device_id": device,
            "sequence": sequence,
            "header_hash": header_hash,
            "countersignature": cs,
            "receipt_public_key": hex::encode(state.receipt_key.public_bytes()),
        }))
}

/// Query of `GET /api/v1/backups`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this device's backups.
    pub device: Option<String>,
}

/// `GET /api/v1/backups[?device=D]` (admin, operator, auditor, restorer): `{backups: [...]}`.
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn list(
    auth: Auth<ReadBackups>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let q = web::Query::<ListQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("the query may hold device only: {e}"),
        )
    })?;
    let device = q.into_inner().device;
    let backups = state
        .db
        .call(move |c| Ok(list_manifests(c, device.as_deref())))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "backups": backups })))
}

/// `GET /api/v1/backups/{device}/{sequence}` (admin, operator, auditor, restorer): the
/// catalog record with its signed header (packs, chain link).
#[tracing::instrument(skip_all, fields(caller = auth.caller.id))]
pub async fn show(
    auth: Auth<ReadBackups>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let _ = auth;
    let (device, sequence) = path.into_inner();
    let sequence: u64 = sequence.parse().map_err(|_| {
        ApiError::bad_request("invalid_sequence", "a sequence is a positive integer")
    })?;
    let d = device.clone();
    let found = state
        .db
        .call(move |c| Ok(show_manifest(c, &d, sequence)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    let Some((record, header)) = found else {
        return Err(ApiError::not_found(format!(
            "no backup #{sequence} of device {:?}",
            device.chars().take(64).collect::<String>()
        )));
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({ "backup": record, "header": header })))
}

/// `GET /api/v1/device/backups/manifests` (signed by the device): the sequences of the
/// device's own catalogued manifests, oldest first, so an agent killed after the server
/// accepted a manifest can pick its chain up again; with the server's countersignature of
/// each and the receipt public key, so a restore checks them.
#[tracing::instrument(skip_all)]
pub async fn own_manifests(
    device: SignedDevice,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = device.device_id.clone();
    let records = state
        .db
        .call(move |c| Ok(list_manifests(c, Some(&id))))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    let sequences: Vec<u64> = records.iter().map(|r| r.sequence).collect();
    let receipts: Vec<_> = records
        .iter()
        .map(|r| {
            json!({
                "sequence": r.sequence,
                "header_hash": r.header_hash,
                "countersignature": r.countersignature,
            })
        })
        .collect();
    // Manifests removed by retention: their headers and receipts link the chain across
    // the gaps (see backups::gc).
    let id = device.device_id.clone();
    let pruned = state
        .db
        .call(move |c| Ok(crate::backups::gc::pruned_links(c, &id)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(json!({
            "sequences": sequences,
            "receipts": receipts,
            "receipt_public_key": hex::encode(state.receipt_key.public_bytes()),
            "pruned": pruned,
        })))
}

/// `GET /api/v1/device/backups/manifests/{sequence}` (signed by the device): the stored
/// bytes of one of the device's own manifests (another device's are never served).
#[tracing::instrument(skip_all)]
pub async fn own_manifest(
    device: SignedDevice,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let sequence: u64 = path
        .into_inner()
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_sequence", "a sequence is a whole number"))?;
    let id = device.device_id.clone();
    let known = state
        .db
        .call(move |c| Ok(show_manifest(c, &id, sequence)))
        .await
        .map_err(db_err)?
        .map_err(backup_err)?;
    if known.is_none() {
        return Err(ApiError::not_found(format!(
            "this device has no backup manifest #{sequence}"
        )));
    }
    let bytes = state
        .store
        .get_bytes(&manifest_key(&device.device_id, sequence))
        .await
        .map_err(|e| ApiError::unavailable("the object store", &e))?
        .ok_or_else(|| {
            ApiError::internal(
                "reading a catalogued manifest",
                &std::io::Error::other("catalogued but missing from the store"),
            )
        })?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/octet-stream")
        .body(bytes))
}
