//! The default dial stack in one line.
//!
//! [`DialStack`] assembles the stack most nodes want, TCP with an optional
//! SOCKS5 proxy and a per-attempt timeout, and [`build`](DialStack::build)s it
//! into a [`Dialer`], a cloneable `Service<SocketAddr, Response = TcpStream,
//! Error = BoxError>`:
//!
//! ```no_run
//! # fn f() -> Result<(), tower::BoxError> {
//! let dialer = connmgr::DialStack::new().socks5("127.0.0.1:9050".parse()?).build();
//! # let _ = dialer; Ok(()) }
//! ```
//!
//! The same stack written out with tower's [`ServiceBuilder`] is
//!
//! ```
//! # use connmgr::{connect::TcpConnector, socks::Socks5Layer};
//! # use std::time::Duration;
//! # use tower::ServiceBuilder;
//! # let proxy = "127.0.0.1:9050".parse().unwrap();
//! let dialer = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30))   // per attempt: TCP connect + handshake
//!     .layer(Socks5Layer::new(proxy))     // connect to the proxy, then SOCKS5
//!     .service(TcpConnector::new());      // the TCP leaf
//! # let _ = dialer;
//! ```
//!
//! which is the form to start from when adding layers of your own (see
//! `examples/custom_stack.rs`).
//!
//! # Telling a timeout apart
//!
//! The stack's error is a [`BoxError`]. A dial that ran out of time is a
//! [`tower::timeout::error::Elapsed`]:
//!
//! ```
//! # fn f(err: tower::BoxError) {
//! if err.is::<tower::timeout::error::Elapsed>() {
//!     // timed out
//! } else if let Some(e) = err.downcast_ref::<connmgr::connect::ConnectError>() {
//!     // TCP failure: e.kind(), e.addr()
//! } else if let Some(e) = err.downcast_ref::<connmgr::socks::Socks5Error>() {
//!     // proxy failure: e.kind()
//! }
//! # }
//! ```
//!
//! [`ServiceBuilder`]: tower::ServiceBuilder

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project::pin_project;
use tokio::{net::TcpStream, time::Sleep};
use tower::{BoxError, Layer, Service, timeout::error::Elapsed};

use crate::{
    connect::{Connecting, TcpConnector},
    socks::{Handshaking, Socks5, Socks5Layer},
};

/// The default connect timeout, as in btcd.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the default dial stack. See the [module docs](crate::stack).
#[derive(Clone, Debug)]
pub struct DialStack {
    connector: TcpConnector,
    socks5: Option<Socks5Layer>,
    timeout: Option<Duration>,
}

impl Default for DialStack {
    fn default() -> Self {
        Self::new()
    }
}

impl DialStack {
    /// TCP with the default [`TcpConnector`] options and a 30 s timeout per
    /// attempt.
    pub fn new() -> Self {
        Self {
            connector: TcpConnector::new(),
            socks5: None,
            timeout: Some(DEFAULT_CONNECT_TIMEOUT),
        }
    }

    /// Uses this TCP connector (for its socket options).
    pub fn connector(mut self, connector: TcpConnector) -> Self {
        self.connector = connector;
        self
    }

    /// Dials through the SOCKS5 proxy at `proxy`, without authentication.
    pub fn socks5(self, proxy: SocketAddr) -> Self {
        self.socks5_layer(Socks5Layer::new(proxy))
    }

    /// Dials through a configured SOCKS5 layer (credentials, Tor isolation).
    pub fn socks5_layer(mut self, layer: Socks5Layer) -> Self {
        self.socks5 = Some(layer);
        self
    }

    /// The time limit of each attempt, TCP connect and handshake together;
    /// `None` for no limit. Default is 30 seconds.
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Assembles the stack.
    pub fn build(self) -> Dialer {
        let inner = match self.socks5 {
            Some(socks) => Inner::Socks5(socks.layer(self.connector)),
            None => Inner::Tcp(self.connector),
        };
        Dialer {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The stack built by [`DialStack`]: a cloneable
/// `Service<SocketAddr, Response = TcpStream, Error = BoxError>`.
///
/// It is the composition of [`TcpConnector`], an optional [`Socks5`] and an
/// optional timeout, written out as one type so that a dial costs no boxing
/// beyond the connector's own.
#[derive(Clone, Debug)]
pub struct Dialer {
    inner: Inner,
    timeout: Option<Duration>,
}

#[derive(Clone, Debug)]
enum Inner {
    Tcp(TcpConnector),
    Socks5(Socks5<TcpConnector>),
}

impl Dialer {
    /// The default stack: `DialStack::new().build()`.
    pub fn new() -> Self {
        DialStack::new().build()
    }
}

impl Default for Dialer {
    fn default() -> Self {
        Self::new()
    }
}

impl Service<SocketAddr> for Dialer {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = DialFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match &mut self.inner {
            Inner::Tcp(s) => Service::<SocketAddr>::poll_ready(s, cx).map_err(Into::into),
            Inner::Socks5(s) => Service::<SocketAddr>::poll_ready(s, cx).map_err(Into::into),
        }
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        let inner = match &mut self.inner {
            Inner::Tcp(s) => Either::Tcp(s.call(addr)),
            Inner::Socks5(s) => Either::Socks5(s.call(addr)),
        };
        DialFuture {
            inner,
            deadline: self.timeout.map(tokio::time::sleep),
        }
    }
}

#[pin_project(project = EitherProj)]
enum Either {
    Tcp(#[pin] Connecting),
    Socks5(#[pin] Handshaking<TcpStream>),
}

/// The future returned by [`Dialer`].
#[pin_project]
#[must_use = "futures do nothing unless polled"]
pub struct DialFuture {
    #[pin]
    inner: Either,
    #[pin]
    deadline: Option<Sleep>,
}

impl fmt::Debug for DialFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("DialFuture")
    }
}

impl Future for DialFuture {
    type Output = Result<TcpStream, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let done = match this.inner.project() {
            EitherProj::Tcp(f) => f.poll(cx).map_err(BoxError::from),
            EitherProj::Socks5(f) => f.poll(cx).map_err(BoxError::from),
        };
        if let Poll::Ready(result) = done {
            return Poll::Ready(result);
        }
        match this.deadline.as_pin_mut().map(|d| d.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(Elapsed::new().into())),
            _ => Poll::Pending,
        }
    }
}
