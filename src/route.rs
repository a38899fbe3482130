//! Routing by network, as a layer: each target goes through the dial
//! stack of its network (Bitcoin Core's `-proxy`, `-onion` and `-onlynet`,
//! btcd's `--proxy`, `--onion` and `--onionproxy`).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use tokio::net::TcpStream;
use tower::{BoxError, Service};

use crate::{
    DialStack, Dialer, Target,
    policy::{Network, PeerAddr},
};

/// Why a target was not dialled: refused before any socket was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RouteError {
    /// Its network is not in the allow list (`-onlynet`).
    NotAllowed(Network),
    /// No route reaches its network (an onion target with no Tor proxy, an
    /// I2P target with no route set).
    NoRoute(Network),
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllowed(n) => write!(f, "{n} peers are not allowed (onlynet)"),
            Self::NoRoute(n) => write!(f, "no route to the {n} network"),
        }
    }
}

impl std::error::Error for RouteError {}

/// A `Service<Target>` that dials each target through the stack of its
/// network, after an allow list. IPv4, IPv6, local and named targets take
/// the clearnet stack; onion targets the onion stack; I2P and CJDNS the
/// stacks set for them. A refused target fails with a [`RouteError`]
/// before any socket opens.
///
/// ```
/// use connmgr::{policy::Network, route::NetworkRouter};
///
/// // Core's `-proxy=127.0.0.1:9050 -onlynet=onion`: everything through Tor,
/// // and only onion peers.
/// let router = NetworkRouter::core(Some("127.0.0.1:9050".parse()?), None)
///     .only([Network::Onion]);
/// # let _ = router;
/// # Ok::<(), connmgr::BoxError>(())
/// ```
#[derive(Clone, Debug)]
pub struct NetworkRouter {
    clearnet: Dialer,
    onion: Option<Dialer>,
    others: Vec<(Network, Dialer)>,
    allowed: Option<Vec<Network>>,
}

impl NetworkRouter {
    /// IPv4, IPv6 and host-name targets through `clearnet`. Onion targets
    /// go nowhere (a [`RouteError::NoRoute`]) until [`onion`](Self::onion)
    /// sets their stack, and I2P and CJDNS ones until
    /// [`route`](Self::route) does: no target leaves through a stack it
    /// was not given to.
    pub fn new(clearnet: Dialer) -> Self {
        Self {
            clearnet,
            onion: None,
            others: Vec::new(),
            allowed: None,
        }
    }

    /// Bitcoin Core's set-up: `-proxy=proxy` (clearnet and, unless `onion`
    /// is given, onion peers through it; direct without it) and
    /// `-onion=onion` (onion peers through that proxy). btcd's `--proxy`
    /// and `--onion` mean the same.
    pub fn core(proxy: Option<SocketAddr>, onion: Option<SocketAddr>) -> Self {
        let stack = |p: Option<SocketAddr>| match p {
            Some(p) => DialStack::new().socks5(p).build(),
            None => DialStack::new().build(),
        };
        let mut router = Self::new(stack(proxy));
        if let Some(onion) = onion.or(proxy) {
            router.onion = Some(stack(Some(onion)));
        }
        router
    }

    /// Onion targets through `stack` (Core's `-onion`).
    pub fn onion(mut self, stack: Dialer) -> Self {
        self.onion = Some(stack);
        self
    }

    /// Targets of `network` (I2P, CJDNS) through `stack`. I2P targets are
    /// names under `.b32.i2p`; with a CJDNS route, IPv6 addresses in
    /// fc00::/8 are CJDNS targets (Core's `-cjdnsreachable`).
    pub fn route(mut self, network: Network, stack: Dialer) -> Self {
        match network {
            Network::Onion => self.onion = Some(stack),
            _ => {
                self.others.retain(|(n, _)| *n != network);
                self.others.push((network, stack));
            }
        }
        self
    }

    /// Dials only targets of these networks (Core's `-onlynet`); others
    /// fail with [`RouteError::NotAllowed`]. Local targets count as IPv4
    /// or IPv6 by their address family (an IPv4-mapped IPv6 address is
    /// IPv4).
    pub fn only(mut self, networks: impl IntoIterator<Item = Network>) -> Self {
        self.allowed = Some(networks.into_iter().collect());
        self
    }

    fn pick(&mut self, target: &Target) -> Result<&mut Dialer, RouteError> {
        let host = target.host();
        let cjdns = self.others.iter().any(|(n, _)| *n == Network::Cjdns);
        let network = match (host.network(), host.as_ip()) {
            // fc00::/8 is CJDNS once the router has a CJDNS route (Core's
            // `-cjdnsreachable`), a private IPv6 network otherwise.
            (_, Some(IpAddr::V6(ip))) if cjdns && ip.octets()[0] == 0xfc => Network::Cjdns,
            // By the family of the address, an IPv4-mapped one unmapped.
            (Network::Local, Some(ip)) if ip.is_ipv4() => Network::Ipv4,
            (Network::Local, _) => Network::Ipv6,
            (n, _) => n,
        };
        if self.allowed.as_ref().is_some_and(|a| !a.contains(&network)) {
            return Err(RouteError::NotAllowed(network));
        }
        match network {
            Network::Ipv4 | Network::Ipv6 | Network::Name => Ok(&mut self.clearnet),
            Network::Onion => self.onion.as_mut().ok_or(RouteError::NoRoute(network)),
            other => self
                .others
                .iter_mut()
                .find(|(n, _)| *n == other)
                .map(|(_, d)| d)
                .ok_or(RouteError::NoRoute(other)),
        }
    }
}

impl Service<Target> for NetworkRouter {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<TcpStream, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Every stack the router holds is always ready (TCP, SOCKS5).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, target: Target) -> Self::Future {
        match self.pick(&target) {
            Ok(stack) => Service::<Target>::call(stack, target),
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }
}
