//! The dial task: one attempt, from call to result.

use std::{future::Future, panic::AssertUnwindSafe, pin::pin, sync::Arc, time::Duration};

use futures_util::FutureExt;
use tokio::{sync::OwnedSemaphorePermit, sync::mpsc};
use tower::{BoxError, timeout::error::Elapsed};

use super::{
    ConnId,
    counters::Shared,
    message::{Dialed, Io},
};

/// Runs one dial attempt to its one result and sends it to the manager.
///
/// The connect timeout runs here, with the dial, so an attempt ends exactly
/// once: connected, failed, timed out or panicked. `split` separates an
/// automatic connection from its outbound permit.
///
/// For an automatic attempt the failure throttle is fed before the dial
/// future is dropped, and with it the attempt's permit: the fill task sees
/// the count before it can start a replacement.
pub(crate) async fn run<F, T, E, IO>(
    id: ConnId,
    fut: F,
    split: fn(T) -> (IO, Option<OwnedSemaphorePermit>),
    timeout: Option<Duration>,
    automatic: bool,
    shared: Arc<Shared>,
    results: mpsc::UnboundedSender<Dialed<IO>>,
) where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    // Pinned here so that it (and an automatic dial's permit) lives until
    // the end of this function, past the throttle update.
    let mut attempt = pin!(AssertUnwindSafe(fut).catch_unwind());
    let outcome = match timeout {
        Some(limit) => tokio::time::timeout(limit, attempt.as_mut()).await.ok(),
        None => Some(attempt.as_mut().await),
    };
    let result: Result<Io<IO>, BoxError> = match outcome {
        None => Err(Elapsed::new().into()),
        Some(Err(_panic)) => Err(shared.panicked("dial future").into()),
        Some(Ok(result)) => result.map(split).map_err(Into::into),
    };
    if automatic {
        shared.attempt_ended(result.is_ok());
    }
    // The manager may have stopped: a connection is then dropped, closed.
    let _ = results.send(Dialed { id, result });
}
