//! The background task re-signs the timestamp and the snapshot before they expire; every new
//! timestamp verifies, and the snapshot it names is already served when it appears.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, config, fetch_and_verify, run, start};

#[test]
fn timestamp_and_snapshot_are_re_signed_before_they_expire() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.repository.timestamp_expiry_secs = 4;
        cfg.repository.snapshot_expiry_secs = 6;
        cfg.repository.resign_check_secs = 1;
        let (srv, _) = start(cfg).await;
        let c = client();

        let first = fetch_and_verify(&c, &srv).await;
        assert_eq!(first.timestamp.signed().version, 1);
        let mut last_ts = first.timestamp.signed().clone();
        let mut snapshot_versions = std::collections::BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Each fetch walks and verifies the whole chain, expiry included: a client never
            // sees a timestamp naming a snapshot that is not there yet.
            let chain = fetch_and_verify(&c, &srv).await;
            let ts = chain.timestamp.signed();
            assert!(ts.version >= last_ts.version, "versions never go back");
            if ts.version > last_ts.version {
                assert!(ts.expires >= last_ts.expires);
            }
            snapshot_versions.insert(chain.snapshot.signed().version);
            last_ts = ts.clone();
            if last_ts.version >= 3 && snapshot_versions.iter().any(|v| *v >= 2) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no re-signing within 30 s: timestamp v{}, snapshots {snapshot_versions:?}",
                last_ts.version
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The targets were not due: still version 1, named by every snapshot.
        let chain = fetch_and_verify(&c, &srv).await;
        assert_eq!(chain.targets.signed().version, 1);
        assert_eq!(chain.root_bytes, first.root_bytes);
        srv.stop().await;
    });
}
