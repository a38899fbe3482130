//! Name resolution as tower services.
//!
//! A resolver is a `tower::Service<Name>` whose response is the IP
//! addresses of the name (hyper-util's resolver is the model), so it can be
//! layered (a timeout, a rate limit, a cache) and replaced like any other
//! service:
//!
//! - [`SystemResolver`]: the operating system's resolver, through tokio's
//!   `lookup_host`. The default.
//! - [`TorResolver`]: asks a SOCKS5 proxy (Tor) with its RESOLVE command, so
//!   that no DNS query leaves the proxy; IPv4 and IPv6 answers.
//! - `HickoryResolver` (feature `hickory`): hickory-resolver, with name
//!   servers of your choice.
//! - [`DefaultResolver`]: the system's, or the proxy's when the dial stack
//!   goes through one ([`DialStack::resolver`](crate::DialStack::resolver)).
//!
//! # Examples
//!
//! ```no_run
//! use connmgr::resolve::{Name, SystemResolver};
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), connmgr::BoxError> {
//! let ips = SystemResolver::new().oneshot(Name::new("localhost")?).await?;
//! # drop(ips);
//! # Ok(())
//! # }
//! ```

/// The `Service<Name>` impl of a resolver whose `resolve(&self, Name)`
/// does the work: always ready.
macro_rules! resolver_service {
    ($ty:ty) => {
        impl tower::Service<$crate::resolve::Name> for $ty {
            type Response = $crate::resolve::Addrs;
            type Error = $crate::resolve::ResolveError;
            type Future = $crate::resolve::Resolving;

            fn poll_ready(
                &mut self,
                _: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Result<(), Self::Error>> {
                std::task::Poll::Ready(Ok(()))
            }

            fn call(&mut self, name: $crate::resolve::Name) -> Self::Future {
                self.resolve(name)
            }
        }
    };
}

#[cfg(feature = "hickory")]
mod hickory;
mod system;
mod tor;

#[cfg(feature = "hickory")]
#[cfg_attr(docsrs, doc(cfg(feature = "hickory")))]
pub use self::hickory::HickoryResolver;
pub use self::{system::SystemResolver, tor::TorResolver};

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    str::FromStr,
};

use tower::BoxError;

/// A host name to resolve: 1 to 253 bytes, no spaces or control characters,
/// no empty label (`a..b`, `.a`; one trailing dot is allowed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Name(String);

impl Name {
    /// Checks `name`.
    ///
    /// # Errors
    ///
    /// [`ResolveError`] of kind [`InvalidName`](ResolveErrorKind::InvalidName).
    pub fn new(name: impl Into<String>) -> Result<Self, ResolveError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 253
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
            && !name.trim_end_matches('.').split('.').any(str::is_empty);
        if ok {
            Ok(Self(name))
        } else {
            Err(ResolveError::new(
                ResolveErrorKind::InvalidName,
                &name,
                None,
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for Name {
    type Err = ResolveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The IP addresses of a name.
pub type Addrs = Vec<IpAddr>;

/// What went wrong in a resolution. See [`ResolveError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResolveErrorKind {
    /// The name is not a valid host name.
    InvalidName,
    /// The name has no address.
    NotFound,
    /// No answer in time.
    Timeout,
    /// The proxy failed; the [`Socks5Error`](crate::socks::Socks5Error) is
    /// the `source()` and says how.
    Proxy,
    /// The resolver failed otherwise (I/O, a server error).
    Failed,
}

impl fmt::Display for ResolveErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::InvalidName => "invalid name",
            Self::NotFound => "no address",
            Self::Timeout => "timed out",
            Self::Proxy => "proxy failed",
            Self::Failed => "resolver failed",
        })
    }
}

/// A resolution failed: which name, what kind of failure, and the cause.
#[derive(Debug)]
pub struct ResolveError {
    kind: ResolveErrorKind,
    name: String,
    source: Option<BoxError>,
}

impl ResolveError {
    /// An error of `kind` for `name`, with its cause: for resolvers of
    /// your own.
    pub fn new(kind: ResolveErrorKind, name: &str, source: Option<BoxError>) -> Self {
        Self {
            kind,
            name: name.to_owned(),
            source,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ResolveErrorKind {
        self.kind
    }

    /// The name that was being resolved.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "resolving {}: {}", self.name, self.kind)
    }
}

impl StdError for ResolveError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// The answer for `name`: its addresses, or `NotFound` when there are none.
fn found(name: &Name, addrs: Addrs) -> Result<Addrs, ResolveError> {
    if addrs.is_empty() {
        return Err(ResolveError::new(
            ResolveErrorKind::NotFound,
            name.as_str(),
            None,
        ));
    }
    Ok(addrs)
}

pub(crate) type Resolving = Pin<Box<dyn Future<Output = Result<Addrs, ResolveError>> + Send>>;

/// The system's resolver, or a SOCKS5 proxy's when dials go through one, so
/// that no DNS query goes around the proxy. Made by
/// [`DialStack::resolver`](crate::DialStack::resolver).
#[derive(Clone, Debug)]
pub enum DefaultResolver {
    /// The operating system's resolver.
    System(SystemResolver),
    /// The proxy's RESOLVE command.
    Tor(TorResolver),
}

impl DefaultResolver {
    /// Sets the time limit of each RESOLVE request, for the proxy's
    /// resolver (the system's has its own). Default is 30 seconds.
    pub fn tor_timeout(self, timeout: std::time::Duration) -> Self {
        match self {
            Self::Tor(t) => Self::Tor(t.timeout(timeout)),
            other => other,
        }
    }

    /// The resolver for dials through `proxy` (or straight, for `None`).
    pub fn for_proxy(proxy: Option<SocketAddr>) -> Self {
        match proxy {
            Some(proxy) => Self::Tor(TorResolver::new(proxy)),
            None => Self::System(SystemResolver::new()),
        }
    }
}

resolver_service!(DefaultResolver);

impl DefaultResolver {
    fn resolve(&self, name: Name) -> Resolving {
        match self {
            Self::System(r) => r.resolve(name),
            Self::Tor(r) => r.resolve(name),
        }
    }
}

/// Any resolver as the crate's: its error becomes a [`ResolveError`] (kept
/// as it is when it is one, `Timeout` for tower's `Elapsed`, `Failed` with
/// the error as its source otherwise).
#[derive(Clone, Debug)]
pub(crate) struct AnyResolver<R>(pub(crate) R);

impl<R> tower::Service<Name> for AnyResolver<R>
where
    R: tower::Service<Name, Response = Addrs>,
    R::Error: Into<BoxError>,
    R::Future: Send + 'static,
{
    type Response = Addrs;
    type Error = ResolveError;
    type Future = Resolving;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ResolveError>> {
        self.0
            .poll_ready(cx)
            .map_err(|e| convert(e.into(), "(not ready)"))
    }

    fn call(&mut self, name: Name) -> Resolving {
        let shown = name.to_string();
        let fut = self.0.call(name);
        Box::pin(async move { fut.await.map_err(|e| convert(e.into(), &shown)) })
    }
}

fn convert(e: BoxError, name: &str) -> ResolveError {
    match e.downcast::<ResolveError>() {
        Ok(e) => *e,
        Err(e) if e.is::<tower::timeout::error::Elapsed>() => {
            ResolveError::new(ResolveErrorKind::Timeout, name, Some(e))
        }
        Err(e) => ResolveError::new(ResolveErrorKind::Failed, name, Some(e)),
    }
}
