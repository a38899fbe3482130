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
    net::SocketAddr,
    task::{Context, Poll},
    time::Duration,
};

use tokio::net::TcpStream;
use tower::{
    BoxError, Layer, Service, ServiceExt,
    timeout::Timeout,
    util::{Either, MapErr},
};

use crate::{
    connect::{ConnectError, TcpConnector},
    socks::{InvalidCredentials, Socks5, Socks5Error, Socks5Layer},
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

    /// Dials through the SOCKS5 proxy at `proxy`, authenticating with this
    /// username and password (RFC 1929).
    ///
    /// # Errors
    ///
    /// [`InvalidCredentials`] when either is empty or longer than 255 bytes.
    pub fn socks5_with_credentials(
        self,
        proxy: SocketAddr,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, InvalidCredentials> {
        let layer = Socks5Layer::new(proxy).credentials(username, password)?;
        Ok(self.socks5_layer(layer))
    }

    /// Dials through the Tor SOCKS5 port at `proxy` with stream isolation:
    /// fresh random credentials on every connection, so that Tor builds a
    /// separate circuit for each.
    pub fn socks5_tor_isolation(self, proxy: SocketAddr) -> Self {
        self.socks5_layer(Socks5Layer::new(proxy).tor_isolation(true))
    }

    /// Dials through a configured SOCKS5 layer.
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

    /// The resolver that matches this stack: through the SOCKS5 proxy when
    /// dials go through one (Tor's RESOLVE, so no DNS query goes around the
    /// proxy), the system's otherwise. Seed with it
    /// ([`DnsSeeder`](crate::seed::DnsSeeder)).
    pub fn resolver(&self) -> crate::resolve::DefaultResolver {
        crate::resolve::DefaultResolver::for_proxy(self.socks5.as_ref().map(Socks5Layer::proxy))
    }

    /// Assembles the stack.
    pub fn build(self) -> Dialer {
        let by_name = self
            .socks5
            .as_ref()
            .map(|socks| socks.layer(self.connector.clone()));
        let transport = match self.socks5 {
            Some(socks) => Either::Left(MapErr::new(
                socks.layer(self.connector),
                BoxError::from as fn(Socks5Error) -> BoxError,
            )),
            None => Either::Right(MapErr::new(
                self.connector,
                BoxError::from as fn(ConnectError) -> BoxError,
            )),
        };
        let inner = match self.timeout {
            Some(limit) => Either::Left(Timeout::new(transport, limit)),
            None => Either::Right(transport),
        };
        Dialer {
            inner,
            by_name,
            timeout: self.timeout,
        }
    }
}

/// TCP, or SOCKS5 over TCP, with boxed errors.
type Transport = Either<
    MapErr<Socks5<TcpConnector>, fn(Socks5Error) -> BoxError>,
    MapErr<TcpConnector, fn(ConnectError) -> BoxError>,
>;

/// The transport, with or without a timeout.
type Inner = Either<Timeout<Transport>, Transport>;

/// The stack built by [`DialStack`]: a cloneable
/// `Service<SocketAddr, Response = TcpStream, Error = BoxError>`.
///
/// It is tower's own pieces ([`Timeout`], [`Either`], [`MapErr`]) around
/// [`Socks5`] and [`TcpConnector`], named as one type so that a dial costs
/// no boxing beyond the connector's own.
#[derive(Clone, Debug)]
pub struct Dialer {
    inner: Inner,
    /// For targets only the proxy can reach (onion services, names).
    by_name: Option<Socks5<TcpConnector>>,
    /// The time limit of a dial to an onion or a name, resolution included.
    timeout: Option<Duration>,
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

/// Dials onion services and host names through the proxy, IP addresses as
/// `Service<SocketAddr>` does. Without a proxy, a host name is resolved by
/// the system's resolver and its addresses dialled in turn until one
/// answers (Core without `-proxy`), and an onion service fails with
/// [`NeedsProxy`](crate::NeedsProxy) before any socket is opened.
impl Service<crate::Target> for Dialer {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<TcpStream, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<SocketAddr>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, target: crate::Target) -> Self::Future {
        if let crate::Target::Socket(addr) = target {
            return Box::pin(Service::<SocketAddr>::call(&mut self.inner, addr));
        }
        let dial: futures_util::future::BoxFuture<'static, Result<TcpStream, BoxError>> =
            match (&mut self.by_name, target) {
                (Some(socks), target) => {
                    let port = crate::policy::PeerAddr::port(&target).unwrap_or(0);
                    let dial = Service::<(String, u16)>::call(socks, (target.host_string(), port));
                    Box::pin(async move { dial.await.map_err(Into::into) })
                }
                (None, crate::Target::Name { host, port }) => {
                    Box::pin(direct(self.inner.clone(), host, port))
                }
                (None, target) => {
                    let err = crate::NeedsProxy(target.to_string());
                    return Box::pin(std::future::ready(Err(err.into())));
                }
            };
        match self.timeout {
            Some(limit) => Box::pin(async move {
                tokio::time::timeout(limit, dial)
                    .await
                    .unwrap_or_else(|_| Err(tower::timeout::error::Elapsed::new().into()))
            }),
            None => dial,
        }
    }
}

/// A name without a proxy: the system resolves it, and each address is
/// dialled through the stack in turn until one connects; the last error
/// otherwise. The stack's time limit covers it all.
async fn direct(mut inner: Inner, host: String, port: u16) -> Result<TcpStream, BoxError> {
    let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
    let mut last: Option<BoxError> = None;
    for addr in addrs {
        match ServiceExt::<SocketAddr>::ready(&mut inner)
            .await?
            .call(addr)
            .await
        {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| format!("{host} has no address").into()))
}

impl Service<SocketAddr> for Dialer {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = <Inner as Service<SocketAddr>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        self.inner.call(addr)
    }
}
