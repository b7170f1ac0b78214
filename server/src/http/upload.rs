//! Streaming a request body to a private temporary file on a blocking thread, hashing it on
//! the way, refusing it past a size cap: what bundle uploads and backup packs share.

use std::io::Write;
use std::path::PathBuf;

use actix_web::web::{self, Bytes};
use actix_web::{http::header, HttpRequest};
use futures_util::StreamExt;
use sha2::{Digest, Sha256, Sha512};

use super::error::ApiError;

/// A body spooled to disk, with its length and hashes. The file is removed on drop.
pub struct Spooled {
    /// The temporary file.
    pub file: tempfile::NamedTempFile,
    /// Bytes received.
    pub length: u64,
    /// SHA-256 of the body.
    pub sha256: [u8; 32],
    /// SHA-512 of the body.
    pub sha512: [u8; 64],
}

/// The request's `Content-Length`, when it has a valid one.
pub fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn spool(
    dir: PathBuf,
    prefix: &str,
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<Spooled> {
    crate::store::create_dir_private(&dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".part")
        .tempfile_in(&dir)?;
    let (mut s256, mut s512, mut length) = (Sha256::new(), Sha512::new(), 0u64);
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file.as_file_mut());
        while let Some(chunk) = rx.blocking_recv() {
            s256.update(&chunk);
            s512.update(&chunk);
            length += chunk.len() as u64;
            w.write_all(&chunk)?;
        }
        w.flush()?;
    }
    Ok(Spooled {
        file,
        length,
        sha256: s256.finalize().into(),
        sha512: s512.finalize().into(),
    })
}

/// Streams `body` into a temporary file under `dir` (named `PREFIX….part`). More than `cap`
/// bytes is refused with `too_large(cap)`; a body that breaks off with `upload_incomplete`.
/// `what` names the upload in internal errors. Declared lengths are the caller's to check.
pub async fn spool_body(
    body: &mut web::Payload,
    dir: PathBuf,
    prefix: &'static str,
    cap: u64,
    too_large: fn(u64) -> ApiError,
    what: &'static str,
) -> Result<Spooled, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || spool(dir, prefix, rx));
    let (mut received, mut failure) = (0u64, None);
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(ApiError::bad_request(
                    "upload_incomplete",
                    format!("the upload broke off: {e}"),
                ));
                break;
            }
        };
        received = received.saturating_add(chunk.len() as u64);
        if received > cap {
            failure = Some(too_large(cap));
            break;
        }
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    drop(tx);
    let spooled = writer.await.map_err(|e| ApiError::internal(what, &e))?;
    if let Some(f) = failure {
        // The temporary file is removed when `spooled` drops.
        return Err(f);
    }
    spooled.map_err(|e| ApiError::internal(what, &e))
}
