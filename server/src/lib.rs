//! Otter server.
