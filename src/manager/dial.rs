//! The dial task: one attempt, from call to result.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project::pin_project;
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    task::Unconstrained,
    time::Sleep,
};
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
///
/// Written out rather than as an `async fn`: an `async fn` keeps its
/// arguments beside its locals, and the dial future twice would take the
/// task past the size the allocator serves from its small bins.
#[pin_project]
pub(crate) struct Attempt<F, T, IO> {
    #[pin]
    dial: F,
    /// Polled outside tokio's cooperative budget, as tokio's own `timeout`
    /// does once the dial has spent it: a dial that spends it on every
    /// poll (a peer that keeps sending) still runs out of time.
    #[pin]
    deadline: Option<Unconstrained<Sleep>>,
    id: ConnId,
    split: fn(T) -> Io<IO>,
    automatic: bool,
    shared: Arc<Shared>,
    results: mpsc::UnboundedSender<Dialed<IO>>,
}

impl<F, T, IO> Attempt<F, T, IO> {
    pub(crate) fn new(
        id: ConnId,
        dial: F,
        split: fn(T) -> (IO, Option<OwnedSemaphorePermit>),
        timeout: Option<Duration>,
        automatic: bool,
        shared: Arc<Shared>,
        results: mpsc::UnboundedSender<Dialed<IO>>,
    ) -> Self {
        Self {
            dial,
            deadline: timeout.map(|limit| tokio::task::unconstrained(tokio::time::sleep(limit))),
            id,
            split,
            automatic,
            shared,
            results,
        }
    }
}

impl<F, T, E, IO> Future for Attempt<F, T, IO>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // The dial first, as tokio's `timeout` does: one that is ready
        // when its time is up still counts.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| this.dial.as_mut().poll(cx)));
        let result: Result<Io<IO>, BoxError> = match polled {
            Ok(Poll::Ready(result)) => result.map(*this.split).map_err(Into::into),
            Err(_panic) => Err(this.shared.panicked("dial future").into()),
            Ok(Poll::Pending) => {
                let due = this.deadline.as_pin_mut().map(|d| d.poll(cx));
                if !matches!(due, Some(Poll::Ready(()))) {
                    return Poll::Pending;
                }
                Err(Elapsed::new().into())
            }
        };
        if *this.automatic {
            this.shared.attempt_ended(result.is_ok());
        }
        // The manager may have stopped: a connection is then dropped, closed.
        let _ = this.results.send(Dialed {
            id: *this.id,
            result,
        });
        Poll::Ready(())
    }
}
