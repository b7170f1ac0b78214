//! The terminal's identity towards the server: enrollment and signed device requests.
//!
//! The state dir (0700 when the agent creates it) holds:
//! - `device.key`: the ed25519 identity key that signs every request (hex seed, 0600);
//! - `backup.key`: the age X25519 backup identity (a standard age identity file, 0600);
//! - `chunk.key`: the 32-byte secret of keyed chunk ids (hex, 0600);
//! - `tuf/root.json`: the trusted root, copied from the file shipped with the terminal image
//!   (never taken from the network);
//! - `agent.json`: the device id, the server and repository URLs (written last: its
//!   presence means "enrolled").
//!
//! - [`identity`]: creating, saving and loading the three secrets.
//! - [`client`]: the blocking HTTP client that signs requests with the identity key.
//! - [`enroll`](mod@enroll): `otter-agent enroll` and `otter-agent report`.

pub mod client;
pub mod enroll;
pub mod identity;

use std::path::PathBuf;

pub use client::DeviceClient;
pub use enroll::{enroll, send_report, AgentState, EnrollOptions};
pub use identity::Identity;

/// What went wrong with enrollment, the identity or a device request.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The state dir holds an enrolled identity already.
    #[error("{dir} is already enrolled as device {device_id}: use another --state-dir, or remove this one to enroll the terminal anew")]
    AlreadyEnrolled {
        /// The state dir.
        dir: PathBuf,
        /// The device id it holds.
        device_id: String,
    },
    /// The state dir holds no enrollment.
    #[error("{dir} holds no enrollment (no agent.json): run otter-agent enroll first")]
    NotEnrolled {
        /// The state dir.
        dir: PathBuf,
    },
    /// The trusted root file is unusable.
    #[error("trusted root {path}: {reason}")]
    TrustedRoot {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A local file is not what it should be.
    #[error("{path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An argument is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The server refused the request.
    #[error("the server refused the request (HTTP {status}, {code}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's machine code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or answered garbage.
    #[error("{url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The request could not be signed.
    #[error(transparent)]
    Sign(#[from] otter_keys::request::RequestError),
}

fn io_err(path: &std::path::Path) -> impl Fn(std::io::Error) -> DeviceError + '_ {
    move |source| DeviceError::Io {
        path: path.to_path_buf(),
        source,
    }
}
