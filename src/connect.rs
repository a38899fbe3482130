//! The leaf of the dial stack: a plain TCP connector.
//!
//! [`TcpConnector`] is a `Service<SocketAddr>` whose response is a connected
//! [`TcpStream`]. It sets the socket options a peer-to-peer node usually wants
//! (`TCP_NODELAY` on by default, optional keepalive, optional local bind
//! address) before connecting, and reports failures as a [`ConnectError`] that
//! names the address and keeps the I/O cause.
//!
//! # Examples
//!
//! ```no_run
//! use connmgr::connect::TcpConnector;
//! use std::time::Duration;
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), connmgr::connect::ConnectError> {
//! let connector = TcpConnector::new().keepalive(Some(Duration::from_secs(60)));
//! let stream = connector.oneshot("127.0.0.1:8333".parse().unwrap()).await?;
//! # drop(stream);
//! # Ok(())
//! # }
//! ```

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::net::{TcpSocket, TcpStream};
use tower::Service;

/// A [`Service`] that opens TCP connections.
///
/// Cloning is cheap: the options are shared behind an [`Arc`].
#[derive(Clone, Debug, Default)]
pub struct TcpConnector {
    config: Arc<Config>,
}

#[derive(Clone, Debug)]
struct Config {
    nodelay: bool,
    keepalive: Option<Duration>,
    local_address: Option<IpAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodelay: true,
            keepalive: None,
            local_address: None,
        }
    }
}

impl TcpConnector {
    /// A connector with the default options: `TCP_NODELAY` on, no keepalive,
    /// the local address chosen by the operating system.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `TCP_NODELAY` on each new connection.
    ///
    /// Default is `true`: peer-to-peer protocols send small messages that
    /// should not wait for Nagle's algorithm.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        Arc::make_mut(&mut self.config).nodelay = nodelay;
        self
    }

    /// Enables TCP keepalive, with `Some(idle)` as the time a connection stays
    /// idle before the first probe.
    ///
    /// Default is `None` (the operating system's setting, usually off).
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        Arc::make_mut(&mut self.config).keepalive = idle;
        self
    }

    /// Binds each new socket to this local address (port chosen by the
    /// operating system) before connecting.
    ///
    /// A target of the other address family fails with
    /// [`ConnectError`] of kind [`io::ErrorKind::InvalidInput`].
    ///
    /// Default is `None`.
    pub fn local_address(mut self, addr: Option<IpAddr>) -> Self {
        Arc::make_mut(&mut self.config).local_address = addr;
        self
    }

    async fn connect(config: Arc<Config>, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let err = |source| ConnectError { addr, source };
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(err)?;
        if let Some(idle) = config.keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle);
            socket2::SockRef::from(&socket)
                .set_tcp_keepalive(&keepalive)
                .map_err(err)?;
        }
        if let Some(ip) = config.local_address {
            if ip.is_ipv4() != addr.is_ipv4() {
                return Err(err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "local address and target are of different address families",
                )));
            }
            socket.bind(SocketAddr::new(ip, 0)).map_err(err)?;
        }
        let stream = socket.connect(addr).await.map_err(err)?;
        // Set after the connect, so that a refused dial costs no extra
        // system call; no data has been sent yet either way.
        if config.nodelay {
            stream.set_nodelay(true).map_err(err)?;
        }
        Ok(stream)
    }
}

impl Service<SocketAddr> for TcpConnector {
    type Response = TcpStream;
    type Error = ConnectError;
    type Future = Connecting;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        Connecting {
            inner: Box::pin(Self::connect(self.config.clone(), addr)),
        }
    }
}

/// The future returned by [`TcpConnector`].
#[must_use = "futures do nothing unless polled"]
pub struct Connecting {
    inner: Pin<Box<dyn Future<Output = Result<TcpStream, ConnectError>> + Send>>,
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Connecting")
    }
}

impl Future for Connecting {
    type Output = Result<TcpStream, ConnectError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// A TCP connection attempt failed.
///
/// It names the address that was dialed; the operating system's error is its
/// [`source`](StdError::source) and is also available through
/// [`io_error`](Self::io_error) and [`kind`](Self::kind).
#[derive(Debug)]
pub struct ConnectError {
    addr: SocketAddr,
    source: io::Error,
}

impl ConnectError {
    /// The address that could not be reached.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The kind of the underlying I/O error, e.g.
    /// [`io::ErrorKind::ConnectionRefused`].
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }

    /// The underlying I/O error.
    pub fn io_error(&self) -> &io::Error {
        &self.source
    }

    /// Consumes the error, returning the underlying I/O error.
    pub fn into_io_error(self) -> io::Error {
        self.source
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp connect to {} failed", self.addr)
    }
}

impl StdError for ConnectError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.source)
    }
}

impl From<ConnectError> for io::Error {
    fn from(err: ConnectError) -> Self {
        Self::new(err.source.kind(), err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    /// Options are copy-on-write: changing a clone leaves the original alone.
    #[test]
    fn builder_is_copy_on_write() {
        let a = TcpConnector::new();
        let b = a.clone().nodelay(false);
        assert!(a.config.nodelay);
        assert!(!b.config.nodelay);
    }

    /// A local address of the wrong family is refused before any I/O.
    #[tokio::test]
    async fn local_address_family_mismatch() {
        let connector = TcpConnector::new().local_address(Some("::1".parse().expect("ip")));
        let err = connector
            .oneshot("127.0.0.1:9".parse().expect("addr"))
            .await
            .expect_err("family mismatch must fail");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(err.addr(), "127.0.0.1:9".parse().expect("addr"));
    }
}
