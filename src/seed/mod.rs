//! Seeding: DNS seeds resolved through a resolver service, into an address
//! book the manager draws its automatic peers from.
//!
//! ```no_run
//! use connmgr::{DialStack, manager::ConnManager, seed::{AddressBook, DnsSeeder}};
//!
//! # fn run() -> Result<(), connmgr::BoxError> {
//! let stack = DialStack::new();
//! // Through a proxy, `stack.resolver()` asks the proxy: no query leaks.
//! let seeder = DnsSeeder::new(stack.resolver())
//!     .seeds(["seed.example.org", "seed.example.net"])
//!     .port(8333);
//! let book = AddressBook::new().seeder(seeder);
//! let handle = ConnManager::with_dialer(stack.build()).address_book(book).start()?;
//! # drop(handle);
//! # Ok(())
//! # }
//! ```
//!
//! The book is the manager's [`AddressSource`](crate::manager::AddressSource):
//! when it has nothing to offer it runs its seeder (at most once per
//! [`reseed_interval`](AddressBook::reseed_interval)), on the manager's fill
//! task, so `stop` cancels a seeding in progress. The manager tells the book
//! how each dial went.

mod book;

pub use self::book::{AddressBook, BookStats, DEFAULT_CAPACITY};

use std::{fmt, net::SocketAddr, time::Duration};

use tower::{Service, ServiceExt, util::BoxCloneSyncService};

use crate::resolve::{Addrs, Name, ResolveError, ResolveErrorKind};

/// The default time limit of one seed's resolution.
pub const DEFAULT_SEED_TIMEOUT: Duration = Duration::from_secs(15);

/// Resolves DNS seeds, concurrently, each within a time limit, through any
/// resolver service. See the [module docs](self).
#[derive(Clone)]
pub struct DnsSeeder {
    resolver: BoxCloneSyncService<Name, Addrs, ResolveError>,
    seeds: Vec<String>,
    port: u16,
    services: Option<u64>,
    timeout: Duration,
}

impl fmt::Debug for DnsSeeder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSeeder")
            .field("seeds", &self.seeds)
            .field("port", &self.port)
            .field("services", &self.services)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What one round of seeding found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Seeded {
    /// The addresses, with the seeder's port.
    pub addrs: Vec<SocketAddr>,
    /// The seeds that failed, and how.
    pub failures: Vec<ResolveError>,
}

impl DnsSeeder {
    /// A seeder asking `resolver`, with no seeds yet, port 8333 and a 15 s
    /// limit per seed. Any `Service<Name>` whose error converts into a
    /// `BoxError` will do, so a resolver can be wrapped in tower layers (a
    /// timeout, a concurrency limit); its errors become [`ResolveError`]s
    /// (`Timeout` for tower's `Elapsed`, `Failed` otherwise, unless they
    /// are one already).
    pub fn new<R>(resolver: R) -> Self
    where
        R: Service<Name, Response = Addrs> + Clone + Send + Sync + 'static,
        R::Error: Into<tower::BoxError>,
        R::Future: Send + 'static,
    {
        Self {
            resolver: BoxCloneSyncService::new(crate::resolve::AnyResolver(resolver)),
            seeds: Vec::new(),
            port: 8333,
            services: None,
            timeout: DEFAULT_SEED_TIMEOUT,
        }
    }

    /// Adds seed names.
    pub fn seeds(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.seeds.extend(names.into_iter().map(Into::into));
        self
    }

    /// The port of the peers a seed names. Default is 8333.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Asks the seeds for peers with these service bits, as btcd does: the
    /// query goes to `x<hex services>.<seed>` (not for `1`, plain
    /// `NODE_NETWORK`, which every seed serves). Default is none.
    pub fn services(mut self, services: u64) -> Self {
        self.services = Some(services);
        self
    }

    /// The time limit of each seed's resolution. Default is 15 seconds.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The names queried, service prefix included.
    pub fn names(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|seed| match self.services {
                Some(s) if s != 1 => format!("x{s:x}.{seed}"),
                _ => seed.clone(),
            })
            .collect()
    }

    /// Resolves every seed at once, each within the time limit, and hands
    /// each seed's addresses to `found` as soon as that seed answers: a
    /// silent seed delays no other. Dropping the future cancels them all.
    pub async fn resolve_each(&self, mut found: impl FnMut(&str, Vec<SocketAddr>)) {
        use futures_util::StreamExt;
        let mut lookups: futures_util::stream::FuturesUnordered<_> = self
            .names()
            .into_iter()
            .map(|name| {
                let resolver = self.resolver.clone();
                let limit = self.timeout;
                async move {
                    let result = match Name::new(name.clone()) {
                        Ok(n) => match tokio::time::timeout(limit, resolver.oneshot(n)).await {
                            Ok(result) => result,
                            Err(e) => Err(ResolveError::new(
                                ResolveErrorKind::Timeout,
                                &name,
                                Some(e.into()),
                            )),
                        },
                        Err(e) => Err(e),
                    };
                    (name, result)
                }
            })
            .collect();
        while let Some((name, result)) = lookups.next().await {
            match result {
                Ok(ips) => {
                    tracing::debug!(seed = %name, found = ips.len(), "seed resolved");
                    let addrs = ips.into_iter().map(|ip| SocketAddr::new(ip, self.port));
                    found(&name, addrs.collect());
                }
                Err(error) => tracing::warn!(seed = %name, %error, "seed failed"),
            }
        }
    }

    /// Resolves every seed at once, each within the time limit. Dropping
    /// the future cancels them all.
    pub async fn resolve(&self) -> Seeded {
        let lookups = self.names().into_iter().map(|name| {
            let resolver = self.resolver.clone();
            let limit = self.timeout;
            async move {
                let name = Name::new(name)?;
                let shown = name.to_string();
                match tokio::time::timeout(limit, resolver.oneshot(name)).await {
                    Ok(result) => result,
                    Err(e) => Err(ResolveError::new(
                        ResolveErrorKind::Timeout,
                        &shown,
                        Some(e.into()),
                    )),
                }
            }
        });
        let mut seeded = Seeded::default();
        for (result, seed) in futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .zip(&self.seeds)
        {
            match result {
                Ok(ips) => {
                    tracing::debug!(%seed, found = ips.len(), "seed resolved");
                    seeded
                        .addrs
                        .extend(ips.into_iter().map(|ip| SocketAddr::new(ip, self.port)));
                }
                Err(error) => {
                    tracing::warn!(%seed, %error, "seed failed");
                    seeded.failures.push(error);
                }
            }
        }
        seeded
    }
}
