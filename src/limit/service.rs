use std::{
    sync::Arc,
    task::{Context, Poll, ready},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::Service;

use super::future::ResponseFuture;

/// Limits the number of open connections made through the inner service.
/// See the [module docs](crate::limit).
#[derive(Debug)]
pub struct OutboundLimit<S> {
    inner: S,
    semaphore: PollSemaphore,
    permit: Option<OwnedSemaphorePermit>,
}

impl<S> OutboundLimit<S> {
    /// At most `max` connections open at once (capped at
    /// [`Semaphore::MAX_PERMITS`]).
    pub fn new(inner: S, max: usize) -> Self {
        Self::with_semaphore(
            inner,
            Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        )
    }

    /// Draws permits from `semaphore`.
    pub fn with_semaphore(inner: S, semaphore: Arc<Semaphore>) -> Self {
        Self {
            inner,
            semaphore: PollSemaphore::new(semaphore),
            permit: None,
        }
    }

    /// The number of permits free right now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// After `poll_ready` said ready: the ready inner service with the
    /// permit it holds, leaving `fresh` in its place. The limit keeps its
    /// semaphore (and the future it waits with), so that the next wait
    /// allocates nothing. `None` if no permit is held.
    pub(crate) fn take_ready(&mut self, fresh: S) -> Option<(S, OwnedSemaphorePermit)> {
        let permit = self.permit.take()?;
        Some((std::mem::replace(&mut self.inner, fresh), permit))
    }
}

impl<S: Clone> Clone for OutboundLimit<S> {
    // The permit this instance holds for its next call stays with it.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
        }
    }
}

impl<S, R> Service<R> for OutboundLimit<S>
where
    S: Service<R>,
{
    type Response = super::Permitted<S::Response>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            // `None` means the semaphore was closed: no more permits will
            // ever be handed out, so stay pending rather than fail.
            match ready!(self.semaphore.poll_acquire(cx)) {
                Some(permit) => self.permit = Some(permit),
                None => return Poll::Pending,
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // `Service` asks callers to drive `poll_ready` to readiness first. A
        // caller that did not gets a permit if one is free; otherwise the call
        // goes through unlimited and the contract breach is logged (tower's
        // own limit panics here instead).
        let permit = self.permit.take().or_else(|| {
            let permit = self.semaphore.clone_inner().try_acquire_owned().ok();
            if permit.is_none() {
                tracing::error!(
                    "OutboundLimit called without poll_ready; the limit is not applied"
                );
            }
            permit
        });
        ResponseFuture::new(self.inner.call(request), permit)
    }
}
