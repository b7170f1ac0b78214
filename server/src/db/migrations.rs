//! Versioned schema migrations, in code. Each runs once, in its own transaction, and is
//! recorded in `schema_migrations`; a migration is never edited once released, only followed
//! by a new one.

use rusqlite::{Connection, TransactionBehavior};

use super::{unix_now, DbError};

/// One schema change.
#[derive(Debug)]
pub struct Migration {
    /// Its number; migrations run in increasing order.
    pub version: i64,
    /// What it does, for humans.
    pub name: &'static str,
    /// The SQL it runs.
    pub sql: &'static str,
}

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "repository, signed metadata versions, API tokens",
        sql: r#"
CREATE TABLE repository (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    mode        TEXT    NOT NULL CHECK (mode IN ('development', 'production')),
    created_at  INTEGER NOT NULL
) STRICT;

-- Every version of every metadata file the server has signed or accepted. The database is
-- the source of truth: a version is recorded here before any file naming it is written to
-- the object store, so a version number is never reused for different contents.
CREATE TABLE metadata_versions (
    role        TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    expires     INTEGER NOT NULL,
    length      INTEGER NOT NULL,
    sha256      TEXT    NOT NULL,
    content     BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (role, version)
) STRICT;

-- API tokens for people. Only the SHA-256 of a token is kept; the token is shown once.
CREATE TABLE api_tokens (
    id            INTEGER PRIMARY KEY,
    token_sha256  TEXT    NOT NULL UNIQUE,
    role          TEXT    NOT NULL
                  CHECK (role IN ('admin', 'publisher', 'operator', 'auditor', 'restorer')),
    label         TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
) STRICT;
"#,
    },
    Migration {
        version: 2,
        name: "releases",
        sql: r#"
-- Every release ever published. (name, version) is unique for good: a yanked release keeps
-- its row, so the same version can never be published again with other contents.
CREATE TABLE releases (
    id               INTEGER PRIMARY KEY,
    name             TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    kind             TEXT    NOT NULL CHECK (kind IN ('firmware', 'driver', 'patch')),
    target_name      TEXT    NOT NULL UNIQUE,
    length           INTEGER NOT NULL CHECK (length >= 0),
    sha256           TEXT    NOT NULL,
    channel          TEXT    NOT NULL,
    hardware         TEXT    NOT NULL,
    manifest         BLOB    NOT NULL,
    published_by     INTEGER REFERENCES api_tokens(id),
    published_at     INTEGER NOT NULL,
    targets_version  INTEGER NOT NULL,
    yanked_at        INTEGER,
    UNIQUE (name, version)
) STRICT;
"#,
    },
    Migration {
        version: 3,
        name: "fleet: enrollment tokens, devices, device request nonces",
        sql: r#"
-- Single-use enrollment tokens. Only the SHA-256 of a token is kept; the token is shown
-- once. created_by is the API token that made it, NULL when made on the server host.
CREATE TABLE enrollment_tokens (
    id              INTEGER PRIMARY KEY,
    token_sha256    TEXT    NOT NULL UNIQUE,
    device_group    TEXT,
    created_by      INTEGER REFERENCES api_tokens(id),
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    used_at         INTEGER,
    used_by_device  TEXT
) STRICT;

-- Enrolled terminals: their ed25519 identity key (hex) that signs every request, their
-- age X25519 backup recipient, and what they last reported.
CREATE TABLE devices (
    id                INTEGER PRIMARY KEY,
    device_id         TEXT    NOT NULL UNIQUE,
    public_key        TEXT    NOT NULL UNIQUE,
    backup_recipient  TEXT    NOT NULL,
    hardware_model    TEXT    NOT NULL,
    device_group      TEXT,
    enrollment_token  INTEGER REFERENCES enrollment_tokens(id),
    enrolled_at       INTEGER NOT NULL,
    last_seen         INTEGER,
    revoked_at        INTEGER,
    last_report       TEXT,
    last_report_at    INTEGER
) STRICT;
CREATE INDEX devices_group ON devices(device_group);
CREATE INDEX devices_model ON devices(hardware_model);

-- Nonces of signed device requests seen within the clock-skew window; a second request
-- with the same nonce is a replay. Rows older than the window are pruned.
CREATE TABLE device_nonces (
    device_id  TEXT    NOT NULL,
    nonce      TEXT    NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (device_id, nonce)
) STRICT, WITHOUT ROWID;
CREATE INDEX device_nonces_seen ON device_nonces(seen_at);
"#,
    },
    Migration {
        version: 4,
        name: "backup catalog: packs and manifests",
        sql: r#"
-- Encrypted backup packs a device uploaded, named by the SHA-256 of their ciphertext and
-- stored at backups/{device}/packs/{pack_id}. The row is written after the object, so a
-- listed pack is always stored. first_sequence is the first manifest that referenced it
-- (NULL: uploaded, not referenced yet).
CREATE TABLE backup_packs (
    device_id       TEXT    NOT NULL,
    pack_id         TEXT    NOT NULL,
    length          INTEGER NOT NULL CHECK (length > 0),
    stored_at       INTEGER NOT NULL,
    first_sequence  INTEGER,
    PRIMARY KEY (device_id, pack_id)
) STRICT, WITHOUT ROWID;

-- Accepted backup manifests, one chain per device, stored at
-- backups/{device}/manifests/{sequence:020}. header is the canonical signed header (the
-- next manifest's chain check needs it); countersignature is the server's receipt (JSON).
CREATE TABLE backup_manifests (
    device_id         TEXT    NOT NULL,
    sequence          INTEGER NOT NULL CHECK (sequence >= 1),
    header_hash       TEXT    NOT NULL UNIQUE,
    header            BLOB    NOT NULL,
    created           INTEGER NOT NULL,
    pack_count        INTEGER NOT NULL,
    total_pack_bytes  INTEGER NOT NULL,
    new_pack_bytes    INTEGER NOT NULL,
    body_length       INTEGER NOT NULL,
    manifest_length   INTEGER NOT NULL,
    received_at       INTEGER NOT NULL,
    countersignature  TEXT    NOT NULL,
    PRIMARY KEY (device_id, sequence)
) STRICT;
"#,
    },
    Migration {
        version: 5,
        name: "rollouts and update outcomes",
        sql: r#"
-- The operator's rollout of each release. percent and groups are what the operator set;
-- what is signed follows from them and the status: active signs them as they are, paused,
-- halted and aborted sign percent 0 and no groups. evaluate_since starts the window of
-- outcomes the automatic halt counts (reset by resume).
CREATE TABLE rollouts (
    release_id      INTEGER PRIMARY KEY REFERENCES releases(id),
    percent         INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
    groups          TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('active', 'paused', 'halted', 'aborted')),
    reason          TEXT,
    evaluate_since  INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    updated_by      TEXT    NOT NULL
) STRICT;

-- The last update outcome each device reported for each release.
CREATE TABLE update_outcomes (
    release_id   INTEGER NOT NULL REFERENCES releases(id),
    device_id    TEXT    NOT NULL,
    result       TEXT    NOT NULL CHECK (result IN ('success', 'failed', 'rolled_back')),
    reported_at  INTEGER NOT NULL,
    PRIMARY KEY (release_id, device_id)
) STRICT;
"#,
    },
    Migration {
        version: 6,
        name: "hash-chained audit log",
        sql: r#"
-- Every change, append-only. hash = SHA-256(prev_hash || canonical entry bytes), where the
-- entry bytes are the canonical JSON of seq, at, actor, actor_name, action, subject and
-- details (the text stored here); prev_hash of entry 1 is 64 zeros. The triggers stop
-- accidental edits; deliberate ones are found by `otter-server audit verify`.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY CHECK (seq >= 1),
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    actor_name  TEXT,
    action      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    details     TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL UNIQUE
) STRICT;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    },
    Migration {
        version: 7,
        name: "backup retention: pruned manifests, pack tombstones, verification results",
        sql: r#"
-- Manifests removed by retention. The row moves here from backup_manifests (whose object is
-- then deleted from the store; store_deleted once it is); the header and the server's
-- countersignature stay, so the hash chain of the manifests that remain is still checked
-- link by link.
CREATE TABLE backup_pruned_manifests (
    device_id         TEXT    NOT NULL,
    sequence          INTEGER NOT NULL CHECK (sequence >= 1),
    header_hash       TEXT    NOT NULL UNIQUE,
    header            BLOB    NOT NULL,
    created           INTEGER NOT NULL,
    received_at       INTEGER NOT NULL,
    countersignature  TEXT    NOT NULL,
    pruned_at         INTEGER NOT NULL,
    store_deleted     INTEGER NOT NULL DEFAULT 0 CHECK (store_deleted IN (0, 1)),
    PRIMARY KEY (device_id, sequence)
) STRICT;

-- Packs being garbage-collected: the catalog row is gone, the object may still be in the
-- store. A pack upload with a tombstone is refused (retry later) until the collection that
-- wrote it has deleted the object; an interrupted collection is finished by the next prune.
CREATE TABLE backup_pack_tombstones (
    device_id  TEXT    NOT NULL,
    pack_id    TEXT    NOT NULL,
    since      INTEGER NOT NULL,
    PRIMARY KEY (device_id, pack_id)
) STRICT, WITHOUT ROWID;

-- The last keyless verification of each catalogued manifest: when, and what it found
-- (problems is a JSON array of strings, empty when it verified).
CREATE TABLE backup_verifications (
    device_id    TEXT    NOT NULL,
    sequence     INTEGER NOT NULL,
    verified_at  INTEGER NOT NULL,
    ok           INTEGER NOT NULL CHECK (ok IN (0, 1)),
    problems     TEXT    NOT NULL,
    PRIMARY KEY (device_id, sequence)
) STRICT;
"#,
    },
    Migration {
        version: 8,
        name: "restore requests: asked by admins or restorers, fetched and answered by devices",
        sql: r#"
CREATE TABLE restore_requests (
    id            INTEGER PRIMARY KEY,
    device_id     TEXT    NOT NULL,
    sequence      INTEGER NOT NULL,
    header_hash   TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    requested_by  TEXT    NOT NULL,
    requested_at  INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    result        TEXT,
    finished_at   INTEGER
) STRICT;
CREATE INDEX restore_requests_device ON restore_requests (device_id, status);
"#,
    },
    Migration {
        version: 9,
        name: "alerts raised by devices' security events (console, metrics, webhook)",
        sql: crate::alerts::SCHEMA,
    },
    Migration {
        version: 10,
        name: "restore requests may be repairs: restore the newest backup that verifies",
        sql: "ALTER TABLE restore_requests ADD COLUMN repair INTEGER NOT NULL DEFAULT 0 \
              CHECK (repair IN (0, 1));",
    },
    Migration {
        version: 11,
        name: "enrollment tokens can be revoked before they are used",
        sql: "ALTER TABLE enrollment_tokens ADD COLUMN revoked_at INTEGER;",
    },
    Migration {
        version: 12,
        name: "restore requests record when the device first fetched them",
        sql: "ALTER TABLE restore_requests ADD COLUMN delivered_at INTEGER;",
    },
    Migration {
        version: 13,
        name: "root rotations accepted and restarts above the store's versions",
        sql: r#"
-- Each root version taken in after the first (PUT /api/v1/root, or adopted from the store by
-- `serve --resume-above-store`), with the online key ids it made the server sign with. The
-- root's bytes themselves are in metadata_versions.
CREATE TABLE root_rotations (
    root_version  INTEGER PRIMARY KEY CHECK (root_version >= 2),
    accepted_at   INTEGER NOT NULL,
    source        TEXT    NOT NULL CHECK (source IN ('api', 'store')),
    online_keys   TEXT    NOT NULL
) STRICT;
"#,
    },
    Migration {
        version: 14,
        name:
            "backup transfers: another device's backup re-encrypted for a device, ciphertext only",
        sql: crate::backups::transfers::SCHEMA,
    },
    Migration {
        version: 15,
        name: "restore requests keep the terminal's structured outcome (JSON)",
        sql: "ALTER TABLE restore_requests ADD COLUMN outcome TEXT \
              CHECK (outcome IS NULL OR json_valid(outcome));",
    },
    Migration {
        version: 16,
        name: "backup transfers have a state: importing, ready (the device sees it), deleting",
        sql: crate::backups::transfers::STATE_SCHEMA,
    },
];

/// Brings the schema up to date.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version     INTEGER PRIMARY KEY,
            name        TEXT    NOT NULL,
            applied_at  INTEGER NOT NULL
        ) STRICT;",
    )?;
    let known = MIGRATIONS.last().map_or(0, |m| m.version);
    // Immediate: two processes opening one new database cannot both migrate it.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    if current > known {
        return Err(DbError::TooNew {
            found: current,
            known,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, unix_now()],
        )?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied database migration"
        );
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_strictly() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].version < w[1].version);
        }
        assert_eq!(MIGRATIONS.first().map(|m| m.version), Some(1));
    }
}
