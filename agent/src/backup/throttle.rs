//! Upload bandwidth cap: [`Throttle`], a pacing token bucket shared by every upload of the
//! process, and [`ThrottledReader`], the request-body reader that waits for it.
//!
//! The cap is for the whole process (all uploads in flight together), in bytes per second;
//! `0` means unlimited. Bytes are paced in slices of at most [`SLICE`] bytes, so a cellular
//! link sees a steady rate rather than bursts.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest number of bytes handed out by one read of a [`ThrottledReader`].
pub const SLICE: usize = 16 * 1024;

/// A token bucket without burst: each byte taken moves a shared "free at" time forward by
/// `1 / rate` seconds; a taker sleeps until its bytes are due.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    free_at: Mutex<Option<Instant>>,
}

impl Throttle {
    /// A cap of `bytes_per_sec` (`0`: unlimited), to share between uploads.
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(Throttle {
            rate: bytes_per_sec,
            free_at: Mutex::new(None),
        })
    }

    /// The cap in bytes per second (`0`: unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Waits until `n` more bytes may be sent.
    pub fn take(&self, n: usize) {
        if self.rate == 0 || n == 0 {
            return;
        }
        let cost = Duration::from_secs_f64(n as f64 / self.rate as f64);
        let due = {
            // A poisoned lock only means another upload panicked; the time is still valid.
            let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = free_at.map_or(now, |t| t.max(now));
            let due = start + cost;
            *free_at = Some(due);
            due
        };
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// A reader that paces its bytes through a shared [`Throttle`].
#[derive(Debug)]
pub struct ThrottledReader<R> {
    inner: R,
    throttle: Arc<Throttle>,
}

impl<R: Read> ThrottledReader<R> {
    /// Wraps `inner`, pacing it with `throttle`.
    pub fn new(inner: R, throttle: Arc<Throttle>) -> Self {
        ThrottledReader { inner, throttle }
    }
}

impl<R: Read> Read for ThrottledReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = buf.len().min(SLICE);
        let n = self.inner.read(&mut buf[..len])?;
        self.throttle.take(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_reader_is_slowed_and_delivers_every_byte() {
        let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let mut out = Vec::new();
        ThrottledReader::new(&data[..], Throttle::new(512 * 1024))
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert!(started.elapsed() >= Duration::from_millis(750));
    }

    #[test]
    fn zero_is_unlimited() {
        let t = Throttle::new(0);
        let started = Instant::now();
        t.take(usize::MAX);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
