//! The background task that keeps the repository fresh: at a fixed interval it asks the
//! repository to re-sign whatever has less than half its lifetime left.

use std::sync::Arc;
use std::time::Duration;

use otter_keys::time::UtcTime;
use tokio::sync::oneshot;
use tokio::time::MissedTickBehavior;

use crate::repo::Repository;

/// Runs until `stop` fires (or its sender is dropped). A failed refresh is logged and tried
/// again at the next tick; a refresh in progress always finishes before the task stops.
pub async fn run(repo: Arc<Repository>, every: Duration, mut stop: oneshot::Receiver<()>) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick fires at once; the repository was refreshed when it was opened.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                match repo.refresh(UtcTime::now()).await {
                    Ok(Some(v)) => tracing::info!(
                        timestamp = v.timestamp,
                        snapshot = v.snapshot,
                        targets = v.targets,
                        "re-signed repository metadata"
                    ),
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "re-signing repository metadata failed; trying again at the next check"
                    ),
                }
            }
        }
    }
    tracing::debug!("re-signing task stopped");
}
