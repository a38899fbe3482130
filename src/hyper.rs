//! The dial stack as a connector for [hyper-util]'s legacy client (and so
//! for tonic and anything else that takes a `tower::Service<http::Uri>`).
//!
//! [`HyperConnector`] turns the host of each URI into a [`Target`]:
//!
//! | host | target |
//! |---|---|
//! | an IP address (`127.0.0.1`, `[::1]`) | that socket address |
//! | `<56 characters>.onion` | the onion service (checksum checked), dialled through the proxy |
//! | any other name, stack with a proxy | the name, sent to the proxy (Tor resolves it at the exit; no DNS query leaves this host) |
//! | any other name, stack without one | resolved with the stack's resolver (the system's), then each address in turn |
//!
//! The port is the URI's, or the scheme's default: 80 for `http`. This
//! connector does no TLS: an `https` URI is refused with a
//! [`UriError`] of kind [`UnsupportedScheme`](UriErrorKind::UnsupportedScheme)
//! unless [`enforce_http(false)`](HyperConnector::enforce_http) is set (port
//! 443 by default), which is how a TLS connector that wraps another one
//! (hyper-rustls', hyper-tls') expects its inner connector to behave, as
//! with hyper-util's `HttpConnector`.
//!
//! The connection is the stack's `TcpStream` in hyper-util's [`TokioIo`]:
//! hyper's `rt::Read` and `rt::Write`, and hyper-util's `Connection`, whose
//! `connected()` reports the TCP peer (the proxy, when there is one). It
//! is not marked as a proxy connection (`Connected::proxy`): that flag is
//! for HTTP forward proxies and would make hyper write absolute-form
//! request lines, which a server behind SOCKS5 does not expect.
//!
//! # Examples
//!
//! ```no_run
//! use bytes::Bytes;
//! use connmgr::{DialStack, hyper::HyperConnector};
//! use http_body_util::{BodyExt, Empty};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//!
//! # async fn run() -> Result<(), connmgr::BoxError> {
//! // Every request through Tor, with a fresh circuit for each connection.
//! let stack = DialStack::new().socks5_tor_isolation("127.0.0.1:9050".parse()?);
//! let client: Client<_, Empty<Bytes>> =
//!     Client::builder(TokioExecutor::new()).build(HyperConnector::new(stack));
//! let response = client
//!     .get("http://pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion/".parse()?)
//!     .await?;
//! let body = response.into_body().collect().await?.to_bytes();
//! # drop(body);
//! # Ok(())
//! # }
//! ```
//!
//! [hyper-util]: https://docs.rs/hyper-util

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::{BoxError, Service, ServiceExt};

use crate::{
    DialStack, Dialer, Target,
    resolve::{DefaultResolver, Name},
};

/// What went wrong with a URI, before anything was dialled. See
/// [`UriError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UriErrorKind {
    /// The URI has no host.
    NoHost,
    /// The scheme is missing or not `http` (`https` too, unless
    /// [`enforce_http(false)`](HyperConnector::enforce_http)).
    UnsupportedScheme,
    /// The host is not a valid dial target (an onion name with a bad
    /// checksum, a name of more than 255 bytes).
    InvalidHost,
}

/// A URI the connector cannot dial; its kind says why.
#[derive(Debug)]
pub struct UriError {
    kind: UriErrorKind,
    uri: String,
    source: Option<BoxError>,
}

impl UriError {
    fn new(kind: UriErrorKind, uri: &Uri, source: Option<BoxError>) -> Self {
        Self {
            kind,
            uri: uri.to_string(),
            source,
        }
    }

    /// Why the URI was refused.
    pub fn kind(&self) -> UriErrorKind {
        self.kind
    }

    /// The URI, as text.
    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            UriErrorKind::NoHost => "has no host",
            UriErrorKind::UnsupportedScheme => {
                "has a scheme this connector does not dial (http only; https needs a TLS connector around it and enforce_http(false))"
            }
            UriErrorKind::InvalidHost => "has a host that is not a valid dial target",
        };
        write!(f, "{} {why}", self.uri)
    }
}

impl std::error::Error for UriError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// How host names (neither IP nor onion) reach the dial stack.
#[derive(Clone, Debug)]
enum Names {
    /// As [`Target::Name`]: the proxy resolves them.
    ToProxy,
    /// Resolved here, then each address dialled in turn.
    Resolve(DefaultResolver),
}

/// A `tower::Service<http::Uri>` that dials through a connmgr stack, for
/// hyper-util's legacy client. See the [module docs](crate::hyper).
#[derive(Clone, Debug)]
pub struct HyperConnector<S = Dialer> {
    dialer: S,
    names: Names,
    enforce_http: bool,
}

impl HyperConnector<Dialer> {
    /// Dials with `stack`, built. Host names go to its proxy when it has
    /// one, and are resolved with its [`resolver`](DialStack::resolver)
    /// (the system's) when it does not.
    pub fn new(stack: DialStack) -> Self {
        let names = match stack.resolver() {
            DefaultResolver::Tor(_) => Names::ToProxy,
            system => Names::Resolve(system),
        };
        Self {
            dialer: stack.build(),
            names,
            enforce_http: true,
        }
    }
}

impl<S> HyperConnector<S> {
    /// Dials with any `Service<Target>` that returns a `TcpStream` (a
    /// [`Dialer`], a [`NetworkRouter`](crate::route::NetworkRouter), a
    /// stack of your own). Host names are handed to it as
    /// [`Target::Name`], for its proxy to resolve; set a
    /// [`resolver`](Self::resolver) to resolve them here instead.
    pub fn from_service(dialer: S) -> Self {
        Self {
            dialer,
            names: Names::ToProxy,
            enforce_http: true,
        }
    }

    /// Resolves host names with `resolver` and dials their addresses, in
    /// the order the resolver gave them, until one connects.
    pub fn resolver(mut self, resolver: DefaultResolver) -> Self {
        self.names = Names::Resolve(resolver);
        self
    }

    /// Whether only `http` URIs are dialled. With `false`, `https` URIs are
    /// dialled too (port 443 by default) as plain TCP, for a TLS connector
    /// that wraps this one. Default is `true`.
    pub fn enforce_http(mut self, enforce: bool) -> Self {
        self.enforce_http = enforce;
        self
    }

    /// A reference to the dial stack.
    pub fn get_ref(&self) -> &S {
        &self.dialer
    }

    /// Consumes `self`, returning the dial stack.
    pub fn into_inner(self) -> S {
        self.dialer
    }

    /// The host and port of `uri`, as the stack is asked for them.
    fn destination(&self, uri: &Uri) -> Result<(Host, u16), UriError> {
        let default_port = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => 80,
            Some(s) if s.eq_ignore_ascii_case("https") && !self.enforce_http => 443,
            _ => return Err(UriError::new(UriErrorKind::UnsupportedScheme, uri, None)),
        };
        let host = match uri.host() {
            Some(h) if !h.is_empty() => h,
            _ => return Err(UriError::new(UriErrorKind::NoHost, uri, None)),
        };
        let port = uri.port_u16().unwrap_or(default_port);
        let invalid = |e: crate::policy::InvalidHost| {
            UriError::new(UriErrorKind::InvalidHost, uri, Some(e.into()))
        };
        // IPs and onion services (any spelling) are dialled as they are;
        // only a name is resolved, and never an onion's.
        match (Target::name(host, port).map_err(invalid)?, &self.names) {
            (Target::Name { host, .. }, Names::Resolve(r)) => {
                let name = Name::new(&host)
                    .map_err(|e| UriError::new(UriErrorKind::InvalidHost, uri, Some(e.into())))?;
                Ok((Host::Resolve(name, r.clone()), port))
            }
            (target, _) => Ok((Host::Target(target), port)),
        }
    }
}

/// A destination: dial it as it is, or resolve it first.
enum Host {
    Target(Target),
    Resolve(Name, DefaultResolver),
}

impl<S> Service<Uri> for HyperConnector<S>
where
    S: Service<Target, Response = TcpStream> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<TokioIo<TcpStream>, BoxError>>;

    /// Always ready: each call waits for the readiness of a clone of the
    /// stack.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let destination = self.destination(&uri);
        let dialer = self.dialer.clone();
        Box::pin(async move {
            let (host, port) = destination?;
            let stream = match host {
                Host::Target(target) => dialer.oneshot(target).await.map_err(Into::into)?,
                Host::Resolve(name, resolver) => {
                    let addrs = resolver.oneshot(name).await?;
                    dial_first(dialer, addrs, port).await?
                }
            };
            Ok(TokioIo::new(stream))
        })
    }
}

/// Dials each address in turn (at most 16) until one connects; the last
/// error otherwise.
async fn dial_first<S>(dialer: S, addrs: Vec<IpAddr>, port: u16) -> Result<TcpStream, BoxError>
where
    S: Service<Target, Response = TcpStream> + Clone,
    S::Error: Into<BoxError>,
{
    let mut last: BoxError = "the name resolved to no address".into();
    for ip in addrs.into_iter().take(16) {
        let target = Target::Socket(SocketAddr::new(ip, port));
        match dialer.clone().oneshot(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(c: &HyperConnector, uri: &str) -> Result<(String, u16), UriErrorKind> {
        let uri: Uri = uri.parse().expect("a uri");
        match c.destination(&uri) {
            Ok((Host::Target(t), port)) => Ok((t.to_string(), port)),
            Ok((Host::Resolve(n, _), port)) => Ok((format!("resolve {n}"), port)),
            Err(e) => Err(e.kind()),
        }
    }

    /// Hosts become targets: IPs as they are, onions always through the
    /// proxy, names to the proxy when there is one and to the resolver
    /// when there is not; the port defaults by scheme.
    #[test]
    fn uri_hosts_become_targets() {
        let proxy = "127.0.0.1:9050".parse().expect("addr");
        let via = HyperConnector::new(DialStack::new().socks5(proxy));
        let direct = HyperConnector::new(DialStack::new());
        let onion = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";
        assert_eq!(
            dest(&via, "http://127.0.0.1/x"),
            Ok(("127.0.0.1:80".into(), 80))
        );
        assert_eq!(
            dest(&via, "http://[::1]:8080/"),
            Ok(("[::1]:8080".into(), 8080))
        );
        assert_eq!(
            dest(&direct, &format!("http://{onion}:81/")),
            Ok((format!("{onion}:81"), 81))
        );
        assert_eq!(
            dest(&via, "http://peer.test/"),
            Ok(("peer.test:80".into(), 80))
        );
        assert_eq!(
            dest(&direct, "http://localhost:8/"),
            Ok(("resolve localhost".into(), 8))
        );
        assert_eq!(
            dest(&via, "https://127.0.0.1/"),
            Err(UriErrorKind::UnsupportedScheme)
        );
        assert_eq!(
            dest(&via.clone().enforce_http(false), "https://127.0.0.1/"),
            Ok(("127.0.0.1:443".into(), 443))
        );
        assert_eq!(dest(&via, "/path"), Err(UriErrorKind::UnsupportedScheme));
        assert_eq!(
            dest(&via, "ftp://127.0.0.1/"),
            Err(UriErrorKind::UnsupportedScheme)
        );
        let mut bad = onion.to_string().into_bytes();
        bad[3] = if bad[3] == b'a' { b'b' } else { b'a' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert_eq!(
            dest(&via, &format!("http://{bad}/")),
            Err(UriErrorKind::InvalidHost)
        );
    }
}
