use std::io;

use super::{Addrs, Name, ResolveError, ResolveErrorKind, Resolving, found};

/// The operating system's resolver (`getaddrinfo`, through tokio's
/// `lookup_host`, on tokio's blocking pool).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct SystemResolver;

impl SystemResolver {
    /// The system's resolver.
    pub fn new() -> Self {
        Self
    }
}

resolver_service!(SystemResolver);

impl SystemResolver {
    pub(super) fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let looked_up = tokio::net::lookup_host((name.as_str(), 0)).await;
            let fail = |kind, e: io::Error| ResolveError::new(kind, name.as_str(), Some(e.into()));
            let mut addrs: Addrs = looked_up
                .map_err(|e| fail(ResolveErrorKind::Failed, e))?
                .map(|sa| sa.ip())
                .collect();
            addrs.dedup();
            found(&name, addrs)
        })
    }
}
