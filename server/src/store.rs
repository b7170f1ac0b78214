//! Blobs, repository files and backups, through `object_store`: a local directory
//! (`file://`, the default under the data dir) or an S3 bucket (`s3://BUCKET/PREFIX` on AWS
//! or any S3-compatible service), built from the `[store]` configuration, with the keys the
//! repository uses. Nothing here relies on the store for immutability (S3-compatible servers
//! such as Garage ignore create-if-absent): the database decides what may be written.
//! Metadata files are also kept in memory ([`cache`]), updated by every write through
//! [`Store::put`].

pub mod cache;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{
    ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};

use actix_web::web::Bytes;

use crate::config::StoreConfig;
use cache::{Cached, CachedFile, MetadataCache};

/// Size of the parts of a multipart upload ([`Store::put_file`]); smaller files go up in one
/// put. S3 wants at least 5 MiB per part except the last.
pub const PART_BYTES: usize = 8 * 1024 * 1024;

/// Prefix of the repository's metadata files in the store.
pub const METADATA_PREFIX: &str = "repo/metadata";
/// Prefix of the repository's target files in the store.
pub const TARGETS_PREFIX: &str = "repo/targets";

/// What went wrong with the object store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store URL is not one this build can open.
    #[error("object store URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong and what to use instead.
        reason: String,
    },
    /// The `[store]` settings do not fit together.
    #[error("{0}")]
    Config(String),
    /// The store's directory could not be created.
    #[error("cannot create the object store directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A key is not a valid object path.
    #[error("invalid object key {key:?}: {source}")]
    Key {
        /// The key.
        key: String,
        /// The cause.
        source: object_store::path::Error,
    },
    /// The store refused an operation.
    #[error("object store {op} {key:?}: {source}")]
    Op {
        /// What was attempted.
        op: &'static str,
        /// The object.
        key: String,
        /// The cause.
        source: object_store::Error,
    },
}

/// A secret from the configuration (the S3 secret access key): zeroized on drop, shown
/// and serialized only as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: String) -> Secret {
        Secret(zeroize::Zeroizing::new(value))
    }

    /// The secret itself, to hand to the S3 client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(Secret::new)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Where a store URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A local directory.
    Dir(PathBuf),
    /// An S3 bucket, and the key prefix under which everything goes (may be empty).
    S3 { bucket: String, prefix: String },
}

/// Checks a `[store]` configuration without opening anything: the URL, the endpoint, and
/// that the S3 settings are only given with an `s3://` URL.
pub fn check_config(config: &StoreConfig) -> Result<(), StoreError> {
    let location = match config.url.as_deref() {
        None => None,
        Some(u) => Some(parse_url(u)?),
    };
    let is_s3 = matches!(location, Some(Location::S3 { .. }));
    let s3_only = [
        ("endpoint", config.endpoint.is_some()),
        ("region", config.region.is_some()),
        ("allow_http", config.allow_http),
        (
            "virtual_hosted_style_request",
            config.virtual_hosted_style_request,
        ),
        ("access_key_id", config.access_key_id.is_some()),
        ("secret_access_key", config.secret_access_key.is_some()),
    ];
    if !is_s3 {
        if let Some((name, _)) = s3_only.iter().find(|(_, set)| *set) {
            return Err(StoreError::Config(format!(
                "{name} is an S3 setting, but the store is a local directory; set \
                 url = \"s3://BUCKET/PREFIX\" or remove {name}"
            )));
        }
        return Ok(());
    }
    if config.access_key_id.is_some() != config.secret_access_key.is_some() {
        return Err(StoreError::Config(
            "give both access_key_id and secret_access_key, or neither (then the \
             AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY environment variables are used)"
                .into(),
        ));
    }
    if let Some(e) = &config.endpoint {
        check_endpoint(e, config.allow_http)?;
    }
    if let Some(r) = &config.region {
        if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(StoreError::Config(format!(
                "region {r:?}: letters, digits and '-' only (e.g. \"us-east-1\", Garage: \"garage\")"
            )));
        }
    }
    Ok(())
}

/// An endpoint is `http(s)://HOST[:PORT][/]`, without credentials, path, query or fragment;
/// `http://` only with `allow_http`.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<(), StoreError> {
    let err = |reason: &str| StoreError::Config(format!("endpoint {endpoint:?}: {reason}"));
    let rest = match endpoint.split_once("://") {
        Some(("https", rest)) => rest,
        Some(("http", rest)) if allow_http => rest,
        Some(("http", _)) => {
            return Err(err(
                "plain http:// is refused; use https://, or set allow_http = true for a \
                 loopback test server or a trusted private network",
            ))
        }
        _ => return Err(err("give http(s)://HOST[:PORT]")),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(err(
            "give only http(s)://HOST[:PORT], without a path, user name or password \
             (credentials go in access_key_id/secret_access_key or AWS_* variables)",
        ));
    }
    Ok(())
}

/// The object store and the URL it was opened from. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// The same store when it is a local directory, to map keys to files.
    local: Option<Arc<LocalFileSystem>>,
    metadata: Arc<MetadataCache>,
    url: String,
}

impl std::fmt::Debug for Store {
    // Only the URL: the S3 client holds credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens the store that `config` names, or, when it names none, a local one in
    /// `default_dir` (created if missing). Opening an S3 store makes no request yet.
    pub fn open(config: &StoreConfig, default_dir: &Path) -> Result<Store, StoreError> {
        check_config(config)?;
        let location = match config.url.as_deref() {
            None => Location::Dir(default_dir.to_path_buf()),
            Some(u) => parse_url(u)?,
        };
        match location {
            Location::Dir(dir) => Store::open_dir(&dir, config.url.as_deref()),
            Location::S3 { bucket, prefix } => Store::open_s3(config, &bucket, &prefix),
        }
    }

    fn open_dir(dir: &Path, url: Option<&str>) -> Result<Store, StoreError> {
        create_dir_private(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|source| StoreError::Op {
                op: "open",
                key: dir.display().to_string(),
                source,
            })?
            // Files are renamed into place; fsync makes each write durable before the next
            // one (e.g. the timestamp) refers to it.
            .with_fsync(true);
        let fs = Arc::new(fs);
        Ok(Store {
            inner: Arc::clone(&fs) as Arc<dyn ObjectStore>,
            local: Some(fs),
            metadata: Arc::new(MetadataCache::new()),
            url: url.map_or_else(|| format!("file://{}", dir.display()), str::to_owned),
        })
    }

    fn open_s3(config: &StoreConfig, bucket: &str, prefix: &str) -> Result<Store, StoreError> {
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        // The usual AWS_* variables first (credentials, region, endpoint, web identity),
        // then what the config file says.
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(e) = &config.endpoint {
            b = b.with_endpoint(e.trim_end_matches('/'));
        }
        if let Some(r) = &config.region {
            b = b.with_region(r);
        }
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            b = b
                .with_access_key_id(id)
                .with_secret_access_key(secret.expose());
        }
        let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
        if let Some(e) = &endpoint {
            check_endpoint(e, config.allow_http)?;
        }
        let has_keys = b
            .get_config_value(&AmazonS3ConfigKey::AccessKeyId)
            .is_some()
            && b.get_config_value(&AmazonS3ConfigKey::SecretAccessKey)
                .is_some();
        if endpoint.is_some() && !has_keys {
            // Without keys the client would ask the AWS instance metadata service, which an
            // S3-compatible server's host does not have: say so now, not on the first read.
            return Err(StoreError::Config(format!(
                "{url}: no S3 credentials; set the AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY environment variables (or access_key_id and \
                 secret_access_key in [store])"
            )));
        }
        let client = ClientOptions::new()
            .with_allow_http(config.allow_http)
            .with_connect_timeout(Duration::from_secs(5))
            // No overall limit: a large target streams to a slow terminal for as long as it
            // takes; a stalled connection is cut after 30 s without data.
            .with_timeout_disabled()
            .with_read_timeout(Duration::from_secs(30));
        let s3 = b
            .with_virtual_hosted_style_request(config.virtual_hosted_style_request)
            .with_client_options(client)
            .with_retry(RetryConfig {
                max_retries: 4,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|source| StoreError::Op {
                op: "open",
                key: url.clone(),
                source,
            })?;
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, object_path(prefix)?))
        };
        Ok(Store {
            inner,
            local: None,
            metadata: Arc::new(MetadataCache::new()),
            url,
        })
    }

    /// Whether the store already holds a TUF repository (its `1.root.json`). A new data
    /// dir must not overwrite one that another server (or a lost data dir) left there.
    pub async fn holds_repository(&self) -> Result<bool, StoreError> {
        Ok(self.head(&metadata_key("1.root.json")).await?.is_some())
    }

    /// The URL the store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store, for streaming reads. Write metadata files through
    /// [`Store::put`] only, never through this: the metadata cache must see every write.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The in-memory cache of metadata files (see [`cache`]).
    pub fn metadata_cache(&self) -> &MetadataCache {
        &self.metadata
    }

    /// The local file that holds `key`, when the store is a local directory; `None` for S3.
    /// Read it only: writes go through the store.
    pub fn local_file(&self, key: &str) -> Option<PathBuf> {
        let local = self.local.as_ref()?;
        local.path_to_filesystem(&object_path(key).ok()?).ok()
    }

    /// Writes an object atomically (readers see the old or the new contents, never a mix).
    /// A metadata file also replaces its entry in the metadata cache before this returns, so
    /// the next request serves it.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = object_path(key)?;
        let op = |op: &'static str| {
            let key = key.to_owned();
            move |source| StoreError::Op { op, key, source }
        };
        let Some(name) = metadata_file_name(key) else {
            self.inner
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(op("put"))?;
            return Ok(());
        };
        // One metadata write at a time, so that the content and the store's metadata put in
        // the cache are those of the same write.
        let _one_writer = self.metadata.writes.lock().await;
        let bytes = Bytes::from(bytes);
        if let Err(e) = self.inner.put(&path, PutPayload::from(bytes.clone())).await {
            // The store may hold either version now: read it again next time.
            self.metadata.invalidate(name);
            return Err(op("put")(e));
        }
        match self.inner.head(&path).await {
            Ok(meta) if meta.size == bytes.len() as u64 => {
                self.metadata
                    .insert(name, Arc::new(CachedFile::new(bytes, meta)));
            }
            Ok(_) => self.metadata.invalidate(name),
            Err(e) => {
                self.metadata.invalidate(name);
                tracing::warn!(key, error = %e, "reading back a metadata file just written failed; it is served from the store");
            }
        }
        Ok(())
    }

    /// Reads metadata file `name` (e.g. `timestamp.json`) through the metadata cache: from
    /// memory when it is there, else from the store (and keeps it, unless a write raced
    /// with this read).
    pub async fn read_metadata(&self, name: &str) -> Result<MetadataRead, StoreError> {
        match self.metadata.get(name) {
            Some(Cached::File(f)) => return Ok(MetadataRead::File(f)),
            Some(Cached::Missing) => return Ok(MetadataRead::Missing),
            None => {}
        }
        let key = metadata_key(name);
        let path = object_path(&key)?;
        let op = |source| StoreError::Op {
            op: "get",
            key: key.clone(),
            source,
        };
        let generation = self.metadata.generation();
        match self.inner.get(&path).await {
            Ok(got) if got.meta.size > cache::MAX_FILE_BYTES as u64 => Ok(MetadataRead::TooLarge),
            Ok(got) => {
                let meta = got.meta.clone();
                let bytes = got.bytes().await.map_err(op)?;
                if bytes.len() as u64 != meta.size {
                    // Replaced while read (a store without snapshot reads): not cached.
                    return Ok(MetadataRead::TooLarge);
                }
                let file = Arc::new(CachedFile::new(bytes, meta));
                self.metadata
                    .fill(name, Some(Arc::clone(&file)), generation);
                Ok(MetadataRead::File(file))
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.metadata.fill(name, None, generation);
                Ok(MetadataRead::Missing)
            }
            Err(source) => Err(op(source)),
        }
    }

    /// Writes a (large) local file as an object, streaming it in parts so that it is never
    /// whole in memory; atomic like [`Store::put`]. File reads run off the executor.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        let Some(name) = metadata_file_name(key) else {
            return self.put_file_uncached(key, file).await;
        };
        // Metadata goes through [`Store::put`]; should a large one come here, the cache
        // forgets it, whatever the outcome.
        let _one_writer = self.metadata.writes.lock().await;
        let result = self.put_file_uncached(key, file).await;
        self.metadata.invalidate(name);
        result
    }

    async fn put_file_uncached(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        use std::io::Read;
        const PART: usize = PART_BYTES;
        let path = object_path(key)?;
        let op = |op: &'static str| {
            let key = key.to_owned();
            move |source| StoreError::Op { op, key, source }
        };
        let read_err = |e: std::io::Error| StoreError::Op {
            op: "read upload",
            key: key.into(),
            source: object_store::Error::Generic {
                store: "upload",
                source: Box::new(e),
            },
        };
        let read_part = |mut r: std::fs::File| async move {
            let (r, chunk) = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(PART);
                let res = (&mut r).take(PART as u64).read_to_end(&mut buf);
                (r, res.map(|_| buf))
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok::<_, std::io::Error>((r, chunk?))
        };
        let f = std::fs::File::open(file).map_err(read_err)?;
        let (f, first) = read_part(f).await.map_err(read_err)?;
        if first.len() < PART {
            // One part: a plain put (S3 refuses a multipart upload of an empty file).
            self.inner
                .put(&path, PutPayload::from(first))
                .await
                .map_err(op("put"))?;
            return Ok(());
        }
        let mut upload = self.inner.put_multipart(&path).await.map_err(op("put"))?;
        let mut next = Some((f, first));
        while let Some((r, chunk)) = next.take() {
            let last = chunk.len() < PART;
            if !chunk.is_empty() {
                if let Err(e) = upload.put_part(PutPayload::from(chunk)).await {
                    let _ = upload.abort().await;
                    return Err(op("put")(e));
                }
            }
            if !last {
                match read_part(r).await {
                    Ok(got) => next = Some(got),
                    Err(e) => {
                        let _ = upload.abort().await;
                        return Err(read_err(e));
                    }
                }
            }
        }
        upload.complete().await.map_err(op("put"))?;
        Ok(())
    }

    /// Reads an object's metadata; `None` when it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let path = object_path(key)?;
        match self.inner.head(&path).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(StoreError::Op {
                op: "head",
                key: key.into(),
                source,
            }),
        }
    }

    /// Reads a whole (small) object; `None` when it does not exist.
    pub async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = object_path(key)?;
        let op = |source| StoreError::Op {
            op: "get",
            key: key.into(),
            source,
        };
        match self.inner.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(op)?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(source) => Err(op(source)),
        }
    }
}

/// The store key of a metadata file.
pub fn metadata_key(file_name: &str) -> String {
    format!("{METADATA_PREFIX}/{file_name}")
}

/// The metadata file name a store key names (`repo/metadata/NAME`, one segment), if any.
fn metadata_file_name(key: &str) -> Option<&str> {
    let name = key.strip_prefix(METADATA_PREFIX)?.strip_prefix('/')?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// What [`Store::read_metadata`] found.
#[derive(Debug, Clone)]
pub enum MetadataRead {
    /// The file, in memory.
    File(Arc<CachedFile>),
    /// There is no such file.
    Missing,
    /// The file is too large to keep in memory (or changed while read): stream it from the
    /// store instead.
    TooLarge,
}

/// A strong HTTP entity tag (quoted) from the store's, reduced to the characters an entity
/// tag may hold, or from size and modification time when the store gives none.
pub fn entity_tag(meta: &ObjectMeta) -> String {
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

/// The store's metadata of a local file, as `object_store`'s local store gives it (the same
/// entity tag: inode, modification time in microseconds and size, in hex), for files read
/// directly (see [`Store::local_file`]).
pub fn local_file_meta(location: StorePath, file: &std::fs::Metadata) -> ObjectMeta {
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(file);
    #[cfg(not(unix))]
    let inode = 0u64;
    let modified = file.modified().ok();
    let micros = modified
        .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    let size = file.len();
    ObjectMeta {
        location,
        last_modified: modified.map(Into::into).unwrap_or_default(),
        size,
        e_tag: Some(format!("{inode:x}-{micros:x}-{size:x}")),
        version: None,
    }
}

/// The store key of a target file.
pub fn target_key(file_name: &str) -> String {
    format!("{TARGETS_PREFIX}/{file_name}")
}

/// Parses a store key into an object path, refusing empty, `.`/`..` and other unsafe
/// segments.
pub fn object_path(key: &str) -> Result<StorePath, StoreError> {
    StorePath::parse(key).map_err(|source| StoreError::Key {
        key: key.into(),
        source,
    })
}

/// Parses a store URL: `file:///ABSOLUTE/PATH` or `s3://BUCKET[/PREFIX]`.
fn parse_url(url: &str) -> Result<Location, StoreError> {
    let err = |reason: &str| StoreError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err("not a URL; use file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX"))?;
    match scheme {
        "file" => {
            if !rest.starts_with('/') || rest.contains(['?', '#', '%']) {
                return Err(err(
                    "a file URL must be file:///ABSOLUTE/PATH, without host, query or escapes",
                ));
            }
            Ok(Location::Dir(PathBuf::from(rest)))
        }
        "s3" => {
            if rest.contains(['?', '#', '%', '@', ' ']) {
                return Err(err(
                    "an S3 URL must be s3://BUCKET/PREFIX, without query, escapes or \
                     credentials (those go in [store] or AWS_* variables)",
                ));
            }
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let valid_bucket = (3..=63).contains(&bucket.len())
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !valid_bucket {
                return Err(err(
                    "the bucket name must be 3 to 63 lowercase letters, digits, '-' or '.'",
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() {
                object_path(prefix).map_err(|_| {
                    err("the prefix must be path segments without empty, '.' or '..' parts")
                })?;
            }
            Ok(Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            })
        }
        _ => Err(err(
            "unsupported scheme; use file:///ABSOLUTE/PATH or s3://BUCKET/PREFIX",
        )),
    }
}

/// Creates a directory and its parents, the last one mode 0700.
pub(crate) fn create_dir_private(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_name_absolute_directories() {
        assert_eq!(
            parse_url("file:///srv/otter/store").unwrap(),
            Location::Dir(PathBuf::from("/srv/otter/store"))
        );
        for bad in [
            "file://relative/x",
            "/srv/otter",
            "file:///a?b",
            "http://x/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn s3_urls_name_a_bucket_and_a_prefix() {
        let s3 = |bucket: &str, prefix: &str| Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        };
        assert_eq!(parse_url("s3://otter/prod").unwrap(), s3("otter", "prod"));
        assert_eq!(parse_url("s3://otter/a/b/").unwrap(), s3("otter", "a/b"));
        assert_eq!(parse_url("s3://otter").unwrap(), s3("otter", ""));
        assert_eq!(parse_url("s3://otter/").unwrap(), s3("otter", ""));
        for bad in [
            "s3://",
            "s3://Otter/x",
            "s3://ab/x",
            "s3://-otter/x",
            "s3://otter/a/../b",
            "s3://otter/a//b",
            "s3://key:secret@otter/x",
            "s3://otter/x?region=y",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    fn s3_config() -> StoreConfig {
        StoreConfig {
            url: Some("s3://otter/prod".into()),
            endpoint: Some("https://s3.example.net".into()),
            region: Some("garage".into()),
            access_key_id: Some("GK0123".into()),
            secret_access_key: Some(Secret::new("very-secret-value".into())),
            ..StoreConfig::default()
        }
    }

    #[test]
    fn s3_settings_are_checked() {
        check_config(&s3_config()).unwrap();
        let mut c = s3_config();
        c.endpoint = Some("http://127.0.0.1:3900".into());
        let err = check_config(&c).unwrap_err().to_string();
        assert!(err.contains("allow_http"), "{err}");
        c.allow_http = true;
        check_config(&c).unwrap();
        for bad in [
            "https://u:p@host",
            "https://host/path",
            "ftp://host",
            "host:1",
        ] {
            c.endpoint = Some(bad.into());
            assert!(check_config(&c).is_err(), "{bad}");
        }
        let mut c = s3_config();
        c.secret_access_key = None;
        assert!(check_config(&c).is_err());
        // S3 settings with a local store are a mistake, not something to ignore.
        let c = StoreConfig {
            region: Some("garage".into()),
            ..StoreConfig::default()
        };
        let err = check_config(&c).unwrap_err().to_string();
        assert!(err.contains("region"), "{err}");
    }

    #[test]
    fn a_store_section_parses_and_is_validated_with_the_config() {
        use crate::config::Config;
        let text = "[store]\nurl = \"s3://otter/prod\"\nendpoint = \"http://127.0.0.1:3900\"\n\
                    region = \"garage\"\nallow_http = true\naccess_key_id = \"GK1\"\n\
                    secret_access_key = \"sekrit\"\n";
        let c = Config::from_toml(text, Path::new("f.toml")).unwrap();
        assert_eq!(c.store.url.as_deref(), Some("s3://otter/prod"));
        assert_eq!(
            c.store.secret_access_key.as_ref().map(Secret::expose),
            Some("sekrit")
        );
        c.validate().unwrap();
        let bad = Config::from_toml(
            "[store]\nurl = \"s3://otter/p\"\nendpont = \"x\"\n",
            Path::new("f.toml"),
        )
        .unwrap_err();
        assert!(bad.to_string().contains("endpont"), "{bad}");
        let mut c = c;
        c.store.allow_http = false;
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("[store]") && err.contains("allow_http"),
            "{err}"
        );
    }

    #[test]
    fn the_secret_never_shows() {
        let c = s3_config();
        let debug = format!("{c:?}");
        assert!(!debug.contains("very-secret-value"), "{debug}");
        let json = serde_json::to_string(&c).unwrap();
        assert!(!json.contains("very-secret-value"), "{json}");
        assert!(json.contains("<redacted>"), "{json}");
        let store = Store::open(&c, Path::new("/nonexistent")).unwrap();
        assert_eq!(store.url(), "s3://otter/prod");
        let debug = format!("{store:?}");
        assert!(!debug.contains("very-secret-value"), "{debug}");
    }

    #[test]
    fn unsafe_keys_are_refused() {
        assert!(object_path("repo/metadata/1.root.json").is_ok());
        assert!(object_path("repo/../x").is_err());
        assert!(object_path("repo//x").is_err());
    }

    #[test]
    fn put_file_stores_files_of_every_size_around_the_part_size() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = Store::open(&StoreConfig::default(), &d.path().join("store")).unwrap();
        for (i, len) in [
            0,
            1,
            PART_BYTES - 1,
            PART_BYTES,
            PART_BYTES + 1,
            2 * PART_BYTES,
        ]
        .into_iter()
        .enumerate()
        {
            let bytes: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let file = d.path().join(format!("upload-{i}"));
            std::fs::write(&file, &bytes).unwrap();
            let key = format!("repo/targets/f{i}");
            rt.block_on(s.put_file(&key, &file)).unwrap();
            let got = rt.block_on(s.get_bytes(&key)).unwrap().unwrap();
            assert!(got == bytes, "length {len}");
        }
    }

    #[test]
    fn put_head_and_get_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Store::open(&StoreConfig::default(), &d.path().join("store")).unwrap();
            assert!(s.head("repo/metadata/x.json").await.unwrap().is_none());
            s.put("repo/metadata/x.json", b"hello".to_vec())
                .await
                .unwrap();
            assert_eq!(
                s.head("repo/metadata/x.json").await.unwrap().unwrap().size,
                5
            );
            assert_eq!(
                s.get_bytes("repo/metadata/x.json").await.unwrap().unwrap(),
                b"hello"
            );
        });
    }
}
