use std::{net::SocketAddr, time::Duration};

use hickory_resolver::{
    Resolver,
    config::{NameServerConfigGroup, ResolverConfig},
    name_server::TokioConnectionProvider,
    proto::ProtoErrorKind,
};

use super::{Name, ResolveError, ResolveErrorKind, Resolving, found};

/// A resolver on hickory-resolver that asks the name servers you give it
/// (plain UDP, TCP when an answer is truncated), with hickory's caching and
/// retries. Feature `hickory`.
#[derive(Clone)]
pub struct HickoryResolver {
    inner: Resolver<TokioConnectionProvider>,
}

impl std::fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HickoryResolver").finish_non_exhaustive()
    }
}

impl HickoryResolver {
    /// Asks these name servers, each query within `timeout`.
    pub fn new(name_servers: &[SocketAddr], timeout: Duration) -> Self {
        let mut group = NameServerConfigGroup::new();
        for ns in name_servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[ns.ip()],
                ns.port(),
                true,
            ));
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), group);
        let mut builder = Resolver::builder_with_config(config, TokioConnectionProvider::default());
        builder.options_mut().timeout = timeout;
        builder.options_mut().attempts = 1;
        Self {
            inner: builder.build(),
        }
    }
}

resolver_service!(HickoryResolver);

impl HickoryResolver {
    pub(super) fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.inner.clone();
        Box::pin(async move {
            // A fully qualified name: no search domains.
            let fqdn = format!("{}.", name.as_str().trim_end_matches('.'));
            match resolver.lookup_ip(fqdn).await {
                Ok(answer) => found(&name, answer.iter().collect()),
                Err(e) => {
                    let kind = if e.is_no_records_found() {
                        ResolveErrorKind::NotFound
                    } else if matches!(e.proto().map(|p| p.kind()), Some(ProtoErrorKind::Timeout)) {
                        ResolveErrorKind::Timeout
                    } else {
                        ResolveErrorKind::Failed
                    };
                    Err(ResolveError::new(kind, name.as_str(), Some(e.into())))
                }
            }
        })
    }
}
