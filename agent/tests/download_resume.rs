//! Resumable, verified downloads (`otter_agent::download`) against a loopback HTTP server
//! that injects faults the real server never makes: a connection cut mid-body, a mirror
//! that ignores `Range`, one that answers 416, endless data, and wrong bytes. The normal path
//! against the real `otter-server` is covered by tests/tests/update_end_to_end.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otter_agent::download::{
    download_target, file_name, pending, DownloadError, DownloadOptions, PART_SUFFIX,
};
use otter_agent::tuf::{FetchError, HttpFetcher};
use otter_keys::metadata::TargetFile;

/// One request as the server saw it: its number (from 0) and its `Range` start.
#[derive(Debug, Clone, Copy)]
struct Req {
    n: usize,
    range: Option<u64>,
}

type Handler = dyn Fn(Req, &mut TcpStream) + Send + Sync;

/// A tiny HTTP/1.1 server on 127.0.0.1:0, one connection at a time, `Connection: close`.
struct FaultServer {
    url: String,
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Option<u64>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultServer {
    fn start(handler: Box<Handler>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = conn else { continue };
                let range = read_request(&stream);
                seen2.lock().unwrap().push(range);
                handler(Req { n, range }, &mut stream);
                let _ = stream.flush();
            }
        });
        FaultServer {
            url: format!("http://{addr}/targets/bundle.tar.zst"),
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn ranges(&self) -> Vec<Option<u64>> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the request head; returns the start of a `Range: bytes=N-` header.
fn read_request(stream: &TcpStream) -> Option<u64> {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut range = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return range;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse().ok();
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
}

/// A 200 with the whole file, or a 206 from the asked offset.
fn serve_ranges(data: &[u8], req: Req, s: &mut TcpStream) {
    match req.range {
        Some(start) if (start as usize) < data.len() => {
            let body = &data[start as usize..];
            respond(
                s,
                "206 Partial Content",
                &[
                    format!("Content-Length: {}", body.len()),
                    format!(
                        "Content-Range: bytes {start}-{}/{}",
                        data.len() - 1,
                        data.len()
                    ),
                ],
                body,
            );
        }
        Some(_) => respond(
            s,
            "416 Range Not Satisfiable",
            &[format!("Content-Range: bytes */{}", data.len())],
            b"",
        ),
        None => respond(
            s,
            "200 OK",
            &[format!("Content-Length: {}", data.len())],
            data,
        ),
    }
}

fn bundle_bytes() -> Vec<u8> {
    (0..300_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn signed(data: &[u8]) -> TargetFile {
    TargetFile {
        length: data.len() as u64,
        hashes: otter_keys::hash::hashes_of(data),
        extra: Default::default(),
    }
}

fn fetcher() -> HttpFetcher {
    HttpFetcher::new(Duration::from_secs(5), Duration::from_secs(20)).unwrap()
}

fn opts(attempts: u32) -> DownloadOptions {
    DownloadOptions {
        attempts,
        retry_delay: Duration::from_millis(50),
        progress: false,
        cancel: None,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

const TARGET: &str = "pos-firmware-1.2.3.tar.zst";
const CUT_AT: usize = 120_000;

/// Cuts the first connection after `CUT_AT` bytes of a full-length 200; serves ranges after.
fn cutting_server(data: Vec<u8>) -> FaultServer {
    FaultServer::start(Box::new(move |req, s| {
        if req.n == 0 {
            respond(
                s,
                "200 OK",
                &[format!("Content-Length: {}", data.len())],
                &data[..CUT_AT],
            );
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        serve_ranges(&data, req, s);
    }))
}

#[test]
fn a_cut_connection_keeps_the_part_and_the_next_run_resumes_it_with_range() {
    let data = bundle_bytes();
    let info = signed(&data);
    let server = cutting_server(data.clone());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("downloads");

    // One attempt: the cut ends the call (like a killed agent), the part stays.
    let err = download_target(&fetcher(), &server.url, TARGET, &info, &dir, &opts(1)).unwrap_err();
    assert!(err.is_transient(), "{err}");
    let name = file_name(TARGET, &info).unwrap();
    let part = dir.join(format!("{name}{PART_SUFFIX}"));
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept <= CUT_AT as u64, "{kept}");
    assert_eq!(&std::fs::read(&part).unwrap()[..], &data[..kept as usize]);
    assert!(
        !dir.join(&name).exists(),
        "no final file before verification"
    );
    let p = pending(&dir).unwrap();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].bytes, kept);

    // The next run asks for the rest only, and verifies the whole.
    let d = download_target(&fetcher(), &server.url, TARGET, &info, &dir, &opts(1)).unwrap();
    assert_eq!(server.ranges(), vec![None, Some(kept)]);
    assert_eq!(d.resumed_from, kept);
    assert_eq!(d.fetched, data.len() as u64 - kept);
    assert!(!d.restarted && !d.cached);
    assert_eq!(d.path, dir.join(&name));
    assert_eq!(std::fs::read(&d.path).unwrap(), data);
    assert_eq!(files_in(&dir), vec![name]);
}

#[test]
fn a_cut_connection_is_resumed_within_one_call() {
    let data = bundle_bytes();
    let info = signed(&data);
    let server = cutting_server(data.clone());
    let tmp = tempfile::tempdir().unwrap();
    let d = download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(3)).unwrap();
    let ranges = server.ranges();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[1].is_some_and(|r| r > 0 && r == d.resumed_from));
    assert_eq!(std::fs::read(&d.path).unwrap(), data);
}

#[test]
fn a_mirror_that_ignores_range_makes_a_clean_restart() {
    let data = bundle_bytes();
    let info = signed(&data);
    let d2 = data.clone();
    let server = FaultServer::start(Box::new(move |_req, s| {
        respond(s, "200 OK", &[format!("Content-Length: {}", d2.len())], &d2);
    }));
    let tmp = tempfile::tempdir().unwrap();
    let name = file_name(TARGET, &info).unwrap();
    // A correct prefix: appending a whole file after it would make a mix.
    std::fs::write(
        tmp.path().join(format!("{name}{PART_SUFFIX}")),
        &data[..50_000],
    )
    .unwrap();
    let d = download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(1)).unwrap();
    assert_eq!(server.ranges(), vec![Some(50_000)]);
    assert!(d.restarted);
    assert_eq!(d.resumed_from, 0);
    assert_eq!(std::fs::read(&d.path).unwrap(), data);
    assert_eq!(files_in(tmp.path()), vec![name]);
}

#[test]
fn a_416_discards_the_part_and_starts_again() {
    let data = bundle_bytes();
    let info = signed(&data);
    // The mirror's copy is shorter than our part claims to continue: 416 on every range.
    let d2 = data.clone();
    let server = FaultServer::start(Box::new(move |req, s| match req.range {
        Some(_) => respond(
            s,
            "416 Range Not Satisfiable",
            &[format!("Content-Range: bytes */{}", d2.len())],
            b"",
        ),
        None => respond(s, "200 OK", &[format!("Content-Length: {}", d2.len())], &d2),
    }));
    let tmp = tempfile::tempdir().unwrap();
    let name = file_name(TARGET, &info).unwrap();
    std::fs::write(
        tmp.path().join(format!("{name}{PART_SUFFIX}")),
        &data[..1000],
    )
    .unwrap();
    let d = download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(1)).unwrap();
    assert_eq!(server.ranges(), vec![Some(1000), None]);
    assert!(d.restarted);
    assert_eq!(std::fs::read(&d.path).unwrap(), data);
    assert_eq!(files_in(tmp.path()), vec![name]);
}

#[test]
fn endless_data_is_cut_at_the_signed_length_and_nothing_is_kept() {
    let data = bundle_bytes();
    let info = signed(&data);
    // No Content-Length: the body goes on until the client hangs up.
    let d2 = data.clone();
    let server = FaultServer::start(Box::new(move |_req, s| {
        respond(s, "200 OK", &[], &d2);
        let chunk = vec![0x41u8; 64 * 1024];
        for _ in 0..10_000 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    }));
    let tmp = tempfile::tempdir().unwrap();
    let err =
        download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(3)).unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Fetch {
                source: FetchError::TooLarge { max, .. },
                ..
            } if max == data.len() as u64
        ),
        "{err}"
    );
    assert!(err.is_security_event() && !err.is_transient());
    assert_eq!(server.ranges().len(), 1, "no retry of endless data");
    assert!(
        files_in(tmp.path()).is_empty(),
        "{:?}",
        files_in(tmp.path())
    );

    // A declared length above the signed one is refused before any byte is stored.
    let d3 = data.clone();
    let big = FaultServer::start(Box::new(move |_req, s| {
        respond(
            s,
            "200 OK",
            &[format!("Content-Length: {}", d3.len() + 1)],
            &d3,
        );
    }));
    let err =
        download_target(&fetcher(), &big.url, TARGET, &info, tmp.path(), &opts(1)).unwrap_err();
    assert!(err.is_security_event(), "{err}");
    assert!(files_in(tmp.path()).is_empty());
}

#[test]
fn wrong_bytes_of_the_right_length_leave_no_file() {
    let data = bundle_bytes();
    let info = signed(&data);
    let mut evil = data.clone();
    evil[200_000] ^= 0xff;
    let server = FaultServer::start(Box::new(move |req, s| serve_ranges(&evil, req, s)));
    let tmp = tempfile::tempdir().unwrap();
    let err =
        download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(3)).unwrap_err();
    assert!(matches!(err, DownloadError::Verify { .. }), "{err}");
    assert!(err.to_string().contains("not the one signed"), "{err}");
    assert!(
        files_in(tmp.path()).is_empty(),
        "{:?}",
        files_in(tmp.path())
    );
    assert_eq!(server.ranges().len(), 1, "wrong bytes are not retried");
}

#[test]
fn a_206_from_another_offset_is_refused() {
    let data = bundle_bytes();
    let info = signed(&data);
    let d2 = data.clone();
    let server = FaultServer::start(Box::new(move |_req, s| {
        respond(
            s,
            "206 Partial Content",
            &[
                format!("Content-Length: {}", d2.len()),
                format!("Content-Range: bytes 0-{}/{}", d2.len() - 1, d2.len()),
            ],
            &d2,
        );
    }));
    let tmp = tempfile::tempdir().unwrap();
    let name = file_name(TARGET, &info).unwrap();
    let part = tmp.path().join(format!("{name}{PART_SUFFIX}"));
    std::fs::write(&part, &data[..10]).unwrap();
    let err =
        download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(1)).unwrap_err();
    assert!(err.to_string().contains("different range"), "{err}");
    assert!(!tmp.path().join(&name).exists());
    assert_eq!(
        std::fs::read(&part).unwrap(),
        &data[..10],
        "the part is untouched"
    );
}

#[test]
fn a_cancelled_download_stops_promptly_and_keeps_its_part() {
    let data = bundle_bytes();
    let info = signed(&data);
    // Drips the body slowly: 4 KiB every 20 ms.
    let d2 = data.clone();
    let server = FaultServer::start(Box::new(move |req, s| {
        if req.range.is_some() {
            return serve_ranges(&d2, req, s);
        }
        respond(s, "200 OK", &[format!("Content-Length: {}", d2.len())], b"");
        for chunk in d2.chunks(4096) {
            if s.write_all(chunk).and_then(|()| s.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }));
    let tmp = tempfile::tempdir().unwrap();
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.store(true, Ordering::SeqCst);
    });
    let o = DownloadOptions {
        cancel: Some(cancel.clone()),
        ..opts(3)
    };
    let t = std::time::Instant::now();
    let err = download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &o).unwrap_err();
    stopper.join().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let kept = match err {
        DownloadError::Cancelled { kept, .. } => kept,
        other => panic!("{other}"),
    };
    assert!(kept > 0 && kept < data.len() as u64, "{kept}");
    assert!(!err_is_retried(&server));
    let name = file_name(TARGET, &info).unwrap();
    let part = tmp.path().join(format!("{name}{PART_SUFFIX}"));
    assert_eq!(std::fs::read(&part).unwrap(), &data[..kept as usize]);

    // The next run resumes from there.
    let d = download_target(&fetcher(), &server.url, TARGET, &info, tmp.path(), &opts(1)).unwrap();
    assert_eq!(d.resumed_from, kept);
    assert_eq!(std::fs::read(&d.path).unwrap(), data);
}

/// Whether the server saw more than one request (a cancelled download is not retried).
fn err_is_retried(server: &FaultServer) -> bool {
    server.ranges().len() > 1
}
