//! A small address book: bounded, deduplicated, picking at random while
//! preferring netgroups the manager is not connected to, and learning from
//! each dial.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::DnsSeeder;
use crate::{
    policy::NetGroup,
    source::{AddressSource, Observer},
};

/// The default most addresses a book keeps.
pub const DEFAULT_CAPACITY: usize = 20_000;
/// Failed dials in a row after which an address is dropped.
const MAX_FAILURES: u32 = 3;
/// The wait after an address's first failure; it doubles with each further
/// one.
const FAILURE_BACKOFF: Duration = Duration::from_secs(60);
/// The least time between two seedings.
const DEFAULT_RESEED: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Entry {
    group: NetGroup,
    failures: u32,
    retry_at: Option<Instant>,
    good: bool,
}

#[derive(Debug)]
struct Book {
    capacity: usize,
    entries: HashMap<SocketAddr, Entry>,
    /// Addresses by netgroup, and the groups in a list to pick from.
    by_group: HashMap<NetGroup, Vec<SocketAddr>>,
    groups: Vec<NetGroup>,
    /// Connections the manager has open, by netgroup.
    connected: HashMap<NetGroup, usize>,
    rng: fastrand::Rng,
    last_seed: Option<Instant>,
    reseed: Duration,
    stats: BookStats,
}

/// What an [`AddressBook`] holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BookStats {
    /// Addresses held.
    pub len: usize,
    /// Addresses that connected at least once.
    pub good: usize,
    /// Addresses dropped after repeated failures.
    pub dropped: u64,
    /// Addresses refused because the book was full.
    pub full: u64,
    /// Seedings run.
    pub seedings: u64,
    /// Seeds that failed (each logged with its error).
    pub seed_failures: u64,
}

/// The address book. Cloning shares it. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct AddressBook {
    book: Arc<Mutex<Book>>,
    seeder: Option<Arc<DnsSeeder>>,
}

impl Default for AddressBook {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressBook {
    /// An empty book of [`DEFAULT_CAPACITY`].
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// An empty book holding at most `capacity` addresses.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            book: Arc::new(Mutex::new(Book {
                capacity,
                entries: HashMap::new(),
                by_group: HashMap::new(),
                groups: Vec::new(),
                connected: HashMap::new(),
                rng: fastrand::Rng::new(),
                last_seed: None,
                reseed: DEFAULT_RESEED,
                stats: BookStats::default(),
            })),
            seeder: None,
        }
    }

    /// Seeds from `seeder` whenever the book has nothing to offer (at most
    /// once per [`reseed_interval`](Self::reseed_interval)).
    pub fn seeder(mut self, seeder: DnsSeeder) -> Self {
        self.seeder = Some(Arc::new(seeder));
        self
    }

    /// The least time between two seedings. Default is 60 seconds.
    pub fn reseed_interval(self, interval: Duration) -> Self {
        self.lock().reseed = interval;
        self
    }

    /// A fixed random seed for the picks, for reproducible tests.
    pub fn rng_seed(self, seed: u64) -> Self {
        self.lock().rng = fastrand::Rng::with_seed(seed);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // A poisoned lock still holds a consistent book: every change is
        // made before anything can panic.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an address; `false` if it is known already or the book is full.
    pub fn add(&self, addr: SocketAddr) -> bool {
        self.lock().add(addr)
    }

    /// Adds addresses; returns how many were new.
    pub fn extend(&self, addrs: impl IntoIterator<Item = SocketAddr>) -> usize {
        let mut book = self.lock();
        addrs.into_iter().filter(|a| book.add(*a)).count()
    }

    /// How many addresses the book holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the book holds `addr`.
    pub fn contains(&self, addr: &SocketAddr) -> bool {
        self.lock().entries.contains_key(addr)
    }

    /// Counts.
    pub fn stats(&self) -> BookStats {
        let book = self.lock();
        BookStats {
            len: book.entries.len(),
            good: book.entries.values().filter(|e| e.good).count(),
            ..book.stats
        }
    }

    /// An address to dial: at random, from a netgroup the manager is not
    /// connected to when there is one, never one that is backing off.
    pub fn pick(&self) -> Option<SocketAddr> {
        self.lock().pick(Instant::now())
    }

    /// `addr` connected: it is good, and its netgroup is taken.
    pub fn connected(&self, addr: &SocketAddr) {
        let mut book = self.lock();
        if let Some(e) = book.entries.get_mut(addr) {
            e.good = true;
            e.failures = 0;
            e.retry_at = None;
        }
        *book
            .connected
            .entry(NetGroup::routable(addr.ip()))
            .or_insert(0) += 1;
    }

    /// A connection to `addr` ended: its netgroup is free again.
    pub fn disconnected(&self, addr: &SocketAddr) {
        let mut book = self.lock();
        let group = NetGroup::routable(addr.ip());
        if let Some(n) = book.connected.get_mut(&group) {
            *n -= 1;
            if *n == 0 {
                book.connected.remove(&group);
            }
        }
    }

    /// A dial to `addr` failed: it backs off (a minute, doubling), and after
    /// three failures in a row it is dropped.
    pub fn failed(&self, addr: &SocketAddr) {
        self.lock().failed(addr, Instant::now());
    }

    /// Runs the seeder now, if there is one, adding what it finds; returns
    /// how many addresses were new.
    pub async fn seed(&self) -> usize {
        let Some(seeder) = self.seeder.clone() else {
            return 0;
        };
        self.lock().last_seed = Some(Instant::now());
        let seeded = seeder.resolve().await;
        let mut book = self.lock();
        book.stats.seedings += 1;
        book.stats.seed_failures += seeded.failures.len() as u64;
        let new = seeded.addrs.into_iter().filter(|a| book.add(*a)).count();
        tracing::debug!(new, failures = seeded.failures.len(), "seeded");
        new
    }

    fn seed_due(&self) -> bool {
        let book = self.lock();
        self.seeder.is_some() && book.last_seed.is_none_or(|at| at.elapsed() >= book.reseed)
    }
}

impl Book {
    fn add(&mut self, addr: SocketAddr) -> bool {
        if self.entries.contains_key(&addr) {
            return false;
        }
        if self.entries.len() >= self.capacity {
            self.stats.full += 1;
            return false;
        }
        let group = NetGroup::routable(addr.ip());
        self.entries.insert(
            addr,
            Entry {
                group,
                failures: 0,
                retry_at: None,
                good: false,
            },
        );
        let members = self.by_group.entry(group).or_default();
        if members.is_empty() {
            self.groups.push(group);
        }
        members.push(addr);
        true
    }

    fn remove(&mut self, addr: &SocketAddr) {
        let Some(entry) = self.entries.remove(addr) else {
            return;
        };
        if let Some(members) = self.by_group.get_mut(&entry.group) {
            members.retain(|a| a != addr);
            if members.is_empty() {
                self.by_group.remove(&entry.group);
                self.groups.retain(|g| *g != entry.group);
            }
        }
    }

    fn failed(&mut self, addr: &SocketAddr, now: Instant) {
        let Some(e) = self.entries.get_mut(addr) else {
            return;
        };
        e.failures += 1;
        if e.failures >= MAX_FAILURES {
            self.stats.dropped += 1;
            self.remove(addr);
            return;
        }
        e.retry_at = Some(now + FAILURE_BACKOFF * 2u32.pow(e.failures - 1));
    }

    fn pick(&mut self, now: Instant) -> Option<SocketAddr> {
        let n = self.groups.len();
        if n == 0 {
            return None;
        }
        let start = self.rng.usize(..n);
        let mut fallback = None;
        for i in 0..n {
            let group = self.groups[(start + i) % n];
            let taken = self.connected.contains_key(&group);
            if taken && fallback.is_some() {
                continue;
            }
            let Some(addr) = self.pick_in(group, now) else {
                continue;
            };
            if !taken {
                return Some(addr);
            }
            fallback = Some(addr);
        }
        fallback
    }

    /// A random address of `group` that is not backing off.
    fn pick_in(&mut self, group: NetGroup, now: Instant) -> Option<SocketAddr> {
        let members = self.by_group.get(&group)?;
        let start = self.rng.usize(..members.len());
        (0..members.len())
            .map(|i| members[(start + i) % members.len()])
            .find(|a| {
                self.entries
                    .get(a)
                    .is_some_and(|e| e.retry_at.is_none_or(|at| at <= now))
            })
    }
}

impl AddressSource<SocketAddr> for AddressBook {
    async fn next_address(&mut self) -> Option<SocketAddr> {
        if let Some(addr) = self.pick() {
            return Some(addr);
        }
        if self.seed_due() {
            self.seed().await;
            return self.pick();
        }
        None
    }
}

impl Observer<SocketAddr> for AddressBook {
    fn connected(&self, addr: &SocketAddr) {
        Self::connected(self, addr);
    }

    fn failed(&self, addr: &SocketAddr) {
        Self::failed(self, addr);
    }

    fn disconnected(&self, addr: &SocketAddr) {
        Self::disconnected(self, addr);
    }
}
