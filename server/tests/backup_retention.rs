//! Retention with the real server on loopback and the real `otter-server` binary on the same
//! data dir: `backups prune --dry-run` changes nothing; `backups prune` (CLI, and the admin
//! API for one device) keeps what each group's policy says, deletes the pruned manifests and
//! the packs only they referenced from the store, keeps packs a kept backup still needs,
//! audits the prune; `backups verify` still checks the chain across the pruned backups; and
//! the device's next backup is accepted after the prune.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backup_support;
mod common;

use backup_support::{
    backup, cli, config_file, device_store, listed, post, signed, Chain, MANIFESTS,
};
use common::fleet::{enrolled_device, now};
use common::{api, client, make_token, run, start};
use otter_keys::envelope::{Countersignature, ManifestHeader, SignedManifest};
use serde_json::Value;

const DAY: i64 = 86_400;

const RETENTION: &str = "
[backups.retention]
keep_last = 2

[backups.retention.groups.lab]
keep_last = 1
keep_daily = 2
";

fn json_out(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn prune_keeps_what_each_group_policy_says_and_the_chain_still_verifies() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (file, cfg) = config_file(dir.path(), RETENTION);
        let (srv, admin) = start(cfg.clone()).await;
        let admin = admin.unwrap();
        let c = client();
        // 30 days ago at midnight UTC, so that the day of each backup is known.
        let t0 = (now() - 30 * DAY).div_euclid(DAY) * DAY;

        // Lane device, default policy (keep_last = 2): every backup needs the base pack
        // and its own pack.
        let lane = enrolled_device(&c, &srv, &admin, Some("lane")).await;
        let mut lane_chain = Chain::new();
        let base = lane_chain.pack(100, 3);
        let own: Vec<_> = (1..=5).map(|i| lane_chain.pack(i, 2)).collect();
        for (i, p) in own.iter().enumerate() {
            let t = t0 + i as i64 * DAY;
            backup(&c, &srv, &lane, &mut lane_chain, t, &[&base, p]).await;
        }
        // Lab device (keep_last = 1, keep_daily = 2): days 0, 0, 1, 2, 2.
        let lab = enrolled_device(&c, &srv, &admin, Some("lab")).await;
        let mut lab_chain = Chain::new();
        let hours = [(0, 10), (0, 12), (1, 9), (2, 8), (2, 9)];
        for (i, (d, h)) in hours.iter().enumerate() {
            let p = lab_chain.pack(50 + i as u8, 1);
            let t = t0 + d * DAY + h * 3600;
            backup(&c, &srv, &lab, &mut lab_chain, t, &[&p]).await;
        }

        let lane_dir = device_store(&cfg, &lane.id);
        let pack_file =
            |p: &otter_keys::envelope::SealedPack| lane_dir.join("packs").join(p.id.to_string());
        let manifest_file = |s: u64| lane_dir.join("manifests").join(format!("{s:020}"));

        // A dry run says what it would do and changes nothing.
        let dry = json_out(&cli(&file, &["backups", "prune", "--dry-run", "--json"]));
        assert_eq!(dry["dry_run"], true);
        let devices = dry["devices"].as_array().unwrap();
        let of = |id: &str| {
            devices
                .iter()
                .find(|d| d["device_id"] == id)
                .cloned()
                .unwrap()
        };
        assert_eq!(of(&lane.id)["pruned"], serde_json::json!([1, 2, 3]));
        assert_eq!(of(&lab.id)["pruned"], serde_json::json!([1, 2, 4]));
        assert_eq!(of(&lane.id)["collected_packs"].as_array().unwrap().len(), 3);
        assert_eq!(
            listed(&c, &srv, &admin, &lane.id).await,
            vec![1, 2, 3, 4, 5]
        );
        assert!(pack_file(&own[0]).exists() && manifest_file(1).exists());

        // The lab device through the admin API.
        let url = srv.url(&format!(
            "/api/v1/backup-maintenance/prune?device={}",
            lab.id
        ));
        let (s, v) = api(&c, "POST", &url, Some(&admin), None).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["manifests_pruned"], 3);
        assert_eq!(listed(&c, &srv, &admin, &lab.id).await, vec![3, 5]);
        // The device sees its kept manifests and, for the gaps, the pruned headers with the
        // server's receipts: the whole chain still links, and each link is countersigned.
        let (s, v) = signed(&c, &srv, &lab, "GET", MANIFESTS, b"").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["sequences"], serde_json::json!([3, 5]));
        let receipt_key = otter_server::backups::receipt::load_receipt_public_key(&cfg).unwrap();
        let mut chain: Vec<ManifestHeader> = lab_chain
            .sent
            .iter()
            .filter(|m| [3, 5].contains(&m.header.sequence))
            .map(|m| m.header.clone())
            .collect();
        for link in v["pruned"].as_array().unwrap() {
            let header: ManifestHeader = serde_json::from_value(link["header"].clone()).unwrap();
            let cs: Countersignature =
                serde_json::from_value(link["countersignature"].clone()).unwrap();
            assert_eq!(link["header_hash"], header.hash().unwrap());
            let probe = SignedManifest {
                header: header.clone(),
                signature: cs.signature.clone(),
                body_ciphertext: Vec::new(),
            };
            probe.verify_countersignature(&receipt_key, &cs).unwrap();
            chain.push(header);
        }
        chain.sort_by_key(|h| h.sequence);
        assert_eq!(chain.len(), 5);
        chain[0].check_follows(None).unwrap();
        for w in chain.windows(2) {
            w[1].check_follows(Some(&w[0])).unwrap();
        }
        assert_eq!(
            listed(&c, &srv, &admin, &lane.id).await,
            vec![1, 2, 3, 4, 5]
        );

        // The lane device through the CLI, while the server runs.
        let out = cli(&file, &["backups", "prune", "--device", &lane.id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("pruned 3 backup(s), 3 pack(s)"), "{text}");
        assert_eq!(listed(&c, &srv, &admin, &lane.id).await, vec![4, 5]);
        for s in 1..=3 {
            assert!(!manifest_file(s).exists(), "manifest #{s} deleted");
            assert!(
                !pack_file(&own[s as usize - 1]).exists(),
                "pack of #{s} deleted"
            );
        }
        assert!(manifest_file(4).exists() && manifest_file(5).exists());
        assert!(pack_file(&base).exists(), "a pack kept backups need stays");
        assert!(pack_file(&own[3]).exists() && pack_file(&own[4]).exists());

        // Both prunes are in the audit log.
        let (s, v) = api(&c, "GET", &srv.url("/api/v1/audit"), Some(&admin), None).await;
        assert_eq!(s, 200, "{v}");
        let prunes: Vec<&Value> = v["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "backups.prune")
            .collect();
        assert_eq!(prunes.len(), 2, "{v}");
        assert!(prunes
            .iter()
            .any(|e| e["subject"] == format!("device:{}", lane.id) && e["actor"] == "host"));
        assert!(prunes
            .iter()
            .any(|e| e["subject"] == format!("device:{}", lab.id)
                && e["actor"].as_str().unwrap().starts_with("token:")));

        // Verify walks the chains across the pruned backups.
        let v = json_out(&cli(&file, &["backups", "verify", "--json"]));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["manifests"], 4);
        assert_eq!(v["pruned_links"], 6);
        assert_eq!(v["problems"], serde_json::json!([]));

        // Pruning again changes nothing; the next backup follows the kept head.
        let again = json_out(&cli(&file, &["backups", "prune", "--json"]));
        assert_eq!(again["manifests_pruned"], 0);
        assert_eq!(again["packs_collected"], 0);
        let p6 = lane_chain.pack(6, 2);
        backup(
            &c,
            &srv,
            &lane,
            &mut lane_chain,
            t0 + 6 * DAY,
            &[&base, &p6],
        )
        .await;
        assert_eq!(listed(&c, &srv, &admin, &lane.id).await, vec![4, 5, 6]);
        // A pruned manifest sent again is not taken back.
        let (s, v) = post(&c, &srv, &lane, &lane_chain.sent[0]).await;
        assert_eq!(s, 409, "{v}");
        let v = json_out(&cli(
            &file,
            &["backups", "verify", "--json", "--device", &lane.id],
        ));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["manifests"], 3);

        // An operator may not prune; an auditor may verify but not prune.
        let (_, operator) = make_token(&c, &srv, &admin, "operator").await;
        let (_, auditor) = make_token(&c, &srv, &admin, "auditor").await;
        let prune_url = srv.url("/api/v1/backup-maintenance/prune");
        assert_eq!(
            api(&c, "POST", &prune_url, Some(&operator), None).await.0,
            403
        );
        assert_eq!(
            api(&c, "POST", &prune_url, Some(&auditor), None).await.0,
            403
        );
        let verify_url = srv.url("/api/v1/backup-maintenance/verify");
        let (s, v) = api(&c, "POST", &verify_url, Some(&auditor), None).await;
        assert_eq!((s, &v["ok"]), (200, &Value::Bool(true)), "{v}");
        srv.stop().await;
    });
}
