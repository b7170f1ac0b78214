//! Fleet load generator for `bench/run.sh` (item 2 of the benchmarks): enrolls N simulated
//! terminals through the real API (one single-use enrollment token per terminal, created
//! with an admin API token), then for a fixed time has them poll
//! `/repo/metadata/timestamp.json` and send signed status reports
//! (`POST /api/v1/device/report`, signed with each terminal's own ed25519 key by
//! `otter_keys::request::sign_request`, as the agent does). Prints one JSON object:
//! requests/s, p50/p99/max latency, errors by kind, and the server's peak RSS (VmHWM).
//!
//! Closed loop over keep-alive connections: each of `--connections` threads owns the
//! terminals `i % connections == thread` and cycles through them, one request at a time.
//!
//! ```text
//! fleet_load --server http://127.0.0.1:PORT --admin-token-file FILE --terminals 10000 \
//!     --seconds 60 --connections 64 [--server-pid PID]
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otter_keys::crypto::SigningKey;
use serde_json::{json, Value};

type Res<T> = Result<T, String>;

/// One keep-alive HTTP/1.1 connection to the server (plain loopback HTTP).
struct Conn {
    addr: String,
    host: String,
    stream: Option<BufReader<TcpStream>>,
}

/// A response: status and body.
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    fn new(base: &str) -> Res<Conn> {
        let hostport = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("--server {base:?}: give http://HOST:PORT"))?
            .trim_end_matches('/');
        Ok(Conn {
            addr: hostport.to_owned(),
            host: hostport.to_owned(),
            stream: None,
        })
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<Resp> {
        // One retry on a fresh connection when a kept-alive one was closed by the server.
        let reused = self.stream.is_some();
        match self.try_request(method, path, headers, body) {
            Ok(r) => Ok(r),
            Err(e) if reused => {
                self.stream = None;
                self.try_request(method, path, headers, body)
                    .map_err(|e2| format!("{e}; retried: {e2}"))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Res<Resp> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            self.stream = Some(BufReader::with_capacity(64 * 1024, s));
        }
        let Some(reader) = self.stream.as_mut() else {
            return Err("no connection".into());
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body);
        reader
            .get_mut()
            .write_all(&out)
            .map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("read status: {e}"))?;
        if line.is_empty() {
            return Err("connection closed".into());
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| format!("read header: {e}"))?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    "connection" => close = v == "close",
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                reader
                    .read_line(&mut line)
                    .map_err(|e| format!("read chunk: {e}"))?;
                let n = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| format!("bad chunk size {line:?}"))?;
                let mut chunk = vec![0; n + 2];
                reader
                    .read_exact(&mut chunk)
                    .map_err(|e| format!("read chunk: {e}"))?;
                body.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
        } else if method != "HEAD" {
            reader
                .read_to_end(&mut body)
                .map_err(|e| format!("read body: {e}"))?;
            close = true;
        }
        if close {
            self.stream = None;
        }
        Ok(Resp { status, body })
    }
}

/// A simulated terminal.
struct Terminal {
    device_id: String,
    key: SigningKey,
}

struct Args {
    server: String,
    admin_token: String,
    terminals: usize,
    seconds: u64,
    connections: usize,
    server_pid: Option<u32>,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        server: String::new(),
        admin_token: String::new(),
        terminals: 1000,
        seconds: 10,
        connections: 32,
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => a.server = val()?,
            "--admin-token-file" => {
                let p = val()?;
                a.admin_token = std::fs::read_to_string(&p)
                    .map_err(|e| format!("reading {p}: {e}"))?
                    .trim()
                    .to_owned();
            }
            "--terminals" => a.terminals = val()?.parse().map_err(|e| format!("{e}"))?,
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("{e}"))?,
            "--connections" => a.connections = val()?.parse().map_err(|e| format!("{e}"))?,
            "--server-pid" => a.server_pid = Some(val()?.parse().map_err(|e| format!("{e}"))?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.server.is_empty() || a.admin_token.is_empty() {
        return Err("give --server URL and --admin-token-file FILE".into());
    }
    a.connections = a.connections.clamp(1, a.terminals.max(1));
    Ok(a)
}

/// VmHWM and VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn enroll_one(conn: &mut Conn, admin: &str) -> Res<Terminal> {
    let auth = format!("Bearer {admin}");
    let r = conn.request(
        "POST",
        "/api/v1/enrollment-tokens",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        br#"{"expires_in_secs": 3600}"#,
    )?;
    if r.status != 201 {
        return Err(format!(
            "enrollment token: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let token = v["token"]
        .as_str()
        .ok_or("no token in the answer")?
        .to_owned();
    let key = SigningKey::generate();
    let recipient = otter_keys::age::x25519::Identity::generate()
        .to_public()
        .to_string();
    let body = serde_json::to_vec(&json!({
        "token": token,
        "public_key": key.public_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "backup_recipient": recipient,
        "hardware_model": "pos-a",
    }))
    .map_err(|e| e.to_string())?;
    let r = conn.request(
        "POST",
        "/api/v1/enroll",
        &[("Content-Type", "application/json")],
        &body,
    )?;
    if r.status != 201 {
        return Err(format!(
            "enroll: HTTP {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let device_id = v["device_id"]
        .as_str()
        .ok_or("no device_id in the answer")?
        .to_owned();
    Ok(Terminal { device_id, key })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

fn run() -> Res<Value> {
    let a = parse_args()?;
    let base = a.server.trim_end_matches('/').to_owned();

    // Enrollment through the real API.
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let enroll_errors = Mutex::new(BTreeMap::<String, usize>::new());
    let terminals: Vec<Terminal> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.connections.min(16))
            .map(|_| {
                let (next, errors, base, admin) = (&next, &enroll_errors, &base, &a.admin_token);
                s.spawn(move || {
                    let mut out = Vec::new();
                    let Ok(mut conn) = Conn::new(base) else {
                        return out;
                    };
                    while next.fetch_add(1, Ordering::Relaxed) < a.terminals {
                        match enroll_one(&mut conn, admin) {
                            Ok(t) => out.push(t),
                            Err(e) => {
                                if let Ok(mut m) = errors.lock() {
                                    *m.entry(e.chars().take(120).collect()).or_default() += 1;
                                }
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let enroll_secs = started.elapsed().as_secs_f64();
    let enroll_errors = enroll_errors.into_inner().unwrap_or_default();
    if terminals.is_empty() {
        return Err(format!("no terminal enrolled: {enroll_errors:?}"));
    }
    eprintln!(
        "fleet_load: enrolled {} terminals in {enroll_secs:.1} s; load for {} s over {} connections",
        terminals.len(),
        a.seconds,
        a.connections
    );
    let rss_after_enroll = a.server_pid.and_then(rss_kib);

    // The load: poll the timestamp, send a signed report, next terminal.
    let terminals = Arc::new(terminals);
    let stop = Arc::new(AtomicBool::new(false));
    let peak_rss = Arc::new(AtomicUsize::new(0));
    let sampler = a.server_pid.map(|pid| {
        let (stop, peak) = (stop.clone(), peak_rss.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some((_, rss)) = rss_kib(pid) {
                    peak.fetch_max(rss as usize, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    });
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let load_started = Instant::now();
    struct Tally {
        poll_us: Vec<u32>,
        report_us: Vec<u32>,
        errors: BTreeMap<String, usize>,
    }
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.connections)
            .map(|t| {
                let (terminals, base) = (&terminals, &base);
                s.spawn(move || {
                    let mut tally = Tally {
                        poll_us: Vec::new(),
                        report_us: Vec::new(),
                        errors: BTreeMap::new(),
                    };
                    let err = |tally: &mut Tally, e: String| {
                        *tally
                            .errors
                            .entry(e.chars().take(120).collect())
                            .or_default() += 1;
                    };
                    let Ok(mut conn) = Conn::new(base) else {
                        return tally;
                    };
                    let mine: Vec<&Terminal> =
                        terminals.iter().skip(t).step_by(a.connections).collect();
                    let report = serde_json::to_vec(&json!({
                        "installed": {"pos-app": "1.0.0"},
                        "health": "ok",
                        "security_events": [],
                        "agent_version": "bench",
                    }))
                    .unwrap_or_default();
                    'outer: loop {
                        for term in &mine {
                            if Instant::now() >= deadline {
                                break 'outer;
                            }
                            let t0 = Instant::now();
                            match conn.request("GET", "/repo/metadata/timestamp.json", &[], b"") {
                                Ok(r) if r.status == 200 => tally
                                    .poll_us
                                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                                Ok(r) => err(&mut tally, format!("poll HTTP {}", r.status)),
                                Err(e) => err(&mut tally, format!("poll: {e}")),
                            }
                            let now = otter_keys::time::UtcTime::now().unix();
                            let path = "/api/v1/device/report";
                            let headers = match otter_keys::request::sign_request(
                                &term.key,
                                &term.device_id,
                                "POST",
                                path,
                                &report,
                                now,
                            ) {
                                Ok(h) => h,
                                Err(e) => {
                                    err(&mut tally, format!("sign: {e}"));
                                    continue;
                                }
                            };
                            let mut hs: Vec<(&str, &str)> = headers.pairs().to_vec();
                            hs.push(("Content-Type", "application/json"));
                            let t0 = Instant::now();
                            match conn.request("POST", path, &hs, &report) {
                                Ok(r) if r.status == 200 => tally
                                    .report_us
                                    .push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                                Ok(r) => err(
                                    &mut tally,
                                    format!(
                                        "report HTTP {}: {}",
                                        r.status,
                                        String::from_utf8_lossy(&r.body)
                                    ),
                                ),
                                Err(e) => err(&mut tally, format!("report: {e}")),
                            }
                        }
                    }
                    tally
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let load_secs = load_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = sampler {
        let _ = h.join();
    }
    let mut poll: Vec<u32> = tallies.iter().flat_map(|t| t.poll_us.clone()).collect();
    let mut rep: Vec<u32> = tallies.iter().flat_map(|t| t.report_us.clone()).collect();
    let mut errors = BTreeMap::<String, usize>::new();
    for t in &tallies {
        for (k, v) in &t.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
    }
    let mut all: Vec<u32> = poll.iter().chain(rep.iter()).copied().collect();
    poll.sort_unstable();
    rep.sort_unstable();
    all.sort_unstable();
    let error_count: usize = errors.values().sum();
    let hwm = a.server_pid.and_then(rss_kib).map(|(h, _)| h);
    Ok(json!({
        "terminals": terminals.len(),
        "connections": a.connections,
        "enroll_seconds": enroll_secs,
        "enrollments_per_s": terminals.len() as f64 / enroll_secs,
        "enroll_errors": enroll_errors,
        "seconds": load_secs,
        "requests": all.len() + error_count,
        "ok_requests": all.len(),
        "requests_per_s": all.len() as f64 / load_secs,
        "polls_per_s": poll.len() as f64 / load_secs,
        "reports_per_s": rep.len() as f64 / load_secs,
        "p50_ms": percentile(&all, 0.50),
        "p99_ms": percentile(&all, 0.99),
        "max_ms": percentile(&all, 1.0),
        "poll_p50_ms": percentile(&poll, 0.50),
        "poll_p99_ms": percentile(&poll, 0.99),
        "report_p50_ms": percentile(&rep, 0.50),
        "report_p99_ms": percentile(&rep, 0.99),
        "errors": error_count,
        "error_kinds": errors,
        "server_rss_after_enroll_kib": rss_after_enroll.map(|(_, r)| r),
        "server_peak_rss_sampled_kib": peak_rss.load(Ordering::Relaxed),
        "server_vmhwm_kib": hwm,
    }))
}

fn main() {
    match run() {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("fleet_load: {e}");
            std::process::exit(1);
        }
    }
}
