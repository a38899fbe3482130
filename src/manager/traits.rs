//! What the manager needs of the user's pieces: an address type and a dial
//! stack. The address source is in `crate::source`.

use std::{fmt, hash::Hash};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::{BoxError, Service};

use crate::policy::PeerAddr;

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
