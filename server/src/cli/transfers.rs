//! `otter-server backups export|import-transfer|transfers|delete-transfer`, through the
//! server's API with an admin or restorer token: a device's stored backup exported as
//! ciphertext into a directory (what `otter-keys backup reencrypt --from` reads), a transfer
//! directory (what it writes) imported for the new device, which fetches it with
//! `otter-agent restore --from-server-transfer`, the list of a device's transfers, and the
//! deletion of one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use zeroize::Zeroizing;

use super::rollout::ApiArgs;

/// How long one export or import may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Options of `backups export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The device whose backup is exported.
    #[arg(long)]
    pub device: String,
    /// The directory to create (it must not exist): `manifests/SEQ` and `packs/ID`.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `backups import-transfer`.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The device the transfer is for (the new terminal).
    #[arg(long)]
    pub device: String,
    /// The directory `otter-keys backup reencrypt --out` wrote.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `backups transfers`.
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// The device.
    #[arg(long)]
    pub device: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// Options of `backups delete-transfer`.
#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// The device the transfer was imported for.
    #[arg(long)]
    pub device: String,
    /// The transfer's id (32 hex digits; see `backups transfers`).
    #[arg(long, value_name = "ID")]
    pub transfer: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn token() -> Result<Zeroizing<String>> {
    match std::env::var("OTTER_TOKEN") {
        Ok(t) if !t.trim().is_empty() => Ok(Zeroizing::new(t.trim().to_owned())),
        _ => bail!("no API token: give --token-file FILE or set OTTER_TOKEN"),
    }
}

fn request(
    api: &ApiArgs,
    method: reqwest::Method,
    path: &str,
) -> Result<reqwest::blocking::RequestBuilder> {
    let token = match &api.token_file {
        Some(f) => super::first_line(f, "token")?,
        None => token()?,
    };
    let url = format!("{}{path}", api.server.trim_end_matches('/'));
    let client = super::api_client(&api.server, TRANSFER_TIMEOUT)?;
    Ok(client.request(method, url).bearer_auth(token.as_str()))
}

/// The server's refusal as an error.
fn refused(what: &str, res: reqwest::blocking::Response) -> anyhow::Error {
    let status = res.status();
    let text = res.text().unwrap_or_default();
    let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let code = json["error"]["code"].as_str().unwrap_or("?");
    let msg = json["error"]["message"].as_str().unwrap_or(text.as_str());
    anyhow::anyhow!("the server refused {what} ({status}, {code}): {msg}")
}

fn check_device(device: &str) -> Result<()> {
    if device.len() != 32 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--device {device:?} is not a device id (32 hex digits; see `devices list`)");
    }
    Ok(())
}

/// Whether `path` is a file of an export: `manifests/SEQ` (20 digits) or `packs/ID` (64 hex).
fn export_entry(path: &str) -> bool {
    match path.split('/').collect::<Vec<_>>().as_slice() {
        ["manifests", seq] => seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()),
        ["packs", id] => {
            id.len() == 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        _ => false,
    }
}

/// `backups export`: the tar from the API unpacked into a temporary directory beside OUT,
/// renamed to OUT once complete.
pub fn export(a: ExportArgs) -> Result<()> {
    check_device(&a.device)?;
    if a.out.exists() {
        bail!("{} exists: give a new directory", a.out.display());
    }
    let parent = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let what = format!("the export of device {}", a.device);
    let res = request(
        &a.api,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/backups/export", a.device),
    )?
    .send()
    .with_context(|| format!("requesting {what}"))?;
    if !res.status().is_success() {
        return Err(refused(&what, res));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".otter-export-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let (mut manifests, mut packs, mut bytes) = (0u64, 0u64, 0u64);
    let mut archive = tar::Archive::new(res);
    for entry in archive
        .entries()
        .with_context(|| format!("reading {what}"))?
    {
        let mut entry = entry.with_context(|| format!("reading {what} (it broke off)"))?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if !entry.header().entry_type().is_file() || !export_entry(&path) {
            bail!("{what} holds an unexpected entry {path:?}; nothing was written");
        }
        let target = tmp.path().join(&path);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
        }
        let mut out = std::fs::File::create(&target)
            .with_context(|| format!("creating {}", target.display()))?;
        bytes += std::io::copy(&mut entry, &mut out)
            .with_context(|| format!("reading {what} (it broke off at {path})"))?;
        out.sync_all()?;
        if path.starts_with("manifests/") {
            manifests += 1;
        } else {
            packs += 1;
        }
    }
    let kept = tmp.keep();
    std::fs::rename(&kept, &a.out)
        .with_context(|| format!("renaming {} to {}", kept.display(), a.out.display()))?;
    println!(
        "exported {manifests} manifests and {packs} packs ({bytes} bytes, ciphertext) of device \
         {} into {}",
        a.device,
        a.out.display()
    );
    Ok(())
}

/// Every file under `dir`, as paths relative to it with `/` separators.
fn files_under(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ty = e.file_type()?;
        if ty.is_dir() {
            files_under(&e.path(), &rel, out)?;
        } else if ty.is_file() {
            out.push((rel, e.path()));
        }
    }
    Ok(())
}

/// `backups import-transfer`: the transfer directory, as a tar spooled to a temporary file,
/// posted to the API.
pub fn import(a: ImportArgs) -> Result<()> {
    check_device(&a.device)?;
    if !a.from.join("transfer.json").is_file() {
        bail!(
            "{} has no transfer.json: give the directory `otter-keys backup reencrypt --out` \
             wrote",
            a.from.display()
        );
    }
    let mut files = Vec::new();
    files_under(&a.from, "", &mut files)?;
    let spool = tempfile::tempfile().context("creating a temporary file")?;
    let mut builder = tar::Builder::new(spool);
    for (rel, path) in &files {
        builder
            .append_path_with_name(path, rel)
            .with_context(|| format!("adding {} to the upload", path.display()))?;
    }
    let mut spool = builder.into_inner().context("finishing the upload")?;
    use std::io::Seek;
    let len = spool.seek(std::io::SeekFrom::End(0))?;
    spool.rewind()?;
    let what = format!("the transfer for device {}", a.device);
    let res = request(
        &a.api,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{}/transfers", a.device),
    )?
    .header("Content-Type", "application/x-tar")
    .body(reqwest::blocking::Body::sized(spool, len))
    .send()
    .with_context(|| format!("uploading {what}"))?;
    if !res.status().is_success() {
        return Err(refused(&what, res));
    }
    let v: Value = res.json().context("reading the server's answer")?;
    let t = &v["transfer"];
    println!(
        "imported transfer {} for device {}: backup of device {}, {} manifests, {} packs, {} \
         bytes; on the terminal: otter-agent restore --from-server-transfer {} --latest",
        t["id"].as_str().unwrap_or("?"),
        a.device,
        t["source_device_id"].as_str().unwrap_or("?"),
        t["manifests"],
        t["packs"],
        t["bytes"],
        t["id"].as_str().unwrap_or("latest"),
    );
    Ok(())
}

/// `backups transfers`: the device's transfers as JSON.
pub fn list(a: ListArgs) -> Result<()> {
    check_device(&a.device)?;
    let what = format!("the transfers of device {}", a.device);
    let res = request(
        &a.api,
        reqwest::Method::GET,
        &format!("/api/v1/devices/{}/transfers", a.device),
    )?
    .send()
    .with_context(|| format!("requesting {what}"))?;
    if !res.status().is_success() {
        return Err(refused(&what, res));
    }
    let v: Value = res.json().context("reading the server's answer")?;
    println!("{}", serde_json::to_string_pretty(&v["transfers"])?);
    Ok(())
}

/// `backups delete-transfer`: deletes one transfer through the API.
pub fn delete(a: DeleteArgs) -> Result<()> {
    check_device(&a.device)?;
    if a.transfer.len() != 32 || !a.transfer.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "--transfer {:?} is not a transfer id (32 hex digits; see `backups transfers`)",
            a.transfer
        );
    }
    let what = format!("deleting transfer {} of device {}", a.transfer, a.device);
    let res = request(
        &a.api,
        reqwest::Method::DELETE,
        &format!("/api/v1/devices/{}/transfers/{}", a.device, a.transfer),
    )?
    .send()
    .with_context(|| format!("requesting {what}"))?;
    if !res.status().is_success() {
        return Err(refused(&what, res));
    }
    let v: Value = res.json().context("reading the server's answer")?;
    let t = &v["deleted"];
    println!(
        "deleted transfer {} of device {} (backup of device {}: {} manifests, {} packs, {} \
         bytes removed from the store)",
        a.transfer,
        a.device,
        t["source_device_id"].as_str().unwrap_or("?"),
        t["manifests"],
        t["packs"],
        t["bytes"],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::export_entry;

    #[test]
    fn only_manifests_and_packs_are_unpacked_from_an_export() {
        assert!(export_entry("manifests/00000000000000000001"));
        assert!(export_entry(&format!("packs/{}", "ab".repeat(32))));
        assert!(!export_entry("../x"));
        assert!(!export_entry("manifests/../../etc"));
        assert!(!export_entry(&format!("packs/{}/x", "ab".repeat(32))));
        assert!(!export_entry("transfer.json"));
    }
}
