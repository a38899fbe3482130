//! The connection handed to the application.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;
use pin_project::{pin_project, pinned_drop};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::mpsc,
};

use super::{ConnClass, ConnId, ConnKind, Direction, class::ClassPermit, message::Dropped};

/// What identifies a connection or request: its id, address, kind and
/// class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo<A = SocketAddr> {
    /// The request's id.
    pub id: ConnId,
    /// The address dialed, or for an inbound connection the remote address.
    pub addr: A,
    /// Automatic, permanent, one-shot or inbound.
    pub kind: ConnKind,
    /// What it is for: full relay, block relay only, or a feeler. Explicit
    /// and inbound connections are full-relay.
    pub class: ConnClass,
}

impl<A> ConnInfo<A> {
    /// Outbound or inbound.
    pub fn direction(&self) -> Direction {
        self.kind.direction()
    }
}

/// The bits of `Control::state`: closed by the manager, and bytes read and
/// written since the inactivity check last looked.
const CLOSED: u64 = 1 << 63;
const READ: u64 = 1;
const WRITE: u64 = 2;

/// State shared by a [`Connection`] and the manager: the close signal and
/// the outbound permit the connection holds, if any.
pub(crate) struct Control {
    /// The close signal, and whether bytes were read and written since
    /// the inactivity check last looked, in one word (flags, so the I/O
    /// path reads no clock and writes the word at most once per check).
    state: AtomicU64,
    read: AtomicWaker,
    write: AtomicWaker,
    permit: Mutex<Option<ClassPermit>>,
}

impl Control {
    pub(crate) fn new(permit: Option<ClassPermit>) -> Arc<Self> {
        Arc::new(Self {
            state: AtomicU64::new(0),
            read: AtomicWaker::new(),
            write: AtomicWaker::new(),
            permit: Mutex::new(permit),
        })
    }

    /// Closes the connection from the manager's side: pending and later reads
    /// and writes end with an error, and the permit is released now.
    pub(crate) fn close(&self) {
        self.state.fetch_or(CLOSED, Ordering::Release);
        self.release();
        self.read.wake();
        self.write.wake();
    }

    pub(crate) fn release(&self) {
        // A poisoned lock still holds a valid Option.
        let permit = match self.permit.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        drop(permit);
    }

    /// Whether bytes were read, and written, since the last call.
    pub(crate) fn take_activity(&self) -> (bool, bool) {
        let state = self.state.fetch_and(!(READ | WRITE), Ordering::Relaxed);
        (state & READ != 0, state & WRITE != 0)
    }

    #[inline]
    fn active(&self, bit: u64) {
        if self.state.load(Ordering::Relaxed) & bit == 0 {
            self.state.fetch_or(bit, Ordering::Relaxed);
        }
    }

    #[inline]
    fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }
}

impl fmt::Debug for Control {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Control")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

/// A connection made or accepted by the manager.
///
/// It reads and writes straight through to the stream from the dial stack (or
/// the accepted [`TcpStream`](tokio::net::TcpStream)), and carries the
/// request's [`ConnInfo`].
///
/// **Dropping it is the disconnect.** The manager learns of it at once: an
/// automatic connection's outbound slot is freed and a replacement dialed, a
/// permanent peer is reconnected after its backoff, an inbound slot is freed.
///
/// When the manager closes it ([`Handle::disconnect`], [`Handle::remove`] or
/// [`Handle::stop_and_close`]), pending and later reads and writes fail with
/// [`io::ErrorKind::ConnectionAborted`]; the owner should then drop it, which
/// closes the socket.
///
/// [`Handle::disconnect`]: super::Handle::disconnect
/// [`Handle::remove`]: super::Handle::remove
/// [`Handle::stop_and_close`]: super::Handle::stop_and_close
#[pin_project(PinnedDrop)]
pub struct Connection<IO, A = SocketAddr> {
    #[pin]
    io: IO,
    info: ConnInfo<A>,
    control: Arc<Control>,
    dropped: Option<mpsc::UnboundedSender<Dropped>>,
}

impl<IO, A> Connection<IO, A> {
    pub(crate) fn new(
        io: IO,
        info: ConnInfo<A>,
        control: Arc<Control>,
        dropped: Option<mpsc::UnboundedSender<Dropped>>,
    ) -> Self {
        Self {
            io,
            info,
            control,
            dropped,
        }
    }

    /// The request's id.
    pub fn id(&self) -> ConnId {
        self.info.id
    }

    /// The address dialed, or for an inbound connection the remote address.
    pub fn addr(&self) -> &A {
        &self.info.addr
    }

    /// Automatic, permanent, one-shot or inbound.
    pub fn kind(&self) -> ConnKind {
        self.info.kind
    }

    /// Outbound or inbound.
    pub fn direction(&self) -> Direction {
        self.info.kind.direction()
    }

    /// What it is for: relay transactions on a
    /// [`FullRelay`](ConnClass::FullRelay) connection, only blocks on a
    /// [`BlockRelay`](ConnClass::BlockRelay) one, and close a
    /// [`Feeler`](ConnClass::Feeler) after its handshake.
    pub fn class(&self) -> ConnClass {
        self.info.class
    }

    /// Id, address and kind together.
    pub fn info(&self) -> &ConnInfo<A> {
        &self.info
    }

    /// Whether the manager has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.control.is_closed()
    }

    /// A reference to the underlying stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// A mutable reference to the underlying stream.
    ///
    /// Reading or writing through it bypasses the manager's close signal,
    /// and the [inactivity timeout](super::Builder::inactivity_timeout)
    /// does not see it.
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }
}

impl<IO, A: fmt::Debug> fmt::Debug for Connection<IO, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.info.id)
            .field("addr", &self.info.addr)
            .field("kind", &self.info.kind)
            .field("class", &self.info.class)
            .field("closed", &self.control.is_closed())
            .finish_non_exhaustive()
    }
}

#[pinned_drop]
impl<IO, A> PinnedDrop for Connection<IO, A> {
    fn drop(self: Pin<&mut Self>) {
        let this = self.project();
        // The notice goes first, then the permit (if any) is released: for
        // an automatic connection both wake the fill task, the one task a
        // drop wakes (two woken at once send one to another worker thread).
        // The manager is always told, even when it closed the connection
        // itself: it tells this connection from a newer one of the same
        // request by its control block.
        if let Some(tx) = this.dropped.take() {
            let _ = tx.send(Dropped {
                id: this.info.id,
                control: this.control.clone(),
            });
        }
        this.control.release();
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the connection manager",
    )
}

/// Runs one I/O poll unless the manager has closed the connection. When the
/// poll is pending, `waker` is registered so that a close wakes the task.
fn guarded<T>(
    control: &Control,
    waker: &AtomicWaker,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if control.is_closed() {
        return Poll::Ready(Err(aborted()));
    }
    match poll(cx) {
        Poll::Pending => {
            waker.register(cx.waker());
            // A close between the check above and the registration would
            // otherwise be missed.
            if control.is_closed() {
                return Poll::Ready(Err(aborted()));
            }
            Poll::Pending
        }
        ready => ready,
    }
}

impl<IO: AsyncRead, A> AsyncRead for Connection<IO, A> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let control = &**this.control;
        let before = buf.filled().len();
        let res = guarded(control, &control.read, cx, |cx| this.io.poll_read(cx, buf));
        if buf.filled().len() > before {
            control.active(READ);
        }
        res
    }
}

impl<IO: AsyncWrite, A> AsyncWrite for Connection<IO, A> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let control = &**this.control;
        let res = guarded(control, &control.write, cx, |cx| {
            this.io.poll_write(cx, buf)
        });
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            control.active(WRITE);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let control = &**this.control;
        let res = guarded(control, &control.write, cx, |cx| {
            this.io.poll_write_vectored(cx, bufs)
        });
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            control.active(WRITE);
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let control = &**this.control;
        // A flush that waits is woken by a close too.
        guarded(control, &control.write, cx, |cx| this.io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Shutting down a connection the manager closed is allowed.
        self.project().io.poll_shutdown(cx)
    }
}
