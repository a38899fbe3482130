//! What the manager needs of the user's pieces: an address type, a dial
//! stack and an address source.

use std::{fmt, future::Future, hash::Hash};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::{BoxError, Service};

use crate::policy::PeerAddr;

/// Where automatic outbound addresses come from (btcd's `GetNewAddress`).
///
/// `None` means "no address right now": it counts as a failed attempt, and
/// the fill task waits the retry base before it asks again.
///
/// Any `FnMut() -> impl Future<Output = Option<A>>` closure is a source.
/// The manager calls it from its fill task, never from the manager task, so
/// it may take its time (query an address book, say). A source that panics
/// costs one failed attempt.
pub trait AddressSource<A>: Send + 'static {
    /// The next address to dial.
    fn next_address(&mut self) -> impl Future<Output = Option<A>> + Send;
}

impl<A, F, Fut> AddressSource<A> for F
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Option<A>> + Send,
{
    fn next_address(&mut self) -> impl Future<Output = Option<A>> + Send {
        self()
    }
}

/// An address type the manager can work with: cloneable, comparable (no
/// two outbound requests to one address), printable (for logs and spans),
/// shareable across tasks, and placed in a netgroup by
/// [`PeerAddr`](crate::policy::PeerAddr). Every such type is one, e.g.
/// `SocketAddr`, or a host name type for targets reachable only through a
/// proxy.
pub trait Address:
    Clone + Eq + Hash + fmt::Debug + fmt::Display + PeerAddr + Send + Sync + 'static
{
}

impl<T> Address for T where
    T: Clone + Eq + Hash + fmt::Debug + fmt::Display + PeerAddr + Send + Sync + 'static
{
}

/// A dial stack the manager can drive: a cloneable `Service<A>` whose
/// response is a stream. Every such service is one: the default
/// [`Dialer`](crate::Dialer), a [`ServiceBuilder`](tower::ServiceBuilder)
/// stack, a `service_fn`.
pub trait DialService<A>:
    Service<
        A,
        Response: AsyncRead + AsyncWrite + Send + 'static,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<A, S> DialService<A> for S
where
    S: Service<A> + Clone + Send + 'static,
    S::Response: AsyncRead + AsyncWrite + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
}

/// Told how each outbound dial went: an address book learning from
/// outcomes. Runs on the manager task, so it must be quick.
pub(crate) trait Observer<A>: Send + Sync + 'static {
    fn connected(&self, addr: &A);
    fn failed(&self, addr: &A);
    fn disconnected(&self, addr: &A);
}

impl Observer<std::net::SocketAddr> for crate::seed::AddressBook {
    fn connected(&self, addr: &std::net::SocketAddr) {
        Self::connected(self, addr);
    }

    fn failed(&self, addr: &std::net::SocketAddr) {
        Self::failed(self, addr);
    }

    fn disconnected(&self, addr: &std::net::SocketAddr) {
        Self::disconnected(self, addr);
    }
}
