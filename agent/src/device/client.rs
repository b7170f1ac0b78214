//! A blocking HTTP client for the server's device API: JSON in and out, device requests
//! signed with the identity key ([`otter_keys::request`]), the server's JSON errors turned
//! into [`DeviceError::Server`]. Response bodies are capped.

use std::io::Read;
use std::time::Duration;

use otter_keys::crypto::SigningKey;
use otter_keys::request::sign_request;
use serde_json::Value;

use super::DeviceError;

/// Largest response body read.
const MAX_RESPONSE: u64 = 1024 * 1024;

/// Checks and normalises a server URL: `http://` or `https://`, no trailing `/`, no query.
pub fn normalize_server_url(url: &str) -> Result<String, DeviceError> {
    let u = url.trim().trim_end_matches('/');
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !u.contains(['?', '#', ' ']) => Ok(u.to_owned()),
        _ => Err(DeviceError::Invalid(format!(
            "--server {url:?}: give the server's base URL, http(s)://HOST[:PORT]"
        ))),
    }
}

/// Sends requests to one server.
pub struct DeviceClient {
    base: String,
    http: reqwest::blocking::Client,
}

impl DeviceClient {
    /// A client for the server at `base_url` (see [`normalize_server_url`]).
    pub fn new(base_url: &str) -> Result<DeviceClient, DeviceError> {
        let base = normalize_server_url(base_url)?;
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("otter-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DeviceError::Transport {
                url: base.clone(),
                message: format!("cannot set up the HTTP client: {e}"),
            })?;
        Ok(DeviceClient { base, http })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// POSTs `body` as JSON without a signature (enrollment).
    pub fn post_unsigned(&self, path: &str, body: &Value) -> Result<Value, DeviceError> {
        let bytes = serde_json::to_vec(body).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        self.send(path, bytes, None)
    }

    /// POSTs `body` as JSON, signed by `key` as device `device_id`.
    pub fn post_signed(
        &self,
        path: &str,
        body: &Value,
        device_id: &str,
        key: &SigningKey,
    ) -> Result<Value, DeviceError> {
        let bytes = serde_json::to_vec(body).map_err(|e| DeviceError::Invalid(e.to_string()))?;
        let now = otter_keys::time::UtcTime::now().unix();
        let headers = sign_request(key, device_id, "POST", path, &bytes, now)?;
        self.send(path, bytes, Some(&headers))
    }

    /// GETs `path`, signed by `key` as device `device_id` (over an empty body).
    pub fn get_signed(
        &self,
        path: &str,
        device_id: &str,
        key: &SigningKey,
    ) -> Result<Value, DeviceError> {
        let now = otter_keys::time::UtcTime::now().unix();
        let headers = sign_request(key, device_id, "GET", path, b"", now)?;
        self.send_with(reqwest::Method::GET, path, Vec::new(), Some(&headers))
    }

    fn send(
        &self,
        path: &str,
        body: Vec<u8>,
        signature: Option<&otter_keys::request::SignatureHeaders>,
    ) -> Result<Value, DeviceError> {
        self.send_with(reqwest::Method::POST, path, body, signature)
    }

    fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        signature: Option<&otter_keys::request::SignatureHeaders>,
    ) -> Result<Value, DeviceError> {
        let url = format!("{}{}", self.base, path);
        let transport = |message: String| DeviceError::Transport {
            url: url.clone(),
            message,
        };
        let mut req = self
            .http
            .request(method, &url)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(h) = signature {
            for (name, value) in h.pairs() {
                req = req.header(name, value);
            }
        }
        let resp = req.send().map_err(|e| transport(e.to_string()))?;
        let status = resp.status().as_u16();
        let mut raw = Vec::new();
        resp.take(MAX_RESPONSE + 1)
            .read_to_end(&mut raw)
            .map_err(|e| transport(format!("reading the answer: {e}")))?;
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(transport(format!(
                "the answer is larger than {MAX_RESPONSE} bytes"
            )));
        }
        let json: Option<Value> = serde_json::from_slice(&raw).ok();
        if (200..300).contains(&status) {
            return json.ok_or_else(|| transport(format!("HTTP {status} without a JSON body")));
        }
        let err = json.as_ref().and_then(|v| v.get("error"));
        let text = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .map(|s| s.chars().take(512).collect::<String>())
        };
        Err(DeviceError::Server {
            status,
            code: text("code").unwrap_or_else(|| "unknown".into()),
            message: text("message").unwrap_or_else(|| "no error message".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            normalize_server_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(normalize_server_url("https://otter.example").is_ok());
        for bad in ["", "ftp://x", "http://", "127.0.0.1:8080", "http://x/?a=1"] {
            assert!(normalize_server_url(bad).is_err(), "{bad:?}");
        }
    }
}
