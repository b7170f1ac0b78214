//! Publishing a version signs deltas from the previous `[deltas] from_previous` versions in
//! the same targets version: they verify like every other target, their signed `custom`
//! names the full target and the tar they rebuild, applying one to the base's tar gives
//! exactly the new tar, yanking a version removes the deltas to and from it, and
//! `from_previous = 0` publishes none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{api, bundle, client, config, fetch_and_verify, get_ok, publish, run, start};
use otter_delta::{ApplyLimits, DeltaCustom};
use otter_keys::hash::verify;

/// Deterministic pseudo-random bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn image(version: u8) -> Vec<u8> {
    let mut img = noise(400_000, 42);
    // Each version changes a few blocks.
    for k in 0..=version {
        let at = 10_000 + usize::from(k) * 37_000;
        img[at..at + 2000].copy_from_slice(&noise(2000, 100 + u64::from(k)));
    }
    img
}

fn untar(bundle: &[u8]) -> Vec<u8> {
    zstd::decode_all(bundle).unwrap()
}

#[test]
fn deltas_are_signed_served_rebuild_the_tar_and_go_with_a_yank() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, admin) = start(config(dir.path())).await;
        let admin = admin.unwrap();
        let c = client();
        let bundles: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                bundle(
                    "pos-app",
                    &format!("1.{i}.0"),
                    &[("app.img", &image(i)), ("VERSION", &[b'0' + i])],
                )
            })
            .collect();
        for b in &bundles {
            let (s, v) = publish(&c, &srv, &admin, b.clone()).await;
            assert_eq!(s, 201, "{v}");
        }
        let chain = fetch_and_verify(&c, &srv).await;
        let targets = &chain.targets.signed().targets;
        let mut names: Vec<&String> = targets.keys().filter(|n| n.ends_with(".delta")).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "pos-app-1.1.0.from-1.0.0.delta",
                "pos-app-1.2.0.from-1.0.0.delta",
                "pos-app-1.2.0.from-1.1.0.delta",
            ]
        );
        for (name, from, to) in [
            ("pos-app-1.2.0.from-1.1.0.delta", 1usize, 2usize),
            ("pos-app-1.2.0.from-1.0.0.delta", 0, 2),
        ] {
            let entry = &targets[name];
            let custom = DeltaCustom::parse(name, entry.custom().unwrap())
                .unwrap()
                .delta;
            let full = &targets[&custom.target];
            assert_eq!(custom.target, format!("pos-app-1.{to}.0.tar.zst"));
            assert_eq!(custom.target_sha256, full.hashes["sha256"]);
            assert_eq!(custom.base, format!("pos-app-1.{from}.0.tar.zst"));
            let bytes = get_ok(
                &c,
                &srv.url(&format!("/repo/targets/{}.{name}", entry.hashes["sha256"])),
            )
            .await;
            verify(&bytes, Some(entry.length), &entry.hashes).unwrap();
            let new_tar = untar(&bundles[to]);
            // Far smaller than the full bundle: only the changed blocks cost anything.
            assert!(
                (bytes.len() as u64) * 4 < full.length,
                "{} vs {}",
                bytes.len(),
                full.length
            );
            let base_tar = untar(&bundles[from]);
            assert_eq!(custom.base_tar_length, base_tar.len() as u64);
            let mut rebuilt = Vec::new();
            otter_delta::apply(
                &base_tar,
                &bytes[..],
                &mut rebuilt,
                &ApplyLimits {
                    max_len: Some(custom.tar_length),
                    expect_sha256: otter_delta::sha256_from_hex(&custom.tar_sha256),
                },
            )
            .unwrap();
            assert_eq!(rebuilt, new_tar);
            // The wrong base is refused.
            let mut out = Vec::new();
            let e = otter_delta::apply(
                &untar(&bundles[1 - from.min(1)]),
                &bytes[..],
                &mut out,
                &ApplyLimits::default(),
            );
            assert!(e.is_err());
        }

        // Yank 1.1.0: the deltas to and from it go, the one from 1.0.0 to 1.2.0 stays.
        let (s, v) = api(
            &c,
            "DELETE",
            &srv.url("/api/v1/releases/pos-app/1.1.0"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let chain = fetch_and_verify(&c, &srv).await;
        let mut names: Vec<&String> = chain
            .targets
            .signed()
            .targets
            .keys()
            .filter(|n| n.ends_with(".delta"))
            .collect();
        names.sort();
        assert_eq!(names, ["pos-app-1.2.0.from-1.0.0.delta"]);

        // The audit entry of the publish lists its deltas.
        let (s, v) = api(
            &c,
            "GET",
            &srv.url("/api/v1/audit?limit=50"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let text = v.to_string();
        assert!(text.contains("pos-app-1.2.0.from-1.1.0.delta"), "{text}");
        srv.stop().await;
    });
}

#[test]
fn from_previous_zero_publishes_no_delta() {
    run(async {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path());
        cfg.deltas.from_previous = 0;
        let (srv, admin) = start(cfg).await;
        let admin = admin.unwrap();
        let c = client();
        for i in 0..2u8 {
            let b = bundle("pos-app", &format!("1.{i}.0"), &[("app.img", &image(i))]);
            let (s, v) = publish(&c, &srv, &admin, b).await;
            assert_eq!(s, 201, "{v}");
        }
        let chain = fetch_and_verify(&c, &srv).await;
        let t = &chain.targets.signed().targets;
        assert_eq!(t.len(), 2, "{:?}", t.keys().collect::<Vec<_>>());
        assert!(!t.keys().any(|n| n.ends_with(".delta")));
        srv.stop().await;
    });
}
