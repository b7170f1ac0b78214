//! Enrolled devices: the key a signed request is checked against, the nonces that make a
//! replay detectable, last seen, the last report, listing and revoking.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::report::DeviceReport;
use super::FleetError;
use otter_keys::crypto::PublicKey;

/// The key of a device, to check its request signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// The device id.
    pub device_id: String,
    /// Its ed25519 identity key.
    pub public_key: PublicKey,
    /// When it was revoked; a revoked device is refused.
    pub revoked_at: Option<i64>,
}

/// Looks up the key of `device_id`; `None` if no such device is enrolled.
pub fn device_key(conn: &Connection, device_id: &str) -> Result<Option<DeviceKey>, FleetError> {
    let row = conn
        .query_row(
            "SELECT public_key, revoked_at FROM devices WHERE device_id = ?1",
            [device_id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?)),
        )
        .optional()?;
    let Some((hex_key, revoked_at)) = row else {
        return Ok(None);
    };
    let public_key = otter_keys::request::parse_device_public_key(&hex_key)
        .map_err(|e| FleetError::InvalidPublicKey(format!("stored for {device_id}: {e}")))?;
    Ok(Some(DeviceKey {
        device_id: device_id.to_owned(),
        public_key,
        revoked_at,
    }))
}

/// Whether a verified request's nonce is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSeen {
    /// First time: the request is accepted and the device was seen now.
    Fresh,
    /// Seen before within the window: a replay, to refuse.
    Replayed,
}

/// Records the nonce of a verified request of `device_id` and, if it is new, the device's
/// last-seen time. Nonces older than `window_secs` are pruned first: the window must cover
/// every timestamp the verifier still accepts (twice the allowed clock skew).
pub fn record_request(
    conn: &mut Connection,
    device_id: &str,
    nonce: &str,
    now: i64,
    window_secs: u64,
) -> Result<RequestSeen, FleetError> {
    let window = i64::try_from(window_secs).unwrap_or(i64::MAX);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "DELETE FROM device_nonces WHERE seen_at < ?1",
        [now.saturating_sub(window)],
    )?;
    let inserted = tx.execute(
        "INSERT INTO device_nonces (device_id, nonce, seen_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (device_id, nonce) DO NOTHING",
        rusqlite::params![device_id, nonce, now],
    )?;
    if inserted == 0 {
        return Ok(RequestSeen::Replayed);
    }
    tx.execute(
        "UPDATE devices SET last_seen = MAX(COALESCE(last_seen, 0), ?2) WHERE device_id = ?1",
        rusqlite::params![device_id, now],
    )?;
    tx.commit()?;
    Ok(RequestSeen::Fresh)
}

/// Stores `report` as the device's last report.
pub fn store_report(
    conn: &Connection,
    device_id: &str,
    report: &DeviceReport,
    now: i64,
) -> Result<(), FleetError> {
    report.validate().map_err(FleetError::InvalidReport)?;
    let json = serde_json::to_string(report)?;
    let n = conn.execute(
        "UPDATE devices SET last_report = ?2, last_report_at = ?3,
                last_seen = MAX(COALESCE(last_seen, 0), ?3)
         WHERE device_id = ?1",
        rusqlite::params![device_id, json, now],
    )?;
    if n == 0 {
        return Err(FleetError::DeviceNotFound(device_id.to_owned()));
    }
    Ok(())
}

/// A device as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// Its id.
    pub device_id: String,
    /// Its hardware model.
    pub hardware_model: String,
    /// Its group.
    pub group: Option<String>,
    /// Its ed25519 identity key, hex.
    pub public_key: String,
    /// Its age backup recipient; `None` for a write-only device (it keeps no backup key).
    pub backup_recipient: Option<String>,
    /// Enrollment time, Unix seconds.
    pub enrolled_at: i64,
    /// Time of its last accepted signed request, Unix seconds.
    pub last_seen: Option<i64>,
    /// Revocation time.
    pub revoked_at: Option<i64>,
    /// Installed versions from the last report.
    pub installed: std::collections::BTreeMap<String, String>,
    /// When the last report arrived.
    pub last_report_at: Option<i64>,
    /// The last report.
    pub last_report: Option<DeviceReport>,
}

/// Which devices to list; `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFilter {
    /// Only this group.
    pub group: Option<String>,
    /// Only this hardware model.
    pub model: Option<String>,
}

const DEVICE_COLUMNS: &str = "device_id, hardware_model, device_group, public_key, \
     backup_recipient, enrolled_at, last_seen, revoked_at, last_report_at, last_report";

fn info_row(r: &rusqlite::Row) -> rusqlite::Result<DeviceInfo> {
    let report: Option<String> = r.get(9)?;
    let last_report = match report {
        Some(text) => Some(serde_json::from_str::<DeviceReport>(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, e.into())
        })?),
        None => None,
    };
    Ok(DeviceInfo {
        device_id: r.get(0)?,
        hardware_model: r.get(1)?,
        group: r.get(2)?,
        public_key: r.get(3)?,
        backup_recipient: Some(r.get::<_, String>(4)?).filter(|r| !r.is_empty()),
        enrolled_at: r.get(5)?,
        last_seen: r.get(6)?,
        revoked_at: r.get(7)?,
        last_report_at: r.get(8)?,
        installed: last_report
            .as_ref()
            .map(|rep| rep.installed.clone())
            .unwrap_or_default(),
        last_report,
    })
}

/// Devices matching `filter`, in enrollment order.
pub fn list_devices(
    conn: &Connection,
    filter: &DeviceFilter,
) -> Result<Vec<DeviceInfo>, FleetError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices
         WHERE (?1 IS NULL OR device_group = ?1) AND (?2 IS NULL OR hardware_model = ?2)
         ORDER BY id"
    ))?;
    let rows = stmt.query_map(rusqlite::params![filter.group, filter.model], info_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Revokes a device: its requests are refused from now on. Revoking twice keeps the first
/// time.
pub fn revoke_device(
    conn: &Connection,
    device_id: &str,
    now: i64,
) -> Result<DeviceInfo, FleetError> {
    conn.execute(
        "UPDATE devices SET revoked_at = ?2 WHERE device_id = ?1 AND revoked_at IS NULL",
        rusqlite::params![device_id, now],
    )?;
    conn.query_row(
        &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?1"),
        [device_id],
        info_row,
    )
    .optional()?
    .ok_or_else(|| FleetError::DeviceNotFound(device_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::enrollment::{create_enrollment_token, enroll, EnrollRequest};
    use otter_keys::crypto::SigningKey;

    fn enrolled(model: &str, group: Option<&str>) -> (Connection, String, SigningKey) {
        let mut c = Connection::open_in_memory().unwrap();
        for m in crate::db::MIGRATIONS {
            c.execute_batch(m.sql).unwrap();
        }
        let id = add(&mut c, model, group).0;
        let key = SigningKey::from_seed(&[1; 32]);
        (c, id, key)
    }

    fn add(c: &mut Connection, model: &str, group: Option<&str>) -> (String, SigningKey) {
        let (_, t) = create_enrollment_token(c, group, 3600, None, 0).unwrap();
        let key = SigningKey::generate();
        let req = EnrollRequest {
            token: t.expose_dangerous().into(),
            public_key: hex::encode(key.public_bytes()),
            backup_recipient: otter_keys::age::x25519::Identity::generate()
                .to_public()
                .to_string(),
            hardware_model: model.into(),
        };
        (enroll(c, &req, 10).unwrap().device_id, key)
    }

    #[test]
    fn nonces_are_single_use_within_the_window_and_pruned_after() {
        let (mut c, id, _) = enrolled("pos-a", None);
        let n = "ab".repeat(16);
        assert_eq!(
            record_request(&mut c, &id, &n, 100, 600).unwrap(),
            RequestSeen::Fresh
        );
        assert_eq!(
            record_request(&mut c, &id, &n, 150, 600).unwrap(),
            RequestSeen::Replayed
        );
        assert_eq!(device_key(&c, &id).unwrap().unwrap().revoked_at, None);
        let listed = list_devices(&c, &DeviceFilter::default()).unwrap();
        assert_eq!(listed[0].last_seen, Some(100));
        // Past the window the row is pruned (the verifier refuses such old timestamps).
        assert_eq!(
            record_request(&mut c, &id, &"cd".repeat(16), 701, 600).unwrap(),
            RequestSeen::Fresh
        );
        let left: i64 = c
            .query_row("SELECT COUNT(*) FROM device_nonces", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 1);
    }

    #[test]
    fn reports_are_stored_and_devices_filtered_and_revoked() {
        let (mut c, a, _) = enrolled("pos-a", Some("lane-1"));
        let (b, _) = add(&mut c, "pos-b", Some("lane-2"));
        let mut rep = DeviceReport::default();
        rep.installed.insert("firmware".into(), "1.2.3".into());
        store_report(&c, &a, &rep, 50).unwrap();
        assert!(matches!(
            store_report(&c, "nope", &rep, 50),
            Err(FleetError::DeviceNotFound(_))
        ));
        let all = list_devices(&c, &DeviceFilter::default()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].installed["firmware"], "1.2.3");
        assert_eq!(all[0].last_report_at, Some(50));
        let f = DeviceFilter {
            model: Some("pos-b".into()),
            ..DeviceFilter::default()
        };
        let only_b = list_devices(&c, &f).unwrap();
        assert_eq!(
            (only_b.len(), only_b[0].device_id.as_str()),
            (1, b.as_str())
        );
        let f = DeviceFilter {
            group: Some("lane-1".into()),
            model: Some("pos-b".into()),
        };
        assert!(list_devices(&c, &f).unwrap().is_empty());
        assert_eq!(revoke_device(&c, &b, 70).unwrap().revoked_at, Some(70));
        assert_eq!(revoke_device(&c, &b, 80).unwrap().revoked_at, Some(70));
        assert_eq!(device_key(&c, &b).unwrap().unwrap().revoked_at, Some(70));
        assert!(device_key(&c, "nope").unwrap().is_none());
    }
}
