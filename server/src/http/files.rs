//! Repository files as static files: GET and HEAD, one byte range, strong entity tags,
//! `If-None-Match`/`If-Range`, and caching headers chosen by name. Metadata files come from
//! the store's in-memory cache ([`crate::store::cache`]); targets of a local (`file://`)
//! store are read straight from their file in large chunks; anything else streams from the
//! object store.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue, HttpDate};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use futures_util::Stream;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt};
use tokio::task::JoinHandle;

use super::conditional::{if_range_allows, none_match_hits, parse_range, select, Selection};
use super::error::ApiError;
use super::AppState;
use crate::repo::names::{Caching, MetadataName, TargetName};
use crate::store::{
    entity_tag, local_file_meta, metadata_key, object_path, target_key, MetadataRead,
};

/// How often a read is retried when the file is replaced between its `head` and its `get`.
const READ_ATTEMPTS: usize = 3;

/// Bytes read from a local file at a time. Large enough that a read and its trip through
/// the blocking pool are cheap per byte (measured: 64 KiB chunks cost 40% more CPU per byte
/// than 256 KiB, 1 MiB no less); small enough to stay in the CPU cache and to keep the
/// memory of many slow downloads modest (about one chunk per response, held until the
/// connection takes it).
const FILE_CHUNK: usize = 256 * 1024;

const JSON: &str = "application/json";
const OCTETS: &str = "application/octet-stream";

/// `GET|HEAD /repo/metadata/{file}`.
#[tracing::instrument(level = "debug", skip_all, fields(file = %file))]
pub async fn metadata(
    req: HttpRequest,
    file: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = MetadataName::parse(&file)?;
    match state.store.read_metadata(name.as_str()).await {
        Ok(MetadataRead::File(f)) => {
            let last_modified = SystemTime::from(f.meta.last_modified);
            let file = Described {
                etag: &f.etag,
                size: f.bytes.len() as u64,
                last_modified,
                caching: name.caching(),
                content_type: JSON,
            };
            Ok(match file.plan(&req) {
                Plan::Answer(res) => res,
                Plan::Send {
                    mut res,
                    start,
                    end,
                } => {
                    if req.method() == Method::HEAD {
                        res.body(empty_body(end - start))
                    } else {
                        let range = usize::try_from(start).unwrap_or(usize::MAX)
                            ..usize::try_from(end).unwrap_or(usize::MAX);
                        match f.bytes.get(range.clone()) {
                            Some(_) => res.body(f.bytes.slice(range)),
                            None => {
                                return Err(ApiError::internal(
                                    "slicing a cached file",
                                    &"range past its end",
                                ))
                            }
                        }
                    }
                }
            })
        }
        Ok(MetadataRead::Missing) => Err(missing(name.as_str())),
        Ok(MetadataRead::TooLarge) => {
            serve(
                &req,
                &state,
                &metadata_key(name.as_str()),
                name.caching(),
                JSON,
            )
            .await
        }
        Err(e) => Err(ApiError::unavailable("the object store", &e)),
    }
}

/// `GET|HEAD /repo/targets/{file}`.
#[tracing::instrument(level = "debug", skip_all, fields(file = %file))]
pub async fn target(
    req: HttpRequest,
    file: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = TargetName::parse(&file)?;
    serve(
        &req,
        &state,
        &target_key(name.as_str()),
        name.caching(),
        OCTETS,
    )
    .await
}

fn missing(file: &str) -> ApiError {
    ApiError::not_found(format!("no file {file:?} here"))
}

fn header(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn empty_body(len: u64) -> SizedStream<futures_util::stream::Empty<Result<Bytes, std::io::Error>>> {
    SizedStream::new(len, futures_util::stream::empty())
}

/// What the response headers say about a file.
struct Described<'a> {
    etag: &'a str,
    size: u64,
    last_modified: SystemTime,
    caching: Caching,
    content_type: &'static str,
}

/// What to answer: a finished response (304, 416), or these bytes of the file with these
/// headers.
enum Plan {
    Answer(HttpResponse),
    Send {
        res: HttpResponseBuilder,
        start: u64,
        end: u64,
    },
}

impl Described<'_> {
    fn common_headers(&self, res: &mut HttpResponseBuilder) {
        if let Ok(v) = HeaderValue::from_str(self.etag) {
            res.insert_header((header::ETAG, v));
        }
        res.insert_header((
            header::CACHE_CONTROL,
            HeaderValue::from_static(self.caching.header_value()),
        ));
        res.insert_header((header::LAST_MODIFIED, HttpDate::from(self.last_modified)));
        res.insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    }

    /// Applies `If-None-Match`, `Range` and `If-Range` to the file.
    fn plan(&self, req: &HttpRequest) -> Plan {
        if header(req, header::IF_NONE_MATCH).is_some_and(|v| none_match_hits(v, self.etag)) {
            let mut res = HttpResponse::build(StatusCode::NOT_MODIFIED);
            self.common_headers(&mut res);
            return Plan::Answer(res.finish());
        }
        // Range applies to GET only; If-Range turns it off unless the file is the same.
        let range = match header(req, header::RANGE) {
            Some(v) if req.method() != Method::HEAD => {
                let same =
                    header(req, header::IF_RANGE).is_none_or(|ir| if_range_allows(ir, self.etag));
                if same {
                    parse_range(v)
                } else {
                    None
                }
            }
            _ => None,
        };
        let size = self.size;
        let (status, start, end) = match select(range, size) {
            Selection::Full => (StatusCode::OK, 0, size),
            Selection::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
            Selection::Unsatisfiable => {
                return Plan::Answer(HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
                    .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                    .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
                    .insert_header((header::CONTENT_TYPE, "application/json"))
                    .body(format!(
                        "{{\"error\":{{\"code\":\"range_not_satisfiable\",\"message\":\"the file is {size} bytes long\"}}}}"
                    )))
            }
        };
        let mut res = HttpResponse::build(status);
        self.common_headers(&mut res);
        res.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        ));
        res.insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ));
        if status == StatusCode::PARTIAL_CONTENT {
            res.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            ));
        }
        Plan::Send { res, start, end }
    }
}

/// Serves a file of the store: from its local file when the store is a directory, else
/// through the object store.
async fn serve(
    req: &HttpRequest,
    state: &AppState,
    key: &str,
    caching: Caching,
    content_type: &'static str,
) -> Result<HttpResponse, ApiError> {
    let path = object_path(key).map_err(|e| ApiError::internal("building an object key", &e))?;
    let file_name = path.filename().unwrap_or("").to_owned();
    match state.store.local_file(key) {
        Some(local) => serve_local(req, local, path, caching, content_type, &file_name).await,
        None => serve_store(req, state, path, caching, content_type, &file_name).await,
    }
}

/// Serves a local file: opened once, so its metadata and bytes are those of the same file
/// even if a new one is renamed into place meanwhile.
async fn serve_local(
    req: &HttpRequest,
    local: PathBuf,
    location: StorePath,
    caching: Caching,
    content_type: &'static str,
    file_name: &str,
) -> Result<HttpResponse, ApiError> {
    let Some((f, m)) = open_local(local).await? else {
        return Err(missing(file_name));
    };
    let meta = local_file_meta(location, &m);
    let etag = entity_tag(&meta);
    let described = Described {
        etag: &etag,
        size: meta.size,
        last_modified: SystemTime::from(meta.last_modified),
        caching,
        content_type,
    };
    let (mut res, start, end) = match described.plan(req) {
        Plan::Answer(res) => return Ok(res),
        Plan::Send { res, start, end } => (res, start, end),
    };
    let len = end - start;
    if req.method() == Method::HEAD || len == 0 {
        return Ok(res.body(empty_body(len)));
    }
    Ok(res.body(local_body(f, start, len).await?))
}

/// Opens a local store file on the blocking pool: the file and its metadata, or `None` when
/// there is no such (regular) file.
pub(crate) async fn open_local(
    local: PathBuf,
) -> Result<Option<(std::fs::File, std::fs::Metadata)>, ApiError> {
    let opened = web::block(move || {
        let f = std::fs::File::open(&local)?;
        let m = f.metadata()?;
        Ok::<_, std::io::Error>((f, m))
    })
    .await
    .map_err(|e| ApiError::internal("opening a stored file", &e))?;
    match opened {
        Ok((f, m)) if m.is_file() => Ok(Some((f, m))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApiError::unavailable("reading a stored file", &e)),
    }
}

/// A response body of `len` bytes of an open local file from offset `start`, read in
/// [`FILE_CHUNK`]-sized pieces.
pub(crate) async fn local_body(
    mut f: std::fs::File,
    start: u64,
    len: u64,
) -> Result<SizedStream<FileChunks>, ApiError> {
    if start > 0 {
        f = web::block(move || f.seek(SeekFrom::Start(start)).map(|_| f))
            .await
            .map_err(|e| ApiError::internal("reading a stored file", &e))?
            .map_err(|e| ApiError::unavailable("reading a stored file", &e))?;
    }
    Ok(SizedStream::new(len, FileChunks::new(f, len)))
}

/// Serves a file through the object store (S3, or files too large for the metadata cache).
async fn serve_store(
    req: &HttpRequest,
    state: &AppState,
    path: StorePath,
    caching: Caching,
    content_type: &'static str,
    file_name: &str,
) -> Result<HttpResponse, ApiError> {
    let store = state.store.inner();
    for _ in 0..READ_ATTEMPTS {
        let meta: ObjectMeta = match store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Err(missing(file_name)),
            Err(e) => return Err(ApiError::unavailable("the object store", &e)),
        };
        let etag = entity_tag(&meta);
        let described = Described {
            etag: &etag,
            size: meta.size,
            last_modified: SystemTime::from(meta.last_modified),
            caching,
            content_type,
        };
        let (mut res, start, end) = match described.plan(req) {
            Plan::Answer(res) => return Ok(res),
            Plan::Send { res, start, end } => (res, start, end),
        };
        let len = end - start;
        if req.method() == Method::HEAD {
            return Ok(res.body(empty_body(len)));
        }
        let partial = start > 0 || end < meta.size;
        let opts = GetOptions {
            // The same file as the head above, or a precondition failure and another try.
            if_match: meta.e_tag.clone(),
            range: partial.then_some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        match store.get_opts(&path, opts).await {
            Ok(got) if got.range == (start..end) => {
                return Ok(res.body(SizedStream::new(len, got.into_stream())));
            }
            Ok(_) | Err(object_store::Error::Precondition { .. }) => continue,
            Err(object_store::Error::NotFound { .. }) => return Err(missing(file_name)),
            Err(e) => return Err(ApiError::unavailable("the object store", &e)),
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the file kept changing while it was read; retry",
    ))
}

type ChunkRead = JoinHandle<(std::fs::File, std::io::Result<Bytes>)>;

/// The next `remaining` bytes of an open file, as a stream of [`FILE_CHUNK`]-sized chunks,
/// each read on the blocking pool when the connection asks for it (reading ahead was
/// measured: no faster, twice the memory).
pub(crate) struct FileChunks {
    /// The file, when no read is in flight.
    file: Option<std::fs::File>,
    reading: Option<ChunkRead>,
    /// Bytes not yet read.
    remaining: u64,
}

impl FileChunks {
    fn new(file: std::fs::File, len: u64) -> FileChunks {
        FileChunks {
            file: Some(file),
            reading: None,
            remaining: len,
        }
    }

    fn start_read(&mut self) {
        let Some(mut file) = self.file.take() else {
            return;
        };
        let want = self.remaining.min(FILE_CHUNK as u64) as usize;
        self.reading = Some(tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(want);
            let got = (&mut file)
                .take(want as u64)
                .read_to_end(&mut buf)
                .map(|_| Bytes::from(buf));
            (file, got)
        }));
    }
}

impl Stream for FileChunks {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.reading.is_none() {
            if this.remaining == 0 {
                return Poll::Ready(None);
            }
            this.start_read();
        }
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        let done = match Pin::new(reading).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(done) => done,
        };
        this.reading = None;
        let (file, got) = match done {
            Ok(done) => done,
            Err(e) => {
                this.remaining = 0;
                return Poll::Ready(Some(Err(std::io::Error::other(e))));
            }
        };
        let bytes = match got {
            Ok(b) if b.is_empty() => {
                this.remaining = 0;
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file is shorter than when it was opened",
                ))));
            }
            Ok(b) => b,
            Err(e) => {
                this.remaining = 0;
                return Poll::Ready(Some(Err(e)));
            }
        };
        this.remaining = this.remaining.saturating_sub(bytes.len() as u64);
        this.file = Some(file);
        Poll::Ready(Some(Ok(bytes)))
    }
}
