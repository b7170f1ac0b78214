//! The repository's rows in the database: its mode and every metadata version signed.

use rusqlite::{Connection, OptionalExtension};

use super::build::{FileRecord, TopRole};
use crate::db::DbError;

/// The repository's mode, if it was initialised.
pub fn mode(conn: &Connection) -> Result<Option<String>, DbError> {
    Ok(conn
        .query_row("SELECT mode FROM repository WHERE id = 1", [], |r| r.get(0))
        .optional()?)
}

/// Records the repository itself.
pub fn insert_repository(conn: &Connection, mode: &str, now: i64) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO repository (id, mode, created_at) VALUES (1, ?1, ?2)",
        rusqlite::params![mode, now],
    )?;
    Ok(())
}

/// Records new metadata versions. A version recorded before is an error, never replaced.
pub fn insert_versions(conn: &Connection, records: &[FileRecord], now: i64) -> Result<(), DbError> {
    let mut stmt = conn.prepare(
        "INSERT INTO metadata_versions (role, version, expires, length, sha256, content, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for r in records {
        stmt.execute(rusqlite::params![
            r.role.name(),
            to_sql_int(r.version)?,
            r.expires.unix(),
            to_sql_int(r.bytes.len() as u64)?,
            otter_keys::hash::sha256_hex(&r.bytes),
            r.bytes,
            now,
        ])?;
    }
    Ok(())
}

/// SQLite integers are signed 64-bit.
fn to_sql_int(v: u64) -> Result<i64, DbError> {
    i64::try_from(v)
        .map_err(|e| DbError::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))
}

fn version_row(r: &rusqlite::Row) -> rusqlite::Result<(u64, Vec<u8>)> {
    let v: i64 = r.get(0)?;
    let v = u64::try_from(v).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Integer, Box::new(e))
    })?;
    Ok((v, r.get(1)?))
}

/// The latest version of a role and its bytes.
pub fn latest(conn: &Connection, role: TopRole) -> Result<Option<(u64, Vec<u8>)>, DbError> {
    Ok(conn
        .query_row(
            "SELECT version, content FROM metadata_versions WHERE role = ?1
             ORDER BY version DESC LIMIT 1",
            [role.name()],
            version_row,
        )
        .optional()?)
}

/// Every root version, oldest first (clients walk the chain from the root they trust).
pub fn all_roots(conn: &Connection) -> Result<Vec<(u64, Vec<u8>)>, DbError> {
    let mut stmt = conn.prepare(
        "SELECT version, content FROM metadata_versions WHERE role = 'root' ORDER BY version",
    )?;
    let rows = stmt.query_map([], version_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every release, newest first.
pub fn list_releases(conn: &Connection) -> Result<Vec<super::release::ReleaseInfo>, DbError> {
    let mut stmt = conn.prepare(
        "SELECT name, version, kind, target_name, length, sha256, channel, hardware,
                published_at, targets_version, yanked_at
         FROM releases ORDER BY id DESC",
    )?;
    let rows = stmt.query_map([], |r| {
        let hardware: String = r.get(7)?;
        let length: i64 = r.get(4)?;
        let tv: i64 = r.get(9)?;
        Ok(super::release::ReleaseInfo {
            name: r.get(0)?,
            version: r.get(1)?,
            kind: r.get(2)?,
            target: r.get(3)?,
            length: u64::try_from(length).unwrap_or(0),
            sha256: r.get(5)?,
            channel: r.get(6)?,
            hardware: serde_json::from_str(&hardware).unwrap_or_default(),
            published_at: r.get(8)?,
            targets_version: u64::try_from(tv).unwrap_or(0),
            yanked_at: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
