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
    ConnId, counters,
    message::{Dialed, Io},
};

/// What every dial task of a manager shares: one reference per task,
/// cloned and dropped once per dial (the counters and the result channel
/// behind one count, on a line the manager's thread and the dial's share).
pub(crate) struct Shared<IO> {
    pub(crate) counters: Arc<counters::Shared>,
    /// Unbounded, yet bounded by the state map: each dial task sends one
    /// result, and each has an entry (automatic dials at most the target,
    /// explicit ones one per request, feelers one at a time). A flooding
    /// peer starts no dial, and a slow callback does not stop the manager
    /// from draining this (it only pauses new work).
    pub(crate) results: mpsc::UnboundedSender<Dialed<IO>>,
}

/// The error a dial future gives when the stack's `call` panicked: the
/// attempt counts it as a panic of the call, not of the future.
#[derive(Debug)]
pub(crate) struct CallPanicked;

impl std::fmt::Display for CallPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dial stack's call panicked")
    }
}

impl std::error::Error for CallPanicked {}

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
    common: Arc<Shared<IO>>,
}

impl<F, T, IO> Attempt<F, T, IO> {
    pub(crate) fn new(
        id: ConnId,
        dial: F,
        split: fn(T) -> (IO, Option<OwnedSemaphorePermit>),
        timeout: Option<Duration>,
        automatic: bool,
        common: Arc<Shared<IO>>,
    ) -> Self {
        Self {
            dial,
            deadline: timeout.map(|limit| tokio::task::unconstrained(tokio::time::sleep(limit))),
            id,
            split,
            automatic,
            common,
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
            Ok(Poll::Ready(result)) => result.map(*this.split).map_err(|e| {
                let e: BoxError = e.into();
                if e.is::<CallPanicked>() {
                    this.common.counters.panicked("dial stack call").into()
                } else {
                    e
                }
            }),
            Err(_panic) => Err(this.common.counters.panicked("dial future").into()),
            Ok(Poll::Pending) => {
                let due = this.deadline.as_pin_mut().map(|d| d.poll(cx));
                if !matches!(due, Some(Poll::Ready(()))) {
                    return Poll::Pending;
                }
                Err(Elapsed::new().into())
            }
        };
        if *this.automatic {
            this.common.counters.attempt_ended(result.is_ok());
        }
        // The manager may have stopped: a connection is then dropped, closed.
        let _ = this.common.results.send(Dialed {
            id: *this.id,
            result,
        });
        Poll::Ready(())
    }
}
