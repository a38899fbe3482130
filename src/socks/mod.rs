//! Middleware that dials through a SOCKS5 proxy.
//!
//! [`Socks5<S>`] connects to the proxy *through its inner service* (so the
//! inner service keeps control of socket options and its own layers), then
//! runs the SOCKS5 handshake with [tokio-socks] over that stream and hands the
//! stream back, ready to carry the peer protocol.
//!
//! Authentication is optional: a fixed username/password, or Tor stream
//! isolation, where every connection sends fresh random credentials so that
//! Tor (with its default `IsolateSOCKSAuth`) puts each on its own circuit, as
//! btcd's `--torisolation` does.
//!
//! The request is any target tokio-socks can express: a [`SocketAddr`], or a
//! host name and port such as `("example.onion".to_string(), 8333)`, which the
//! proxy resolves.
//!
//! Failures are a [`Socks5Error`] whose [`kind`](Socks5Error::kind) says what
//! went wrong: proxy unreachable, no acceptable authentication method,
//! credentials rejected, each reply code, a malformed reply.
//!
//! # Examples
//!
//! ```no_run
//! use connmgr::{connect::TcpConnector, socks::Socks5Layer};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), tower::BoxError> {
//! let proxy = "127.0.0.1:9050".parse()?;
//! let dialer = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30))
//!     .layer(Socks5Layer::new(proxy).tor_isolation(true))
//!     .service(TcpConnector::new());
//! let target: std::net::SocketAddr = "127.0.0.1:8333".parse()?;
//! let stream = dialer.oneshot(target).await?;
//! # drop(stream);
//! # Ok(())
//! # }
//! ```
//!
//! [tokio-socks]: https://docs.rs/tokio-socks

mod error;
pub(crate) mod recorder;

pub use self::error::{InvalidCredentials, ReplyCode, Socks5Error, Socks5ErrorKind};
/// Targets the layer accepts: anything tokio-socks can put in a request
/// (re-exported so a custom address type can implement it).
pub use tokio_socks::{IntoTargetAddr, TargetAddr};

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_socks::tcp::Socks5Stream;
use tower::{BoxError, Layer, Service};

use self::recorder::Recorder;

#[derive(Clone, PartialEq, Eq)]
enum Auth {
    None,
    Password { username: String, password: String },
    TorIsolation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            // Never print the password.
            Self::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::TorIsolation => f.write_str("TorIsolation"),
        }
    }
}

#[derive(Clone, Debug)]
struct Config {
    proxy: SocketAddr,
    auth: Auth,
}

/// Applies [`Socks5`] to a connector. See the [module docs](crate::socks).
#[derive(Clone, Debug)]
pub struct Socks5Layer {
    config: Arc<Config>,
}

impl Socks5Layer {
    /// Dial through the proxy at `proxy`, with no authentication.
    pub fn new(proxy: SocketAddr) -> Self {
        Self {
            config: Arc::new(Config {
                proxy,
                auth: Auth::None,
            }),
        }
    }

    /// Authenticate with this username and password (RFC 1929).
    ///
    /// # Errors
    ///
    /// [`InvalidCredentials`] when either is empty or longer than 255 bytes.
    pub fn credentials(
        mut self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Result<Self, InvalidCredentials> {
        let (username, password) = (username.into(), password.into());
        for (what, value) in [("username", &username), ("password", &password)] {
            if value.is_empty() || value.len() > 255 {
                return Err(InvalidCredentials(if what == "username" {
                    "username must be 1 to 255 bytes"
                } else {
                    "password must be 1 to 255 bytes"
                }));
            }
        }
        Arc::make_mut(&mut self.config).auth = Auth::Password { username, password };
        Ok(self)
    }

    /// Tor stream isolation: send fresh random credentials on every
    /// connection, so that Tor builds a separate circuit for each.
    ///
    /// Turning it on replaces any configured credentials; turning it off
    /// returns to no authentication. Default is off.
    pub fn tor_isolation(mut self, on: bool) -> Self {
        Arc::make_mut(&mut self.config).auth = if on { Auth::TorIsolation } else { Auth::None };
        self
    }

    /// The proxy's address.
    pub fn proxy(&self) -> SocketAddr {
        self.config.proxy
    }
}

impl<S> Layer<S> for Socks5Layer {
    type Service = Socks5<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Socks5 {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Dials a target through a SOCKS5 proxy that the inner service connects to.
///
/// The inner service is called with the proxy's address; its response is the
/// stream the handshake runs over and the stream this service returns. See the
/// [module docs](crate::socks).
#[derive(Clone, Debug)]
pub struct Socks5<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Socks5<S> {
    /// Wraps `inner` with the configuration of `layer`.
    pub fn new(inner: S, layer: &Socks5Layer) -> Self {
        layer.layer(inner)
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
}

impl<S, T, IO> Service<T> for Socks5<S>
where
    S: Service<SocketAddr, Response = IO>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: IntoTargetAddr<'static> + Send + 'static,
{
    type Response = IO;
    type Error = Socks5Error;
    type Future = Handshaking<IO>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let proxy = self.config.proxy;
        self.inner
            .poll_ready(cx)
            .map_err(|e| Socks5Error::new(Socks5ErrorKind::ProxyUnreachable, proxy, Some(e.into())))
    }

    fn call(&mut self, target: T) -> Self::Future {
        let config = self.config.clone();
        let connecting = self.inner.call(config.proxy);
        Handshaking {
            inner: Box::pin(async move {
                let proxy = config.proxy;
                let target = target.into_target_addr().map_err(|e| {
                    Socks5Error::new(Socks5ErrorKind::InvalidTarget, proxy, Some(e.into()))
                })?;
                check_target(&target, proxy)?;
                let io = connecting.await.map_err(|e| {
                    Socks5Error::new(Socks5ErrorKind::ProxyUnreachable, proxy, Some(e.into()))
                })?;
                handshake(io, target, &config).await
            }),
        }
    }
}

/// A SOCKS5 request carries a domain name in 1 to 255 bytes; anything else
/// would go on the wire corrupt (tokio-socks does not check), so it fails
/// here, before the proxy is dialed.
fn check_target(target: &TargetAddr<'_>, proxy: SocketAddr) -> Result<(), Socks5Error> {
    match target {
        TargetAddr::Domain(name, _) if name.is_empty() || name.len() > 255 => {
            let why = format!(
                "domain name of {} bytes; SOCKS5 allows 1 to 255",
                name.len()
            );
            Err(Socks5Error::new(
                Socks5ErrorKind::InvalidTarget,
                proxy,
                Some(why.into()),
            ))
        }
        _ => Ok(()),
    }
}

async fn handshake<IO>(
    io: IO,
    target: TargetAddr<'static>,
    config: &Config,
) -> Result<IO, Socks5Error>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut rec = Recorder::new(io);
    let result = match &config.auth {
        Auth::None => Socks5Stream::connect_with_socket(&mut rec, target).await,
        Auth::Password { username, password } => {
            Socks5Stream::connect_with_password_and_socket(&mut rec, target, username, password)
                .await
        }
        Auth::TorIsolation => {
            let (username, password) = isolation_credentials();
            Socks5Stream::connect_with_password_and_socket(&mut rec, target, &username, &password)
                .await
        }
    };
    match result {
        Ok(stream) => {
            drop(stream);
            Ok(rec.into_inner())
        }
        Err(err) => Err(rec.classify(err, config.proxy)),
    }
}

/// Fresh credentials for Tor stream isolation: 16 random hex digits each.
/// They only need to differ between connections, not to be secret.
fn isolation_credentials() -> (String, String) {
    let (a, b) = (fastrand::u64(..), fastrand::u64(..));
    (format!("{a:016x}"), format!("{b:016x}"))
}

/// The future returned by [`Socks5`].
#[must_use = "futures do nothing unless polled"]
pub struct Handshaking<IO> {
    inner: Pin<Box<dyn Future<Output = Result<IO, Socks5Error>> + Send>>,
}

impl<IO> fmt::Debug for Handshaking<IO> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("Handshaking")
    }
}

impl<IO> Future for Handshaking<IO> {
    type Output = Result<IO, Socks5Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials outside 1..=255 bytes are refused when the layer is built.
    #[test]
    fn credentials_are_validated() {
        let proxy = "127.0.0.1:1080".parse().expect("addr");
        assert!(Socks5Layer::new(proxy).credentials("", "x").is_err());
        assert!(Socks5Layer::new(proxy).credentials("u", "").is_err());
        assert!(
            Socks5Layer::new(proxy)
                .credentials("u", "p".repeat(256))
                .is_err()
        );
        let layer = Socks5Layer::new(proxy)
            .credentials("u", "p".repeat(255))
            .expect("255 bytes is fine");
        assert!(
            !format!("{layer:?}").contains("ppp"),
            "Debug must not print the password"
        );
    }

    /// Two isolation credentials are never the same.
    #[test]
    fn isolation_credentials_differ() {
        let a = isolation_credentials();
        let b = isolation_credentials();
        assert_ne!(a, b);
        assert_eq!(a.0.len(), 16);
    }
}
