//! The OpenAPI 3.1 document of the HTTP API, served at `GET /api/v1/openapi.json` and
//! rendered as the Markdown reference `docs/api.md` (`otter-server openapi --markdown`).
//!
//! Its operations are generated from [`super::API_ROUTES`], the same table the authorization
//! test walks, so no route can be missing and the roles shown are the ones enforced
//! (`x-otter-access`); request and response schemas of the main endpoints are written by
//! hand below. The public routes outside that table (health, repository files, this
//! document) are listed in [`PUBLIC_ROUTES`].

use std::fmt::Write as _;

use actix_web::http::header;
use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

use super::{Access, API_ROUTES};

/// Routes anyone may call, with what they do: not in [`API_ROUTES`] because no
/// authorization applies.
pub const PUBLIC_ROUTES: &[(&str, &str, &str)] = &[
    (
        "GET",
        "/healthz",
        "Liveness: the database answers and the store holds the timestamp; warnings (root near expiry).",
    ),
    (
        "GET",
        "/readyz",
        "Readiness: the same checks as /healthz, for load balancers.",
    ),
    (
        "GET",
        "/api/v1/openapi.json",
        "This OpenAPI document.",
    ),
    (
        "GET",
        "/repo/metadata/{file}",
        "TUF metadata: root.json, timestamp.json (no-cache) and VERSION.ROLE.json (immutable). Also HEAD, Range, ETag.",
    ),
    (
        "GET",
        "/repo/targets/{file}",
        "Target files as SHA256.NAME (immutable). Also HEAD, Range, ETag.",
    ),
];

/// Prose that precedes the generated reference in `docs/api.md`.
const GUIDE: &str = r#"
## Delegated targets roles (a vendor signs its own releases)

A team or vendor (say the card-reader driver vendor) can own a delegated targets role: it
signs that role's metadata offline with its own keys and the server, which holds no key for
it, only checks and serves it. Clients (the Otter agent, python-tuf, any TUF client) trust
its targets because the top-level targets, signed by the server, delegate the paths to the
vendor's keys.

1. The vendor makes a key offline: `otter-keys key new --dir vendor-keys --name cr-1`, and
   gives `vendor-keys/cr-1.pub.json` (a TUF public key object) to the admin.
2. The admin declares the delegation: `POST /api/v1/delegations` with
   `{"name": "card-reader", "keys": [CONTENTS OF cr-1.pub.json], "threshold": 1,
   "paths": ["cardreader-*"], "terminating": true}`. The server re-signs targets, snapshot
   and timestamp. Posting the same name again replaces the delegation (new keys, threshold
   or paths); metadata the new delegation no longer admits is dropped from the snapshot.
   Keys of the repository's own roles are refused: the server must hold no key of the role.
3. A publisher uploads each target file: `PUT /api/v1/delegations/card-reader/targets/NAME`
   with the file as body. The name must match the delegation's patterns and be a flat file
   name (no `/`). The answer holds the entry (`length`, `hashes`) to list in the metadata.
   Target files must be stored this way before the metadata naming them is accepted.
4. The vendor writes the role's metadata (version above every version accepted before, an
   expiry in the future), unsigned:
   `{"signed": {"_type": "targets", "spec_version": "1.0.31", "version": 1,
   "expires": "2027-01-01T00:00:00Z", "targets": {"cardreader-2.1.0.bin": ENTRY}},
   "signatures": []}`, signs it offline with `otter-keys sign --key vendor-keys/cr-1.key
   FILE` (a threshold of the delegated keys), and a publisher uploads it:
   `PUT /api/v1/delegations/card-reader` with the file as body.
5. The server refuses, with a JSON 4xx error and without changing anything: a signature by a
   delegated key that does not verify (`bad_signature`), fewer valid signatures than the
   threshold (`signature_threshold`), a version not above the last one accepted
   (`version_rollback`, 409), expired metadata (`expired`), a target outside the delegated
   patterns (`path_not_delegated`), a target not stored or stored with another length or
   hash (`target_mismatch`), further delegations or malformed metadata
   (`invalid_metadata`), an undeclared role (`unknown_role`, 404) and unsafe role names
   (`invalid_name`). Accepted metadata is served unchanged at
   `/repo/metadata/VERSION.ROLE.json` and named in a new snapshot and timestamp.
6. Anyone can check the result offline: `otter-keys verify --root 1.root.json
   --delegator N.targets.json --role card-reader V.card-reader.json`.

`DELETE /api/v1/delegations/card-reader` removes the delegation. Accepted versions stay
recorded, so a later delegation of the same name starts above them.

## Operations endpoints

- `GET /healthz` and `GET /readyz` (anyone): 200 `{"status": "ok", "checks": {...}}` when
  the database answers and the object store holds the timestamp, 503 `unhealthy` otherwise.
- `GET /metrics`: Prometheus text format 0.0.4. It needs an API token with the role admin,
  operator or auditor, because device counts by installed version tell which terminals run
  a vulnerable version. Prometheus sends the token with
  `authorization: {type: Bearer, credentials_file: /etc/prometheus/otter-token}`. The
  metrics are `otter_http_requests_total{method,route,status}`,
  `otter_http_request_duration_seconds{method,route}` (histogram),
  `otter_repo_bytes_served_total{kind}`, `otter_publishes_total{kind}`,
  `otter_rollout_failures_total{release}`, `otter_backup_bytes_received_total`,
  `otter_devices{state}`, `otter_devices_installed{component,version}`,
  `otter_update_outcomes{release,result}`, `otter_rollouts{status}`,
  `otter_metadata_expires_timestamp_seconds{role}` (top-level and delegated roles: alert
  before a vendor's metadata expires), `otter_build_info` and `otter_uptime_seconds`. Labels hold route patterns, never raw paths.
- Logs: `otter-server serve --log-format json` writes one JSON object per line on standard
  error (level from `OTTER_LOG`); every request is logged with method, path, status and
  duration, never headers or bodies (successful `/repo/` file requests at debug level, so a
  fleet's polling does not flood the log; errors on them at info/warn).

"#;

/// `GET /api/v1/openapi.json`: the document (public: it holds no secret).
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(document())
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable machine code, e.g. forbidden, invalid_token, version_rollback."},
                "message": {"type": "string", "description": "What failed and what to do."}
            }
        }}
    })
}

fn versions_schema() -> Value {
    json!({"$ref": "#/components/schemas/Versions"})
}

/// What the hand-written part says about one operation.
struct Described {
    summary: &'static str,
    request: Option<(&'static str, Value)>,
    success: u16,
    response: Option<(&'static str, Value)>,
}

fn described(method: &str, path: &str) -> Described {
    let d = |summary, request, success, response| Described {
        summary,
        request,
        success,
        response,
    };
    let j = "application/json";
    let obj = |v: Value| Some((j, v));
    match (method, path) {
        ("GET", "/metrics") => d(
            "Prometheus metrics (text exposition format 0.0.4)",
            None,
            200,
            Some(("text/plain; version=0.0.4", json!({"type": "string"}))),
        ),
        ("POST", "/api/v1/tokens") => d(
            "Create an API token (shown once)",
            obj(json!({"type": "object", "required": ["role", "label"], "additionalProperties": false,
                "properties": {"role": {"enum": ["admin", "publisher", "operator", "auditor", "restorer"]},
                               "label": {"type": "string"}}})),
            201,
            obj(json!({"type": "object", "properties": {"id": {"type": "integer"}, "token": {"type": "string"},
                "role": {"type": "string"}, "label": {"type": "string"}}})),
        ),
        ("GET", "/api/v1/tokens") => d("List API tokens (never the tokens themselves)", None, 200,
            obj(json!({"type": "object", "properties": {"tokens": {"type": "array", "items": {"type": "object"}}}}))),
        ("DELETE", "/api/v1/tokens/{id}") => d("Revoke an API token", None, 200, None),
        ("POST", "/api/v1/releases") => d(
            "Publish a release bundle (zstd tar with manifest.json); query `channel` (default stable)",
            Some(("application/octet-stream", json!({"type": "string", "contentMediaType": "application/zstd"}))),
            201,
            obj(json!({"type": "object", "properties": {"release": {"$ref": "#/components/schemas/Release"}, "versions": versions_schema()}})),
        ),
        ("GET", "/api/v1/releases") => d("List releases, newest first", None, 200,
            obj(json!({"type": "object", "properties": {"releases": {"type": "array", "items": {"$ref": "#/components/schemas/Release"}}}}))),
        ("DELETE", "/api/v1/releases/{name}/{version}") => d("Yank a release (new targets without it)", None, 200,
            obj(json!({"type": "object", "properties": {"yanked": {"type": "object"}, "versions": versions_schema()}}))),
        ("POST", "/api/v1/enrollment-tokens") => d(
            "Create a single-use enrollment token",
            obj(json!({"type": "object", "additionalProperties": false, "properties": {
                "group": {"type": "string"}, "expires_in_secs": {"type": "integer", "minimum": 1}}})),
            201, None),
        ("GET", "/api/v1/enrollment-tokens") => d("List enrollment tokens, newest first, with their state (unused, used, expired, revoked); never the tokens", None, 200,
            obj(json!({"type": "object", "properties": {"enrollment_tokens": {"type": "array", "items": {"type": "object"}}}}))),
        ("DELETE", "/api/v1/enrollment-tokens/{id}") => d("Revoke an unused enrollment token: enrolling with it is refused from now on (409 if it was used)", None, 200,
            obj(json!({"type": "object", "properties": {"id": {"type": "integer"}, "revoked_at": {"type": "integer"}, "state": {"type": "string"}}}))),
        ("GET", "/api/v1/devices") => d("List devices; query `group`, `model`, `version` (`V` or `NAME=V`), `search`", None, 200,
            obj(json!({"type": "object", "properties": {"devices": {"type": "array", "items": {"type": "object"}}}}))),
        ("DELETE", "/api/v1/devices/{id}") => d("Revoke a device: its signed requests are refused from now on", None, 200,
            obj(json!({"type": "object", "properties": {"device_id": {"type": "string"}, "revoked_at": {"type": "integer"}}}))),
        ("POST", "/api/v1/enroll") => d(
            "Enroll a device with an enrollment token",
            obj(json!({"type": "object", "required": ["token", "public_key", "backup_recipient", "hardware_model"],
                "properties": {"token": {"type": "string"}, "public_key": {"type": "string", "description": "ed25519, 64 hex digits"},
                    "backup_recipient": {"type": "string", "description": "age X25519 recipient (not kept for a device of a write-only group)"}, "hardware_model": {"type": "string"}}})),
            201,
            obj(json!({"type": "object", "properties": {"device_id": {"type": "string"}}})),
        ),
        ("POST", "/api/v1/device/report") => d(
            "A device reports installed versions, the last update, health and security events",
            obj(json!({"type": "object", "additionalProperties": false, "properties": {
                "installed": {"type": "object", "additionalProperties": {"type": "string"}},
                "last_update": {"type": "object", "properties": {"target": {"type": "string"},
                    "result": {"enum": ["success", "failed", "rolled_back"]}, "message": {"type": "string"}, "at": {"type": "integer"}}},
                "health": {"enum": ["unknown", "ok", "degraded", "failing"]},
                "security_events": {"type": "array", "items": {"type": "object"}},
                "agent_version": {"type": "string"}}})),
            200, None),
        ("GET", "/api/v1/delegations") => d("List delegated targets roles", None, 200,
            obj(json!({"type": "object", "properties": {"delegations": {"type": "array", "items": {"$ref": "#/components/schemas/Delegation"}}}}))),
        ("POST", "/api/v1/delegations") => d(
            "Declare or replace a delegated targets role (201 new, 200 replaced); re-signs targets, snapshot, timestamp",
            obj(json!({"type": "object", "required": ["name", "keys", "threshold", "paths"], "additionalProperties": false,
                "properties": {"name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                    "keys": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/TufKey"}},
                    "threshold": {"type": "integer", "minimum": 1},
                    "paths": {"type": "array", "minItems": 1, "items": {"type": "string", "description": "shell-style pattern without '/'"}},
                    "terminating": {"type": "boolean", "default": false}}})),
            201,
            obj(json!({"type": "object", "properties": {"delegation": {"$ref": "#/components/schemas/Delegation"},
                "created": {"type": "boolean"}, "metadata_dropped": {"type": "boolean"}, "versions": versions_schema()}})),
        ),
        ("PUT", "/api/v1/delegations/{name}") => d(
            "Upload the role's targets metadata, signed offline by a threshold of its keys",
            Some(("application/json", json!({"description": "TUF targets metadata: {\"signed\": {...}, \"signatures\": [...]}", "type": "object"}))),
            201,
            obj(json!({"type": "object", "properties": {"role": {"type": "string"}, "version": {"type": "integer"},
                "file": {"type": "string"}, "versions": versions_schema()}})),
        ),
        ("DELETE", "/api/v1/delegations/{name}") => d("Remove a delegation and its metadata from the repository", None, 200, None),
        ("PUT", "/api/v1/delegations/{name}/targets/{target}") => d(
            "Store a target file for a delegated role; answers the entry its metadata must list",
            Some(("application/octet-stream", json!({"type": "string"}))),
            201,
            obj(json!({"type": "object", "properties": {"role": {"type": "string"}, "target": {"type": "string"},
                "entry": {"type": "object", "properties": {"length": {"type": "integer"}, "hashes": {"type": "object"}}}}})),
        ),
        ("GET", "/api/v1/rollouts") => d("List every release's rollout, newest first; query `yanked=true` includes yanked ones", None, 200, None),
        ("GET", "/api/v1/rollouts/{name}/{version}") => d("Show a release's rollout: percent, groups, state, reported outcomes", None, 200, None),
        ("POST", "/api/v1/rollouts/{name}/{version}/percent") => d(
            "Set the rollout percentage (a newly signed targets version)",
            obj(json!({"type": "object", "required": ["percent"], "properties": {
                "percent": {"type": "integer", "minimum": 0, "maximum": 100}, "force": {"type": "boolean"}}})),
            200, None),
        ("POST", "/api/v1/rollouts/{name}/{version}/groups") => d(
            "Set the device groups a rollout targets",
            obj(json!({"type": "object", "required": ["groups"], "properties": {
                "groups": {"type": "array", "items": {"type": "string"}}}})),
            200, None),
        ("POST", "/api/v1/rollouts/{name}/{version}/pause") => d("Pause a rollout (optional body {\"reason\"})", None, 200, None),
        ("POST", "/api/v1/rollouts/{name}/{version}/resume") => d("Resume a paused or halted rollout", None, 200, None),
        ("POST", "/api/v1/rollouts/{name}/{version}/abort") => d("Abort a rollout (optional body {\"reason\"})", None, 200, None),
        ("PUT", "/api/v1/root") => d(
            "Publish root version N+1, signed offline (otter-keys root rotate) by a threshold of the current and of the new root keys; the server switches to the online keys it names (installed beforehand with `otter-server keys import`) and re-signs snapshot and timestamp (and targets if its key changed)",
            Some(("application/json", json!({"description": "TUF root metadata: {\"signed\": {...}, \"signatures\": [...]}", "type": "object"}))),
            200,
            obj(json!({"type": "object", "properties": {"root": {"type": "integer"},
                "rotated_roles": {"type": "array", "items": {"type": "string"}}, "versions": versions_schema()}})),
        ),
        ("GET", "/api/v1/audit") => d("Read the hash-chained audit log; query `after`, `limit`", None, 200, None),
        ("GET", "/api/v1/audit/verify") => d("Verify the whole audit chain", None, 200, None),
        ("PUT", "/api/v1/device/backups/packs/{pack_id}") => d(
            "Upload an encrypted backup pack, named by the SHA-256 of its bytes",
            Some(("application/octet-stream", json!({"type": "string"}))), 201, None),
        ("HEAD", "/api/v1/device/backups/packs/{pack_id}") => d("Whether the server holds a pack of this device", None, 200, None),
        ("GET", "/api/v1/device/backups/packs/{pack_id}") => d("Download one of this device's packs", None, 200,
            Some(("application/octet-stream", json!({"type": "string"})))),
        ("POST", "/api/v1/device/backups/manifests") => d(
            "Submit a signed backup manifest; answered with the server's countersignature",
            obj(json!({"type": "object"})), 201, None),
        ("GET", "/api/v1/device/backups/manifests") => d("List this device's accepted manifests", None, 200, None),
        ("GET", "/api/v1/device/backups/manifests/{sequence}") => d("Download one of this device's stored manifests", None, 200, None),
        ("GET", "/api/v1/backups") => d("The backup catalog; query `device`", None, 200, None),
        ("GET", "/api/v1/backups/{device}/{sequence}") => d("One backup of a device: manifest summary and receipt", None, 200, None),
        ("POST", "/api/v1/backups/{device}/restore-requests") => d(
            "Ask the device to restore a catalogued backup (audited); the device picks it up",
            obj(json!({"type": "object", "required": ["backup", "reason"], "properties": {
                "backup": {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "latest"}, {"const": "newest-verifying"}]},
                "reason": {"type": "string", "maxLength": 512}}})), 201, None),
        ("GET", "/api/v1/backups/{device}/restore-requests") => d("The device's restore requests, newest first", None, 200, None),
        ("GET", "/api/v1/device/restore-requests") => d("This device's pending restore requests", None, 200, None),
        ("POST", "/api/v1/device/restore-requests/{id}") => d(
            "Report the outcome of a pending restore request (audited): a message for people and, optionally, the same as facts (`outcome`; 400 `invalid_outcome` when it is malformed, over its bounds or does not fit the request, and nothing is stored)",
            obj(json!({"type": "object", "required": ["ok", "message"], "additionalProperties": false, "properties": {
                "ok": {"type": "boolean"}, "message": {"type": "string"},
                "outcome": {"type": "object", "additionalProperties": false, "properties": {
                    "restored_sequence": {"type": "integer", "minimum": 1},
                    "rows_lost": {"type": "array", "maxItems": 200, "items": {"type": "object",
                        "required": ["table", "rows", "live", "backup"], "additionalProperties": false, "properties": {
                        "table": {"type": "string", "minLength": 1, "maxLength": 256},
                        "rows": {"type": "integer", "minimum": 1}, "live": {"type": "integer", "minimum": 1},
                        "backup": {"type": "integer", "minimum": 0}}}},
                    "refused": {"type": "array", "maxItems": 50, "items": {"type": "object",
                        "required": ["sequence", "reason"], "additionalProperties": false, "properties": {
                        "sequence": {"type": "integer", "minimum": 1},
                        "reason": {"type": "string", "minLength": 1, "maxLength": 300}}}}}}}})), 200, None),
        ("POST", "/api/v1/backup-maintenance/prune") => d(
            "Apply backup retention, then garbage-collect unreferenced packs (audited); query `device`, `dry_run`",
            None, 200, None),
        ("POST", "/api/v1/backup-maintenance/verify") => d(
            "Verify backups without any key: chain, signatures, countersignatures, every pack re-hashed from the store; query `device`",
            None, 200, None),
        ("GET", "/api/v1/devices/{id}/backups/export") => d(
            "The device's stored backup, ciphertext only, as a tar (manifests/SEQ, packs/ID: what `otter-keys backup reencrypt --from` reads); audited",
            None, 200, Some(("application/x-tar", json!({"type": "string"})))),
        ("POST", "/api/v1/devices/{id}/transfers") => d(
            "Import a transfer for the device: a tar of the directory `otter-keys backup reencrypt` wrote, checked without a key, stored (ciphertext only) and audited",
            Some(("application/x-tar", json!({"type": "string"}))), 201,
            obj(json!({"type": "object", "properties": {"transfer": {"type": "object"}}}))),
        ("GET", "/api/v1/devices/{id}/transfers") => d("The device's imported transfers, newest first, also those being imported or deleted (`state`: importing, ready, deleting)", None, 200,
            obj(json!({"type": "object", "properties": {"transfers": {"type": "array", "items": {"type": "object"}}}}))),
        ("DELETE", "/api/v1/devices/{id}/transfers/{transfer}") => d(
            "Delete a transfer: hidden from the device at once (audited), then its objects and its row are removed; 404 when unknown, 503 when the store fails part-way (repeat the request to finish)",
            None, 200,
            obj(json!({"type": "object", "properties": {"deleted": {"type": "object"}}}))),
        ("GET", "/api/v1/device/transfers") => d("This device's transfers, newest first", None, 200,
            obj(json!({"type": "object", "properties": {"transfers": {"type": "array", "items": {"type": "object"}}}}))),
        ("GET", "/api/v1/device/transfers/{id}") => d(
            "One of this device's transfers (`latest`: the newest) as a tar, for `otter-agent restore --from-server-transfer`; audited",
            None, 200, Some(("application/x-tar", json!({"type": "string"})))),
        _ => d("", None, 200, None),
    }
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "apiToken": {"type": "http", "scheme": "bearer", "description": "An API token (otter-server token create); its role decides what it may do."},
            "deviceSignature": {"type": "apiKey", "in": "header", "name": "Signature",
                "description": "HTTP message signature by the device's ed25519 key over method, path, time and body digest."}
        },
        "schemas": {
            "Error": error_schema(),
            "Versions": {"type": "object", "properties": {
                "targets": {"type": "integer"}, "snapshot": {"type": "integer"}, "timestamp": {"type": "integer"}}},
            "Release": {"type": "object", "properties": {
                "name": {"type": "string"}, "version": {"type": "string"}, "kind": {"enum": ["firmware", "driver", "patch"]},
                "target": {"type": "string"}, "length": {"type": "integer"}, "sha256": {"type": "string"},
                "channel": {"type": "string"}, "hardware": {"type": "array", "items": {"type": "string"}},
                "published_at": {"type": "integer"}, "targets_version": {"type": "integer"},
                "yanked_at": {"type": ["integer", "null"]}}},
            "TufKey": {"type": "object", "required": ["keytype", "scheme", "keyval"], "properties": {
                "keytype": {"const": "ed25519"}, "scheme": {"const": "ed25519"},
                "keyval": {"type": "object", "required": ["public"], "properties": {"public": {"type": "string"}}}}},
            "Delegation": {"type": "object", "properties": {
                "name": {"type": "string"}, "keyids": {"type": "array", "items": {"type": "string"}},
                "threshold": {"type": "integer"}, "paths": {"type": "array", "items": {"type": "string"}},
                "terminating": {"type": "boolean"}, "served_version": {"type": ["integer", "null"]},
                "highest_accepted": {"type": ["integer", "null"]}}}
        }
    })
}

fn path_parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn error_responses(access: Option<Access>) -> Map<String, Value> {
    let e = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let mut m = Map::new();
    m.insert(
        "4XX".into(),
        e("Refused: the request is invalid or conflicts; nothing changed"),
    );
    match access {
        Some(Access::Roles(_)) => {
            m.insert(
                "401".into(),
                e("No, malformed, unknown or revoked token (missing_token, invalid_token)"),
            );
            m.insert(
                "403".into(),
                e("The token's role is not admitted (forbidden)"),
            );
        }
        Some(Access::DeviceSignature) => {
            m.insert(
                "401".into(),
                e("Missing, stale, replayed or invalid device signature"),
            );
        }
        Some(Access::EnrollmentToken) => {
            m.insert(
                "401".into(),
                e("Unknown, used, expired or revoked enrollment token"),
            );
        }
        None => {}
    }
    m.insert(
        "5XX".into(),
        e("The server or its store failed; retry later"),
    );
    m
}

fn operation(method: &str, path: &str, access: Option<Access>, public_summary: &str) -> Value {
    let d = described(method, path);
    let summary = if !d.summary.is_empty() {
        d.summary.to_owned()
    } else if !public_summary.is_empty() {
        public_summary.to_owned()
    } else {
        format!("{method} {path}")
    };
    let tag = path
        .trim_start_matches("/api/v1/")
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let op_id: String = format!("{}{}", method.to_ascii_lowercase(), path)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut op = Map::new();
    op.insert("operationId".into(), json!(op_id));
    op.insert("summary".into(), json!(summary));
    op.insert("tags".into(), json!([tag]));
    let (security, access_value) = match access {
        Some(Access::Roles(roles)) => {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            (
                json!([{"apiToken": []}]),
                json!({"kind": "api_token", "roles": names}),
            )
        }
        Some(Access::DeviceSignature) => (
            json!([{"deviceSignature": []}]),
            json!({"kind": "device_signature", "roles": []}),
        ),
        Some(Access::EnrollmentToken) => {
            (json!([]), json!({"kind": "enrollment_token", "roles": []}))
        }
        None => (json!([]), json!({"kind": "public", "roles": []})),
    };
    op.insert("security".into(), security);
    op.insert("x-otter-access".into(), access_value);
    let params = path_parameters(path);
    if !params.is_empty() {
        op.insert("parameters".into(), json!(params));
    }
    if let Some((ct, schema)) = d.request {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {ct: {"schema": schema}}}),
        );
    }
    let mut responses = Map::new();
    let ok = match d.response {
        Some((ct, schema)) => {
            json!({"description": "Success", "content": {ct: {"schema": schema}}})
        }
        None => json!({"description": "Success"}),
    };
    responses.insert(d.success.to_string(), ok);
    responses.extend(error_responses(access));
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The OpenAPI 3.1 document: every route of [`API_ROUTES`] and [`PUBLIC_ROUTES`].
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut add = |method: &str, path: &str, op: Value| {
        let entry = paths
            .entry(path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(method.to_ascii_lowercase(), op);
        }
    };
    for (method, path, access) in API_ROUTES {
        add(method, path, operation(method, path, Some(*access), ""));
    }
    for (method, path, what) in PUBLIC_ROUTES {
        add(method, path, operation(method, path, None, what));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Otter server API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Secure OTA updates and backups for point-of-sale terminals. Errors are JSON \
                {\"error\": {\"code\", \"message\"}} with a 4xx or 5xx status. People authenticate with \
                `Authorization: Bearer TOKEN`; terminals sign their requests.",
        },
        "paths": paths,
        "components": components(),
    })
}

/// The document as the Markdown reference `docs/api.md`.
pub fn markdown() -> String {
    let doc = document();
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# API reference\n\n\
         <!-- Generated from the OpenAPI document by `scripts/gen-api-docs.sh` \
         (`otter-server openapi --markdown`); do not edit by hand. -->\n\n\
         The server's HTTP API, version {}. The same document in OpenAPI 3.1 form is served at \
         `GET /api/v1/openapi.json` and printed by `otter-server openapi`.\n\n\
         - People send `Authorization: Bearer TOKEN` (an API token from `otter-server token \
         create`); the roles column is enforced exactly as listed (the authorization test walks \
         the same table).\n\
         - Terminals sign every request with their ed25519 key (`device signature`).\n\
         - Every error is JSON `{{\"error\": {{\"code\": \"...\", \"message\": \"...\"}}}}` with a \
         4xx or 5xx status, and a refused request changes nothing.\n",
        doc["info"]["version"].as_str().unwrap_or("")
    );
    o.push_str(GUIDE);
    let _ = writeln!(
        o,
        "## Summary\n\n| Method | Path | Who | What |\n|---|---|---|---|"
    );
    let empty = Map::new();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    let mut ops: Vec<(String, String, &Value)> = Vec::new();
    for (path, methods) in paths {
        if let Some(m) = methods.as_object() {
            for (method, op) in m {
                ops.push((path.clone(), method.to_ascii_uppercase(), op));
            }
        }
    }
    ops.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    for (path, method, op) in &ops {
        let _ = writeln!(
            o,
            "| {method} | `{path}` | {} | {} |",
            who(op),
            op["summary"].as_str().unwrap_or("").replace('|', "\\|")
        );
    }
    let _ = writeln!(o, "\n## Operations");
    for (path, method, op) in &ops {
        let _ = writeln!(
            o,
            "\n### {method} `{path}`\n\n{}\n\n- Who: {}",
            op["summary"].as_str().unwrap_or(""),
            who(op)
        );
        if let Some(params) = op["parameters"].as_array() {
            let names: Vec<String> = params
                .iter()
                .filter_map(|p| p["name"].as_str())
                .map(|n| format!("`{n}`"))
                .collect();
            let _ = writeln!(o, "- Path parameters: {}", names.join(", "));
        }
        if let Some(content) = op["requestBody"]["content"].as_object() {
            for (ct, body) in content {
                let _ = writeln!(
                    o,
                    "- Request body (`{ct}`):\n\n```json\n{}\n```",
                    pretty(&body["schema"])
                );
            }
        }
        if let Some(responses) = op["responses"].as_object() {
            for (status, r) in responses {
                let mut line = format!("- `{status}`: {}", r["description"].as_str().unwrap_or(""));
                if let Some(content) = r["content"].as_object() {
                    for (ct, body) in content {
                        if body["schema"]["$ref"] == "#/components/schemas/Error" {
                            continue;
                        }
                        let _ = write!(
                            line,
                            " (`{ct}`):\n\n```json\n{}\n```",
                            pretty(&body["schema"])
                        );
                    }
                }
                let _ = writeln!(o, "{line}");
            }
        }
    }
    let _ = writeln!(o, "\n## Schemas");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, s) in schemas {
            let _ = writeln!(o, "\n### {name}\n\n```json\n{}\n```", pretty(s));
        }
    }
    o
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn who(op: &Value) -> String {
    let access = &op["x-otter-access"];
    match access["kind"].as_str().unwrap_or("") {
        "api_token" => {
            let roles: Vec<&str> = access["roles"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("token: {}", roles.join(", "))
        }
        "device_signature" => "device signature".into(),
        "enrollment_token" => "enrollment token (in the body)".into(),
        _ => "anyone".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_in_the_document() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for (method, path, _) in API_ROUTES {
            let op = &doc["paths"][*path][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path}");
        }
        let md = markdown();
        assert!(md.contains("| GET | `/metrics` | token: admin, operator, auditor |"));
    }
}
