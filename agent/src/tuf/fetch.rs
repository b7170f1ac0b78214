//! Fetching metadata and targets from a mirror (`http://`, `https://` or `file://`), always
//! with a length cap (the endless-data defence) and time limits.

use std::io::{Read, Write};
use std::time::Duration;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// 403 or 404: the file is not there (for root N+1 this ends the root update).
    #[error("{url}: not found (HTTP {status})")]
    NotFound {
        /// The URL.
        url: String,
        /// 403 or 404.
        status: u16,
    },
    /// Any other non-success status.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// More bytes than allowed.
    #[error("{url}: more than the {max} bytes allowed (endless data?)")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        max: u64,
    },
    /// Connection, TLS, timeout or I/O failure.
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
}

/// A source of repository files. Everything it returns is untrusted.
pub trait Fetcher {
    /// Streams `url` into `out`, refusing more than `max_len` bytes; returns the length.
    fn fetch_to(&self, url: &str, max_len: u64, out: &mut dyn Write) -> Result<u64, FetchError>;

    /// Fetches `url` into memory, refusing more than `max_len` bytes.
    fn fetch(&self, url: &str, max_len: u64) -> Result<Vec<u8>, FetchError> {
        let mut buf = Vec::new();
        self.fetch_to(url, max_len, &mut buf)?;
        Ok(buf)
    }

    /// Opens `url` from byte `offset` on (an HTTP `Range` request when `offset > 0`), for
    /// resumable downloads. The answer says whether the mirror honoured the range; the
    /// caller caps what it reads. The default fetches the whole file (at most `max_len`
    /// bytes) and answers [`RangedBody::Whole`].
    fn open_from(&self, url: &str, offset: u64, max_len: u64) -> Result<RangedBody, FetchError> {
        let _ = offset;
        let buf = self.fetch(url, max_len)?;
        Ok(RangedBody::Whole(Box::new(std::io::Cursor::new(buf))))
    }
}

/// How a mirror answered [`Fetcher::open_from`]. The bodies are untrusted and uncapped.
pub enum RangedBody {
    /// `206 Partial Content` starting exactly at the asked offset.
    Partial(Box<dyn Read>),
    /// The whole file from byte 0 (`200`: no range asked, or the range was ignored).
    Whole(Box<dyn Read>),
    /// `416 Range Not Satisfiable`: the mirror holds nothing at or after the offset.
    NotSatisfiable,
}

/// The first byte of a `Content-Range: bytes FIRST-LAST/TOTAL` header.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, _total) = rest.split_once('/')?;
    let (first, _last) = range.split_once('-')?;
    first.trim().parse().ok()
}

/// Fetches over HTTP(S) with reqwest, or reads `file://` URLs.
pub struct HttpFetcher {
    client: reqwest::blocking::Client,
}

impl HttpFetcher {
    /// A fetcher with a connect timeout and an overall per-request timeout.
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Result<Self, FetchError> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .user_agent(concat!("otter-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Transport {
                url: String::new(),
                message: format!("cannot set up HTTP client: {e}"),
            })?;
        Ok(HttpFetcher { client })
    }
}

/// Copies at most `max_len` bytes from `r` to `out`; one more byte is an error.
fn copy_capped(
    url: &str,
    r: &mut dyn Read,
    max_len: u64,
    out: &mut dyn Write,
) -> Result<u64, FetchError> {
    let transport = |e: std::io::Error| FetchError::Transport {
        url: url.to_string(),
        message: e.to_string(),
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = r.read(&mut buf).map_err(transport)?;
        if n == 0 {
            return Ok(total);
        }
        total = total.saturating_add(n as u64);
        if total > max_len {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                max: max_len,
            });
        }
        out.write_all(&buf[..n]).map_err(transport)?;
    }
}

impl Fetcher for HttpFetcher {
    fn fetch_to(&self, url: &str, max_len: u64, out: &mut dyn Write) -> Result<u64, FetchError> {
        if let Some(path) = url.strip_prefix("file://") {
            let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FetchError::NotFound {
                    url: url.to_string(),
                    status: 404,
                },
                _ => FetchError::Transport {
                    url: url.to_string(),
                    message: e.to_string(),
                },
            })?;
            return copy_capped(url, &mut f, max_len, out);
        }
        let mut resp = self
            .client
            .get(url)
            .send()
            .map_err(|e| FetchError::Transport {
                url: url.to_string(),
                message: otter_keys::report::describe(&e.without_url()),
            })?;
        let status = resp.status().as_u16();
        if status == 403 || status == 404 {
            return Err(FetchError::NotFound {
                url: url.to_string(),
                status,
            });
        }
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        if resp.content_length().is_some_and(|l| l > max_len) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                max: max_len,
            });
        }
        copy_capped(url, &mut resp, max_len, out)
    }

    fn open_from(&self, url: &str, offset: u64, max_len: u64) -> Result<RangedBody, FetchError> {
        let transport = |message: String| FetchError::Transport {
            url: url.to_string(),
            message,
        };
        if let Some(path) = url.strip_prefix("file://") {
            use std::io::{Seek, SeekFrom};
            let mut f = std::fs::File::open(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FetchError::NotFound {
                    url: url.to_string(),
                    status: 404,
                },
                _ => transport(e.to_string()),
            })?;
            let len = f.metadata().map_err(|e| transport(e.to_string()))?.len();
            if offset == 0 {
                return Ok(RangedBody::Whole(Box::new(f)));
            }
            if offset >= len {
                return Ok(RangedBody::NotSatisfiable);
            }
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| transport(e.to_string()))?;
            return Ok(RangedBody::Partial(Box::new(f)));
        }
        let mut req = self.client.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let resp = req
            .send()
            .map_err(|e| transport(otter_keys::report::describe(&e.without_url())))?;
        let status = resp.status().as_u16();
        match status {
            403 | 404 => {
                return Err(FetchError::NotFound {
                    url: url.to_string(),
                    status,
                })
            }
            416 if offset > 0 => return Ok(RangedBody::NotSatisfiable),
            206 if offset > 0 => {
                let start = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(offset) {
                    return Err(transport(format!(
                        "answered a request for bytes {offset}- with a different range"
                    )));
                }
                if resp
                    .content_length()
                    .is_some_and(|l| l.saturating_add(offset) > max_len)
                {
                    return Err(FetchError::TooLarge {
                        url: url.to_string(),
                        max: max_len,
                    });
                }
                return Ok(RangedBody::Partial(Box::new(resp)));
            }
            200 => {}
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                })
            }
        }
        if resp.content_length().is_some_and(|l| l > max_len) {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
                max: max_len,
            });
        }
        Ok(RangedBody::Whole(Box::new(resp)))
    }
}

#[cfg(test)]
mod tests {
    use super::content_range_start;

    #[test]
    fn content_range_starts_are_parsed() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes 0-0/*"), Some(0));
        for bad in ["", "bytes */200", "items 1-2/3", "bytes x-2/3", "bytes 5/7"] {
            assert_eq!(content_range_start(bad), None, "{bad:?}");
        }
    }
}
