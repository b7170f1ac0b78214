//! [`HttpBackupStore`]: the [`BackupStore`] of the server the terminal enrolled with, over
//! signed device requests ([`otter_keys::request`]).
//!
//! - `HEAD /api/v1/device/backups/packs/{id}`: whether a pack is stored (200) or not (404);
//! - `PUT /api/v1/device/backups/packs/{id}`: the pack's ciphertext. The signed
//!   `Content-Digest` is the body's SHA-256, which is the pack id: the server checks it
//!   before reading the body;
//! - `POST /api/v1/device/backups/manifests`: the serialized signed manifest; the server
//!   answers with its countersignature ([`HttpBackupStore::last_receipt`]);
//! - `GET /api/v1/device/backups/manifests[/{sequence}]`: the device's own catalogued
//!   sequences, and one manifest's bytes — so a run killed after the server accepted its
//!   manifest, but before the local index was updated, picks the chain up again.
//!
//! - `GET /api/v1/device/backups/packs/{id}`: one of the device's own packs, for a restore
//!   (the server serves only packs one of the device's manifests references);
//! - the manifest list also carries the server's countersignature of each manifest and its
//!   receipt public key ([`HttpBackupStore::receipts`]), which a restore checks.
//!
//! The server's backup receipt key is pinned in `STATE/backup/receipt-key` the first time
//! it is seen ([`HttpBackupStore::with_receipt_pin`]: every receipt of a backup is then
//! checked against it; a restore checks every manifest's countersignature with it).
//!
//! Nothing the server returns is trusted: a restore checks every pack against its id and
//! the signed manifest. The server enforces the chain itself: a manifest that does not
//! follow the device's last one is refused (409).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otter_keys::crypto::{PublicKey, SigningKey};
use otter_keys::envelope::{Countersignature, PackId, SignedManifest};
use otter_keys::request::sign_request;
use serde_json::Value;

use super::store::{BackupStore, StoreError};
use super::throttle::{Throttle, ThrottledReader};

/// Largest answer body read.
const MAX_ANSWER: u64 = 1024 * 1024;

/// Where the server's backup receipt key is pinned, under the agent's state dir.
pub fn receipt_pin_path(state_dir: &Path) -> PathBuf {
    state_dir.join("backup").join("receipt-key")
}

/// Checks the server's receipt key (hex) against `given`, else against the key pinned at
/// `pin`; pins it there when nothing is pinned yet. Returns whether it was pinned now.
pub fn check_pinned_receipt_key(
    pin: &Path,
    from_server: &str,
    given: Option<&str>,
) -> Result<bool, StoreError> {
    let from_server = from_server.trim().to_ascii_lowercase();
    parse_receipt_key(&from_server)?;
    let expected = match given {
        Some(g) => Some(g.trim().to_ascii_lowercase()),
        None => match std::fs::read_to_string(pin) {
            Ok(text) => Some(text.trim().to_ascii_lowercase()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(StoreError::Io {
                    what: "cannot read the pinned receipt key",
                    path: pin.to_path_buf(),
                    source,
                })
            }
        },
    };
    match expected {
        Some(e) if e == from_server => Ok(false),
        Some(e) => Err(StoreError::Remote(format!(
            "the server's backup receipt key {from_server} is not the expected {e} ({}): the \
             server was replaced or its key rotated; check with the server's admin, then pass \
             --receipt-key or remove the pinned file",
            if given.is_some() {
                "--receipt-key".to_owned()
            } else {
                pin.display().to_string()
            }
        ))),
        None => {
            if let Some(dir) = pin.parent() {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                    what: "cannot create",
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            otter_keys::atomic::write_atomic(pin, format!("{from_server}\n").as_bytes(), 0o644)
                .map_err(|source| StoreError::Io {
                    what: "cannot pin the receipt key in",
                    path: pin.to_path_buf(),
                    source,
                })?;
            Ok(true)
        }
    }
}

/// The server's answer to an accepted manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestReceipt {
    /// Hex SHA-256 of the manifest's canonical header, as the server computed it.
    pub header_hash: String,
    /// The server's countersignature of the header.
    pub countersignature: String,
    /// The sequence number the server recorded.
    pub sequence: u64,
    /// The whole JSON answer.
    pub answer: Value,
}

/// The server's countersignatures of the device's manifests, and the key that made them.
#[derive(Debug, Clone)]
pub struct ServerReceipts {
    /// The server's backup receipt public key, as the server states it (pin it).
    pub receipt_public_key: PublicKey,
    /// The same key, hex (32 bytes).
    pub receipt_public_hex: String,
    /// Countersignature by sequence number.
    pub by_sequence: BTreeMap<u64, Countersignature>,
    /// Headers of manifests the server's retention pruned, by sequence (checked by the
    /// restore through the chain's hash links; empty from a server that prunes nothing).
    pub pruned: BTreeMap<u64, otter_keys::envelope::ManifestHeader>,
}

/// A [`BackupStore`] on `otter-server`, for one enrolled device.
pub struct HttpBackupStore<'a> {
    base: String,
    device_id: String,
    key: &'a SigningKey,
    http: reqwest::blocking::Client,
    receipt: Mutex<Option<ManifestReceipt>>,
    receipt_pin: Option<PathBuf>,
    throttle: Option<Arc<Throttle>>,
    progress: Option<indicatif::ProgressBar>,
}

impl std::fmt::Debug for HttpBackupStore<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackupStore")
            .field("base", &self.base)
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

impl<'a> HttpBackupStore<'a> {
    /// A store on the server at `base_url` (normalised, e.g. from `agent.json`) for device
    /// `device_id`, whose requests `key` signs.
    pub fn new(base_url: &str, device_id: &str, key: &'a SigningKey) -> Result<Self, StoreError> {
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("otter-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StoreError::Remote(format!("cannot set up the HTTP client: {e}")))?;
        Ok(HttpBackupStore {
            base: base_url.trim_end_matches('/').to_owned(),
            device_id: device_id.to_owned(),
            key,
            http,
            receipt: Mutex::new(None),
            receipt_pin: None,
            throttle: None,
            progress: None,
        })
    }

    /// Checks every receipt of a manifest this store sends: the countersignature must verify
    /// with the server's receipt key, which must be the one pinned at `pin` (see
    /// [`receipt_pin_path`]; pinned on the first receipt).
    pub fn with_receipt_pin(mut self, pin: impl Into<PathBuf>) -> Self {
        self.receipt_pin = Some(pin.into());
        self
    }

    /// Caps the bytes per second of every request body this store sends (packs and
    /// manifests), all requests together; `0` leaves them unlimited.
    pub fn with_rate_limit(mut self, bytes_per_sec: u64) -> Self {
        self.throttle = (bytes_per_sec > 0).then(|| Throttle::new(bytes_per_sec));
        self
    }

    /// Shows the pack bytes uploaded on `bar`: each pack adds its size to the bar's length
    /// when its upload starts and to its position when the server stored it.
    pub fn with_progress(mut self, bar: indicatif::ProgressBar) -> Self {
        self.progress = Some(bar);
        self
    }

    /// The server's receipt for the last manifest this store sent, if any.
    pub fn last_receipt(&self) -> Option<ManifestReceipt> {
        self.receipt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server's countersignatures of this device's catalogued manifests, and the receipt
    /// public key the server says made them (from the signed manifest list).
    pub fn receipts(&self) -> Result<ServerReceipts, StoreError> {
        let path = "/api/v1/device/backups/manifests";
        let answer = self.manifest_list()?;
        let bad = |what: &str| StoreError::Remote(format!("{path}: {what} in the answer"));
        let key_hex = answer
            .get("receipt_public_key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no receipt_public_key (a server too old to restore from)"))?;
        let receipt_public_key = parse_receipt_key(key_hex)?;
        let mut by_sequence = BTreeMap::new();
        for r in answer
            .get("receipts")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no list of receipts"))?
        {
            let seq = r
                .get("sequence")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("a receipt without a sequence"))?;
            let cs: Countersignature = r
                .get("countersignature")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .ok_or_else(|| bad("an unreadable countersignature"))?;
            by_sequence.insert(seq, cs);
        }
        let mut pruned = BTreeMap::new();
        for p in answer
            .get("pruned")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let header: otter_keys::envelope::ManifestHeader = p
                .get("header")
                .cloned()
                .and_then(|v| serde_json::from_value(v).ok())
                .ok_or_else(|| bad("an unreadable pruned manifest header"))?;
            pruned.insert(header.sequence, header);
        }
        Ok(ServerReceipts {
            receipt_public_key,
            receipt_public_hex: key_hex.to_ascii_lowercase(),
            by_sequence,
            pruned,
        })
    }

    /// Verifies a manifest's receipt with the server's key, checked against the pin.
    fn check_receipt(
        &self,
        pin: &Path,
        manifest: &[u8],
        answer: &Value,
        what: &str,
    ) -> Result<(), StoreError> {
        let bad = |m: String| StoreError::Remote(format!("the receipt of {what}: {m}"));
        let key_hex = answer
            .get("receipt_public_key")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no receipt_public_key".into()))?;
        check_pinned_receipt_key(pin, key_hex, None)?;
        let cs: Countersignature = answer
            .get("countersignature")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| bad("no readable countersignature".into()))?;
        let m =
            SignedManifest::from_bytes(manifest, manifest.len()).map_err(|e| bad(e.to_string()))?;
        m.verify_countersignature(&parse_receipt_key(key_hex)?, &cs)
            .map_err(|e| bad(e.to_string()))
    }

    fn manifest_list(&self) -> Result<Value, StoreError> {
        let path = "/api/v1/device/backups/manifests";
        let (status, raw) = self.send(reqwest::Method::GET, path, &[])?;
        if status != 200 {
            return Err(refusal("listing this device's manifests", status, &raw));
        }
        serde_json::from_slice(&raw)
            .map_err(|e| StoreError::Remote(format!("{path}: the answer is not JSON: {e}")))
    }

    /// Sends one signed request; returns the status and the (capped) body.
    fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), StoreError> {
        self.send_capped(method, path, body, MAX_ANSWER)
    }

    /// [`Self::send`], reading at most `cap` bytes of the answer.
    fn send_capped(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
        cap: u64,
    ) -> Result<(u16, Vec<u8>), StoreError> {
        let url = format!("{}{}", self.base, path);
        let now = otter_keys::time::UtcTime::now().unix();
        let headers = sign_request(self.key, &self.device_id, method.as_str(), path, body, now)
            .map_err(|e| StoreError::Remote(format!("cannot sign the request: {e}")))?;
        let mut req = self.http.request(method, &url);
        for (name, value) in headers.pairs() {
            req = req.header(name, value);
        }
        if !body.is_empty() {
            let payload = match &self.throttle {
                Some(t) => reqwest::blocking::Body::sized(
                    ThrottledReader::new(std::io::Cursor::new(body.to_vec()), Arc::clone(t)),
                    body.len() as u64,
                ),
                None => reqwest::blocking::Body::from(body.to_vec()),
            };
            req = req
                .header("Content-Type", "application/octet-stream")
                .body(payload);
        }
        let resp = req
            .send()
            .map_err(|e| StoreError::Remote(format!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        // Sized once from the announced length (never above the cap): no regrowth copies.
        let announced = resp
            .content_length()
            .unwrap_or(0)
            .min(cap.saturating_add(1));
        let mut raw = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
        resp.take(cap.saturating_add(1))
            .read_to_end(&mut raw)
            .map_err(|e| StoreError::Remote(format!("{url}: reading the answer: {e}")))?;
        if raw.len() as u64 > cap {
            return Err(StoreError::TooLarge {
                what: format!("the answer of {url}"),
                len: raw.len() as u64,
                max: cap,
            });
        }
        Ok((status, raw))
    }
}

/// The server's JSON error as text: `HTTP 409 backup_chain_broken: ...`.
fn refusal(what: &str, status: u16, raw: &[u8]) -> StoreError {
    let json: Option<Value> = serde_json::from_slice(raw).ok();
    let err = json.as_ref().and_then(|v| v.get("error"));
    let text = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(|s| s.chars().take(512).collect::<String>())
    };
    StoreError::Remote(format!(
        "the server refused {what} (HTTP {status}, {}): {}",
        text("code").unwrap_or_else(|| "unknown".into()),
        text("message").unwrap_or_else(|| "no error message".into())
    ))
}

fn error_code(raw: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(raw).ok()?;
    json.get("error")?.get("code")?.as_str().map(str::to_owned)
}

/// Parses a receipt public key: 64 hex digits (an ed25519 key).
pub fn parse_receipt_key(text: &str) -> Result<PublicKey, StoreError> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
        StoreError::Remote(
            "the server's receipt public key is not 64 hex digits (an ed25519 key)".into(),
        )
    })?;
    Ok(PublicKey::ed25519(&bytes))
}

fn not_supported(what: &str) -> StoreError {
    StoreError::Remote(format!(
        "{what} is not supported over HTTP yet: the server has no device endpoint for it"
    ))
}

impl BackupStore for HttpBackupStore<'_> {
    fn put_pack(&self, id: &PackId, bytes: &[u8]) -> Result<(), StoreError> {
        let path = format!("/api/v1/device/backups/packs/{id}");
        if let Some(bar) = &self.progress {
            bar.inc_length(bytes.len() as u64);
        }
        let (status, raw) = self.send(reqwest::Method::PUT, &path, bytes)?;
        match status {
            200 | 201 => {
                if let Some(bar) = &self.progress {
                    bar.inc(bytes.len() as u64);
                }
                Ok(())
            }
            _ => Err(refusal(&format!("pack {id}"), status, &raw)),
        }
    }

    fn has_pack(&self, id: &PackId) -> Result<bool, StoreError> {
        let path = format!("/api/v1/device/backups/packs/{id}");
        let (status, raw) = self.send(reqwest::Method::HEAD, &path, &[])?;
        match status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(refusal(&format!("the check of pack {id}"), status, &raw)),
        }
    }

    fn get_pack(&self, id: &PackId, max_len: u64) -> Result<Vec<u8>, StoreError> {
        let path = format!("/api/v1/device/backups/packs/{id}");
        let what = format!("pack {id}");
        // An error answer may be longer than a small pack: read a little more, then check.
        let cap = max_len.max(64 * 1024);
        let (status, raw) = self.send_capped(reqwest::Method::GET, &path, &[], cap)?;
        match status {
            200 if raw.len() as u64 > max_len => Err(StoreError::TooLarge {
                what,
                len: raw.len() as u64,
                max: max_len,
            }),
            200 => Ok(raw),
            404 => Err(StoreError::NotFound { what }),
            _ => Err(refusal(&format!("reading {what}"), status, &raw)),
        }
    }

    fn put_manifest(&self, device: &str, sequence: u64, bytes: &[u8]) -> Result<(), StoreError> {
        if device != self.device_id {
            return Err(StoreError::BadDevice {
                device: device.chars().take(64).collect(),
                reason: "this store sends only its own device's manifests",
            });
        }
        let what = format!("manifest #{sequence} of device {device:?}");
        let (status, raw) = self.send(
            reqwest::Method::POST,
            "/api/v1/device/backups/manifests",
            bytes,
        )?;
        match status {
            200 | 201 => {
                let answer: Value = serde_json::from_slice(&raw).map_err(|e| {
                    StoreError::Remote(format!("the receipt of {what} is not JSON: {e}"))
                })?;
                let text = |k: &str| answer.get(k).and_then(Value::as_str).map(str::to_owned);
                if let Some(pin) = &self.receipt_pin {
                    self.check_receipt(pin, bytes, &answer, &what)?;
                }
                let receipt = ManifestReceipt {
                    header_hash: text("header_hash").unwrap_or_default(),
                    countersignature: text("countersignature").unwrap_or_default(),
                    sequence: answer
                        .get("sequence")
                        .and_then(Value::as_u64)
                        .unwrap_or(sequence),
                    answer,
                };
                *self.receipt.lock().unwrap_or_else(|e| e.into_inner()) = Some(receipt);
                Ok(())
            }
            409 if error_code(&raw).as_deref() == Some("backup_sequence_conflict") => {
                Err(StoreError::AlreadyExists { what })
            }
            _ => Err(refusal(&what, status, &raw)),
        }
    }

    fn get_manifest(
        &self,
        device: &str,
        sequence: u64,
        max_len: u64,
    ) -> Result<Vec<u8>, StoreError> {
        if device != self.device_id {
            return Err(not_supported(&format!(
                "reading the manifests of another device ({device:?})"
            )));
        }
        let path = format!("/api/v1/device/backups/manifests/{sequence}");
        let (status, raw) = self.send_capped(reqwest::Method::GET, &path, &[], max_len)?;
        if status != 200 {
            return Err(refusal(
                &format!("reading manifest #{sequence}"),
                status,
                &raw,
            ));
        }
        Ok(raw)
    }

    fn list_manifests(&self, device: &str) -> Result<Vec<u64>, StoreError> {
        if device != self.device_id {
            return Err(not_supported(&format!(
                "listing the manifests of another device ({device:?})"
            )));
        }
        let path = "/api/v1/device/backups/manifests";
        let answer = self.manifest_list()?;
        answer
            .get("sequences")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| {
                StoreError::Remote(format!("{path}: no list of sequences in the answer"))
            })
    }
}
