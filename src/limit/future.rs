//! Future types of [`OutboundLimit`](super::OutboundLimit).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use pin_project::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::Permitted;

/// The future of [`OutboundLimit`](super::OutboundLimit): the inner dial,
/// holding the permit.
///
/// On success the permit moves into the [`Permitted`] response. On failure,
/// or if the future is dropped first, the permit is released when the future
/// is dropped.
#[pin_project]
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture<F> {
    #[pin]
    inner: F,
    permit: Option<OwnedSemaphorePermit>,
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { inner, permit }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Result<Permitted<T>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let io = ready!(this.inner.poll(cx))?;
        Poll::Ready(Ok(Permitted::new(io, this.permit.take())))
    }
}
