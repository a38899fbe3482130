use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpStream;
use tokio_socks::{TargetAddr, tcp::Socks5Stream};

use super::{Name, ResolveError, ResolveErrorKind, Resolving};
use crate::socks::{ReplyCode, Socks5Error, Socks5ErrorKind, recorder::Recorder};

/// The default time limit of a RESOLVE request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Resolves names through a SOCKS5 proxy with Tor's RESOLVE command
/// (`0xF0`), so the query goes where the dials go. Tor answers with one
/// address, IPv4 or IPv6; both are returned. Each request has a time limit
/// (30 s by default). A name Tor cannot resolve (it answers "host
/// unreachable": the name does not exist, is an onion name, or is
/// malformed) is [`NotFound`](ResolveErrorKind::NotFound); any other failure
/// of the proxy is a [`Proxy`](ResolveErrorKind::Proxy) error. Both keep the
/// [`Socks5Error`] as their `source()`. It offers no authentication
/// (tokio-socks' RESOLVE has none): a proxy that requires it answers with
/// [`AuthRequired`](crate::socks::Socks5ErrorKind::AuthRequired).
#[derive(Clone, Debug)]
pub struct TorResolver {
    proxy: SocketAddr,
    timeout: Duration,
}

impl TorResolver {
    /// Resolves through the proxy at `proxy`.
    pub fn new(proxy: SocketAddr) -> Self {
        Self {
            proxy,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The time limit of each request. Default is 30 seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The proxy's address.
    pub fn proxy(&self) -> SocketAddr {
        self.proxy
    }
}

resolver_service!(TorResolver);

impl TorResolver {
    pub(super) fn resolve(&self, name: Name) -> Resolving {
        let (proxy, limit) = (self.proxy, self.timeout);
        Box::pin(async move {
            let proxy_failed = |e: Socks5Error| {
                // Tor answers a name it cannot resolve (one that does not
                // exist, an onion name, a malformed one) with "host
                // unreachable": the name is not found, the proxy is fine.
                let kind = match e.kind() {
                    Socks5ErrorKind::Reply(ReplyCode::HostUnreachable) => {
                        ResolveErrorKind::NotFound
                    }
                    _ => ResolveErrorKind::Proxy,
                };
                ResolveError::new(kind, name.as_str(), Some(e.into()))
            };
            let ask = async {
                let io = TcpStream::connect(proxy).await.map_err(|e| {
                    Socks5Error::new(Socks5ErrorKind::ProxyUnreachable, proxy, Some(e.into()))
                })?;
                let mut rec = Recorder::new(io);
                let target = (name.as_str(), 0);
                Socks5Stream::tor_resolve_with_socket(&mut rec, target)
                    .await
                    .map_err(|e| rec.classify(e, proxy))
            };
            let answer = tokio::time::timeout(limit, ask)
                .await
                .map_err(|e| {
                    ResolveError::new(ResolveErrorKind::Timeout, name.as_str(), Some(e.into()))
                })?
                .map_err(proxy_failed)?;
            match answer {
                TargetAddr::Ip(addr) => Ok(vec![addr.ip()]),
                TargetAddr::Domain(..) => Err(ResolveError::new(
                    ResolveErrorKind::Failed,
                    name.as_str(),
                    Some("the proxy answered with a name, not an address".into()),
                )),
            }
        })
    }
}
