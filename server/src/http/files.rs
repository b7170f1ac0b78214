//! Repository files as static files, read from the object store: GET and HEAD, one byte
//! range, strong entity tags, `If-None-Match`/`If-Range`, and caching headers chosen by name.

use std::time::SystemTime;

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue, HttpDate};
use actix_web::http::{Method, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStoreExt};

use super::conditional::{if_range_allows, none_match_hits, parse_range, select, Selection};
use super::error::ApiError;
use super::AppState;
use crate::repo::names::{Caching, MetadataName, TargetName};
use crate::store::{metadata_key, object_path, target_key};

/// How often a read is retried when the file is replaced between its `head` and its `get`.
const READ_ATTEMPTS: usize = 3;

/// `GET|HEAD /repo/metadata/{file}`.
#[tracing::instrument(skip_all, fields(file = %file))]
pub async fn metadata(
    req: HttpRequest,
    file: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = MetadataName::parse(&file)?;
    serve(
        &req,
        &state,
        &metadata_key(name.as_str()),
        name.caching(),
        "application/json",
    )
    .await
}

/// `GET|HEAD /repo/targets/{file}`.
#[tracing::instrument(skip_all, fields(file = %file))]
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
        "application/octet-stream",
    )
    .await
}

fn header(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// A strong entity tag from the store's (quoted, reduced to the characters an entity tag may
/// hold), or from size and modification time when the store gives none.
fn entity_tag(meta: &ObjectMeta) -> String {
    let clean: String = meta
        .e_tag
        .as_deref()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"')
        .collect();
    if clean.is_empty() {
        let micros = meta.last_modified.timestamp_micros();
        format!("\"{:x}-{:x}\"", meta.size, micros)
    } else {
        format!("\"{clean}\"")
    }
}

fn common_headers(res: &mut HttpResponseBuilder, etag: &str, caching: Caching, meta: &ObjectMeta) {
    if let Ok(v) = HeaderValue::from_str(etag) {
        res.insert_header((header::ETAG, v));
    }
    res.insert_header((
        header::CACHE_CONTROL,
        HeaderValue::from_static(caching.header_value()),
    ));
    res.insert_header((
        header::LAST_MODIFIED,
        HttpDate::from(SystemTime::from(meta.last_modified)),
    ));
    res.insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
}

async fn serve(
    req: &HttpRequest,
    state: &AppState,
    key: &str,
    caching: Caching,
    content_type: &'static str,
) -> Result<HttpResponse, ApiError> {
    let path = object_path(key).map_err(|e| ApiError::internal("building an object key", &e))?;
    let store = state.store.inner();
    let head_only = req.method() == Method::HEAD;
    let missing =
        || ApiError::not_found(format!("no file {:?} here", path.filename().unwrap_or("")));
    for _ in 0..READ_ATTEMPTS {
        let meta = match store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(ApiError::unavailable("the object store", &e)),
        };
        let etag = entity_tag(&meta);
        if header(req, header::IF_NONE_MATCH).is_some_and(|v| none_match_hits(v, &etag)) {
            let mut res = HttpResponse::build(StatusCode::NOT_MODIFIED);
            common_headers(&mut res, &etag, caching, &meta);
            return Ok(res.finish());
        }
        // Range applies to GET only; If-Range turns it off unless the file is the same.
        let range = match header(req, header::RANGE) {
            Some(v) if !head_only => {
                let same =
                    header(req, header::IF_RANGE).is_none_or(|ir| if_range_allows(ir, &etag));
                if same {
                    parse_range(v)
                } else {
                    None
                }
            }
            _ => None,
        };
        let size = meta.size;
        let (status, start, end) = match select(range, size) {
            Selection::Full => (StatusCode::OK, 0, size),
            Selection::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
            Selection::Unsatisfiable => {
                return Ok(HttpResponse::build(StatusCode::RANGE_NOT_SATISFIABLE)
                    .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                    .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
                    .insert_header((header::CONTENT_TYPE, "application/json"))
                    .body(format!(
                        "{{\"error\":{{\"code\":\"range_not_satisfiable\",\"message\":\"the file is {size} bytes long\"}}}}"
                    )))
            }
        };
        let mut res = HttpResponse::build(status);
        common_headers(&mut res, &etag, caching, &meta);
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)));
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
        let len = end - start;
        if head_only {
            let nothing = futures_util::stream::empty::<Result<Bytes, std::io::Error>>();
            return Ok(res.body(SizedStream::new(len, nothing)));
        }
        let opts = GetOptions {
            // The same file as the head above, or a precondition failure and another try.
            if_match: meta.e_tag.clone(),
            range: (status == StatusCode::PARTIAL_CONTENT).then_some(GetRange::Bounded(start..end)),
            ..GetOptions::default()
        };
        match store.get_opts(&path, opts).await {
            Ok(got) if got.range == (start..end) => {
                return Ok(res.body(SizedStream::new(len, got.into_stream())));
            }
            Ok(_) | Err(object_store::Error::Precondition { .. }) => continue,
            Err(object_store::Error::NotFound { .. }) => return Err(missing()),
            Err(e) => return Err(ApiError::unavailable("the object store", &e)),
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the file kept changing while it was read; retry",
    ))
}
