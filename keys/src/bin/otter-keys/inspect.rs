//! `otter-keys inspect`: a metadata file in human form, or as JSON for scripts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use otter_keys::canonical::DEFAULT_MAX_METADATA_BYTES;
use otter_keys::crypto::{KeyId, PublicKey};
use otter_keys::metadata::{AnyMetadata, MetaFile, RoleKeys};
use otter_keys::time::UtcTime;
use serde_json::{json, Value};

use crate::repo;

/// Arguments of `inspect`.
#[derive(clap::Args)]
#[command(after_help = "\
Shows type, version, expiry, keys, roles and thresholds, targets or meta entries, and the
signatures. For a root file, signatures are checked against the root's own keys. This does
not establish trust: use `otter-keys verify` for that.")]
pub struct InspectArgs {
    /// Print a JSON document instead of text.
    #[arg(long)]
    json: bool,
    /// The metadata file.
    file: PathBuf,
}

fn when(t: UtcTime, now: UtcTime) -> String {
    let days = (t.unix() - now.unix()) / 86_400;
    if t <= now {
        format!("{t} (EXPIRED {} days ago)", -days)
    } else {
        format!("{t} (in {days} days)")
    }
}

fn roles_json(keys: &BTreeMap<KeyId, PublicKey>, roles: &BTreeMap<String, RoleKeys>) -> Value {
    json!({
        "keys": keys.iter().map(|(id, k)| (id.0.clone(), json!({"keytype": k.keytype, "scheme": k.scheme}))).collect::<serde_json::Map<_, _>>(),
        "roles": roles.iter().map(|(n, r)| (n.clone(), json!({"threshold": r.threshold, "keyids": r.keyids}))).collect::<serde_json::Map<_, _>>(),
    })
}

fn meta_json(meta: &BTreeMap<String, MetaFile>) -> Value {
    meta.iter()
        .map(|(n, m)| {
            (
                n.clone(),
                json!({"version": m.version, "length": m.length, "hashes": m.hashes}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Runs `inspect`.
pub fn run(a: InspectArgs) -> Result<()> {
    let bytes = repo::read_capped(&a.file)?;
    let md = AnyMetadata::from_bytes(&bytes, DEFAULT_MAX_METADATA_BYTES)
        .with_context(|| format!("{}", a.file.display()))?;
    let now = UtcTime::now();
    let mut doc = json!({
        "type": md.role_type(),
        "version": md.version(),
        "expires": md.expires().to_string(),
        "expired": md.expires() <= now,
    });
    let mut sig_valid: BTreeMap<KeyId, bool> = BTreeMap::new();
    match &md {
        AnyMetadata::Root(r) => {
            let s = r.signed();
            doc["spec_version"] = json!(s.spec_version);
            doc["consistent_snapshot"] = json!(s.consistent_snapshot());
            let rj = roles_json(&s.keys, &s.roles);
            doc["keys"] = rj["keys"].clone();
            doc["roles"] = rj["roles"].clone();
            for sig in r.signatures() {
                let ok = s
                    .keys
                    .get(&sig.keyid)
                    .is_some_and(|k| k.verify(r.canonical_signed(), &sig.sig).is_ok());
                sig_valid.insert(sig.keyid.clone(), ok);
            }
            doc["self_verification"] = match r.verify_self() {
                Ok(n) => json!({"ok": true, "valid": n}),
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            };
        }
        AnyMetadata::Targets(t) => {
            let s = t.signed();
            doc["spec_version"] = json!(s.spec_version);
            doc["targets"] = s
                .targets
                .iter()
                .map(|(n, f)| {
                    (
                        n.clone(),
                        json!({"length": f.length, "hashes": f.hashes, "custom": f.custom()}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            if let Some(d) = &s.delegations {
                doc["delegations"] = json!({
                    "keys": d.keys.iter().map(|(id, k)| (id.0.clone(), json!({"keytype": k.keytype, "scheme": k.scheme}))).collect::<serde_json::Map<_, _>>(),
                    "roles": d.roles().iter().map(|r| json!({
                        "name": r.name, "threshold": r.threshold, "keyids": r.keyids,
                        "terminating": r.terminating, "paths": r.paths, "path_hash_prefixes": r.path_hash_prefixes,
                    })).collect::<Vec<_>>(),
                });
            }
        }
        AnyMetadata::Snapshot(m) => {
            doc["spec_version"] = json!(m.signed().spec_version);
            doc["meta"] = meta_json(&m.signed().meta);
        }
        AnyMetadata::Timestamp(m) => {
            doc["spec_version"] = json!(m.signed().spec_version);
            doc["meta"] = meta_json(&m.signed().meta);
        }
    }
    doc["signatures"] = md
        .signatures()
        .iter()
        .map(|s| json!({"keyid": s.keyid, "valid": sig_valid.get(&s.keyid)}))
        .collect::<Vec<_>>()
        .into();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    print_human(&md, &doc, now);
    Ok(())
}

fn print_human(md: &AnyMetadata, doc: &Value, now: UtcTime) {
    println!("{} version {}", md.role_type(), md.version());
    println!("  expires:     {}", when(md.expires(), now));
    if let Some(s) = doc["spec_version"].as_str() {
        println!("  spec:        {s}");
    }
    if let AnyMetadata::Root(r) = md {
        let s = r.signed();
        println!(
            "  consistent snapshots: {}",
            if s.consistent_snapshot() { "yes" } else { "no" }
        );
        println!("  roles:");
        for (name, role) in &s.roles {
            let ids: Vec<&str> = role.keyids.iter().map(KeyId::short).collect();
            println!(
                "    {name:<10} threshold {} of {}: {}",
                role.threshold,
                role.keyids.len(),
                ids.join(" ")
            );
        }
        println!("  keys:");
        for (id, k) in &s.keys {
            println!("    {}  {}/{}", id.short(), k.keytype, k.scheme);
        }
        match r.verify_self() {
            Ok(n) => println!("  self-check:  ok, {n} valid root signature(s)"),
            Err(e) => println!("  self-check:  FAILS: {e}"),
        }
    }
    if let AnyMetadata::Targets(t) = md {
        let s = t.signed();
        println!("  targets:     {}", s.targets.len());
        for (name, f) in &s.targets {
            let custom = f.custom().map(|c| format!("  {c}")).unwrap_or_default();
            println!("    {name}  {} bytes{custom}", f.length);
        }
        if let Some(d) = &s.delegations {
            println!("  delegations:");
            for r in d.roles() {
                let scope = r
                    .paths
                    .as_ref()
                    .map(|p| format!("paths {p:?}"))
                    .or_else(|| {
                        r.path_hash_prefixes
                            .as_ref()
                            .map(|p| format!("hash prefixes {p:?}"))
                    })
                    .unwrap_or_else(|| "no paths".into());
                println!(
                    "    {}  threshold {} of {}{}  {scope}",
                    r.name,
                    r.threshold,
                    r.keyids.len(),
                    if r.terminating { ", terminating" } else { "" }
                );
            }
        }
    }
    if let Some(meta) = doc["meta"].as_object() {
        println!("  meta:");
        for (name, m) in meta {
            println!("    {name}  version {}", m["version"]);
        }
    }
    println!("  signatures:  {}", md.signatures().len());
    for s in md.signatures() {
        let status = match doc["signatures"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["keyid"] == json!(s.keyid)))
            .map(|x| &x["valid"])
        {
            Some(Value::Bool(true)) => "valid",
            Some(Value::Bool(false)) => "INVALID or unknown key",
            _ => "not checked (needs the delegating metadata: use verify)",
        };
        println!("    {}  {status}", s.keyid.short());
    }
}
