//! Hash verification throughput for `bench/run.sh` (item 3 of the benchmarks): reads FILE
//! in 64 KiB blocks, as the agent's downloader does, into `otter_keys::hash::MultiHasher`
//! (the agent's target verifier) and checks the result against the expected hashes,
//! like a downloaded target is checked against signed metadata. Prints one JSON object.
//!
//! ```text
//! hash_throughput FILE [--algorithms sha256,sha512] [--expect-sha256 HEX]
//! ```
//! `--algorithms` defaults to `sha256,sha512`, the hashes `otter-server` writes into
//! targets metadata, which the agent therefore checks for every target.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::time::Instant;

use otter_keys::hash::MultiHasher;
use serde_json::json;

fn run() -> Result<serde_json::Value, String> {
    let mut args = std::env::args().skip(1);
    let mut file = None;
    let mut algorithms = "sha256,sha512".to_owned();
    let mut expect = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--algorithms" => algorithms = args.next().ok_or("--algorithms needs a value")?,
            "--expect-sha256" => expect = Some(args.next().ok_or("--expect-sha256 needs a value")?),
            _ if file.is_none() => file = Some(a),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let file = file.ok_or("give FILE")?;
    // Placeholder digests select the algorithms; a mismatch is expected unless
    // --expect-sha256 gives the real one (then sha256 must match).
    let mut hashes: BTreeMap<String, String> = algorithms
        .split(',')
        .map(|a| (a.trim().to_owned(), String::new()))
        .collect();
    if let Some(e) = &expect {
        hashes.insert("sha256".into(), e.clone());
    }
    let mut h = MultiHasher::for_hashes(&hashes).map_err(|e| e.to_string())?;
    let mut f = File::open(&file).map_err(|e| format!("{file}: {e}"))?;
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("{file}: {e}"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let len = h.len();
    let outcome = h.finish(Some(len), &hashes);
    let secs = started.elapsed().as_secs_f64();
    let sha256_matches = match (&expect, &outcome) {
        (None, _) => None,
        (Some(_), Ok(())) => Some(true),
        (Some(_), Err(otter_keys::hash::HashError::Mismatch { algorithm })) => {
            Some(algorithm != "sha256")
        }
        (Some(_), Err(_)) => Some(false),
    };
    Ok(json!({
        "file": file,
        "bytes": len,
        "algorithms": algorithms,
        "seconds": secs,
        "mb_per_s": len as f64 / 1e6 / secs,
        "sha256_matches": sha256_matches,
    }))
}

fn main() {
    match run() {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("hash_throughput: {e}");
            std::process::exit(1);
        }
    }
}
