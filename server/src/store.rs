//! Blobs and repository files, through `object_store`: built from a URL (`file://` now;
//! `s3://` is the way to scale later), with the keys the repository uses.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

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

/// The object store and the URL it was opened from. Cloning is cheap.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: String,
}

impl Store {
    /// Opens the store named by `url`, or, when there is none, a local one in `default_dir`
    /// (created if missing).
    pub fn open(url: Option<&str>, default_dir: &Path) -> Result<Store, StoreError> {
        let dir = match url {
            None => default_dir.to_path_buf(),
            Some(u) => local_dir_of_url(u)?,
        };
        create_dir_private(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| StoreError::Op {
                op: "open",
                key: dir.display().to_string(),
                source,
            })?
            // Files are renamed into place; fsync makes each write durable before the next
            // one (e.g. the timestamp) refers to it.
            .with_fsync(true);
        Ok(Store {
            inner: Arc::new(fs),
            url: url.map_or_else(|| format!("file://{}", dir.display()), str::to_owned),
        })
    }

    /// The URL the store was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying store, for streaming reads.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Writes an object atomically (readers see the old or the new contents, never a mix).
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let path = object_path(key)?;
        self.inner
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(|source| StoreError::Op {
                op: "put",
                key: key.into(),
                source,
            })?;
        Ok(())
    }

    /// Writes a (large) local file as an object, streaming it in parts so that it is never
    /// whole in memory; atomic like [`Store::put`]. File reads run off the executor.
    pub async fn put_file(&self, key: &str, file: &Path) -> Result<(), StoreError> {
        use std::io::Read;
        const PART: usize = 8 * 1024 * 1024;
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
        let f = std::fs::File::open(file).map_err(read_err)?;
        let mut upload = self.inner.put_multipart(&path).await.map_err(op("put"))?;
        let mut reader = Some(f);
        loop {
            let Some(mut r) = reader.take() else { break };
            let (r, chunk) = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(PART);
                let res = (&mut r).take(PART as u64).read_to_end(&mut buf);
                (r, res.map(|_| buf))
            })
            .await
            .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
            let chunk = chunk.map_err(read_err)?;
            if chunk.is_empty() {
                break;
            }
            let last = chunk.len() < PART;
            if let Err(e) = upload.put_part(PutPayload::from(chunk)).await {
                let _ = upload.abort().await;
                return Err(op("put")(e));
            }
            if !last {
                reader = Some(r);
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

/// The directory of a `file:///ABSOLUTE/PATH` URL.
fn local_dir_of_url(url: &str) -> Result<PathBuf, StoreError> {
    let err = |reason: &str| StoreError::Url {
        url: url.into(),
        reason: reason.into(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err("not a URL; use file:///ABSOLUTE/PATH"))?;
    match scheme {
        "file" => {
            if !rest.starts_with('/') || rest.contains(['?', '#', '%']) {
                return Err(err(
                    "a file URL must be file:///ABSOLUTE/PATH, without host, query or escapes",
                ));
            }
            Ok(PathBuf::from(rest))
        }
        "s3" => Err(err(
            "S3 stores are not built into this otter-server yet; use file:///ABSOLUTE/PATH",
        )),
        _ => Err(err("unsupported scheme; use file:///ABSOLUTE/PATH")),
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
            local_dir_of_url("file:///srv/otter/store").unwrap(),
            PathBuf::from("/srv/otter/store")
        );
        for bad in [
            "file://relative/x",
            "/srv/otter",
            "file:///a?b",
            "s3://bucket/x",
            "http://x/",
        ] {
            assert!(local_dir_of_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unsafe_keys_are_refused() {
        assert!(object_path("repo/metadata/1.root.json").is_ok());
        assert!(object_path("repo/../x").is_err());
        assert!(object_path("repo//x").is_err());
    }

    #[test]
    fn put_head_and_get_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Store::open(None, &d.path().join("store")).unwrap();
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
