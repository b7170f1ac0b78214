//! Security monitoring on the terminal: the integrity pass that re-hashes every installed
//! component's active tree against the manifest it was installed from, the scheduling of
//! that pass and of the database checks ([`crate::dbhealth`]), and the security events
//! both raise (kept in the status file until a signed report reaches the server).
//!
//! Trust in `manifest.json`: the apply engine only unpacks a bundle whose bytes match the
//! signed TUF target and whose manifest matches the signed name, version and kind; the
//! payload files must match the manifest's sizes and SHA-256 at unpack time. The first
//! integrity pass after an install pins the manifest's SHA-256 and the files' modes in
//! `STATE_DIR/integrity.json` (0600); later passes compare against that pin, so a rewritten
//! manifest is drift too. The name and version inside the manifest must also be those the
//! apply journal records as active. See `docs/monitoring.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use otter_keys::time::UtcTime;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::apply::JournalView;
use crate::config::{AgentConfig, Window};
use crate::dbhealth::{self, CheckLevel};
use crate::status::StatusFile;

/// The integrity state file's name in the state dir.
pub const STATE_FILE: &str = "integrity.json";
/// The security event kind of drift in an installed component.
pub const EVENT_DRIFT: &str = "integrity_drift";
/// The security event kind of a database that fails its check.
pub const EVENT_DB_CORRUPT: &str = "database_corrupt";
/// Most findings listed per component in one event's detail.
const MAX_LISTED: usize = 8;

/// `[integrity]`: how often `otter-agent run` re-hashes the installed components.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrityConfig {
    /// Seconds between integrity passes (0: never, except `otter-agent check`).
    pub interval_secs: u64,
}

impl Default for IntegrityConfig {
    fn default() -> Self {
        IntegrityConfig {
            interval_secs: 3600,
        }
    }
}

/// `[database]`: health checks of the live database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseHealthConfig {
    /// The live database [default: `[backup] database`]; no database, no checks.
    pub path: Option<PathBuf>,
    /// Seconds between `PRAGMA quick_check` runs (0: never).
    pub quick_check_interval_secs: u64,
    /// Quiet hours (`HH:MM-HH:MM`, in `[update] window_time`) in which the slower
    /// `PRAGMA integrity_check` runs, at most once a day; unset: never scheduled.
    pub quiet_hours: Option<Window>,
}

impl Default for DatabaseHealthConfig {
    fn default() -> Self {
        DatabaseHealthConfig {
            path: None,
            quick_check_interval_secs: 3600,
            quiet_hours: "02:00-05:00".parse().ok(),
        }
    }
}

/// Why the integrity pass could not run (drift is a finding, not an error).
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The apply journal could not be read.
    #[error("reading the apply journal: {0}")]
    Journal(#[from] crate::apply::ApplyError),
    /// The configuration lacks something.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The state or status file.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The status file.
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    /// Another pass holds the agent's lock.
    #[error(transparent)]
    Busy(#[from] crate::update::PassError),
}

/// What kind of drift a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// A payload file's content (size or SHA-256) differs from the manifest.
    Changed,
    /// A file that the manifest does not list.
    Added,
    /// A payload file is missing.
    Removed,
    /// A file's or directory's permissions changed.
    ModeChanged,
    /// A symlink where none belongs, or `current` points elsewhere than the journal says.
    Symlink,
    /// `manifest.json` differs from the one pinned after the install, or is unusable.
    Manifest,
    /// Something could not be read.
    Unreadable,
}

/// One difference between an installed tree and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: DriftKind,
    /// The path relative to the version directory (`current` for the symlink).
    pub path: String,
    /// Details for people.
    pub detail: String,
}

/// The result of checking one component.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentCheck {
    /// The component.
    pub component: String,
    /// The active version the journal records.
    pub version: String,
    /// Files hashed.
    pub files: usize,
    /// Differences (empty: intact).
    pub findings: Vec<Finding>,
}

/// The result of one database check.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseCheck {
    /// The database.
    pub path: PathBuf,
    /// `quick_check` or `integrity_check`.
    pub level: CheckLevel,
    /// Whether SQLite said `ok`.
    pub ok: bool,
    /// What SQLite said (or why it could not check).
    pub messages: Vec<String>,
}

/// What one monitoring run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MonitorReport {
    /// Unix seconds.
    pub at: i64,
    /// Components checked (`None`: the integrity pass was not due).
    pub components: Option<Vec<ComponentCheck>>,
    /// The database check, when one ran.
    pub database: Option<DatabaseCheck>,
    /// Security events recorded for the next report (new or changed findings only).
    pub events: Vec<crate::status::Event>,
    /// Whether a report reached the server (`None`: not sent); JSON: `true`, or
    /// `{"error": "..."}`, or `null`.
    #[serde(serialize_with = "ser_reported")]
    pub reported: Option<Result<(), String>>,
}

fn ser_reported<S: serde::Serializer>(
    r: &Option<Result<(), String>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match r {
        None => s.serialize_none(),
        Some(Ok(())) => s.serialize_bool(true),
        Some(Err(e)) => json!({ "error": e }).serialize(s),
    }
}

impl MonitorReport {
    /// Whether drift or corruption was found.
    pub fn found_problems(&self) -> bool {
        self.components
            .iter()
            .flatten()
            .any(|c| !c.findings.is_empty())
            || self.database.as_ref().is_some_and(|d| !d.ok)
    }
}

/// What was pinned for an installed version after its install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The version pinned.
    pub version: String,
    /// SHA-256 of its `manifest.json`.
    pub manifest_sha256: String,
    /// Permission bits of each payload file.
    pub modes: BTreeMap<String, u32>,
    /// Unix seconds.
    pub pinned_at: i64,
}

/// `STATE_DIR/integrity.json`: pins, what was reported, when each check last ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorState {
    /// Per component.
    pub pins: BTreeMap<String, Pin>,
    /// Fingerprint of the findings last reported, per component or `database`, so that the
    /// same drift is reported once, not at every pass.
    pub reported: BTreeMap<String, String>,
    /// The last integrity pass, Unix seconds.
    pub last_integrity: Option<i64>,
    /// The last `quick_check`.
    pub last_quick_check: Option<i64>,
    /// The last `integrity_check`.
    pub last_full_check: Option<i64>,
}

impl MonitorState {
    /// Reads the state of `state_dir` (the default when there is none).
    pub fn load(state_dir: &Path) -> Result<MonitorState, IntegrityError> {
        let path = state_dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| IntegrityError::State {
                path,
                reason: format!("not an integrity state file ({e}); remove it to re-pin"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MonitorState::default()),
            Err(e) => Err(IntegrityError::State {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes it atomically, mode 0600.
    pub fn save(&self, state_dir: &Path) -> Result<(), IntegrityError> {
        let path = state_dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| IntegrityError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        otter_keys::atomic::write_atomic(&path, &bytes, 0o600).map_err(|e| IntegrityError::State {
            path,
            reason: e.to_string(),
        })
    }
}

/// The parts of `manifest.json` the check needs (the apply engine validated it strictly).
#[derive(Debug, Deserialize)]
struct ManifestView {
    name: String,
    version: String,
    payload: Vec<PayloadView>,
}

#[derive(Debug, Deserialize)]
struct PayloadView {
    path: String,
    size: u64,
    sha256: String,
}

/// Size and SHA-256 of the regular file `path` that `seen` (its `lstat`) describes; refuses
/// a file swapped (e.g. for a symlink) between that `lstat` and the open.
fn sha256_file(path: &Path, seen: &fs::Metadata) -> std::io::Result<(u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut f = fs::File::open(path)?;
    let m = f.metadata()?;
    if !m.is_file() || m.ino() != seen.ino() || m.dev() != seen.dev() {
        return Err(std::io::Error::other(
            "replaced while being checked (symlink or another file)",
        ));
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n_total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_total += n as u64;
    }
    Ok((n_total, hex::encode(h.finalize())))
}

/// Whether a file mode is one the apply engine gives (0644 or 0755).
fn normal_file_mode(mode: u32) -> bool {
    mode == 0o644 || mode == 0o755
}

fn finding(kind: DriftKind, path: &str, detail: String) -> Finding {
    Finding {
        kind,
        path: path.into(),
        detail,
    }
}

/// Checks one installed component against its manifest and `pin` (updated when it pins a
/// new version). Reads the tree without following any symlink.
pub fn check_component(
    install_root: &Path,
    component: &str,
    version: &str,
    pin: &mut Option<Pin>,
    now: i64,
) -> ComponentCheck {
    let mut out = ComponentCheck {
        component: component.into(),
        version: version.into(),
        files: 0,
        findings: Vec::new(),
    };
    let cdir = install_root.join("components").join(component);
    let current = cdir.join("current");
    match fs::symlink_metadata(&current) {
        Ok(m) if m.file_type().is_symlink() => match fs::read_link(&current) {
            Ok(t) if t == Path::new(version) => {}
            Ok(t) => out.findings.push(finding(
                DriftKind::Symlink,
                "current",
                format!(
                    "points to {}, the apply journal says {version} is active",
                    t.display()
                ),
            )),
            Err(e) => out
                .findings
                .push(finding(DriftKind::Unreadable, "current", e.to_string())),
        },
        Ok(_) => out.findings.push(finding(
            DriftKind::Symlink,
            "current",
            "is not a symlink to the active version".into(),
        )),
        Err(e) => out.findings.push(finding(
            DriftKind::Removed,
            "current",
            format!("missing: {e}"),
        )),
    }
    let vdir = cdir.join(version);
    match fs::symlink_metadata(&vdir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            out.findings.push(finding(
                DriftKind::Symlink,
                ".",
                "the version directory is not a directory".into(),
            ));
            return out;
        }
        Err(e) => {
            out.findings.push(finding(
                DriftKind::Removed,
                ".",
                format!("the version directory is missing: {e}"),
            ));
            return out;
        }
    }
    let mpath = vdir.join("manifest.json");
    let manifest_bytes = match fs::symlink_metadata(&mpath) {
        Ok(m) if m.is_file() => fs::read(&mpath).map_err(|e| e.to_string()),
        Ok(_) => Err("is not a regular file".into()),
        Err(e) => Err(e.to_string()),
    };
    let manifest_bytes = match manifest_bytes {
        Ok(b) => b,
        Err(e) => {
            out.findings
                .push(finding(DriftKind::Manifest, "manifest.json", e));
            return out;
        }
    };
    let manifest_sha = hex::encode(Sha256::digest(&manifest_bytes));
    let manifest: ManifestView = match serde_json::from_slice(&manifest_bytes) {
        Ok(m) => m,
        Err(e) => {
            out.findings.push(finding(
                DriftKind::Manifest,
                "manifest.json",
                format!("unreadable: {e}"),
            ));
            return out;
        }
    };
    if manifest.name != component || manifest.version != version {
        out.findings.push(finding(
            DriftKind::Manifest,
            "manifest.json",
            format!(
                "names {} {}, the apply journal {component} {version}",
                manifest.name, manifest.version
            ),
        ));
    }
    let pinned = match pin {
        Some(p) if p.version == version => {
            if p.manifest_sha256 != manifest_sha {
                out.findings.push(finding(
                    DriftKind::Manifest,
                    "manifest.json",
                    format!(
                        "SHA-256 {manifest_sha} differs from {} pinned after the install",
                        p.manifest_sha256
                    ),
                ));
            }
            true
        }
        _ => false,
    };
    let payload: BTreeMap<&str, &PayloadView> = manifest
        .payload
        .iter()
        .map(|p| (p.path.as_str(), p))
        .collect();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut modes: BTreeMap<String, u32> = BTreeMap::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(vdir.clone(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                out.findings.push(finding(
                    DriftKind::Unreadable,
                    if rel.is_empty() { "." } else { &rel },
                    e.to_string(),
                ));
                continue;
            }
        };
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            let shown = name.to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                shown
            } else {
                format!("{rel}/{shown}")
            };
            let p = dir.join(&name);
            let m = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    out.findings
                        .push(finding(DriftKind::Unreadable, &r, e.to_string()));
                    continue;
                }
            };
            let mode = m.permissions().mode() & 0o7777;
            let ft = m.file_type();
            if ft.is_symlink() {
                let to = fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default();
                out.findings.push(finding(
                    DriftKind::Symlink,
                    &r,
                    format!("is a symlink to {to}; bundles hold no links"),
                ));
                seen.insert(r);
            } else if ft.is_dir() {
                if mode != 0o755 {
                    out.findings.push(finding(
                        DriftKind::ModeChanged,
                        &r,
                        format!("directory mode {mode:04o}, expected 0755"),
                    ));
                }
                stack.push((p, r));
            } else if ft.is_file() {
                if r == "manifest.json" {
                    continue;
                }
                seen.insert(r.clone());
                let Some(want) = payload.get(r.as_str()) else {
                    out.findings.push(finding(
                        DriftKind::Added,
                        &r,
                        format!("{} bytes, not in the manifest", m.len()),
                    ));
                    continue;
                };
                out.files += 1;
                match sha256_file(&p, &m) {
                    Ok((size, sha)) if size != want.size || sha != want.sha256 => {
                        out.findings.push(finding(
                            DriftKind::Changed,
                            &r,
                            format!(
                                "{size} bytes SHA-256 {sha}, the manifest says {} bytes {}",
                                want.size, want.sha256
                            ),
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => out
                        .findings
                        .push(finding(DriftKind::Unreadable, &r, e.to_string())),
                }
                let pinned_mode = pin
                    .as_ref()
                    .filter(|_| pinned)
                    .and_then(|p| p.modes.get(&r).copied());
                match pinned_mode {
                    Some(pm) if pm != mode => out.findings.push(finding(
                        DriftKind::ModeChanged,
                        &r,
                        format!("mode {mode:04o}, {pm:04o} after the install"),
                    )),
                    _ if !normal_file_mode(mode) => out.findings.push(finding(
                        DriftKind::ModeChanged,
                        &r,
                        format!("mode {mode:04o}, installed files are 0644 or 0755"),
                    )),
                    _ => {}
                }
                modes.insert(r, mode);
            } else {
                let what = if ft.is_fifo() {
                    "a FIFO"
                } else if ft.is_socket() {
                    "a socket"
                } else {
                    "a device file"
                };
                out.findings.push(finding(
                    DriftKind::Added,
                    &r,
                    format!("{what}, not in the manifest"),
                ));
                seen.insert(r);
            }
        }
    }
    for p in payload.keys() {
        if !seen.contains(*p) {
            out.findings.push(finding(
                DriftKind::Removed,
                p,
                "listed in the manifest, missing on disk".into(),
            ));
        }
    }
    if !pinned && out.findings.is_empty() {
        // First look at this version since its install, and it matches its manifest: pin.
        *pin = Some(Pin {
            version: version.into(),
            manifest_sha256: manifest_sha,
            modes,
            pinned_at: now,
        });
    }
    out.findings.sort();
    out
}

/// Checks every installed component of `install_root` (read-only: no apply lock, no
/// recovery). If the journal changed while checking (an apply in progress), checks again
/// once.
pub fn check_install_root(
    install_root: &Path,
    state: &mut MonitorState,
    now: i64,
) -> Result<Vec<ComponentCheck>, IntegrityError> {
    let mut last = Vec::new();
    for _ in 0..2 {
        let view = JournalView::open(install_root)?;
        let before = view.history(1)?.first().map(|h| (h.id, h.updated_at));
        let installed = view.installed()?;
        let mut pins = state.pins.clone();
        pins.retain(|k, _| installed.contains_key(k));
        last = installed
            .iter()
            .map(|(name, v)| {
                let mut pin = pins.get(name).cloned();
                let c = check_component(install_root, name, &v.to_string(), &mut pin, now);
                if let Some(p) = pin {
                    pins.insert(name.clone(), p);
                }
                c
            })
            .collect();
        let after = JournalView::open(install_root)?
            .history(1)?
            .first()
            .map(|h| (h.id, h.updated_at));
        if before == after {
            state.pins = pins;
            return Ok(last);
        }
    }
    Ok(last)
}

fn fingerprint(parts: &[String]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// The security events for `checks`, recording in `state` what was reported: drift is
/// reported once per distinct set of findings; a component found intact again is forgotten
/// (so new drift later is reported again).
pub fn drift_events(
    checks: &[ComponentCheck],
    state: &mut MonitorState,
    now: i64,
) -> Vec<crate::status::Event> {
    let mut events = Vec::new();
    let checked: BTreeSet<&str> = checks.iter().map(|c| c.component.as_str()).collect();
    state
        .reported
        .retain(|k, _| k == "database" || checked.contains(k.as_str()));
    for c in checks {
        if c.findings.is_empty() {
            state.reported.remove(&c.component);
            continue;
        }
        let lines: Vec<String> = c
            .findings
            .iter()
            .map(|f| format!("{:?} {}: {}", f.kind, f.path, f.detail))
            .collect();
        let fp = fingerprint(&lines);
        if state.reported.get(&c.component) == Some(&fp) {
            continue;
        }
        state.reported.insert(c.component.clone(), fp);
        let mut detail = format!(
            "{} {}: {} finding(s): ",
            c.component,
            c.version,
            c.findings.len()
        );
        let listed: Vec<String> = c
            .findings
            .iter()
            .take(MAX_LISTED)
            .map(|f| {
                let kind = serde_json::to_value(f.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("{kind} {}", f.path)
            })
            .collect();
        detail.push_str(&listed.join(", "));
        if c.findings.len() > MAX_LISTED {
            detail.push_str(", ...");
        }
        events.push(crate::status::Event {
            kind: EVENT_DRIFT.into(),
            detail,
            at: now,
        });
    }
    events
}

/// Which checks a monitoring run makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Due {
    /// The integrity pass over the installed components.
    pub integrity: bool,
    /// `PRAGMA quick_check` of the live database.
    pub quick_check: bool,
    /// `PRAGMA integrity_check` of the live database.
    pub full_check: bool,
}

fn elapsed(last: Option<i64>, now: i64, interval: u64) -> bool {
    interval > 0
        && last.is_none_or(|l| now.saturating_sub(l) >= i64::try_from(interval).unwrap_or(i64::MAX))
}

/// The database the checks watch: `[database] path`, else `[backup] database`.
pub fn watched_database(cfg: &AgentConfig) -> Option<&Path> {
    cfg.database
        .path
        .as_deref()
        .or(cfg.backup.database.as_deref())
}

/// What is due at `now` (Unix seconds) and `sec_of_day` (in `[update] window_time`).
pub fn due(cfg: &AgentConfig, state: &MonitorState, now: i64, sec_of_day: u32) -> Due {
    let has_db = watched_database(cfg).is_some();
    let full = has_db
        && cfg.database.quiet_hours.is_some_and(|w| {
            w.contains(sec_of_day) && elapsed(state.last_full_check, now, 20 * 3600)
        });
    Due {
        integrity: elapsed(state.last_integrity, now, cfg.integrity.interval_secs),
        quick_check: has_db
            && !full
            && elapsed(
                state.last_quick_check,
                now,
                cfg.database.quick_check_interval_secs,
            ),
        full_check: full,
    }
}

/// Seconds until the next check is due (for the daemon's wait), `None` when none is
/// scheduled.
pub fn next_due_in(cfg: &AgentConfig, state: &MonitorState, now: i64) -> Option<u64> {
    let left = |last: Option<i64>, interval: u64| -> Option<u64> {
        if interval == 0 {
            return None;
        }
        let due = last.map_or(now, |l| {
            l.saturating_add(i64::try_from(interval).unwrap_or(i64::MAX))
        });
        Some(u64::try_from(due.saturating_sub(now)).unwrap_or(0))
    };
    let mut next = left(state.last_integrity, cfg.integrity.interval_secs);
    if watched_database(cfg).is_some() {
        if let Some(q) = left(
            state.last_quick_check,
            cfg.database.quick_check_interval_secs,
        ) {
            next = Some(next.map_or(q, |n| n.min(q)));
        }
    }
    next
}

/// Runs the `due` checks with the configuration `cfg`: records what it found in
/// `integrity.json` and new security events in the status file (both under the agent's
/// update lock, so it never runs during an update pass), and sends a signed report when
/// `report` is set and there are events to send.
pub fn run_checks(
    cfg: &AgentConfig,
    due: Due,
    report: bool,
) -> Result<MonitorReport, IntegrityError> {
    let state_dir = cfg.state_dir()?.to_path_buf();
    let install_root = cfg.install_root()?.to_path_buf();
    let _lock = crate::update::lock(&state_dir)?;
    let now = UtcTime::now().unix();
    let mut state = MonitorState::load(&state_dir)?;
    let mut out = MonitorReport {
        at: now,
        ..MonitorReport::default()
    };
    if due.integrity {
        let checks = check_install_root(&install_root, &mut state, now)?;
        out.events.extend(drift_events(&checks, &mut state, now));
        state.last_integrity = Some(now);
        out.components = Some(checks);
    }
    if let (Some(db), true) = (watched_database(cfg), due.quick_check || due.full_check) {
        let level = if due.full_check {
            state.last_full_check = Some(now);
            CheckLevel::Full
        } else {
            CheckLevel::Quick
        };
        state.last_quick_check = Some(now);
        let check = match dbhealth::check_database(db, level) {
            Ok(h) => DatabaseCheck {
                path: db.to_path_buf(),
                level,
                ok: h.ok,
                messages: h.messages,
            },
            Err(e) => DatabaseCheck {
                path: db.to_path_buf(),
                level,
                ok: false,
                messages: vec![otter_keys::report::describe(&e)],
            },
        };
        if check.ok {
            state.reported.remove("database");
        } else {
            let mut lines = vec![check.path.display().to_string()];
            lines.extend(check.messages.iter().cloned());
            let fp = fingerprint(&lines);
            if state.reported.get("database") != Some(&fp) {
                state.reported.insert("database".into(), fp);
                let detail = format!(
                    "{} failed PRAGMA {}: {}",
                    check.path.display(),
                    level.pragma(),
                    check.messages.join("; ")
                );
                out.events.push(crate::status::Event {
                    kind: EVENT_DB_CORRUPT.into(),
                    detail,
                    at: now,
                });
            }
        }
        out.database = Some(check);
    }
    let mut status = StatusFile::load(&state_dir).unwrap_or_default();
    for e in &out.events {
        status.push_event(&e.kind, e.detail.clone(), e.at);
    }
    state.save(&state_dir)?;
    if report && !status.unreported_events.is_empty() {
        let sent = send_report(&state_dir, &install_root, &mut status, out.found_problems());
        out.reported = Some(
            sent.map(|_| ())
                .map_err(|e| otter_keys::report::describe(&e)),
        );
    }
    status.save(&state_dir)?;
    Ok(out)
}

/// Runs whatever is due now (the daemon's scheduled call); the events go out with the next
/// report.
pub fn run_scheduled(cfg: &AgentConfig) -> Result<MonitorReport, IntegrityError> {
    let state_dir = cfg.state_dir()?;
    let state = MonitorState::load(state_dir)?;
    let sec = crate::config::second_of_day(cfg.update.window_time);
    let d = due(cfg, &state, UtcTime::now().unix(), sec);
    if d == Due::default() {
        return Ok(MonitorReport::default());
    }
    run_checks(cfg, d, false)
}

/// Sends a signed report carrying the unreported events (cleared once the server took
/// them), the installed versions from the journal and the last update result.
fn send_report(
    state_dir: &Path,
    install_root: &Path,
    status: &mut StatusFile,
    problems: bool,
) -> Result<Value, crate::device::DeviceError> {
    let installed: BTreeMap<String, String> = JournalView::open(install_root)
        .and_then(|v| v.installed())
        .map(|i| i.into_iter().map(|(k, v)| (k, v.to_string())).collect())
        .unwrap_or_default();
    let short =
        |s: &str, n: usize| -> String { s.chars().filter(|c| !c.is_control()).take(n).collect() };
    let last_update = status.results.first().map(|r| {
        json!({
            "target": short(if r.target.is_empty() { &r.component } else { &r.target }, 128),
            "result": match r.result {
                crate::status::ResultKind::Success => "success",
                crate::status::ResultKind::Failed => "failed",
                crate::status::ResultKind::RolledBack => "rolled_back",
            },
            "message": short(&r.message, 1000),
            "at": r.at,
        })
    });
    let health = if problems {
        "degraded"
    } else if installed.is_empty() {
        "unknown"
    } else {
        "ok"
    };
    let events: Vec<Value> = status
        .unreported_events
        .iter()
        .map(|e| json!({"kind": short(&e.kind, 128), "detail": short(&e.detail, 1000), "at": e.at}))
        .collect();
    let body = json!({
        "installed": installed,
        "last_update": last_update,
        "health": health,
        "security_events": events,
        "agent_version": env!("CARGO_PKG_VERSION"),
    });
    let answer = crate::device::send_report(state_dir, &body)?;
    status.unreported_events.clear();
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_fall_due_after_their_intervals_and_in_quiet_hours() {
        let mut cfg = AgentConfig::default();
        let mut s = MonitorState::default();
        let d = due(&cfg, &s, 10_000, 12 * 3600);
        assert!(d.integrity && !d.quick_check && !d.full_check, "{d:?}");
        cfg.backup.database = Some("/db".into());
        let d = due(&cfg, &s, 10_000, 12 * 3600);
        assert!(d.quick_check && !d.full_check);
        let d = due(&cfg, &s, 10_000, 3 * 3600);
        assert!(d.full_check && !d.quick_check);
        s.last_integrity = Some(9_000);
        s.last_quick_check = Some(9_000);
        s.last_full_check = Some(9_000);
        let d = due(&cfg, &s, 10_000, 3 * 3600);
        assert_eq!(d, Due::default());
        assert_eq!(next_due_in(&cfg, &s, 10_000), Some(2_600));
        cfg.integrity.interval_secs = 0;
        cfg.database.quick_check_interval_secs = 0;
        assert_eq!(next_due_in(&cfg, &s, 10_000), None);
    }

    #[test]
    fn the_same_drift_is_reported_once_and_again_after_a_repair() {
        let mut s = MonitorState::default();
        let bad = ComponentCheck {
            component: "pos".into(),
            version: "1.0.0".into(),
            files: 1,
            findings: vec![finding(DriftKind::Changed, "bin/pos", "x".into())],
        };
        assert_eq!(drift_events(std::slice::from_ref(&bad), &mut s, 1).len(), 1);
        assert!(drift_events(std::slice::from_ref(&bad), &mut s, 2).is_empty());
        let good = ComponentCheck {
            findings: vec![],
            ..bad.clone()
        };
        assert!(drift_events(&[good], &mut s, 3).is_empty());
        let e = drift_events(&[bad], &mut s, 4);
        assert_eq!(e.len(), 1);
        assert!(e[0].detail.contains("changed bin/pos"), "{}", e[0].detail);
    }
}
