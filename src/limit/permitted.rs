use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::OwnedSemaphorePermit,
};

/// A connection that holds a permit of an
/// [`OutboundLimit`](super::OutboundLimit) until it is dropped.
///
/// It reads and writes straight through to the inner stream, with no copying
/// or buffering.
#[pin_project]
#[derive(Debug)]
pub struct Permitted<T> {
    #[pin]
    inner: T,
    permit: Option<OwnedSemaphorePermit>,
}

impl<T> Permitted<T> {
    pub(crate) fn new(inner: T, permit: Option<OwnedSemaphorePermit>) -> Self {
        Self { inner, permit }
    }

    /// A reference to the connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// A mutable reference to the connection.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Splits into the connection and the permit. The permit is released when
    /// it is dropped, whatever happens to the connection.
    pub fn into_parts(self) -> (T, Option<OwnedSemaphorePermit>) {
        (self.inner, self.permit)
    }

    /// Releases the permit now, keeping the connection.
    pub fn release(&mut self) {
        self.permit = None;
    }
}

impl<T: AsyncRead> AsyncRead for Permitted<T> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for Permitted<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
