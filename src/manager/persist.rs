//! Saving the address manager and the bans: on stop and at an interval,
//! off the manager task.

use std::{path::Path, path::PathBuf, time::Duration};

use crate::{
    addrman::{AddrMan, PersistError},
    policy::Ban,
};

/// Where and how often to save, and how (the address type's codec, fixed
/// when the builder knew it).
#[derive(Clone)]
pub(crate) struct Persist<A> {
    pub(crate) path: PathBuf,
    pub(crate) interval: Duration,
    pub(crate) save: fn(&AddrMan<A>, &Path, &[Ban]) -> Result<(), PersistError>,
}

/// Saves on a blocking thread; logs the outcome.
pub(crate) async fn save<A: Send + Sync + 'static>(
    persist: &Persist<A>,
    man: &AddrMan<A>,
    bans: Vec<Ban>,
) {
    let (save, man, path) = (persist.save, man.clone(), persist.path.clone());
    let shown = path.display().to_string();
    match tokio::task::spawn_blocking(move || save(&man, &path, &bans)).await {
        Ok(Ok(())) => tracing::debug!(path = %shown, "address table saved"),
        Ok(Err(error)) => tracing::warn!(path = %shown, %error, "address table not saved"),
        Err(error) => tracing::warn!(path = %shown, %error, "address table save panicked"),
    }
}
