//! `otter-keys`: Otter's trust core. Everything that signs or verifies goes through it.
//!
//! It works on bytes and values: no network, no async. Its only file I/O is the atomic-write
//! helper the three programs share, and the key files written through it.
//!
//! - [`canonical`]: OLPC canonical JSON and strict parsing of untrusted JSON.
//! - [`crypto`]: public keys, key ids, signatures; ed25519 signing keys.
//! - [`metadata`]: TUF 1.0 metadata (root, targets with delegations, snapshot, timestamp),
//!   threshold verification, expiry, version and type checks.
//! - [`hash`]: length and hash checks of downloaded files.
//! - [`time`]: the UTC timestamps of metadata.
//! - [`keyfile`]: passphrase-encrypted key files.
//! - [`atomic`]: the atomic-write helper.
//! - [`report`]: rendering errors and their causes for people.
//! - [`release`]: the kinds and names in a release's signed `custom` fields.
//! - [`envelope`]: the backup envelope (age recipients, keyed chunk ids, signed manifest chain).
//! - [`request`]: the signature on device requests (method, path, time, nonce, body digest,
//!   device and key), signed and verified as pure functions.

pub mod atomic;
pub mod canonical;
pub mod crypto;
pub mod envelope;
pub mod hash;
pub mod keyfile;
pub mod metadata;
pub mod release;
pub mod report;
pub mod request;
pub mod time;

pub use age;
