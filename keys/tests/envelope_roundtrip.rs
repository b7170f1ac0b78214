//! Property: whatever the pages, they come back unchanged through packs (`PackBuilder` then
//! `open_pack`) and through a sealed, serialized, parsed and opened manifest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use otter_keys::age::x25519::Identity;
use otter_keys::crypto::SigningKey;
use otter_keys::envelope::{
    open_pack, ChunkKey, ManifestBody, ManifestFields, OpenPack, PackBuilder, PackId, SealedPack,
    SignedManifest,
};
use otter_keys::time::UtcTime;
use proptest::prelude::*;

const MAX: usize = 16 << 20;

/// Pages of any bytes, with repeats (like the many identical empty pages of a database).
fn pages() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let page = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..700),
        1 => Just(vec![0u8; 64]),
    ];
    prop::collection::vec(page, 1..40)
}

/// Packs the pages, starting a new pack once one holds `pack_size` bytes.
fn pack_all(
    key: &ChunkKey,
    pages: &[Vec<u8>],
    pack_size: usize,
    identity: &Identity,
) -> Vec<SealedPack> {
    let mut sealed = Vec::new();
    let mut builder = PackBuilder::new();
    let mut packed = std::collections::HashSet::new();
    for page in pages {
        let id = key.chunk_id(page);
        if !packed.insert(id) {
            continue;
        }
        builder.add(id, page).unwrap();
        if builder.len() >= pack_size {
            let full = std::mem::take(&mut builder);
            sealed.push(full.finish(&[identity.to_public()]).unwrap());
        }
    }
    if !builder.is_empty() {
        sealed.push(builder.finish(&[identity.to_public()]).unwrap());
    }
    sealed
}

fn open_all(identity: &Identity, packs: &[SealedPack]) -> HashMap<PackId, OpenPack> {
    packs
        .iter()
        .map(|p| {
            let open = open_pack(identity, &p.ciphertext, &p.id, MAX).unwrap();
            (p.id, open)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn pages_round_trip_through_packs(pages in pages(), pack_size in 1usize..5000) {
        let key = ChunkKey::generate();
        let identity = Identity::generate();
        let packs = pack_all(&key, &pages, pack_size, &identity);
        let open = open_all(&identity, &packs);
        let mut by_chunk = HashMap::new();
        for p in &packs {
            prop_assert_eq!(p.id, PackId::of(&p.ciphertext));
            p.pack_ref().check(&p.ciphertext).unwrap();
            for e in &p.entries {
                by_chunk.insert(e.chunk, open[&p.id].chunk(e).unwrap());
            }
        }
        for page in &pages {
            prop_assert_eq!(by_chunk[&key.chunk_id(page)], &page[..]);
        }
    }

    #[test]
    fn pages_round_trip_through_the_manifest(
        pages in pages(),
        pack_size in 1usize..5000,
        device_id in "[a-z0-9-]{1,24}",
        row_counts in prop::collection::btree_map("[a-z_]{1,12}", any::<u64>(), 0..6),
        schema_version in any::<i64>(),
        extra in prop::collection::btree_map("[a-z]{1,8}", any::<i64>(), 0..3),
        created in 0i64..4_000_000_000,
    ) {
        let key = ChunkKey::generate();
        let identity = Identity::generate();
        let device = SigningKey::generate();
        let packs = pack_all(&key, &pages, pack_size, &identity);
        let body = ManifestBody {
            page_size: 4096,
            page_count: pages.len() as u64,
            pages: pages.iter().map(|p| key.chunk_id(p)).collect(),
            chunks: packs.iter().flat_map(|p| p.locations()).collect(),
            file_blake3: blake3::hash(&pages.concat()).to_hex().to_string(),
            file_sha256: "0f".repeat(32),
            row_counts,
            schema_version,
            extra: extra.into_iter().map(|(k, v)| (k, v.into())).collect::<BTreeMap<_, _>>(),
        };
        let refs = packs.iter().map(SealedPack::pack_ref).collect();
        let fields = ManifestFields::first(device_id, UtcTime::from_unix(created), refs);
        let sealed =
            SignedManifest::seal(fields, &body, &device, &[identity.to_public()]).unwrap();

        let bytes = sealed.to_bytes().unwrap();
        let received = SignedManifest::from_bytes(&bytes, bytes.len()).unwrap();
        prop_assert_eq!(&received, &sealed);
        prop_assert_eq!(received.to_bytes().unwrap(), bytes);
        received.verify_received(&device.public_key(), None).unwrap();
        let opened = received.open_body(&identity, MAX).unwrap();
        prop_assert_eq!(&opened, &body);

        // Rebuild the pages from the manifest alone.
        let open = open_all(&identity, &packs);
        for (index, chunk) in opened.pages.iter().enumerate() {
            let loc = opened.chunks[chunk];
            prop_assert_eq!(open[&loc.pack].at(&loc).unwrap(), &pages[index][..]);
        }
    }
}
